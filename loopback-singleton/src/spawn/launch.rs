//! The launch description: everything a spawned daemon needs to know, handed over as
//! a private file without a name.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::options::ServeOptions;
use crate::protocol::{self, Fingerprint};

/// Everything a spawned daemon needs, handed over as a nameless private file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Launch {
    pub name: String,
    pub base: PathBuf,
    pub options: ServeOptions,
    pub init: Vec<u8>,
    /// The init fingerprint, computed by the starter from the typed arguments (map
    /// order does not count) and compared by the daemon as is: recomputed from `init`'s
    /// bytes, it would depend on the order of the starter's maps.
    pub init_fingerprint: Fingerprint,
    pub init_description: String,
    /// Shown by the client that starts the daemon in its handshake (see
    /// [`protocol::handshake::Auth::starter`]); `None` for a host with no starter to wait for.
    pub starter: Option<protocol::Nonce>,
}

impl Launch {
    /// The launch of `name` under `base` with `init` as the constructor's arguments.
    pub(crate) fn new<T: Serialize>(
        name: String,
        base: PathBuf,
        options: ServeOptions,
        init: &T,
    ) -> Result<Self, Error> {
        let unencodable = |error: &dyn std::fmt::Display| Error::StartFailed {
            name: name.clone(),
            reason: format!("the init arguments do not encode: {error}"),
        };
        let options = options
            .with_environment()
            .map_err(|reason| Error::StartFailed {
                name: name.clone(),
                reason,
            })?;
        Ok(Launch {
            init: postcard::to_stdvec(init).map_err(|error| unencodable(&error))?,
            init_fingerprint: protocol::init_fingerprint(init)
                .map_err(|error| unencodable(&error))?,
            init_description: protocol::describe(init),
            starter: Some(protocol::random_bytes()),
            name,
            base,
            options,
        })
    }
}
