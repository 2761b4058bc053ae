//! The alert-rule concern: Prometheus alerting and recording rules from `ops.toml` and
//! included rule files, rendered into rule files that Prometheus loads.
//!
//! Every source maps to its own rendered file (its namespace): included files keep their
//! file name, and the groups written in `ops.toml` (with the built-in ones) go to
//! `opsplan.rules.yml`. Group names are unique per rendered file, as Prometheus requires.

mod builtin;
pub mod check;
mod drift;
pub mod duration;
mod error;
mod prometheus;
pub mod rules;
pub mod state;
pub mod template;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

pub use builtin::{APPLY_FAILURES_METRIC, RATE_LIMITED_METRIC, TOKEN_REUSE_METRIC};
pub use error::AlertsError;

use crate::config::alerts::{AlertsConfig, AlertsTarget, DEFAULT_NAMESPACE};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::engine::{Diff, DriftItem, LiveState, Resource, ResourceError};
use crate::graph::Dependency;
use crate::plan::{Action, Attribute, Change, Check, Fingerprint};
use prometheus::{LoadedGroup, PrometheusApi};
use rules::{RuleGroupYaml, SourcedGroup};
use state::WrittenState;

/// The resource's address in `depends_on`.
pub const ADDRESS: &str = "alerts";

/// The suffix of the copy kept of a rule file before each write.
pub const PREVIOUS_SUFFIX: &str = ".previous";

/// `alerts.group["auth"]` for groups of ops.toml, `alerts.group["node.rules.yml/node"]` for
/// groups of an included file.
pub fn group_address(namespace: &str, name: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        format!("{ADDRESS}.group[\"{name}\"]")
    } else {
        format!("{ADDRESS}.group[\"{namespace}/{name}\"]")
    }
}

/// What is on disk in the rules folder: each rendered file by name.
#[derive(Debug, Default)]
pub struct LiveRules {
    pub files: BTreeMap<String, LiveFile>,
    /// What opsplan last wrote there, from `.opsplan-state.json`.
    pub written: Option<WrittenState>,
    /// What Prometheus answered to a read-only `GET /api/v1/rules`, for the plan's check.
    pub probe: Option<Check>,
    /// The groups Prometheus serves, when the target is Prometheus and it answered.
    pub loaded: Option<Vec<LoadedGroup>>,
}

#[derive(Debug)]
pub struct LiveFile {
    pub text: String,
    pub groups: Vec<RuleGroupYaml>,
}

pub struct AlertsResource {
    config: AlertsConfig,
    desired: Vec<SourcedGroup>,
    /// Problems found while loading the sources, reported by `validate`.
    load_problems: Diagnostics,
    /// The files written by the apply in progress, so that a failure puts all of them back.
    journal: Mutex<ApplyJournal>,
}

/// What one apply has written so far; Prometheus reloads once, after its last change.
#[derive(Debug, Default)]
struct ApplyJournal {
    /// Every path written, with its text before this apply (`None`: it did not exist).
    originals: BTreeMap<PathBuf, Option<String>>,
    /// Every rendered file written, with its groups now and the group names removed from it.
    files: BTreeMap<String, (Vec<RuleGroupYaml>, Vec<String>)>,
    /// Whether Prometheus was reloaded, so that a restore reloads it again.
    reloaded: bool,
}

impl AlertsResource {
    pub fn new(config: AlertsConfig) -> AlertsResource {
        let mut desired = Vec::new();
        let mut load_problems = Diagnostics::default();

        for group in &config.groups {
            desired.push(inline_group(&config, group));
        }
        if let Some(group) = builtin::group(&config.builtin) {
            desired.push(SourcedGroup {
                namespace: DEFAULT_NAMESPACE.to_string(),
                origin: config.config_file.clone(),
                rule_locations: vec![None; group.rules.len()],
                group,
                location: None,
            });
        }
        load_included(&config, &mut desired, &mut load_problems);

        AlertsResource {
            config,
            desired,
            load_problems,
            journal: Mutex::new(ApplyJournal::default()),
        }
    }

    /// The desired groups, in the order they were written.
    pub fn desired(&self) -> &[SourcedGroup] {
        &self.desired
    }

