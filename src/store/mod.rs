//! Secret stores: where the key set and the mail settings are published for the
//! application to read. Each store holds one document of named fields, under the runbook's
//! variable names (`HMAC_SECRETS`, `SMTP_HOST`, …), plus an `opsplan_metadata` field that
//! carries ids, states and timestamps but never a secret.
//!
//! Back ends: a local file (the default), the process environment (read-only), and
//! HashiCorp Vault KV v1/v2.

mod env;
mod file;
mod vault;

pub use file::write_private_atomically;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use env::EnvStore;
pub use file::FileStore;
pub use vault::VaultStore;

use crate::secret::Secret;

/// One stored document. `version` is the back end's revision when it has one (KV v2), and is
/// used for check-and-set writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    pub fields: BTreeMap<String, Secret>,
    pub version: Option<u64>,
}

impl Document {
    pub fn get(&self, field: &str) -> Option<&Secret> {
        self.fields.get(field)
    }
}

/// Errors of every store. Each names the back end and the exact address or path it used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{store}: cannot read {path}")]
    Read {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{store}: cannot write {path}")]
    Write {
        store: String,
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{store}: {path} is not a valid opsplan document: {reason}")]
    Corrupt {
        store: String,
        path: String,
        reason: String,
    },

    #[error("{store} is read-only: {hint}")]
    ReadOnly { store: String, hint: String },

    #[error(
        "{store}: {path} changed since the plan was read (planned against version {expected}, \
         now {found}); run plan again"
    )]
    Conflict {
        store: String,
        path: String,
        expected: String,
        found: String,
    },

    #[error("{store}: {message}")]
    Backend { store: String, message: String },
}

/// A place that holds one document of secret fields.
#[async_trait]
pub trait Store: Send + Sync {
    /// The back end and address, safe to print: `file .opsplan/keys.json`.
    fn describe(&self) -> String;

    /// `Err(hint)` when this store cannot be written, saying which store can.
    fn check_writable(&self) -> Result<(), String> {
        Ok(())
    }

    /// What the last read noticed and the user should hear, e.g. a path it normalised.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The document, or `None` when nothing is stored yet.
    async fn read(&self) -> Result<Option<Document>, StoreError>;

    /// Replaces the document. `expected` is the version read at plan time (`None` when
    /// nothing existed); a store that can check it refuses a write over a newer document.
    async fn write(
        &self,
        fields: &BTreeMap<String, Secret>,
        expected: Option<u64>,
    ) -> Result<(), StoreError>;
}
