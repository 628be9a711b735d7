#![doc = include_str!("../../README.md")]
#![warn(missing_docs)]

/// For the `loopback-singleton` CLI (see `admin.rs`): see and stop daemons without
/// knowing their services. Not covered by semver.
#[doc(hidden)]
pub mod admin;
mod client;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod host;
mod options;
mod protocol;
mod runtime_dir;
mod schema;
mod service;
mod shm;
mod single_instance;
mod spawn;
mod sys;

pub use client::async_client::{AsyncClient, Call};
pub use client::{Builder, Client};
pub use error::Error;
pub use loopback_singleton_macros::{Schema, local_singleton};
pub use options::ServeOptions;
pub use protocol::{
    DaemonInfo, Fingerprint, Latency, MethodStats, ProtocolError, RemoteError, Stats, Transport,
};
pub use schema::Schema;
pub use service::{Dispatch, Service};
pub use single_instance::{
    AnotherInstance, CallbackId, Delivery, Message, Messages, Payload, Primary, Role,
    SingleInstance, single_instance,
};

/// What generated code reaches through one path, so that a user's `Cargo.toml` needs
/// `loopback-singleton` only. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use ctor;
    pub use serde;
    pub use serde_bytes;

    pub use crate::host::{daemon_hook, serve};
    pub use crate::schema::{
        DataModelType, DataModelVariant, NamedType, NamedValue, NamedVariant, fold_shape, shape,
        wire_of,
    };
    pub use crate::service::{IntoInstance, encode_reply};
}