    fn api(&self) -> Option<PrometheusApi> {
        match &self.config.target {
            AlertsTarget::File => None,
            AlertsTarget::Prometheus { url, timeout } => Some(PrometheusApi::new(url, *timeout)),
        }
    }

    fn read_live(&self) -> Result<LiveRules, AlertsError> {
        let mut live = LiveRules::default();
        let dir = &self.config.rules_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(live),
            Err(source) => {
                return Err(AlertsError::Read {
                    path: dir.clone(),
                    source,
                });
            }
        };
        live.written = WrittenState::read(dir)?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".yml") || name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let text = std::fs::read_to_string(&path).map_err(|source| AlertsError::Read {
                path: path.clone(),
                source,
            })?;
            let file = rules::parse_file(&text).map_err(|(detail, _)| AlertsError::LiveFile {
                path: path.clone(),
                detail,
            })?;
            live.files.insert(
                name,
                LiveFile {
                    text,
                    groups: file.groups,
                },
            );
        }
        Ok(live)
    }

    /// Asks Prometheus which groups it has loaded from `rules_dir`'s files; writes nothing.
    /// A Prometheus that cannot answer is an error: apply would write the files and then
    /// fail to reload them, and drift could not see what is loaded.
    async fn probe(&self, live: &mut LiveRules) -> Result<(), AlertsError> {
        let Some(api) = self.api() else {
            return Ok(());
        };
        // The client blocks: it runs off the async workers, so that the other resources'
        // reads go on meanwhile.
        let asked = api.clone();
        let answer = tokio::task::spawn_blocking(move || asked.rules())
            .await
            .unwrap_or_else(|error| {
                Err(AlertsError::Verify(format!(
                    "asking Prometheus for its rules stopped: {error}"
                )))
            });
        let detail = match answer {
            Ok(groups) => {
                let ours = groups
                    .iter()
                    .filter(|g| {
                        Path::new(&g.file)
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|name| live.files.contains_key(name))
                    })
                    .count();
                let detail = format!(
                    "Prometheus at {} has {} group(s) loaded, {ours} of them from {}",
                    api.url(),
                    groups.len(),
                    self.config.rules_dir_display
                );
                live.loaded = Some(groups);
                detail
            }
            Err(error) => {
                return Err(AlertsError::Refused(format!(
                    "{}; start Prometheus with --web.enable-lifecycle at alerts.prometheus_url, \
                     or raise alerts.timeout if it is only slow",
                    crate::engine::error_chain(&error)
                )));
            }
        };
        live.probe = Some(Check {
            name: "prometheus".to_string(),
            passed: true,
            detail,
        });
        Ok(())
    }

    /// The plan for the rules: the changes that bring the files to the desired state, the
    /// drift found on the host and in Prometheus, and the reloads that correct the latter.
    fn compare(&self, live: &LiveRules) -> Diff {
        let mut diff = self.changes_to_desired(live);
        let shown = |namespace: &str| self.shown_file(namespace);

        let mut found = Vec::new();
        if let Some(written) = &live.written {
            found.extend(drift::written_drift(
                written,
                &live.files,
                &self.desired,
                &shown,
            ));
        }
        if let (Some(loaded), Some(api)) = (&live.loaded, self.api()) {
            let served = drift::loaded_drift(
                &live.files,
                live.written.as_ref(),
                loaded,
                &api.url(),
                &shown,
            );
            for item in &served {
                self.plan_reload(live, item, &mut diff);
            }
            found.extend(served);
        }
        diff.drift = found
            .into_iter()
            .map(|item| DriftItem {
                address: group_address(&item.namespace, &item.group),
                message: item.message,
            })
            .collect();

        // Prometheus reloads once, after the last change of the apply.
        let last = diff.changes.len().saturating_sub(1);
        for (index, change) in diff.changes.iter_mut().enumerate() {
            change.data["reload"] = serde_json::Value::Bool(index == last);
        }
        diff
    }

    /// A group that Prometheus serves unlike its file, and that no other change rewrites,
    /// gets a change of its own: its file is written as it is, and Prometheus reloaded.
    fn plan_reload(&self, live: &LiveRules, item: &drift::GroupDrift, diff: &mut Diff) {
        let address = group_address(&item.namespace, &item.group);
        if diff.changes.iter().any(|change| change.address == address) {
            return;
        }
        let in_file = live
            .files
            .get(&item.namespace)
            .and_then(|file| file.groups.iter().find(|g| g.name == item.group));
        let summary = match in_file {
            Some(_) => format!(
                "reload group {} from {}, which Prometheus serves in another version",
                item.group,
                self.shown_file(&item.namespace)
            ),
            None => format!(
                "reload Prometheus, which still serves group {} that {} no longer holds",
                item.group,
                self.shown_file(&item.namespace)
            ),
        };
        diff.changes.push(Change {
            address,
            action: Action::Update,
            summary,
            attributes: vec![
                Attribute::added("file", self.shown_file(&item.namespace)),
                Attribute::added("drift", item.message.clone()),
            ],
            data: {
                let mut data = change_data(&item.namespace, &item.group, in_file);
                data["record"] = serde_json::Value::Bool(false);
                data
            },
        });
    }

    /// The changes that bring the rule files to the desired state.
    fn changes_to_desired(&self, live: &LiveRules) -> Diff {
        let mut diff = Diff::default();
        diff.checks.extend(live.probe.clone());
        let live_groups: usize = live.files.values().map(|f| f.groups.len()).sum();
        let live_rules: usize = live
            .files
            .values()
            .flat_map(|f| &f.groups)
            .map(|g| g.rules.len())
            .sum();
        diff.live_summary = format!(
            "{live_groups} group(s), {live_rules} rule(s) in {} file(s)",
            live.files.len()
        );

        for sourced in &self.desired {
            let namespace = &sourced.namespace;
            let name = &sourced.group.name;
            let address = group_address(namespace, name);
            let existing = live
                .files
                .get(namespace)
                .and_then(|file| file.groups.iter().find(|g| &g.name == name));
            match existing {
                // The group as opsplan wrote it: nothing to normalize or show.
                Some(current) if current == &sourced.group => {
                    tracing::debug!(%address, "live group is the desired one, field for field");
                }
                None => diff.changes.push(Change {
                    address,
                    action: Action::Create,
                    summary: format!(
                        "create group {name} with {} rule(s) in {}",
                        sourced.group.rules.len(),
                        self.shown_file(namespace)
                    ),
                    attributes: vec![
                        Attribute::added("file", self.shown_file(namespace)),
                        Attribute::added("rules", rule_names(&sourced.group)),
                        Attribute::added(
                            "diff",
                            unified_diff("", &rules::render_group(&sourced.group)),
                        ),
                    ],
                    data: change_data(namespace, name, Some(&sourced.group)),
                }),
                Some(current) => {
                    let before = rules::normalize(current);
                    let after = rules::normalize(&sourced.group);
                    if before == after {
                        tracing::debug!(%address, "live group matches the desired one");
                        continue;
                    }
                    let fields = rules::changed_fields(&before, &after);
                    diff.changes.push(Change {
                        address,
                        action: Action::Update,
                        summary: format!(
                            "update group {name} in {} ({})",
                            self.shown_file(namespace),
                            fields.join("; ")
                        ),
                        attributes: vec![
                            Attribute::added("file", self.shown_file(namespace)),
                            Attribute::added("changed", fields.join("; ")),
                            Attribute::added(
                                "diff",
                                unified_diff(
                                    &rules::render_group(current),
                                    &rules::render_group(&sourced.group),
                                ),
                            ),
                        ],
                        data: change_data(namespace, name, Some(&sourced.group)),
                    });
                }
            }
        }

        // Groups live but not desired: the prune guard decides.
        let unmanaged: Vec<(&String, &RuleGroupYaml)> = live
            .files
            .iter()
            .flat_map(|(namespace, file)| file.groups.iter().map(move |g| (namespace, g)))
            .filter(|(namespace, group)| {
                !self
                    .desired
                    .iter()
                    .any(|d| &d.namespace == *namespace && d.group.name == group.name)
            })
            .collect();
        if unmanaged.is_empty() {
            return diff;
        }
        let shown: Vec<String> = unmanaged
            .iter()
            .map(|(namespace, group)| group_address(namespace, &group.name))
            .collect();
        if !self.config.fully_managed {
            diff.warnings.push(format!(
                "{} live group(s) are not in the desired state and are kept: {}. Set \
                 alerts.fully_managed = true to delete them",
                unmanaged.len(),
                shown.join(", ")
            ));
            return diff;
        }
        if self.desired.is_empty() && !self.config.allow_delete_all {
            diff.refusals.push(format!(
                "the desired state holds no rule groups, so every live group would be deleted \
                 ({}). Check alerts.include and the [[alerts.group]] tables; if deleting every \
                 rule is intended, set alerts.allow_delete_all = true",
                shown.join(", ")
            ));
            return diff;
        }
        for (namespace, group) in unmanaged {
            diff.changes.push(Change {
                address: group_address(namespace, &group.name),
                action: Action::Delete,
                summary: format!(
                    "delete group {} ({} rule(s)) from {}",
                    group.name,
                    group.rules.len(),
                    self.shown_file(namespace)
                ),
                attributes: vec![
                    Attribute::added("file", self.shown_file(namespace)),
                    Attribute::added("diff", unified_diff(&rules::render_group(group), "")),
                ],
                data: change_data(namespace, &group.name, None),
            });
        }
        diff
    }

    fn shown_file(&self, namespace: &str) -> String {
        format!(
            "{}/{namespace}",
            self.config.rules_dir_display.trim_end_matches('/')
        )
    }

    /// Carries out one group's change: its rendered file and the record beside it are
    /// written, and when the change is the apply's last, Prometheus reloads once and every
    /// file the apply wrote is verified. Any failure puts back every file the apply wrote,
    /// so that the rules end as they were before it.
    fn apply_change(&self, change: &Change) -> Result<String, AlertsError> {
        let refused = || {
            AlertsError::Refused(format!(
                "{}: the change's data is incomplete",
                change.address
            ))
        };
        let namespace = change.data["namespace"].as_str().ok_or_else(refused)?;
        let name = change.data["group"].as_str().ok_or_else(refused)?;
        let spec: Option<RuleGroupYaml> = match &change.data["spec"] {
            serde_json::Value::Null => None,
            value => Some(serde_json::from_value(value.clone()).map_err(|_| refused())?),
        };
        // A change without the flag (from an older saved plan) reloads by itself.
        let reload = change.data["reload"].as_bool().unwrap_or(true);
        // A change that only makes Prometheus reload a file leaves the record as it is.
        let record = change.data["record"].as_bool().unwrap_or(true);

        let mut journal = self
            .journal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = self
            .write_group(&mut journal, namespace, name, spec.as_ref(), record)
            .map_err(|error| crate::engine::error_chain(&error))
            .and_then(|written| {
                let Some(api) = self.api() else {
                    return Ok(written);
                };
                if !reload {
                    return Ok(format!(
                        "{written}; Prometheus reloads after the last group of this apply"
                    ));
                }
                journal.reloaded = true;
                reload_and_verify(&api, &journal.files).map(|detail| format!("{written}; {detail}"))
            });
        match outcome {
            Ok(detail) => {
                if reload {
                    *journal = ApplyJournal::default();
                }
                Ok(detail)
            }
            Err(why) => {
                let restored = self.restore(&journal);
                *journal = ApplyJournal::default();
                Err(AlertsError::Verify(format!("{why}; {restored}")))
            }
        }
    }

    /// Writes one group into its rendered file, then the record of what was written.
    fn write_group(
        &self,
        journal: &mut ApplyJournal,
        namespace: &str,
        name: &str,
        spec: Option<&RuleGroupYaml>,
        record: bool,
    ) -> Result<String, AlertsError> {
        let path = self.config.rules_dir.join(namespace);
        let current = read_if_present(&path)?;
        let mut groups = match &current {
            Some(text) => {
                rules::parse_file(text)
                    .map_err(|(detail, _)| AlertsError::LiveFile {
                        path: path.clone(),
                        detail,
                    })?
                    .groups
            }
            None => Vec::new(),
        };
        let position = groups.iter().position(|g| g.name == name);
        let removed = match (spec, position) {
            (Some(spec), Some(at)) => {
                groups[at] = spec.clone();
                false
            }
            (Some(spec), None) => {
                groups.push(spec.clone());
                false
            }
            (None, Some(at)) => {
                groups.remove(at);
                true
            }
            (None, None) => {
                // Nothing to write; the reload still makes Prometheus drop the group.
                let entry = journal.files.entry(namespace.to_string()).or_default();
                if entry.0.is_empty() {
                    entry.0 = groups;
                }
                entry.1.push(name.to_string());
                return Ok(format!("{name} is not in {}", self.shown_file(namespace)));
            }
        };

        // What was there before this apply is what a failure restores and what
        // `<file>.previous` keeps.
        if !journal.originals.contains_key(&path) {
            if let Some(text) = &current {
                write_atomic(&previous_path(&path), text)?;
            }
            journal.originals.insert(path.clone(), current.clone());
        }
        let state_path = WrittenState::path(&self.config.rules_dir);
        if !journal.originals.contains_key(&state_path) {
            journal
                .originals
                .insert(state_path.clone(), read_if_present(&state_path)?);
        }

        if groups.is_empty() {
            remove_if_present(&path)?;
        } else {
            write_atomic(&path, &rules::render_file(&groups))?;
        }
        let mut written = WrittenState::read(&self.config.rules_dir)?.unwrap_or_default();
        if record {
            written.record(namespace, name, spec);
        }
        if groups.is_empty() {
            written.forget(namespace);
        }
        write_atomic(&state_path, &written.render())?;
        tracing::debug!(
            path = %path.display(),
            groups = groups.len(),
            kept_previous = current.is_some(),
            "rule file written"
        );

        let entry = journal.files.entry(namespace.to_string()).or_default();
        entry.0 = groups;
        if removed {
            entry.1.push(name.to_string());
        }
        Ok(format!("wrote {}", self.shown_file(namespace)))
    }

    /// Puts back every file the apply wrote, and reloads Prometheus if it had reloaded.
    fn restore(&self, journal: &ApplyJournal) -> String {
        if journal.originals.is_empty() {
            return "no file had been written".to_string();
        }
        let mut failures = Vec::new();
        for (path, original) in &journal.originals {
            let result = match original {
                Some(text) => write_atomic(path, text),
                None => remove_if_present(path),
            };
            if let Err(error) = result {
                failures.push(crate::engine::error_chain(&error));
            }
        }
        let files: Vec<String> = journal
            .files
            .keys()
            .map(|namespace| self.shown_file(namespace))
            .collect();
        if !failures.is_empty() {
            return format!(
                "restoring the previous files failed as well ({}); the versions from before \
                 this apply are kept beside them as <file>{PREVIOUS_SUFFIX}",
                failures.join("; ")
            );
        }
        let restored = format!("the previous {} was restored", files.join(", "));
        let Some(api) = self.api().filter(|_| journal.reloaded) else {
            return restored;
        };
        match api.reload() {
            Ok(()) => format!("{restored} and Prometheus reloaded"),
            Err(error) => format!(
                "{restored}, but reloading Prometheus again failed too ({}); Prometheus keeps \
                 serving the rules it had loaded before",
                crate::engine::error_chain(&error)
            ),
        }
    }
}

