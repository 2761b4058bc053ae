//! The alert-rule concern: Prometheus alerting and recording rules from `ops.toml` and
//! included rule files, rendered into rule files that Prometheus loads.
//!
//! Every source maps to its own rendered file (its namespace): included files keep their
//! file name, and the groups written in `ops.toml` (with the built-in ones) go to
//! `opsplan.rules.yml`. Group names are unique per rendered file, as Prometheus requires.

mod builtin;
pub mod check;
pub mod duration;
mod error;
mod prometheus;
pub mod rules;
pub mod template;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

pub use builtin::{APPLY_FAILURES_METRIC, RATE_LIMITED_METRIC, TOKEN_REUSE_METRIC};
pub use error::AlertsError;

use crate::config::alerts::{AlertsConfig, AlertsTarget, DEFAULT_NAMESPACE};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::engine::{Diff, LiveState, Resource, ResourceError};
use crate::graph::Dependency;
use crate::plan::{Action, Attribute, Change, Check, Fingerprint};
use prometheus::PrometheusApi;
use rules::{RuleGroupYaml, SourcedGroup};

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
    /// What Prometheus answered to a read-only `GET /api/v1/rules`, for the plan's check.
    pub probe: Option<Check>,
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
        }
    }

    /// The desired groups, in the order they were written.
    pub fn desired(&self) -> &[SourcedGroup] {
        &self.desired
    }

    fn api(&self) -> Option<PrometheusApi> {
        match &self.config.target {
            AlertsTarget::File => None,
            AlertsTarget::Prometheus { url } => Some(PrometheusApi::new(url)),
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
    fn probe(&self, live: &LiveRules) -> Option<Check> {
        let api = self.api()?;
        let detail = match api.rules() {
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
                Ok(format!(
                    "Prometheus at {} has {} group(s) loaded, {ours} of them from {}",
                    api.url(),
                    groups.len(),
                    self.config.rules_dir_display
                ))
            }
            Err(error) => Err(crate::engine::error_chain(&error)),
        };
        Some(Check {
            name: "prometheus".to_string(),
            passed: detail.is_ok(),
            detail: detail.unwrap_or_else(|error| error),
        })
    }

    fn compare(&self, live: &LiveRules) -> Diff {
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
            let desired_text = rules::render_group(&sourced.group);
            match existing {
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
                        Attribute::added("diff", unified_diff("", &desired_text)),
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
                                unified_diff(&rules::render_group(current), &desired_text),
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

    /// Writes one group's change into its rendered file, then reloads and verifies when the
    /// target is Prometheus; on failure the previous file is put back.
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
        let path = self.config.rules_dir.join(namespace);

        let previous = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(AlertsError::Read { path, source }),
        };
        let mut groups = match &previous {
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
        match (&spec, position) {
            (Some(spec), Some(at)) => groups[at] = spec.clone(),
            (Some(spec), None) => groups.push(spec.clone()),
            (None, Some(at)) => {
                groups.remove(at);
            }
            (None, None) => return Ok(format!("{name} was already gone")),
        }

        if let Some(text) = &previous {
            write_atomic(&previous_path(&path), text)?;
        }
        if groups.is_empty() {
            std::fs::remove_file(&path).map_err(|source| AlertsError::Write {
                path: path.clone(),
                source,
            })?;
        } else {
            write_atomic(&path, &rules::render_file(&groups))?;
        }
        let written = format!("wrote {}", self.shown_file(namespace));
        tracing::debug!(
            path = %path.display(),
            groups = groups.len(),
            kept_previous = previous.is_some(),
            "rule file written"
        );

        let Some(api) = self.api() else {
            return Ok(written);
        };
        match reload_and_verify(&api, namespace, &groups, name) {
            Ok(detail) => Ok(format!("{written}; {detail}")),
            Err(why) => {
                let restored = match &previous {
                    Some(text) => write_atomic(&path, text),
                    None => std::fs::remove_file(&path).map_err(|source| AlertsError::Write {
                        path: path.clone(),
                        source,
                    }),
                };
                let restored = match restored {
                    Ok(()) => match api.reload() {
                        Ok(()) => format!(
                            "the previous {} was restored and Prometheus reloaded",
                            self.shown_file(namespace)
                        ),
                        Err(error) => format!(
                            "the previous {} was restored, but reloading Prometheus again \
                             failed too ({}); Prometheus keeps serving the rules it had loaded \
                             before",
                            self.shown_file(namespace),
                            crate::engine::error_chain(&error)
                        ),
                    },
                    Err(error) => format!(
                        "restoring the previous file failed as well ({}); the previous version \
                         is kept in {}",
                        crate::engine::error_chain(&error),
                        previous_path(&path).display()
                    ),
                };
                Err(AlertsError::Verify(format!(
                    "{}: {why}; {restored}",
                    change.address
                )))
            }
        }
    }
}

fn reload_and_verify(
    api: &PrometheusApi,
    namespace: &str,
    expected: &[RuleGroupYaml],
    changed: &str,
) -> Result<String, String> {
    api.reload()
        .map_err(|error| crate::engine::error_chain(&error))?;
    let loaded = api
        .rules()
        .map_err(|error| crate::engine::error_chain(&error))?;
    let in_file = |group: &&prometheus::LoadedGroup| {
        Path::new(&group.file).file_name().and_then(|n| n.to_str()) == Some(namespace)
    };
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
    }
    let deleted = !expected.iter().any(|g| g.name == changed);
    if deleted && loaded.iter().filter(in_file).any(|g| g.name == changed) {
        return Err(format!(
            "Prometheus at {} still has group {changed} from {namespace} after the reload",
            api.url()
        ));
    }
    let rules: usize = expected
        .iter()
        .filter(|g| g.name == changed)
        .map(|g| g.rules.len())
        .sum();
    Ok(if deleted {
        format!("Prometheus reloaded, group {changed} is gone")
    } else {
        format!("Prometheus reloaded, group {changed} loaded with {rules} rule(s)")
    })
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
            AlertsTarget::Prometheus { url } => format!(
                "rule files in {}, loaded by Prometheus at {}",
                self.config.rules_dir_display,
                url.redacted()
            ),
        }
    }

    fn dependencies(&self) -> Vec<Dependency> {
        self.config
            .depends_on
            .iter()
            .map(|(to, at)| Dependency {
                from: ADDRESS.to_string(),
                to: to.clone(),
                declared_at: at.clone(),
            })
            .collect()
    }

    fn validate(&self) -> Diagnostics {
        let mut problems = self.load_problems.clone();
        problems.extend(check::check_groups(&self.desired));
        problems
    }

    async fn read(&self) -> Result<LiveState, ResourceError> {
        let mut live = self.read_live()?;
        // The Prometheus client blocks; keep it off the async workers.
        live.probe = tokio::task::block_in_place(|| self.probe(&live));
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
