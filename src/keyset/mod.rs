//! The key set: the HMAC keys the application signs and verifies tokens with.
//!
//! One resource, `keyset.hmac`. Each key has an id derived from it (safe to print), a state
//! and timestamps, kept in the store's `opsplan_metadata` field next to the runbook's
//! `HMAC_SECRETS` and `HMAC_SECRET`. A rotation is staged: a new key is first published as
//! `pending` (verify only), becomes `primary` once every instance has had time to load it,
//! and the old primary stays `retired` (verify only) until its tokens have expired. Each
//! apply moves every key at most one state, and only when it is due.

mod drift;
mod keys;
mod lifecycle;
mod lock;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{KeyStoreConfig, KeysetConfig};
use crate::diagnostic::Diagnostics;
use crate::engine::{Diff, DriftItem, LiveState, LockObserver, Resource, ResourceError};
use crate::graph::Dependency;
use crate::lock::FileLock;
use crate::plan::{Action, Change, Fingerprint};
use crate::secret::Secret;
use crate::store::{Document, EnvStore, FileStore, Store, StoreError, VaultStore};

pub use keys::{
    Key, KeyState, LiveKeys, METADATA_FIELD, SECRET_FIELD, SECRETS_FIELD, key_id, parse_document,
    parse_secrets_list,
};
pub use lifecycle::{Policy, Step, plan_steps};

/// The key set's address in plans and on the command line.
pub const ADDRESS: &str = "keyset.hmac";

/// Every failure of the key set concern.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error("{}", problems.join("; "))]
    Parse { problems: Vec<String> },

    #[error("{store}: {}; fix the stored value and run again", problems.join("; "))]
    Invalid {
        store: String,
        problems: Vec<String>,
    },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "{store}: the key set changed since the plan was read (live state {found}, planned \
         against {expected}); run plan again"
    )]
    Stale {
        store: String,
        expected: String,
        found: String,
    },

    #[error("{store}: planned step {step} no longer fits the stored keys; run plan again")]
    StepMismatch { store: String, step: String },

    #[error(transparent)]
    Lock(#[from] lock::LockError),

    #[error("the planned change for {ADDRESS} cannot be read: {0}")]
    Data(String),

    #[error("cannot draw key material from the operating system's random source: {0}")]
    Random(String),
}

/// What `apply` needs to carry out a change. Ids and versions only: never key material.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChangeData {
    live_fingerprint: String,
    expected_version: Option<u64>,
    steps: Vec<Step>,
}

/// The live state this concern reads.
struct Live {
    keys: LiveKeys,
    fingerprint: Fingerprint,
    notes: Vec<String>,
    /// How the store moved away from what opsplan published.
    findings: Vec<drift::Finding>,
}

pub struct KeysetResource {
    config: KeysetConfig,
    store: Arc<dyn Store>,
    /// `--replace keyset.hmac`: rotate now, whatever the policy says.
    force_rotation: bool,
    /// The file store's writer lock; other stores have none.
    lock: Option<FileLock>,
}

impl KeysetResource {
    pub fn new(config: KeysetConfig, force_rotation: bool) -> KeysetResource {
        let store = open_store(&config.store);
        KeysetResource::with_store(config, store, force_rotation)
    }

    /// With a given store, e.g. one shared with another concern.
    pub fn with_store(
        config: KeysetConfig,
        store: Arc<dyn Store>,
        force_rotation: bool,
    ) -> KeysetResource {
        let lock = match &config.store {
            KeyStoreConfig::File { path, .. } => Some(FileLock::beside(path)),
            _ => None,
        };
        KeysetResource {
            config,
            store,
            force_rotation,
            lock,
        }
    }

    fn policy(&self) -> Policy {
        Policy::from_config(&self.config)
    }