/// Reloads Prometheus once and checks every file the apply wrote: each of its groups is
/// loaded from it with the expected rules in order and none unhealthy, and each group
/// removed from it is gone.
fn reload_and_verify(
    api: &PrometheusApi,
    files: &BTreeMap<String, (Vec<RuleGroupYaml>, Vec<String>)>,
) -> Result<String, String> {
    api.reload()
        .map_err(|error| crate::engine::error_chain(&error))?;
    let loaded = api
        .rules()
        .map_err(|error| crate::engine::error_chain(&error))?;
    let mut verified = 0;
    for (namespace, (expected, removed)) in files {
        let in_file = |group: &&LoadedGroup| drift::loaded_file(group) == Some(namespace);
        for group in expected {
            let Some(found) = loaded.iter().filter(in_file).find(|g| g.name == group.name) else {
                return Err(format!(
                    "Prometheus at {} did not load group {} from {namespace}; check that \
                     rule_files in prometheus.yml covers the alerts.rules_dir folder",
                    api.url(),
                    group.name
                ));
            };
            let want: Vec<&str> = group.rules.iter().map(|r| r.name()).collect();
            let have: Vec<&str> = found.rules.iter().map(|r| r.name.as_str()).collect();
            if want != have {
                return Err(format!(
                    "Prometheus at {} loaded group {} with rules [{}], expected [{}]",
                    api.url(),
                    group.name,
                    have.join(", "),
                    want.join(", ")
                ));
            }
            if let Some(broken) = found.rules.iter().find(|r| r.health == "err") {
                return Err(format!(
                    "Prometheus at {} reports rule {} of group {} unhealthy: {}",
                    api.url(),
                    broken.name,
                    group.name,
                    broken.last_error.as_deref().unwrap_or("no detail")
                ));
            }
            verified += 1;
        }
        for name in removed {
            let kept = expected.iter().any(|g| &g.name == name);
            if !kept && loaded.iter().filter(in_file).any(|g| &g.name == name) {
                return Err(format!(
                    "Prometheus at {} still has group {name} from {namespace} after the reload",
                    api.url()
                ));
            }
        }
    }
    Ok(format!(
        "Prometheus reloaded, {verified} group(s) in {} file(s) verified",
        files.len()
    ))
}

