//! Keys as the store holds them: ids, states, the published fields, and strict parsing of
//! the runbook's `HMAC_SECRETS`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KeysetError;
use crate::secret::Secret;
use crate::store::Document;

/// The runbook's list: comma-separated, primary first.
pub const SECRETS_FIELD: &str = "HMAC_SECRETS";
/// The runbook's single key: the primary.
pub const SECRET_FIELD: &str = "HMAC_SECRET";
/// Ids, states and timestamps; never key material.
pub const METADATA_FIELD: &str = "opsplan_metadata";

/// The id of a key: the first 12 hex digits of a domain-separated SHA-256 of it. Safe to
/// print; it names a key without revealing it.
pub fn key_id(material: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"opsplan keyset key id v1\0");
    hasher.update(material.as_bytes());
    hex::encode(hasher.finalize())[..12].to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Published for verification; does not sign yet.
    Pending,
    /// Signs, and verifies.
    Primary,
    /// Verifies tokens signed before the last rotation.
    Retired,
}

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Primary => "primary",
            KeyState::Retired => "retired",
        }
    }
}

/// One key as read from the store.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub material: Secret,
    pub state: KeyState,
    /// `None` for a key that opsplan did not create and whose age is unknown.
    pub created_at: Option<DateTime<Utc>>,
    /// When the key entered its state; `None` when unknown.
    pub since: Option<DateTime<Utc>>,
}

/// What `opsplan_metadata` holds for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub state: KeyState,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    pub format: u32,
    pub keys: Vec<KeyRecord>,
    /// A digest of `keys` as opsplan wrote them, so that an edit by hand shows as drift.
    /// Absent in metadata written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Metadata {
    pub fn new(keys: Vec<KeyRecord>) -> Metadata {
        let digest = Some(records_digest(&keys));
        Metadata {
            format: 1,
            keys,
            digest,
        }
    }

    /// Whether `keys` are still what opsplan wrote; `None` when there is no digest.
    pub fn intact(&self) -> Option<bool> {
        self.digest
            .as_ref()
            .map(|digest| *digest == records_digest(&self.keys))
    }
}

/// `sha256:<hex>` over the records as JSON: ids, states and times, never key material.
fn records_digest(keys: &[KeyRecord]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"opsplan keyset metadata v1\0");
    hasher.update(serde_json::to_string(keys).unwrap_or_default().as_bytes());
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The key set read from a store.
#[derive(Debug, Clone, Default)]
pub struct LiveKeys {
    pub keys: Vec<Key>,
    /// The back end's version (KV v2), for check-and-set.
    pub version: Option<u64>,
    /// Fields of the document that are not the key set's, kept as they are.
    pub other_fields: BTreeMap<String, Secret>,
    /// Whether `opsplan_metadata` was present.
    pub has_metadata: bool,
    pub warnings: Vec<String>,
    /// The store held nothing.
    pub absent: bool,
}

impl LiveKeys {
    pub fn primary(&self) -> Option<&Key> {
        self.keys.iter().find(|k| k.state == KeyState::Primary)
    }

    /// The published fields for `keys`: primary first, then pending, then retired keys from
    /// the most recently retired.
    pub fn fields_for(keys: &[Key], other: &BTreeMap<String, Secret>) -> BTreeMap<String, Secret> {
        let ordered = publication_order(keys);
        let mut fields = other.clone();
        let list: Vec<&str> = ordered.iter().map(|k| k.material.expose()).collect();
        fields.insert(SECRETS_FIELD.to_string(), Secret::new(list.join(",")));
        if let Some(primary) = ordered.iter().find(|k| k.state == KeyState::Primary) {
            fields.insert(SECRET_FIELD.to_string(), primary.material.clone());
        } else {
            fields.remove(SECRET_FIELD);
        }
        let metadata = Metadata::new(
            ordered
                .iter()
                .map(|k| KeyRecord {
                    id: k.id.clone(),
                    state: k.state,
                    created_at: k.created_at,
                    since: k.since,
                })
                .collect(),
        );
        let text = serde_json::to_string(&metadata).unwrap_or_default();
        fields.insert(METADATA_FIELD.to_string(), Secret::new(text));
        fields
    }
}

/// Primary, then pending (newest first), then retired (most recently retired first).
pub fn publication_order(keys: &[Key]) -> Vec<&Key> {
    let rank = |state: KeyState| match state {
        KeyState::Primary => 0,
        KeyState::Pending => 1,
        KeyState::Retired => 2,
    };
    let mut ordered: Vec<&Key> = keys.iter().collect();
    // Stable: keys with unknown times keep the order the store gave them.
    ordered.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then_with(|| b.since.cmp(&a.since))
    });
    ordered
}

/// Splits the runbook's list strictly: entries are trimmed, and an empty entry or a
/// duplicate is an error naming its position (1-based). No key is ever dropped, so a
/// leading comma can never promote the second key to primary.
pub fn parse_secrets_list(text: &str, field: &str) -> Result<Vec<Secret>, KeysetError> {
    let mut keys: Vec<Secret> = Vec::new();
    let mut problems = Vec::new();
    for (index, entry) in text.split(',').enumerate() {
        let position = index + 1;
        let entry = entry.trim();
        if entry.is_empty() {
            problems.push(format!("{field} entry {position} is empty"));
            continue;
        }
        if let Some(first) = keys.iter().position(|k| k.expose() == entry) {
            problems.push(format!(
                "{field}: duplicate key at positions {} and {position}",
                first + 1
            ));
        }
        keys.push(Secret::new(entry));
    }
    if text.trim().is_empty() {
        problems = vec![format!("{field} is set but empty")];
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(KeysetError::Parse { problems })
    }
}