    async fn read_live(&self) -> Result<Live, KeysetError> {
        let document = self.store.read().await?;
        let always_warn_both = matches!(self.config.store, KeyStoreConfig::Env { .. });
        let keys =
            parse_document(document.as_ref(), always_warn_both).map_err(|error| match error {
                KeysetError::Parse { problems } => KeysetError::Invalid {
                    store: self.store.describe(),
                    problems,
                },
                other => other,
            })?;
        Ok(Live {
            fingerprint: document_fingerprint(document.as_ref()),
            findings: drift::findings(document.as_ref(), &keys),
            keys,
            notes: self.store.notes(),
        })
    }
}

/// The store named by the configuration.
pub fn open_store(config: &KeyStoreConfig) -> Arc<dyn Store> {
    match config {
        KeyStoreConfig::File { path, .. } => Arc::new(FileStore::new(path.clone())),
        KeyStoreConfig::Env { secrets, secret } => Arc::new(EnvStore::new([
            (SECRETS_FIELD.to_string(), secrets.clone()),
            (SECRET_FIELD.to_string(), secret.clone()),
        ])),
        KeyStoreConfig::Vault(vault) => Arc::new(VaultStore::new(vault.clone())),
    }
}

/// A digest of every field (each value hashed under its own domain, never kept) and the
/// back end's version: any change to the stored document changes it.
pub fn document_fingerprint(document: Option<&Document>) -> Fingerprint {
    let Some(document) = document else {
        return Fingerprint::absent();
    };
    let mut parts: Vec<Vec<u8>> = vec![b"keyset".to_vec()];
    for (name, value) in &document.fields {
        parts.push(name.as_bytes().to_vec());
        parts.push(key_id(value.expose()).into_bytes());
    }
    parts.push(
        document
            .version
            .map(|v| v.to_string())
            .unwrap_or_default()
            .into_bytes(),
    );
    Fingerprint::of(parts.iter().map(Vec::as_slice))
}

/// New key material from the operating system's CSPRNG: `bytes` random bytes, hex-encoded
/// so that it fits the comma-separated list.
pub fn generate_key(bytes: usize) -> Result<Secret, KeysetError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).map_err(|error| KeysetError::Random(error.to_string()))?;
    let key = Secret::new(hex::encode(&buffer));
    buffer.iter_mut().for_each(|b| *b = 0);
    Ok(key)
}

#[async_trait]
impl Resource for KeysetResource {
    fn address(&self) -> &str {
        ADDRESS
    }

