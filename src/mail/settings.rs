//! The settings the application reads, as published to the settings store.
//!
//! Fields carry the runbook's variable names. The password is stored in clear (the
//! application needs it) but is only ever compared and shown through a keyed fingerprint:
//! HMAC-SHA256 under a random salt kept in the document's `opsplan_metadata` field.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::{MailConfig, MailProvider};
use crate::plan::{Attribute, Fingerprint};
use crate::secret::Secret;

/// The field that holds opsplan's bookkeeping: never a secret.
pub const METADATA_FIELD: &str = "opsplan_metadata";

/// Shown instead of a password that is set.
pub const SENSITIVE: &str = "(sensitive)";

/// A published field: its variable name, the name a plan shows, and whether it is secret.
pub struct Field {
    pub variable: &'static str,
    pub shown_as: &'static str,
    pub sensitive: bool,
}

/// Every field opsplan manages, in the order a plan lists them.
pub const FIELDS: &[Field] = &[
    field("MAIL_PROVIDER", "provider", false),
    field("SMTP_HOST", "host", false),
    field("SMTP_PORT", "port", false),
    field("SMTP_TLS", "tls", false),
    field("SMTP_USER", "user", false),
    field("SMTP_PASS", "password", true),
    field("SMTP_FROM", "from", false),
    field("MAIL_QUEUE_KEY", "queue_key", false),
];

const fn field(variable: &'static str, shown_as: &'static str, sensitive: bool) -> Field {
    Field {
        variable,
        shown_as,
        sensitive,
    }
}

/// opsplan's bookkeeping inside the document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    pub managed_by: String,
    /// Hex salt of the keyed fingerprints; random per store.
    pub fingerprint_salt: String,
    pub updated_at: String,
    /// What opsplan published, field by field: the keyed fingerprint of each managed field
    /// that was set. Compared with the live document to find edits made outside opsplan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub published: BTreeMap<String, String>,
}

/// The fields the configuration asks for, by variable name.
pub fn desired_fields(config: &MailConfig) -> BTreeMap<&'static str, Secret> {
    let mut fields = BTreeMap::new();
    match &config.provider {
        MailProvider::Console => {
            fields.insert("MAIL_PROVIDER", Secret::new("console"));
        }
        MailProvider::Smtp(smtp) => {
            fields.insert("MAIL_PROVIDER", Secret::new("smtp"));
            fields.insert("SMTP_HOST", Secret::new(smtp.host.clone()));
            fields.insert("SMTP_PORT", Secret::new(smtp.port.to_string()));
            fields.insert("SMTP_TLS", Secret::new(smtp.tls.name()));
            if let Some(credentials) = &smtp.credentials {
                fields.insert("SMTP_USER", Secret::new(credentials.user.clone()));
                fields.insert("SMTP_PASS", credentials.password.clone());
            }
            fields.insert("SMTP_FROM", Secret::new(smtp.from.to_string()));
        }
    }
    if let Some(queue) = &config.queue {
        fields.insert("MAIL_QUEUE_KEY", Secret::new(queue.key.clone()));
    }
    fields
}

/// `hmac-sha256:<hex>` of `value` under `salt`.
pub fn keyed_fingerprint(salt: &[u8], value: &Secret) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(value.expose().as_bytes());
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

pub fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 32];
    getrandom::fill(&mut salt).expect("the operating system's random source");
    salt
}

/// The field-by-field difference between live and desired, as plan attributes.
/// Empty when nothing differs.
pub fn attributes(
    live: &BTreeMap<String, Secret>,
    desired: &BTreeMap<&'static str, Secret>,
    salt: &[u8],
) -> Vec<Attribute> {
    let mut attributes = Vec::new();
    for field in FIELDS {
        let before = live.get(field.variable);
        let after = desired.get(field.variable);
        let attribute = match (before, after) {
            (None, None) => None,
            _ if field.sensitive => sensitive_attribute(field, before, after, salt),
            (Some(before), Some(after)) if before == after => None,
            (Some(before), Some(after)) => Some(Attribute::changed(
                field.shown_as,
                before.expose(),
                after.expose(),
            )),
            (None, Some(after)) => Some(Attribute::added(field.shown_as, after.expose())),
            (Some(before), None) => Some(Attribute {
                name: field.shown_as.to_string(),
                before: Some(before.expose().to_string()),
                after: None,
            }),
        };
        attributes.extend(attribute);
    }
    attributes
}

fn sensitive_attribute(
    field: &Field,
    before: Option<&Secret>,
    after: Option<&Secret>,
    salt: &[u8],
) -> Option<Attribute> {
    let name = field.shown_as.to_string();
    match (before, after) {
        (Some(before), Some(after)) => {
            let same = keyed_fingerprint(salt, before) == keyed_fingerprint(salt, after);
            (!same).then(|| Attribute {
                name,
                before: None,
                after: Some("changed".to_string()),
            })
        }
        (None, Some(_)) => Some(Attribute {
            name,
            before: None,
            after: Some(SENSITIVE.to_string()),
        }),
        (Some(_), None) => Some(Attribute {
            name,
            before: Some(SENSITIVE.to_string()),
            after: None,
        }),
        (None, None) => None,
    }
}

