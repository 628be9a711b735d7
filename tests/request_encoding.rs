//! The call encoding invariant of `#[local_singleton]` (stated at `client_method` in the
//! macro crate's `expand.rs`): a generated client never builds the request enum; it sends
//! `(index, args)`, the method's variant index then its arguments as a tuple, borrowed,
//! and the daemon decodes those bytes as `<Type>Request`. Both must be the same bytes,
//! for every argument form, with the index counted among the variants compiled in.
//!
//! Checked two ways on the code the macro generates for `Forms` below, whose methods take
//! every argument form and are interleaved with methods under `#[cfg]`, compiled out and
//! compiled in (`test` is set in this test binary and in the daemon, which is the same
//! binary):
//! - without a daemon, the bytes of `(index, args)`, encoded as the runtime's `Client::call`
//!   encodes them, equal those of the matching `FormsRequest` variant. (`Client::call`'s
//!   encoder, `encode_call`, is private to the runtime; [`client_encoding`] repeats it.)
//! - through the generated clients (blocking and async) and a real daemon: each method
//!   returns the encoding of the `FormsRequest` the daemon decoded, which must equal the
//!   expected variant's. A wrong index in a client runs another method (or fails to
//!   decode), so this pins the client's cfg-aware index to the variant's.

mod common;

use common::TestEnv;
use loopback_singleton::__private::serde_bytes::Bytes;
use loopback_singleton::{Call, Error, local_singleton};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize, loopback_singleton::Schema)]
pub struct Point {
    pub x: i64,
    pub y: i64,
}

const POINT: Point = Point { x: -1, y: 1 << 40 };
const POINTS: &[Point] = &[Point { x: 1, y: 2 }, Point { x: -300, y: 0 }];
const DATA: &[u8] = &[0, 1, 127, 128, 255];

/// Every method returns the encoding of the request the daemon decoded for it.
#[derive(Default)]
pub struct Forms;

#[local_singleton(name = "suite-forms")]
impl Forms {
    #[cfg(not(test))]
    pub fn compiled_out_first(&self, x: u64) -> u64 {
        x
    }

    pub fn nothing(&self) -> Vec<u8> {
        encode(FormsRequest::Nothing {})
    }

    pub fn one(&self, x: u64) -> Vec<u8> {
        encode(FormsRequest::One { x })
    }

    pub fn several(&mut self, a: u8, b: String, c: Option<i64>, d: (bool, char)) -> Vec<u8> {
        encode(FormsRequest::Several { a, b, c, d })
    }

    pub fn text(&self, s: &str) -> Vec<u8> {
        encode(FormsRequest::Text { s: s.to_owned() })
    }

    pub fn slice(&self, points: &[Point]) -> Vec<u8> {
        encode(FormsRequest::Slice {
            points: points.to_vec(),
        })
    }

    pub fn reference(&self, point: &Point) -> Vec<u8> {
        encode(FormsRequest::Reference {
            point: point.clone(),
        })
    }

    #[cfg(test)]
    pub fn compiled_in(&self, x: i16) -> Vec<u8> {
        encode(FormsRequest::CompiledIn { x })
    }

    pub fn byte_slice(&self, data: &[u8]) -> Vec<u8> {
        encode(FormsRequest::ByteSlice {
            data: data.to_vec(),
        })
    }

    pub fn byte_buffer(&self, data: Vec<u8>) -> Vec<u8> {
        encode(FormsRequest::ByteBuffer { data })
    }

    #[cfg(test)]
    #[cfg(not(test))]
    pub fn compiled_out_between(&self, s: String) -> String {
        s
    }

    pub fn mixed(
        &mut self,
        tag: &str,
        data: &[u8],
        buffer: Vec<u8>,
        points: &[Point],
        point: &Point,
        n: u32,
    ) -> Vec<u8> {
        encode(FormsRequest::Mixed {
            tag: tag.to_owned(),
            data: data.to_vec(),
            buffer,
            points: points.to_vec(),
            point: point.clone(),
            n,
        })
    }

    pub async fn later(&self, s: &str) -> Vec<u8> {
        encode(FormsRequest::Later { s: s.to_owned() })
    }

    #[cfg(test)]
    #[cfg(not(doc))]
    pub fn compiled_in_last(&self, data: Vec<u8>) -> Vec<u8> {
        encode(FormsRequest::CompiledInLast { data })
    }
}

fn encode(request: FormsRequest) -> Vec<u8> {
    postcard::to_stdvec(&request).unwrap()
}

