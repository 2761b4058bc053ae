//! The `[alerts]` section: where rules come from, where they go, and what may be deleted.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Diagnostics, Location, SourceFile};
use crate::secret::SecretUrl;

/// The folder of rendered rule files when `alerts.rules_dir` is not set.
pub const DEFAULT_RULES_DIR: &str = ".opsplan/rules";

/// The rendered file that holds the inline and built-in groups.
pub const DEFAULT_NAMESPACE: &str = "opsplan.rules.yml";

/// How long one request to Prometheus may take, unless `alerts.timeout` says otherwise.
pub const DEFAULT_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct AlertsSection {
    /// `file` (default) or `prometheus`.
    pub target: Spanned<String>,
    /// The folder the rendered rule files are written to, one file per namespace.
    pub rules_dir: Spanned<String>,
    /// Prometheus's base URL, for `target = "prometheus"`.
    pub prometheus_url: Option<Spanned<String>>,
    /// Bounds each request to Prometheus (reload, rules), from connecting to the answer.
    pub timeout: Option<Spanned<String>>,
    /// Prometheus rule files to include, as glob patterns relative to ops.toml.
    pub include: Vec<Spanned<String>>,
    /// Groups found live but not desired are deleted only when this is true.
    pub fully_managed: bool,
    /// Lets an empty desired set delete every live group (with `fully_managed`).
    pub allow_delete_all: bool,
    pub builtin: BuiltinSection,
    pub group: Vec<InlineGroup>,
    pub depends_on: Vec<Spanned<String>>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            target: Spanned::new(0..0, "file".to_string()),
            rules_dir: Spanned::new(0..0, DEFAULT_RULES_DIR.to_string()),
            prometheus_url: None,
            timeout: None,
            include: Vec::new(),
            fully_managed: false,
            allow_delete_all: false,
            builtin: BuiltinSection::default(),
            group: Vec::new(),
            depends_on: Vec::new(),
        }
    }
}

/// A value that TOML may give as text or as a number, as Prometheus's YAML allows.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
}

