//! The services measured: the crate's (`#[local_singleton]`) and tarpc's, doing the
//! same work.

use loopback_singleton::local_singleton;

/// The crate's service: a counter and a payload sink.
#[derive(Default)]
pub struct Bench {
    calls: u64,
}

#[local_singleton(name = "bench")]
impl Bench {
    /// The small call: adds one, returns the count.
    pub fn inc(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }

    /// The payload call: takes the bytes, returns how many arrived.
    pub fn sink(&mut self, data: &[u8]) -> u64 {
        data.len() as u64
    }

    /// The same, with the argument encoded as a byte string (`serde_bytes`): postcard
    /// writes it in one copy instead of serde's element-by-element sequence. Same bytes
    /// on the wire.
    pub fn sink_bytes(&mut self, data: &serde_bytes::ByteBuf) -> u64 {
        data.len() as u64
    }
}

/// `Bench::inc`'s method number, for `Client::pipeline`.
pub const INC: u32 = 0;

/// tarpc's twin of [`Bench`].
#[tarpc::service]
pub trait TarpcBench {
    /// Adds one, returns the count.
    async fn inc() -> u64;
    /// Takes the bytes, returns how many arrived.
    async fn sink(data: Vec<u8>) -> u64;
    /// The same with a byte-string argument.
    async fn sink_bytes(data: serde_bytes::ByteBuf) -> u64;
}

/// The tarpc server: one shared counter.
#[derive(Clone, Default)]
pub struct TarpcServer {
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TarpcBench for TarpcServer {
    async fn inc(self, _: tarpc::context::Context) -> u64 {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1)
    }

    async fn sink(self, _: tarpc::context::Context, data: Vec<u8>) -> u64 {
        data.len() as u64
    }

    async fn sink_bytes(self, _: tarpc::context::Context, data: serde_bytes::ByteBuf) -> u64 {
        data.len() as u64
    }
}