    fn kind(&self) -> &'static str {
        "keyset"
    }

    fn live_source(&self) -> String {
        self.store.describe()
    }

    fn dependencies(&self) -> Vec<Dependency> {
        Dependency::declared(ADDRESS, &self.config.depends_on)
    }

    fn validate(&self) -> Diagnostics {
        Diagnostics::default()
    }

    async fn lock(
        &self,
        timeout: std::time::Duration,
        observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        if let Some(lock) = &self.lock {
            lock::acquire(lock, timeout, observer, ADDRESS)
                .await
                .map_err(KeysetError::from)?;
        }
        Ok(())
    }

    async fn unlock(&self) {
        if let Some(lock) = &self.lock {
            lock.release();
        }
    }

    async fn read(&self) -> Result<LiveState, ResourceError> {
        Ok(Box::new(self.read_live().await?))
    }

    fn fingerprint(&self, live: &LiveState) -> Fingerprint {
        match live.downcast_ref::<Live>() {
            Some(live) => live.fingerprint.clone(),
            None => Fingerprint::absent(),
        }
    }

    fn diff(&self, live: &LiveState) -> Result<Diff, ResourceError> {
        let live = live
            .downcast_ref::<Live>()
            .ok_or_else(|| KeysetError::Data("unexpected live state".to_string()))?;
        let now = Utc::now();
        let policy = self.policy();
        let mut diff = Diff {
            live_summary: lifecycle::live_summary(&live.keys, &policy, now),
            ..Diff::default()
        };
        diff.warnings.extend(live.notes.iter().cloned());
        diff.warnings.extend(live.keys.warnings.iter().cloned());
        for (position, key) in live.keys.keys.iter().enumerate() {
            if key.material.expose().len() < policy.min_key_length {
                diff.warnings.push(format!(
                    "key {} ({}, position {} of {SECRETS_FIELD}) is shorter than \
                     min_key_length ({} bytes){}",
                    key.id,
                    key.state.name(),
                    position + 1,
                    policy.min_key_length,
                    if key.state == KeyState::Primary {
                        "; a rotation is due"
                    } else {
                        ""
                    }
                ));
            }
        }

        if let Some(warning) = self.environment_disagreement(&live.keys) {
            diff.warnings.push(warning);
        }

        let corrections = self.report_drift(live, &mut diff);

        let mut planned = plan_steps(&live.keys, &policy, now, self.force_rotation);
        if planned.steps.is_empty() && corrections.is_empty() {
            return Ok(diff);
        }
        if !corrections.is_empty() {
            // Publishing the keys that are left, in opsplan's order and with a fresh record,
            // is the correction; any due step is carried out in the same write.
            let repair = "publish the key set again over the edits made outside opsplan";
            planned.summary = if planned.summary.is_empty() {
                repair.to_string()
            } else {
                format!("{repair}; {}", planned.summary)
            };
            planned.attributes.splice(0..0, corrections);
        }
        if let Err(hint) = self.store.check_writable() {
            diff.warnings.push(format!(
                "{} is read-only, so apply will refuse these changes: {hint}",
                self.store.describe()
            ));
        }
        let data = ChangeData {
            live_fingerprint: live.fingerprint.0.clone(),
            expected_version: live.keys.version,
            steps: planned.steps,
        };
        diff.changes.push(Change {
            address: ADDRESS.to_string(),
            action: if live.keys.absent {
                Action::Create
            } else {
                Action::Update
            },
            summary: planned.summary,
            attributes: planned.attributes,
            data: serde_json::to_value(&data).map_err(|e| KeysetError::Data(e.to_string()))?,
        });
        Ok(diff)
    }

    async fn apply(&self, change: &Change) -> Result<String, ResourceError> {
        Ok(self.apply_change(change).await?)
    }
}

impl KeysetResource {
    /// Puts every finding into `diff.drift`, and the refused ones into `diff.refusals`
    /// unless `--replace keyset.hmac` accepts the store as it is. Returns the corrections
    /// that apply makes for the others.
    fn report_drift(&self, live: &Live, diff: &mut Diff) -> Vec<crate::plan::Attribute> {
        let mut corrections = Vec::new();
        for finding in &live.findings {
            let message = if finding.refused {
                format!(
                    "{}: {}; apply refuses to go on from here: put back what opsplan published \
                     (for Vault, an earlier version of the secret), or run `opsplan apply \
                     --replace {ADDRESS}` to accept the store as it is{}",
                    self.store.describe(),
                    finding.message,
                    if live.keys.keys.is_empty() {
                        " and publish a new key set"
                    } else {
                        " and start a rotation"
                    }
                )
            } else {
                format!("{}: {}", self.store.describe(), finding.message)
            };
            if finding.refused && !self.force_rotation {
                diff.refusals.push(message.clone());
            }
            diff.drift.push(DriftItem {
                address: ADDRESS.to_string(),
                message,
            });
            corrections.extend(finding.correction.clone());
        }
        corrections
    }

    /// The runbook's variables set beside a store that is not the environment: said when
    /// they name other keys than the store, by id, since the application may read either.
    fn environment_disagreement(&self, live: &LiveKeys) -> Option<String> {
        if self.config.environment_keys.is_empty() {
            return None;
        }
        let document = Document {
            fields: self.config.environment_keys.iter().cloned().collect(),
            version: None,
        };
        let store = self.store.describe();
        let env = match parse_document(Some(&document), false) {
            Ok(env) => env,
            Err(error) => {
                return Some(format!(
                    "{SECRETS_FIELD}/{SECRET_FIELD} in opsplan's environment are ignored (the \
                     keys live in {store}), and are invalid: {error}"
                ));
            }
        };
        let ids = |keys: &LiveKeys| -> Vec<String> {
            keys::publication_order(&keys.keys)
                .iter()
                .map(|k| k.id.clone())
                .collect()
        };
        let (theirs, ours) = (ids(&env), ids(live));
        if theirs == ours {
            return None;
        }
        let describe = |list: &[String]| match list.first() {
            Some(primary) => format!(
                "{} key{}, primary {primary}",
                list.len(),
                if list.len() == 1 { "" } else { "s" }
            ),
            None => "no keys".to_string(),
        };
        Some(format!(
            "{SECRETS_FIELD} in opsplan's environment ({}) differs from the key set in {store} \
             ({}); opsplan manages the keys in the store and ignores the environment, so make \
             sure the application reads the store",
            describe(&theirs),
            describe(&ours)
        ))
    }

