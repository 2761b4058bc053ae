//! The environment as a read-only store: the runbook's `HMAC_SECRETS` and `HMAC_SECRET`.
//!
//! The values are taken when the configuration is read. Writing is refused with a message
//! that names the stores opsplan can write.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{Document, Store, StoreError};
use crate::secret::Secret;

pub struct EnvStore {
    fields: BTreeMap<String, Secret>,
}

impl EnvStore {
    /// The variables that are set, by name; an unset variable is left out.
    pub fn new(variables: impl IntoIterator<Item = (String, Option<Secret>)>) -> EnvStore {
        EnvStore {
            fields: variables
                .into_iter()
                .filter_map(|(name, value)| value.map(|value| (name, value)))
                .collect(),
        }
    }
}

#[async_trait]
impl Store for EnvStore {
    fn describe(&self) -> String {
        "env (process environment)".to_string()
    }

    fn check_writable(&self) -> Result<(), String> {
        Err(
            "opsplan cannot change the environment of the running application; set \
             [keyset] store = \"file\" or store = \"vault\" (KMS_PROVIDER=vault) to let \
             opsplan write and rotate the keys, or change HMAC_SECRETS by hand"
                .to_string(),
        )
    }

    async fn read(&self) -> Result<Option<Document>, StoreError> {
        if self.fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(Document {
            fields: self.fields.clone(),
            version: None,
        }))
    }

    async fn write(
        &self,
        _fields: &BTreeMap<String, Secret>,
        _expected: Option<u64>,
    ) -> Result<(), StoreError> {
        Err(StoreError::ReadOnly {
            store: self.describe(),
            hint: self.check_writable().err().unwrap_or_default(),
        })
    }
}