/// A digest of the live document in which secret fields count by keyed fingerprint only.
///
/// `stored_salt` is the salt the document itself holds. A document without one (written by
/// hand) has its secret fields counted as present only: a salt made up by this process
/// would give another process another digest, and an unkeyed hash would let a saved plan
/// be used to guess the password.
pub fn fingerprint(
    live: &BTreeMap<String, Secret>,
    stored_salt: Option<&[u8]>,
    version: Option<u64>,
) -> Fingerprint {
    let sensitive = |name: &str| FIELDS.iter().any(|f| f.variable == name && f.sensitive);
    let parts: Vec<String> = live
        .iter()
        .map(|(name, value)| match (sensitive(name), stored_salt) {
            (true, Some(salt)) => format!("{name}={}", keyed_fingerprint(salt, value)),
            (true, None) => format!("{name} is set"),
            (false, _) => format!("{name}={}", value.expose()),
        })
        .collect();
    // A back end's version (KV v2) counts too: a rewrite of the same values is still a
    // write that a saved plan did not see.
    let version = version.map(|v| format!("version={v}"));
    Fingerprint::of(
        std::iter::once(b"mail.settings".as_slice())
            .chain(parts.iter().map(|p| p.as_bytes()))
            .chain(version.iter().map(|v| v.as_bytes())),
    )
}

/// The keyed fingerprint of every managed field that is set: what `published` records.
pub fn published_record(
    fields: &BTreeMap<String, Secret>,
    salt: &[u8],
) -> BTreeMap<String, String> {
    FIELDS
        .iter()
        .filter_map(|field| {
            fields
                .get(field.variable)
                .map(|value| (field.variable.to_string(), keyed_fingerprint(salt, value)))
        })
        .collect()
}

/// How the live document moved away from what opsplan published, one line per field. A
/// secret field is named, never shown; another field shows its new value.
pub fn edits(
    live: &BTreeMap<String, Secret>,
    published: &BTreeMap<String, String>,
    salt: &[u8],
) -> Vec<String> {
    let mut found = Vec::new();
    for field in FIELDS {
        let now = live.get(field.variable);
        let then = published.get(field.variable);
        let shown = |value: &Secret| {
            if field.sensitive {
                String::new()
            } else {
                format!(" (now `{}`)", value.expose())
            }
        };
        let line = match (then, now) {
            (None, None) => None,
            (Some(then), Some(now)) if *then == keyed_fingerprint(salt, now) => None,
            (Some(_), Some(now)) => Some(format!(
                "{} changed outside opsplan{}",
                field.variable,
                shown(now)
            )),
            (Some(_), None) => Some(format!("{} removed outside opsplan", field.variable)),
            (None, Some(now)) => Some(format!(
                "{} added outside opsplan{}",
                field.variable,
                shown(now)
            )),
        };
        found.extend(line);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(*v)))
            .collect()
    }

    fn desired(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, Secret> {
        pairs.iter().map(|(k, v)| (*k, Secret::new(*v))).collect()
    }

    #[test]
    fn a_changed_password_shows_as_changed_and_never_its_value() {
        let salt = new_salt();
        let attributes = attributes(
            &live(&[("SMTP_HOST", "a"), ("SMTP_PASS", "old-secret")]),
            &desired(&[("SMTP_HOST", "a"), ("SMTP_PASS", "new-secret")]),
            &salt,
        );
        assert_eq!(
            attributes,
            [Attribute {
                name: "password".to_string(),
                before: None,
                after: Some("changed".to_string()),
            }]
        );
        let shown = format!("{attributes:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn an_unchanged_password_shows_nothing() {
        let salt = new_salt();
        let attributes = attributes(
            &live(&[("SMTP_PASS", "same")]),
            &desired(&[("SMTP_PASS", "same")]),
            &salt,
        );
        assert!(attributes.is_empty());
    }

    #[test]
    fn edits_name_each_field_and_never_a_password() {
        let salt = new_salt();
        let published = published_record(
            &live(&[
                ("SMTP_HOST", "a"),
                ("SMTP_PASS", "old-secret"),
                ("SMTP_USER", "u"),
            ]),
            &salt,
        );
        let now = live(&[
            ("SMTP_HOST", "b"),
            ("SMTP_PASS", "new-secret"),
            ("MAIL_QUEUE_KEY", "q"),
            ("UNMANAGED", "x"),
        ]);
        assert_eq!(
            edits(&now, &published, &salt),
            [
                "SMTP_HOST changed outside opsplan (now `b`)",
                "SMTP_USER removed outside opsplan",
                "SMTP_PASS changed outside opsplan",
                "MAIL_QUEUE_KEY added outside opsplan (now `q`)",
            ]
        );
        assert!(edits(&now, &published_record(&now, &salt), &salt).is_empty());
    }

    #[test]
    fn fingerprints_are_keyed() {
        let value = Secret::new("pw");
        let one = keyed_fingerprint(b"salt-one", &value);
        assert_eq!(one, keyed_fingerprint(b"salt-one", &value));
        assert_ne!(one, keyed_fingerprint(b"salt-two", &value));
        assert!(!one.contains("pw"));
    }
}
