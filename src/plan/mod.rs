//! The plan as data: what changes, where, and against which live state.
//!
//! Every rendering (human, Markdown, JSON) is a view of these types, and a saved plan file
//! is their serialized form, so nothing here may ever hold a secret.

pub mod file;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a change does to its resource. The one place that decides symbol and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
    Replace,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::Replace => "-/+",
        }
    }

    /// Completes "… will be".
    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Update => "updated in place",
            Action::Delete => "destroyed",
            Action::Replace => "replaced",
        }
    }

    /// The action list in Terraform's manner, for machine readers.
    pub fn as_list(self) -> &'static [&'static str] {
        match self {
            Action::Create => &["create"],
            Action::Update => &["update"],
            Action::Delete => &["delete"],
            Action::Replace => &["delete", "create"],
        }
    }

    pub fn style(self) -> anstyle::Style {
        use anstyle::AnsiColor;
        let color = match self {
            Action::Create => AnsiColor::Green,
            Action::Update => AnsiColor::Yellow,
            Action::Delete => AnsiColor::Red,
            Action::Replace => AnsiColor::Magenta,
        };
        anstyle::Style::new().fg_color(Some(color.into()))
    }
}

/// One field of a change. Values are display text that is safe to print; a secret field
/// carries a description such as `(changed)` instead of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl Attribute {
    pub fn added(name: &str, value: impl Into<String>) -> Self {
        Attribute {
            name: name.to_string(),
            before: None,
            after: Some(value.into()),
        }
    }

    pub fn changed(name: &str, before: impl Into<String>, after: impl Into<String>) -> Self {
        Attribute {
            name: name.to_string(),
            before: Some(before.into()),
            after: Some(after.into()),
        }
    }
}

/// One step of a plan: what apply will do to one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub address: String,
    /// Serialized as a list in Terraform's manner: `["create"]`, `["delete", "create"]`.
    #[serde(rename = "actions", with = "action_list")]
    pub action: Action,
    /// A one-line description, e.g. "apply migration 0003_add_locale.sql".
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    /// What the concern needs to carry out the change. Never a secret.
    #[serde(default)]
    pub data: serde_json::Value,
}

mod action_list {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Action;

    pub fn serialize<S: Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(action.as_list())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        let list = Vec::<String>::deserialize(deserializer)?;
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        [
            Action::Create,
            Action::Update,
            Action::Delete,
            Action::Replace,
        ]
        .into_iter()
        .find(|action| action.as_list() == list.as_slice())
        .ok_or_else(|| serde::de::Error::custom(format!("unknown actions {list:?}")))
    }
}

/// A digest of the live state a plan was made against.
///
/// `absent` is a real value: a plan made when nothing existed yet must still go stale
/// once something does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    pub fn absent() -> Self {
        Fingerprint("absent".to_string())
    }

    /// SHA-256 over the given parts, each length-prefixed so that boundaries count.
    pub fn of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Fingerprint(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    pub fn is_absent(&self) -> bool {
        self.0 == "absent"
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A live check that ran at plan time (a probe), shown apart from changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The plan for one resource node of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcePlan {
    pub address: String,
    pub kind: String,
    /// Where live state was read, with credentials removed.
    pub live_source: String,
    /// A one-line description of what was found, e.g. "3 migrations applied, latest 0003".
    pub live_summary: String,
    pub fingerprint: Fingerprint,
    pub depends_on: Vec<String>,
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// Why a resource could not be planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceFailure {
    pub address: String,
    pub messages: Vec<String>,
}

/// The whole plan, in dependency order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub resources: Vec<ResourcePlan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ResourceFailure>,
}

/// Counts for the closing line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub replace: usize,
}

impl Summary {
    pub fn total(&self) -> usize {
        self.create + self.update + self.delete + self.replace
    }
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.resources.iter().flat_map(|resource| &resource.changes)
    }

    pub fn has_changes(&self) -> bool {
        self.changes().next().is_some()
    }

    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for change in self.changes() {
            match change.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Delete => summary.delete += 1,
                Action::Replace => summary.replace += 1,
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parts_are_delimited() {
        let joined = Fingerprint::of([b"ab".as_slice(), b"c".as_slice()]);
        let shifted = Fingerprint::of([b"a".as_slice(), b"bc".as_slice()]);
        assert_ne!(joined, shifted);
        assert!(joined.0.starts_with("sha256:"));
        assert!(Fingerprint::absent().is_absent());
    }

    #[test]
    fn replace_is_delete_then_create() {
        assert_eq!(Action::Replace.symbol(), "-/+");
        assert_eq!(Action::Replace.as_list(), ["delete", "create"]);
    }
}