/// What the generated client sends for method number `index` with the argument tuple
/// `args`: the runtime's `encode_call`, which `Client::call` and `AsyncClient::call` use,
/// writes `index` with postcard, then `args`.
fn client_encoding<A: Serialize + ?Sized>(index: u32, args: &A) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(&index).unwrap();
    bytes.extend(postcard::to_stdvec(args).unwrap());
    bytes
}

/// One call of one method.
struct Case {
    method: &'static str,
    /// `(index, args)` as the generated client encodes it.
    client: Vec<u8>,
    /// The matching request variant, encoded.
    request: Vec<u8>,
    blocking: fn(&FormsClient) -> Result<Vec<u8>, Error>,
    nonblocking: fn(&FormsAsyncClient) -> Call<Vec<u8>>,
}

/// `case!(index, method(args...), sends (tuple...), Variant { fields... })`: the call, the
/// tuple the generated client passes to `call` for it (byte buffers wrapped in `Bytes`,
/// as `expand.rs` does), and the request variant it must equal.
macro_rules! case {
    ($index:expr, $method:ident($($arg:expr),*), sends ($($sent:expr),*), $variant:ident { $($fields:tt)* }) => {
        Case {
            method: stringify!($method),
            client: client_encoding($index, &($($sent,)*)),
            request: encode(FormsRequest::$variant { $($fields)* }),
            blocking: |forms| forms.$method($($arg),*),
            nonblocking: |forms| forms.$method($($arg),*),
        }
    };
}

/// Every method of `Forms`, with its variant index: its position among the methods
/// compiled in (`compiled_out_first` and `compiled_out_between` are not).
fn cases() -> Vec<Case> {
    vec![
        case!(0, nothing(), sends(), Nothing {}),
        case!(1, one(7), sends(7u64), One { x: 7 }),
        case!(
            2,
            several(200, "b".to_owned(), Some(-5), (true, 'é')),
            sends(200u8, "b".to_owned(), Some(-5i64), (true, 'é')),
            Several {
                a: 200,
                b: "b".to_owned(),
                c: Some(-5),
                d: (true, 'é')
            }
        ),
        case!(
            3,
            text("héllo"),
            sends("héllo"),
            Text {
                s: "héllo".to_owned()
            }
        ),
        case!(
            4,
            slice(POINTS),
            sends(POINTS),
            Slice {
                points: POINTS.to_vec()
            }
        ),
        case!(
            5,
            reference(&POINT),
            sends(&POINT),
            Reference { point: POINT }
        ),
        case!(6, compiled_in(-3), sends(-3i16), CompiledIn { x: -3 }),
        case!(
            7,
            byte_slice(DATA),
            sends(Bytes::new(DATA)),
            ByteSlice {
                data: DATA.to_vec()
            }
        ),
        case!(
            8,
            byte_buffer(DATA.to_vec()),
            sends(Bytes::new(&DATA.to_vec()[..])),
            ByteBuffer {
                data: DATA.to_vec()
            }
        ),
        case!(
            9,
            mixed("t", DATA, vec![9; 300], POINTS, &POINT, 1 << 20),
            sends(
                "t",
                Bytes::new(DATA),
                Bytes::new(&vec![9u8; 300][..]),
                POINTS,
                &POINT,
                1u32 << 20
            ),
            Mixed {
                tag: "t".to_owned(),
                data: DATA.to_vec(),
                buffer: vec![9; 300],
                points: POINTS.to_vec(),
                point: POINT,
                n: 1 << 20
            }
        ),
        case!(10, later(""), sends(""), Later { s: String::new() }),
        case!(
            11,
            compiled_in_last(Vec::new()),
            sends(Bytes::new(&[][..])),
            CompiledInLast { data: Vec::new() }
        ),
    ]
}

#[test]
fn the_client_encoding_of_every_argument_form_is_the_request_encoding() {
    for case in cases() {
        assert_eq!(case.client, case.request, "method `{}`", case.method);
    }
}

#[test]
fn the_generated_clients_send_the_request_of_the_method_called() {
    let env = TestEnv::new("request-encoding");
    let forms: FormsClient = env.builder::<Forms>().connect(()).unwrap();
    for case in cases() {
        let decoded = (case.blocking)(&forms).unwrap();
        assert_eq!(decoded, case.request, "blocking `{}`", case.method);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let forms: FormsAsyncClient = env.builder::<Forms>().connect_async(()).await.unwrap();
        for case in cases() {
            let decoded = (case.nonblocking)(&forms).await.unwrap();
            assert_eq!(decoded, case.request, "async `{}`", case.method);
        }
    });
    forms.shutdown().unwrap();
}
