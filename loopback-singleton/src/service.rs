//! The contract between `#[local_singleton]`'s generated code and the runtime.
//!
//! Users never implement [`Service`] by hand: the macro does, for the type of the
//! annotated `impl` block. The trait is public so that generic code (the daemon, the
//! client, [`Builder`](crate::Builder)) can name it, and so that a user can host a
//! service in a process of their own with [`Service::serve`].

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::options::ServeOptions;
use crate::protocol::Fingerprint;
use crate::protocol::schema::WireItem;
use crate::schema::NamedType;

/// A type whose one instance is hosted by a loopback-singleton daemon.
///
/// Implemented by `#[local_singleton]`; see the crate documentation for an example.
pub trait Service: Sized + 'static {
    /// The generated request enum: one variant per public method.
    type Request: DeserializeOwned;
    /// The `#[init]` constructor's arguments, owned: `()` for none, the value itself
    /// for one, a tuple for several.
    type Init: Serialize + DeserializeOwned;
    /// The generated typed client (`<Type>Client`), made from a
    /// [`Client`](crate::Client) by [`Builder::connect`](crate::Builder::connect).
    type Client;
    /// The generated typed async client (`<Type>AsyncClient`), made from an
    /// [`AsyncClient`](crate::AsyncClient) by
    /// [`Builder::connect_async`](crate::Builder::connect_async).
    type AsyncClient;

    /// The default singleton name: `<crate>.<Type>` unless `#[local_singleton(name = "...")]`
    /// says otherwise. Names the runtime directory.
    const NAME: &'static str;
    /// Identifies the service inside an executable (`<module path>::<Type>`): the daemon
    /// marker names it so that the right pre-main hook takes over a re-executed process.
    const SERVICE_ID: &'static str;
    /// The schema fingerprint (see [`Fingerprint`]).
    const SCHEMA: Fingerprint;
    /// The methods' names by wire index (what `stats` reports them as). Empty for a
    /// service that does not say: its methods are reported by index.
    #[doc(hidden)]
    const METHODS: &'static [&'static str] = &[];

    /// Builds the one instance inside the daemon (the `#[init]` constructor, or
    /// `Default`). An `#[init]` returning `Result<Self, E>` fails with `E`'s message,
    /// which `connect` reports as [`Error::StartFailed`].
    fn construct(init: Self::Init) -> Result<Self, String>;

    /// Runs one request on the instance and encodes the method's return value into `out`.
    fn dispatch<'a>(&'a mut self, request: Self::Request, out: &'a mut Vec<u8>) -> Dispatch<'a>;

    /// Hosts the service in the calling process, blocking until the daemon retires
    /// (idle TTL or [`shutdown`](crate::Client::shutdown)).
    ///
    /// Use this to run the daemon under a process supervisor of your own instead of
    /// letting the first client auto-start it. Clients find it through the runtime
    /// directory exactly as they would find an auto-started one.
    ///
    /// ```no_run
    /// use loopback_singleton::{local_singleton, Service, ServeOptions};
    ///
    /// #[derive(Default)]
    /// pub struct Counter { value: u64 }
    ///
    /// #[local_singleton]
    /// impl Counter {
    ///     pub fn inc(&mut self) -> u64 { self.value += 1; self.value }
    /// }
    ///
    /// fn main() -> Result<(), loopback_singleton::Error> {
    ///     Counter::serve((), ServeOptions::default())
    /// }
    /// ```
    ///
    /// (The macro implements it by calling the host, which sits above this trait.)
    fn serve(init: Self::Init, options: ServeOptions) -> Result<(), Error>;

    /// Lists, in order, every type that crosses the wire with the place it crosses it
    /// (`method(argument)`, `method ->`, `#[init](argument)`): its structure, or `None`
    /// for a type marked `#[unchecked_schema]`. What a schema mismatch is explained with.
    #[doc(hidden)]
    fn wire_types(out: &mut Vec<(&'static str, Option<&'static NamedType>)>) {
        let _ = out;
    }
}

/// The service's wire description (see [`Service::wire_types`]), as the handshake sends
/// it. Built once per daemon, and by a client only when its schema is refused.
pub(crate) fn wire_description<S: Service>() -> Vec<WireItem> {
    let mut types = Vec::new();
    S::wire_types(&mut types);
    types
        .into_iter()
        .map(|(place, ty)| WireItem {
            place: place.to_string(),
            ty: ty.map(Into::into),
        })
        .collect()
}

/// What [`Service::dispatch`] returns: the reply already encoded, or a future (for an
/// `async fn` method) that encodes it when it completes.
pub enum Dispatch<'a> {
    /// The method ran; its reply is in the output buffer.
    Ready(Result<(), postcard::Error>),
    /// An `async fn` method: the daemon awaits it, still holding the instance.
    Pending(Pin<Box<dyn Future<Output = Result<(), postcard::Error>> + 'a>>),
}

impl<'a> Dispatch<'a> {
    /// Encodes a synchronous method's return value.
    #[doc(hidden)]
    pub fn ready<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Dispatch<'a> {
        Dispatch::Ready(encode_reply(value, out))
    }

    /// Wraps an `async fn` method's future.
    #[doc(hidden)]
    pub fn pending<F>(future: F) -> Dispatch<'a>
    where
        F: Future<Output = Result<(), postcard::Error>> + 'a,
    {
        Dispatch::Pending(Box::pin(future))
    }
}

/// Appends the postcard encoding of a return value to the reply buffer.
#[doc(hidden)]
pub fn encode_reply<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    postcard::to_io(value, out).map(|_| ())
}

/// What an `#[init]` constructor may return: `Self`, or `Result<Self, E>` for a set-up
/// that can fail (its error reaches the client as [`Error::StartFailed`]).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[init]` must return `Self` or `Result<Self, E>` with `E: Display`",
    label = "returns `{Self}`"
)]
pub trait IntoInstance<S> {
    /// The instance, or why it could not be built.
    fn into_instance(self) -> Result<S, String>;
}

impl<S> IntoInstance<S> for S {
    fn into_instance(self) -> Result<S, String> {
        Ok(self)
    }
}

impl<S, E: std::fmt::Display> IntoInstance<S> for Result<S, E> {
    fn into_instance(self) -> Result<S, String> {
        self.map_err(|error| error.to_string())
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_string()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

thread_local! {
    /// On an instance thread, the instance it hosts: a call from this thread to that
    /// instance would wait behind the very call that makes it.
    static HOSTED_HERE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Marks the calling thread as the one running `instance`'s methods.
pub(crate) fn host_on_this_thread(instance: u64) {
    HOSTED_HERE.set(Some(instance));
}

/// Whether the calling thread is the one running `instance`'s methods: a call to it
/// from here can never be answered (calls run one at a time).
pub(crate) fn runs_on_this_thread(instance: u64) -> bool {
    HOSTED_HERE.get() == Some(instance)
}
