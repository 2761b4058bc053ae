//! What opsplan last wrote to each rendered rule file, kept beside the rules in
//! `<rules_dir>/.opsplan-state.json`. It lets `opsplan drift` tell a rule file edited on the
//! host from pending work, where both look the same to a plain comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::AlertsError;
use super::rules::{self, RuleGroupYaml};

/// The file's name in `rules_dir`. The leading dot keeps it out of `*.yml` globs.
pub const STATE_FILE: &str = ".opsplan-state.json";

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenState {
    pub format_version: u32,
    /// Per rendered file, the digest of each group as opsplan rendered it.
    pub files: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for WrittenState {
    fn default() -> WrittenState {
        WrittenState {
            format_version: FORMAT_VERSION,
            files: BTreeMap::new(),
        }
    }
}

impl WrittenState {
    pub fn path(rules_dir: &Path) -> PathBuf {
        rules_dir.join(STATE_FILE)
    }

    /// The record in `rules_dir`, or `None` when opsplan has written nothing there yet.
    pub fn read(rules_dir: &Path) -> Result<Option<WrittenState>, AlertsError> {
        let path = WrittenState::path(rules_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AlertsError::Read { path, source }),
        };
        let state: WrittenState =
            serde_json::from_str(&text).map_err(|error| AlertsError::State {
                path: path.clone(),
                detail: error.to_string(),
            })?;
        if state.format_version > FORMAT_VERSION {
            return Err(AlertsError::State {
                path,
                detail: format!(
                    "format_version {} was written by a newer opsplan",
                    state.format_version
                ),
            });
        }
        Ok(Some(state))
    }

    /// Records the group opsplan just wrote to `namespace`, or its removal. Other groups of
    /// the file keep their record: opsplan carried them over but did not write them, so a
    /// group added by hand is never adopted.
    pub fn record(&mut self, namespace: &str, name: &str, group: Option<&RuleGroupYaml>) {
        let file = self.files.entry(namespace.to_string()).or_default();
        match group {
            Some(group) => file.insert(name.to_string(), group_digest(group)),
            None => file.remove(name),
        };
        if file.is_empty() {
            self.files.remove(namespace);
        }
    }

    /// Forgets a rendered file that was removed.
    pub fn forget(&mut self, namespace: &str) {
        self.files.remove(namespace);
    }

    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("the state serializes");
        text.push('\n');
        text
    }
}

/// The digest of a group as opsplan renders it: comments and layout of a live file do not
/// count, since the group is read and rendered again before it is digested.
pub fn group_digest(group: &RuleGroupYaml) -> String {
    let digest = Sha256::digest(rules::render_group(group).as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(text: &str) -> RuleGroupYaml {
        rules::parse_file(text).unwrap().groups.remove(0)
    }

    #[test]
    fn layout_does_not_change_the_digest_and_a_field_does() {
        let written = group("groups:\n- name: a\n  rules:\n  - alert: A\n    expr: up == 0\n");
        let reformatted = group(
            "# kept by hand\ngroups:\n  - name: a\n    rules:\n      - alert: A\n        \
             expr: 'up == 0'\n",
        );
        let edited = group("groups:\n- name: a\n  rules:\n  - alert: A\n    expr: up == 1\n");
        assert_eq!(group_digest(&written), group_digest(&reformatted));
        assert_ne!(group_digest(&written), group_digest(&edited));
    }

    #[test]
    fn removing_the_last_group_forgets_the_file() {
        let mut state = WrittenState::default();
        let a = group("groups:\n- name: a\n  rules: []\n");
        state.record("a.yml", "a", Some(&a));
        state.record("a.yml", "b", Some(&a));
        assert_eq!(state.files["a.yml"].len(), 2);
        state.record("a.yml", "b", None);
        assert_eq!(state.files["a.yml"].len(), 1);
        state.record("a.yml", "a", None);
        assert!(state.files.is_empty());
        let text = state.render();
        assert_eq!(serde_json::from_str::<WrittenState>(&text).unwrap(), state);
    }
}