    async fn apply_change(&self, change: &Change) -> Result<String, KeysetError> {
        let data: ChangeData = serde_json::from_value(change.data.clone())
            .map_err(|error| KeysetError::Data(error.to_string()))?;
        if let Err(hint) = self.store.check_writable() {
            return Err(StoreError::ReadOnly {
                store: self.store.describe(),
                hint,
            }
            .into());
        }

        let live = self.read_live().await?;
        if live.fingerprint.0 != data.live_fingerprint {
            return Err(match (data.expected_version, live.keys.version) {
                (Some(expected), Some(found)) if expected != found => StoreError::Conflict {
                    store: self.store.describe(),
                    path: "the key set".to_string(),
                    expected: expected.to_string(),
                    found: found.to_string(),
                }
                .into(),
                (None, Some(found)) => StoreError::Conflict {
                    store: self.store.describe(),
                    path: "the key set".to_string(),
                    expected: "0 (no secret)".to_string(),
                    found: found.to_string(),
                }
                .into(),
                _ => KeysetError::Stale {
                    store: self.store.describe(),
                    expected: short(&data.live_fingerprint),
                    found: short(&live.fingerprint.0),
                },
            });
        }

        let now = Utc::now();
        let mut keys = live.keys.keys.clone();
        for step in &data.steps {
            self.carry_out(step, &mut keys, now)?;
        }
        let fields = LiveKeys::fields_for(&keys, &live.keys.other_fields);
        self.store.write(&fields, live.keys.version).await?;

        let published: Vec<String> = keys::publication_order(&keys)
            .iter()
            .map(|k| format!("{} {}", k.state.name(), k.id))
            .collect();
        Ok(format!(
            "published {} key(s) to {}: {}",
            keys.len(),
            self.store.describe(),
            published.join(", ")
        ))
    }

    fn carry_out(
        &self,
        step: &Step,
        keys: &mut Vec<Key>,
        now: DateTime<Utc>,
    ) -> Result<(), KeysetError> {
        let mismatch = || KeysetError::StepMismatch {
            store: self.store.describe(),
            step: step.to_string(),
        };
        let find = |id: &str, state: KeyState| {
            keys.iter()
                .position(|k| k.id == id && k.state == state)
                .ok_or_else(mismatch)
        };
        match step {
            Step::Generate { state } => {
                let bytes = self.config.min_key_length.max(32);
                let material = generate_key(bytes)?;
                let id = key_id(material.expose());
                tracing::debug!(id = %id, state = state.name(), "generated a key");
                keys.push(Key {
                    id,
                    material,
                    state: *state,
                    created_at: Some(now),
                    since: Some(now),
                });
            }
            Step::Promote { id } => {
                let at = find(id, KeyState::Pending)?;
                keys[at].state = KeyState::Primary;
                keys[at].since = Some(now);
            }
            Step::Retire { id } => {
                let at = find(id, KeyState::Primary)?;
                keys[at].state = KeyState::Retired;
                keys[at].since = Some(now);
            }
            Step::Remove { id } => {
                let at = find(id, KeyState::Retired)?;
                keys.remove(at);
            }
        }
        Ok(())
    }
}

fn short(fingerprint: &str) -> String {
    let digits = fingerprint.trim_start_matches("sha256:");
    if digits.len() > 12 {
        format!("fingerprint {}", &digits[..12])
    } else {
        digits.to_string()
    }
}
