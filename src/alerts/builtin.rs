//! The runbook's three alerts, generated from `[alerts.builtin]`.

use std::collections::BTreeMap;

use super::rules::{RuleGroupYaml, RuleYaml, YamlScalar};
use crate::config::alerts::{BuiltinAlertConfig, BuiltinConfig};

/// The counter opsplan writes with `--metrics-file`, one series per resource.
pub const APPLY_FAILURES_METRIC: &str = "opsplan_apply_failures_total";
pub const TOKEN_REUSE_METRIC: &str = "authsvc_token_reuse_events_total";
pub const RATE_LIMITED_METRIC: &str = "authsvc_rate_limited_requests_total";

struct Defaults {
    alert: &'static str,
    metric: &'static str,
    threshold: &'static str,
    window: &'static str,
    for_duration: &'static str,
    severity: &'static str,
}

const MIGRATION_FAILURES: Defaults = Defaults {
    alert: "OpsplanMigrationFailed",
    metric: APPLY_FAILURES_METRIC,
    threshold: "0",
    window: "15m",
    for_duration: "0s",
    severity: "critical",
};

const TOKEN_REUSE: Defaults = Defaults {
    alert: "AuthTokenReuseRepeated",
    metric: TOKEN_REUSE_METRIC,
    threshold: "3",
    window: "10m",
    for_duration: "0s",
    severity: "critical",
};

const RATE_LIMIT_SPIKES: Defaults = Defaults {
    alert: "AuthRateLimitSpike",
    metric: RATE_LIMITED_METRIC,
    threshold: "5",
    window: "5m",
    for_duration: "5m",
    severity: "warning",
};

/// The built-in group, or `None` when no built-in alert is enabled.
pub fn group(config: &BuiltinConfig) -> Option<RuleGroupYaml> {
    let mut rules = Vec::new();
    if config.migration_failures.enabled {
        let (metric, threshold, window) = settings(&config.migration_failures, &MIGRATION_FAILURES);
        rules.push(rule(
            &config.migration_failures,
            &MIGRATION_FAILURES,
            format!("increase({metric}{{resource=\"schema\"}}[{window}]) > {threshold}"),
            "A schema migration failed",
            "opsplan apply failed on the schema {{ $value }} time(s) in the last \
             {window}; the failed migration was rolled back where the database allows it. \
             Run `opsplan plan` to see what is pending.",
        ));
    }
    if config.token_reuse.enabled {
        let (metric, threshold, window) = settings(&config.token_reuse, &TOKEN_REUSE);
        rules.push(rule(
            &config.token_reuse,
            &TOKEN_REUSE,
            format!("sum(increase({metric}[{window}])) > {threshold}"),
            "Refresh tokens are being reused",
            "{{ $value }} token reuse events in the last {window} (threshold {threshold}): a \
             stolen token may be in use.",
        ));
    }
    if config.rate_limit_spikes.enabled {
        let (metric, threshold, window) = settings(&config.rate_limit_spikes, &RATE_LIMIT_SPIKES);
        rules.push(rule(
            &config.rate_limit_spikes,
            &RATE_LIMIT_SPIKES,
            format!("sum(rate({metric}[{window}])) > {threshold}"),
            "Rate-limited requests are spiking",
            "{{ $value | humanize }} requests per second were rate limited over the last \
             {window} (threshold {threshold}).",
        ));
    }
    (!rules.is_empty()).then(|| RuleGroupYaml {
        name: config.group.clone(),
        interval: config.interval.clone().map(YamlScalar::Text),
        limit: None,
        rules,
    })
}

fn settings(alert: &BuiltinAlertConfig, defaults: &Defaults) -> (String, String, String) {
    let metric = alert.metric.clone().unwrap_or(defaults.metric.to_string());
    let threshold = alert
        .threshold
        .clone()
        .unwrap_or(defaults.threshold.to_string());
    let window = alert.window.clone().unwrap_or(defaults.window.to_string());
    (metric, threshold, window)
}

fn rule(
    alert: &BuiltinAlertConfig,
    defaults: &Defaults,
    expr: String,
    summary: &str,
    description: &str,
) -> RuleYaml {
    let (_, threshold, window) = settings(alert, defaults);
    let description = description
        .replace("{window}", &window)
        .replace("{threshold}", &threshold);
    let severity = alert
        .severity
        .clone()
        .unwrap_or(defaults.severity.to_string());
    let for_duration = alert
        .for_duration
        .clone()
        .unwrap_or(defaults.for_duration.to_string());
    RuleYaml {
        record: None,
        alert: Some(defaults.alert.to_string()),
        expr: Some(YamlScalar::Text(expr)),
        for_duration: Some(YamlScalar::Text(for_duration)),
        keep_firing_for: None,
        labels: Some(BTreeMap::from([(
            "severity".to_string(),
            YamlScalar::Text(severity),
        )])),
        annotations: Some(BTreeMap::from([
            ("summary".to_string(), YamlScalar::Text(summary.to_string())),
            ("description".to_string(), YamlScalar::Text(description)),
        ])),
    }
}