impl Scalar {
    pub fn text(&self) -> String {
        match self {
            Scalar::Text(text) => text.clone(),
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InlineGroup {
    pub name: Spanned<String>,
    pub interval: Option<Spanned<Scalar>>,
    pub limit: Option<u64>,
    #[serde(default)]
    pub rule: Vec<InlineRule>,
}

#[derive(Debug, Deserialize)]
pub struct InlineRule {
    pub alert: Option<Spanned<String>>,
    pub record: Option<Spanned<String>>,
    pub expr: Spanned<Scalar>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<Scalar>>,
    pub keep_firing_for: Option<Spanned<Scalar>>,
    #[serde(default)]
    pub labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub annotations: BTreeMap<String, Scalar>,
}

/// The runbook's alerts, each off unless enabled.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct BuiltinSection {
    pub group: String,
    pub interval: Option<String>,
    pub migration_failures: BuiltinAlertSection,
    pub token_reuse: BuiltinAlertSection,
    pub rate_limit_spikes: BuiltinAlertSection,
}

impl Default for BuiltinSection {
    fn default() -> Self {
        BuiltinSection {
            group: "opsplan-runbook".to_string(),
            interval: None,
            migration_failures: BuiltinAlertSection::default(),
            token_reuse: BuiltinAlertSection::default(),
            rate_limit_spikes: BuiltinAlertSection::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BuiltinAlertSection {
    pub enabled: bool,
    pub metric: Option<String>,
    pub threshold: Option<Scalar>,
    pub window: Option<String>,
    #[serde(rename = "for")]
    pub for_duration: Option<String>,
    pub severity: Option<String>,
}

/// Where rendered rules go.
#[derive(Debug, Clone)]
pub enum AlertsTarget {
    /// Rule files on disk, and nothing else.
    File,
    /// Rule files on disk that Prometheus at `url` loads; reloaded and verified.
    Prometheus { url: SecretUrl, timeout: Duration },
}

/// One rule written in ops.toml, with the place each value was written.
#[derive(Debug, Clone)]
pub struct InlineRuleConfig {
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    pub for_duration: Option<String>,
    pub keep_firing_for: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub location: Option<Location>,
}

#[derive(Debug, Clone)]
pub struct InlineGroupConfig {
    pub name: String,
    pub interval: Option<String>,
    pub limit: Option<u64>,
    pub rules: Vec<InlineRuleConfig>,
    pub location: Option<Location>,
}

#[derive(Debug, Clone)]
pub struct BuiltinAlertConfig {
    pub enabled: bool,
    pub metric: Option<String>,
    pub threshold: Option<String>,
    pub window: Option<String>,
    pub for_duration: Option<String>,
    pub severity: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BuiltinConfig {
    pub group: String,
    pub interval: Option<String>,
    pub migration_failures: BuiltinAlertConfig,
    pub token_reuse: BuiltinAlertConfig,
    pub rate_limit_spikes: BuiltinAlertConfig,
}

/// The alert-rule concern's desired state.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub target: AlertsTarget,
    pub rules_dir: PathBuf,
    /// The folder as written in the file, which messages repeat.
    pub rules_dir_display: String,
    pub base_dir: PathBuf,
    /// Glob patterns as written, each with its place in ops.toml.
    pub include: Vec<(String, Option<Location>)>,
    pub fully_managed: bool,
    pub allow_delete_all: bool,
    pub builtin: BuiltinConfig,
    pub groups: Vec<InlineGroupConfig>,
    pub config_file: PathBuf,
    pub depends_on: Vec<(String, Option<Location>)>,
}

pub(super) fn resolve(
    section: AlertsSection,
    source: &SourceFile,
    base_dir: &std::path::Path,
    problems: &mut Diagnostics,
) -> AlertsConfig {
    let at = |span: &Range<usize>| (span.end > 0).then(|| source.location_of(span));

    let timeout = super::timeout(
        &section.timeout,
        "alerts.timeout",
        DEFAULT_PROMETHEUS_TIMEOUT,
        &at,
        problems,
    );
    let target = match section.target.get_ref().as_str() {
        "file" => AlertsTarget::File,
        "prometheus" => match &section.prometheus_url {
            Some(url)
                if url.get_ref().starts_with("http://")
                    || url.get_ref().starts_with("https://") =>
            {
                AlertsTarget::Prometheus {
                    url: SecretUrl::new(url.get_ref().trim_end_matches('/')),
                    timeout,
                }
            }
            Some(url) => {
                problems.push(at_or_not(
                    at(&url.span()),
                    format!(
                        "alerts.prometheus_url `{}` is not an http:// or https:// URL",
                        url.get_ref()
                    ),
                    "write e.g. prometheus_url = \"http://127.0.0.1:9090\"",
                ));
                AlertsTarget::File
            }
            None => {
                problems.push(at_or_not(
                    at(&section.target.span()),
                    "alerts.target = \"prometheus\" needs alerts.prometheus_url".to_string(),
                    "add prometheus_url = \"http://127.0.0.1:9090\" (Prometheus started with \
                     --web.enable-lifecycle), or use target = \"file\"",
                ));
                AlertsTarget::File
            }
        },
        other => {
            problems.push(at_or_not(
                at(&section.target.span()),
                format!("alerts.target `{other}` is neither \"file\" nor \"prometheus\""),
                "write target = \"file\" or target = \"prometheus\"",
            ));
            AlertsTarget::File
        }
    };

    let groups = section
        .group
        .iter()
        .map(|group| InlineGroupConfig {
            name: group.name.get_ref().clone(),
            interval: group.interval.as_ref().map(|i| i.get_ref().text()),
            limit: group.limit,
            location: at(&group.name.span()),
            rules: group
                .rule
                .iter()
                .map(|rule| InlineRuleConfig {
                    alert: rule.alert.as_ref().map(|a| a.get_ref().clone()),
                    record: rule.record.as_ref().map(|r| r.get_ref().clone()),
                    expr: rule.expr.get_ref().text(),
                    for_duration: rule.for_duration.as_ref().map(|f| f.get_ref().text()),
                    keep_firing_for: rule.keep_firing_for.as_ref().map(|f| f.get_ref().text()),
                    labels: texts(&rule.labels),
                    annotations: texts(&rule.annotations),
                    location: rule
                        .alert
                        .as_ref()
                        .or(rule.record.as_ref())
                        .map_or_else(|| at(&rule.expr.span()), |name| at(&name.span())),
                })
                .collect(),
        })
        .collect();

    let builtin_alert = |alert: &BuiltinAlertSection| BuiltinAlertConfig {
        enabled: alert.enabled,
        metric: alert.metric.clone(),
        threshold: alert.threshold.as_ref().map(Scalar::text),
        window: alert.window.clone(),
        for_duration: alert.for_duration.clone(),
        severity: alert.severity.clone(),
    };
    let builtin = BuiltinConfig {
        group: section.builtin.group.clone(),
        interval: section.builtin.interval.clone(),
        migration_failures: builtin_alert(&section.builtin.migration_failures),
        token_reuse: builtin_alert(&section.builtin.token_reuse),
        rate_limit_spikes: builtin_alert(&section.builtin.rate_limit_spikes),
    };

    let rules_dir_display = section.rules_dir.get_ref().clone();
    AlertsConfig {
        target,
        rules_dir: base_dir.join(&rules_dir_display),
        rules_dir_display,
        base_dir: base_dir.to_path_buf(),
        include: section
            .include
            .iter()
            .map(|pattern| (pattern.get_ref().clone(), at(&pattern.span())))
            .collect(),
        fully_managed: section.fully_managed,
        allow_delete_all: section.allow_delete_all,
        builtin,
        groups,
        config_file: source.path.clone(),
        depends_on: section
            .depends_on
            .iter()
            .map(|dep| (dep.get_ref().clone(), at(&dep.span())))
            .collect(),
    }
}

fn texts(values: &BTreeMap<String, Scalar>) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|(key, value)| (key.clone(), value.text()))
        .collect()
}

fn at_or_not(location: Option<Location>, message: String, help: &str) -> Diagnostic {
    Diagnostic {
        location,
        message,
        help: Some(help.to_string()),
    }
}