fn read_if_present(path: &Path) -> Result<Option<String>, AlertsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AlertsError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_if_present(path: &Path) -> Result<(), AlertsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AlertsError::Write {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PREVIOUS_SUFFIX);
    PathBuf::from(name)
}

/// Writes `text` to a temporary file beside `path`, syncs it, and renames it over `path`,
/// so that Prometheus never reads a half-written file.
fn write_atomic(path: &Path, text: &str) -> Result<(), AlertsError> {
    let failed = |source| AlertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename itself is durable only once the folder is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(failed)
}

fn change_data(namespace: &str, name: &str, spec: Option<&RuleGroupYaml>) -> serde_json::Value {
    serde_json::json!({
        "namespace": namespace,
        "group": name,
        "spec": spec,
    })
}

fn rule_names(group: &RuleGroupYaml) -> String {
    group
        .rules
        .iter()
        .map(|r| r.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A unified diff of two renderings, indented to sit under its attribute in the plan.
fn unified_diff(before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header("live", "desired")
        .to_string();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str("\n        ");
        out.push_str(line);
    }
    out
}

fn inline_group(
    config: &AlertsConfig,
    group: &crate::config::alerts::InlineGroupConfig,
) -> SourcedGroup {
    use rules::{RuleYaml, YamlScalar};
    let text = |value: &Option<String>| value.clone().map(YamlScalar::Text);
    let map = |values: &BTreeMap<String, String>| {
        (!values.is_empty()).then(|| {
            values
                .iter()
                .map(|(k, v)| (k.clone(), YamlScalar::Text(v.clone())))
                .collect()
        })
    };
    SourcedGroup {
        namespace: DEFAULT_NAMESPACE.to_string(),
        origin: config.config_file.clone(),
        location: group.location.clone(),
        rule_locations: group.rules.iter().map(|r| r.location.clone()).collect(),
        group: RuleGroupYaml {
            name: group.name.clone(),
            interval: text(&group.interval),
            limit: group.limit,
            rules: group
                .rules
                .iter()
                .map(|rule| RuleYaml {
                    record: rule.record.clone(),
                    alert: rule.alert.clone(),
                    expr: Some(YamlScalar::Text(rule.expr.clone())),
                    for_duration: text(&rule.for_duration),
                    keep_firing_for: text(&rule.keep_firing_for),
                    labels: map(&rule.labels),
                    annotations: map(&rule.annotations),
                })
                .collect(),
        },
    }
}

/// Reads every file that `alerts.include` matches; each keeps its own rendered file.
fn load_included(
    config: &AlertsConfig,
    desired: &mut Vec<SourcedGroup>,
    problems: &mut Diagnostics,
) {
    let mut namespaces: BTreeMap<String, PathBuf> = BTreeMap::new();
    namespaces.insert(DEFAULT_NAMESPACE.to_string(), config.config_file.clone());

    for (pattern, location) in &config.include {
        let full = config.base_dir.join(pattern);
        let paths = match glob::glob(&full.to_string_lossy()) {
            Ok(paths) => paths,
            Err(error) => {
                problems.push(at(
                    location,
                    format!("alerts.include `{pattern}` is not a valid glob pattern: {error}"),
                ));
                continue;
            }
        };
        let mut matched = 0;
        for path in paths {
            let path = match path {
                Ok(path) => path,
                Err(error) => {
                    problems.push(at(location, format!("alerts.include `{pattern}`: {error}")));
                    continue;
                }
            };
            matched += 1;
            let shown = path
                .strip_prefix(&config.base_dir)
                .map_or_else(|_| path.clone(), Path::to_path_buf);
            let namespace = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(first) = namespaces.get(&namespace) {
                if *first != shown {
                    problems.push(at(
                        location,
                        format!(
                            "{} and {} would both be rendered to {}/{namespace}; rename one of \
                             them, since each included file keeps its own file name",
                            first.display(),
                            shown.display(),
                            config.rules_dir_display
                        ),
                    ));
                }
                continue;
            }
            namespaces.insert(namespace.clone(), shown.clone());
            load_file(&path, &shown, &namespace, desired, problems);
        }
        if matched == 0 {
            problems.push(
                at(
                    location,
                    format!("alerts.include `{pattern}` matches no file"),
                )
                .with_help("check the pattern; it is relative to the folder of ops.toml"),
            );
        }
    }
}

fn load_file(
    path: &Path,
    shown: &Path,
    namespace: &str,
    desired: &mut Vec<SourcedGroup>,
    problems: &mut Diagnostics,
) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            problems.push(Diagnostic::new(format!(
                "cannot read the rule file {}: {error}",
                shown.display()
            )));
            return;
        }
    };
    let file = match rules::parse_file(&text) {
        Ok(file) => file,
        Err((message, place)) => {
            let location = place.map(|(line, column)| Location {
                file: shown.to_path_buf(),
                line,
                column,
            });
            let message = format!("not a valid rule file: {message}");
            problems.push(match location {
                Some(location) => Diagnostic::at(location, message),
                None => Diagnostic::new(format!("{}: {message}", shown.display())),
            });
            return;
        }
    };
    let places = rules::locate(shown, &text, &file);
    for (group, (location, rule_locations)) in file.groups.into_iter().zip(places) {
        desired.push(SourcedGroup {
            namespace: namespace.to_string(),
            origin: shown.to_path_buf(),
            group,
            location,
            rule_locations,
        });
    }
}

