//! Drift of the alert rules: what changed on the host since opsplan wrote the rule files,
//! and what Prometheus serves apart from what those files say.

use std::collections::BTreeMap;
use std::path::Path;

use super::LiveFile;
use super::prometheus::LoadedGroup;
use super::rules::{self, RuleGroupYaml, SourcedGroup};
use super::state::{WrittenState, group_digest};

/// One out-of-band change to a group of a rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDrift {
    pub namespace: String,
    pub group: String,
    pub message: String,
}

/// Compares the rule files with the record of what opsplan last wrote to them.
///
/// A difference is drift only when the plan corrects it: a group that matches its desired
/// version (an apply stopped between the rule file and the record) or that is no longer
/// desired and was removed is not. A group added by hand to a file opsplan wrote is drift;
/// the prune guard decides whether apply deletes it.
pub fn written_drift(
    state: &WrittenState,
    files: &BTreeMap<String, LiveFile>,
    desired: &[SourcedGroup],
    shown: &dyn Fn(&str) -> String,
) -> Vec<GroupDrift> {
    let mut found = Vec::new();
    for (namespace, recorded) in &state.files {
        let desired_group = |name: &str| {
            desired
                .iter()
                .find(|d| &d.namespace == namespace && d.group.name == name)
                .map(|d| &d.group)
        };
        let is_desired = |group: &RuleGroupYaml| {
            desired_group(&group.name)
                .is_some_and(|wanted| rules::normalize(wanted) == rules::normalize(group))
        };
        let mut drift = |group: &str, message: String| {
            found.push(GroupDrift {
                namespace: namespace.clone(),
                group: group.to_string(),
                message,
            });
        };

        let Some(file) = files.get(namespace) else {
            for name in recorded.keys().filter(|name| desired_group(name).is_some()) {
                drift(
                    name,
                    format!(
                        "the rule file {} that opsplan wrote was deleted on the host",
                        shown(namespace)
                    ),
                );
            }
            continue;
        };

        for group in &file.groups {
            match recorded.get(&group.name) {
                Some(digest) if *digest == group_digest(group) => {}
                _ if is_desired(group) => {
                    tracing::debug!(
                        namespace = namespace.as_str(),
                        group = group.name.as_str(),
                        "the group differs from the record but is the desired one"
                    );
                }
                Some(_) => drift(
                    &group.name,
                    format!(
                        "group {} in {} was edited on the host since opsplan wrote it",
                        group.name,
                        shown(namespace)
                    ),
                ),
                None => drift(
                    &group.name,
                    format!(
                        "group {} was added by hand to {}, which opsplan wrote",
                        group.name,
                        shown(namespace)
                    ),
                ),
            }
        }
        for name in recorded.keys() {
            let still_there = file.groups.iter().any(|g| &g.name == name);
            if !still_there && desired_group(name).is_some() {
                drift(
                    name,
                    format!(
                        "group {name} was removed from {} on the host",
                        shown(namespace)
                    ),
                );
            }
        }
    }
    found
}

/// The rendered file a loaded group came from, by file name.
pub fn loaded_file(group: &LoadedGroup) -> Option<&str> {
    Path::new(&group.file).file_name().and_then(|n| n.to_str())
}

/// Compares what Prometheus has loaded from the rendered files with what they say now.
/// Files are matched by name, as apply's verification does, so that a Prometheus that
/// mounts the folder under another path is still understood.
pub fn loaded_drift(
    files: &BTreeMap<String, LiveFile>,
    written: Option<&WrittenState>,
    loaded: &[LoadedGroup],
    url: &str,
    shown: &dyn Fn(&str) -> String,
) -> Vec<GroupDrift> {
    let mut found = Vec::new();
    for (namespace, file) in files {
        for group in &file.groups {
            let served = loaded
                .iter()
                .find(|l| loaded_file(l) == Some(namespace) && l.name == group.name);
            let message = match served {
                None => format!(
                    "Prometheus at {url} has not loaded group {} from {}; the file was written \
                     without a reload, or rule_files does not cover its folder",
                    group.name,
                    shown(namespace)
                ),
                Some(served) => match served_difference(group, served) {
                    Some(difference) => format!(
                        "Prometheus at {url} serves group {} with {difference}, unlike {}; the \
                         file was changed without a reload",
                        group.name,
                        shown(namespace)
                    ),
                    None => continue,
                },
            };
            found.push(GroupDrift {
                namespace: namespace.clone(),
                group: group.name.clone(),
                message,
            });
        }
    }

    // Groups still served from a rendered file that no longer holds them.
    for served in loaded {
        let Some(namespace) = loaded_file(served) else {
            continue;
        };
        let ours = files.contains_key(namespace)
            || written.is_some_and(|state| state.files.contains_key(namespace));
        let in_file = files
            .get(namespace)
            .is_some_and(|file| file.groups.iter().any(|g| g.name == served.name));
        if ours && !in_file {
            found.push(GroupDrift {
                namespace: namespace.to_string(),
                group: served.name.clone(),
                message: format!(
                    "Prometheus at {url} still serves group {} from {}, which no longer holds \
                     it; the file was changed without a reload",
                    served.name,
                    shown(namespace)
                ),
            });
        }
    }
    found
}

/// What Prometheus serves differently from the file's group, or `None`.
fn served_difference(group: &RuleGroupYaml, served: &LoadedGroup) -> Option<String> {
    let wanted = rules::normalize(group);
    let names: Vec<&str> = group.rules.iter().map(|r| r.name()).collect();
    let served_names: Vec<&str> = served.rules.iter().map(|r| r.name.as_str()).collect();
    if names != served_names {
        return Some(format!(
            "rules [{}] where the file has [{}]",
            served_names.join(", "),
            names.join(", ")
        ));
    }
    for (rule, live) in wanted.rules.iter().zip(&served.rules) {
        let name = &live.name;
        let alerting = rule.alert.is_some();
        let kind = if alerting { "alerting" } else { "recording" };
        let empty = BTreeMap::new();
        let field = if !live.kind.is_empty() && live.kind != kind {
            "its kind"
        } else if rules::normal_expr(&live.query) != rule.expr {
            "its expression"
        } else if alerting && (live.duration * 1000.0).round() as u64 != rule.for_millis {
            "its `for`"
        } else if live.labels.as_ref().unwrap_or(&empty) != &rule.labels {
            "its labels"
        } else if alerting && live.annotations.as_ref().unwrap_or(&empty) != &rule.annotations {
            "its annotations"
        } else {
            continue;
        };
        return Some(format!("another version of rule {name} ({field})"));
    }
    None
}