/// Reads the key set out of a stored document.
/// `always_warn_both`: warn whenever both variables are set (the environment), not only
/// when they differ (a document opsplan writes always holds both).
pub fn parse_document(
    document: Option<&Document>,
    always_warn_both: bool,
) -> Result<LiveKeys, KeysetError> {
    let Some(document) = document else {
        return Ok(LiveKeys {
            absent: true,
            ..LiveKeys::default()
        });
    };
    let mut live = LiveKeys {
        version: document.version,
        ..LiveKeys::default()
    };
    for (name, value) in &document.fields {
        if name != SECRETS_FIELD && name != SECRET_FIELD && name != METADATA_FIELD {
            live.other_fields.insert(name.clone(), value.clone());
        }
    }

    let list = document.get(SECRETS_FIELD);
    let single = document.get(SECRET_FIELD);
    let materials = match (list, single) {
        (Some(list), Some(single)) => {
            let keys = parse_secrets_list(list.expose(), SECRETS_FIELD)?;
            let differ = keys.first().map(Secret::expose) != Some(single.expose().trim());
            if always_warn_both || differ {
                live.warnings.push(format!(
                    "both {SECRETS_FIELD} and {SECRET_FIELD} are set: {SECRETS_FIELD} is used \
                     and {SECRET_FIELD} is ignored{}",
                    if differ {
                        " (they name different primary keys)"
                    } else {
                        ""
                    }
                ));
            }
            keys
        }
        (Some(list), None) => parse_secrets_list(list.expose(), SECRETS_FIELD)?,
        (None, Some(single)) => {
            let trimmed = single.expose().trim();
            if trimmed.is_empty() {
                return Err(KeysetError::Parse {
                    problems: vec![format!("{SECRET_FIELD} is set but empty")],
                });
            }
            if trimmed.contains(',') {
                live.warnings.push(format!(
                    "{SECRET_FIELD} contains a comma; it is one key, and a comma-separated \
                     list belongs in {SECRETS_FIELD}"
                ));
            }
            vec![Secret::new(trimmed)]
        }
        (None, None) => Vec::new(),
    };

    let metadata: Option<Metadata> = match document.get(METADATA_FIELD) {
        Some(text) => match serde_json::from_str(text.expose()) {
            Ok(metadata) => Some(metadata),
            Err(error) => {
                live.warnings.push(format!(
                    "{METADATA_FIELD} is not valid ({error}); key states are taken from the \
                     order of {SECRETS_FIELD}"
                ));
                None
            }
        },
        None => None,
    };
    live.has_metadata = metadata.is_some();
    let records: BTreeMap<String, KeyRecord> = metadata
        .map(|m| m.keys.into_iter().map(|r| (r.id.clone(), r)).collect())
        .unwrap_or_default();

    for (index, material) in materials.into_iter().enumerate() {
        let id = key_id(material.expose());
        let key = match records.get(&id) {
            Some(record) => Key {
                id,
                material,
                state: record.state,
                created_at: record.created_at,
                since: record.since,
            },
            None => Key {
                id,
                material,
                state: if index == 0 {
                    KeyState::Primary
                } else {
                    KeyState::Retired
                },
                created_at: None,
                since: None,
            },
        };
        live.keys.push(key);
    }

    // The published order is the contract: the first key signs, whatever the metadata says.
    let first_id = live.keys.first().map(|k| k.id.clone());
    let primaries = live
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Primary)
        .count();
    if primaries != 1 || live.primary().map(|k| &k.id) != first_id.as_ref() {
        if !live.keys.is_empty() {
            live.warnings.push(format!(
                "{METADATA_FIELD} does not name the first key of {SECRETS_FIELD} as the only \
                 primary; the first key is taken as primary"
            ));
        }
        for (index, key) in live.keys.iter_mut().enumerate() {
            if index == 0 {
                key.state = KeyState::Primary;
            } else if key.state == KeyState::Primary {
                key.state = KeyState::Retired;
            }
        }
    }

    // A key the metadata names but the list lacks is drift (see `drift.rs`), not a warning.
    Ok(live)
}

/// A timestamp as plans show it.
pub fn shown_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An age or a wait, rounded to the unit that reads best.
pub fn shown_duration(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds().max(0) as u64;
    let rounded = if seconds >= 2 * 86_400 {
        seconds - seconds % 3600
    } else if seconds >= 3600 {
        seconds - seconds % 60
    } else {
        seconds
    };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposed(keys: &[Secret]) -> Vec<&str> {
        keys.iter().map(Secret::expose).collect()
    }

    #[test]
    fn list_parsing_is_strict() {
        let keys = parse_secrets_list(" k-2025-primary , k-2024-old ", SECRETS_FIELD).unwrap();
        assert_eq!(exposed(&keys), ["k-2025-primary", "k-2024-old"]);

        let error = parse_secrets_list("k-2025-primary,k-2024-old,", SECRETS_FIELD).unwrap_err();
        assert_eq!(error.to_string(), "HMAC_SECRETS entry 3 is empty");
        let error = parse_secrets_list(",k-2025-primary", SECRETS_FIELD).unwrap_err();
        assert_eq!(error.to_string(), "HMAC_SECRETS entry 1 is empty");
        let error = parse_secrets_list("k1,k1", SECRETS_FIELD).unwrap_err();
        assert_eq!(
            error.to_string(),
            "HMAC_SECRETS: duplicate key at positions 1 and 2"
        );
    }

    #[test]
    fn ids_are_stable_and_do_not_contain_the_key() {
        let id = key_id("k-2025-primary");
        assert_eq!(id.len(), 12);
        assert_eq!(id, key_id("k-2025-primary"));
        assert_ne!(id, key_id("k-2024-old"));
    }
}