fn at(location: &Option<Location>, message: String) -> Diagnostic {
    match location {
        Some(location) => Diagnostic::at(location.clone(), message),
        None => Diagnostic::new(message),
    }
}

#[async_trait]
impl Resource for AlertsResource {
    fn address(&self) -> &str {
        ADDRESS
    }

    fn kind(&self) -> &'static str {
        "alert rules"
    }

    fn live_source(&self) -> String {
        match &self.config.target {
            AlertsTarget::File => format!("rule files in {}", self.config.rules_dir_display),
            AlertsTarget::Prometheus { url, .. } => format!(
                "rule files in {}, loaded by Prometheus at {}",
                self.config.rules_dir_display,
                url.redacted()
            ),
        }
    }

    fn dependencies(&self) -> Vec<Dependency> {
        Dependency::declared(ADDRESS, &self.config.depends_on)
    }

    fn validate(&self) -> Diagnostics {
        let mut problems = self.load_problems.clone();
        problems.extend(check::check_groups(&self.desired));
        problems
    }

    async fn read(&self) -> Result<LiveState, ResourceError> {
        let mut live = self.read_live()?;
        self.probe(&mut live).await?;
        Ok(Box::new(live))
    }

    fn fingerprint(&self, live: &LiveState) -> Fingerprint {
        let live = live
            .downcast_ref::<LiveRules>()
            .expect("alerts live state is LiveRules");
        if live.files.is_empty() {
            return Fingerprint::absent();
        }
        Fingerprint::of(
            live.files
                .iter()
                .flat_map(|(name, file)| [name.as_bytes(), file.text.as_bytes()]),
        )
    }

    fn diff(&self, live: &LiveState) -> Result<Diff, ResourceError> {
        let live = live
            .downcast_ref::<LiveRules>()
            .expect("alerts live state is LiveRules");
        Ok(self.compare(live))
    }

    async fn apply(&self, change: &Change) -> Result<String, ResourceError> {
        // The Prometheus client blocks; keep it off the async workers.
        let outcome = tokio::task::block_in_place(|| self.apply_change(change));
        Ok(outcome?)
    }
}
