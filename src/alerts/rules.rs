//! Rule groups in Prometheus's rule-file format: reading, rendering and comparing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::duration;
use crate::diagnostic::Location;

/// A scalar as YAML gives it: Prometheus reads `for: 5` or `expr: 1` as text.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum YamlScalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl YamlScalar {
    pub fn text(&self) -> String {
        match self {
            YamlScalar::Text(text) => text.clone(),
            YamlScalar::Integer(n) => n.to_string(),
            YamlScalar::Float(x) => x.to_string(),
            YamlScalar::Bool(b) => b.to_string(),
        }
    }
}

/// A rule file exactly as Prometheus reads it; unknown fields are errors there, and here.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFileYaml {
    #[serde(default)]
    pub groups: Vec<RuleGroupYaml>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroupYaml {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<YamlScalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default)]
    pub rules: Vec<RuleYaml>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleYaml {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<YamlScalar>,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_duration: Option<YamlScalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<YamlScalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, YamlScalar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, YamlScalar>>,
}

impl RuleYaml {
    /// `alert` or `record` name, for messages.
    pub fn name(&self) -> &str {
        self.alert
            .as_deref()
            .or(self.record.as_deref())
            .unwrap_or("")
    }
}

/// One group of the desired state, with where it came from.
#[derive(Debug, Clone)]
pub struct SourcedGroup {
    /// The rendered file the group goes to, e.g. `node.rules.yml`.
    pub namespace: String,
    /// The file it was written in, as shown in messages (ops.toml or an included file).
    pub origin: PathBuf,
    pub group: RuleGroupYaml,
    pub location: Option<Location>,
    /// One place per rule, in order.
    pub rule_locations: Vec<Option<Location>>,
}

/// Parses a rule file's text. The error carries the YAML line and column when known.
pub fn parse_file(text: &str) -> Result<RuleFileYaml, (String, Option<(usize, usize)>)> {
    if text.trim().is_empty() {
        return Ok(RuleFileYaml::default());
    }
    serde_norway::from_str::<RuleFileYaml>(text).map_err(|error| {
        let place = error.location().map(|l| (l.line(), l.column()));
        (error.to_string(), place)
    })
}

/// The YAML text of a whole file, as opsplan writes it.
pub fn render_file(groups: &[RuleGroupYaml]) -> String {
    let file = RuleFileYaml {
        groups: groups.to_vec(),
    };
    serde_norway::to_string(&file).unwrap_or_default()
}

/// The YAML text of one group, for diffs.
pub fn render_group(group: &RuleGroupYaml) -> String {
    render_file(std::slice::from_ref(group))
}

/// Finds the line of each group and rule in a file's text, in document order, so that
/// messages can point at them. Rule files are written by hand in many styles; this looks
/// for `name:` and `alert:`/`record:` keys, which every style has.
pub fn locate(
    path: &Path,
    text: &str,
    file: &RuleFileYaml,
) -> Vec<(Option<Location>, Vec<Option<Location>>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cursor = 0;
    let mut found = Vec::new();
    let at = |line: usize, column: usize| Location {
        file: path.to_path_buf(),
        line: line + 1,
        column: column + 1,
    };
    let find_key = |from: usize, keys: &[&str], value: &str| -> Option<(usize, usize)> {
        (from..lines.len()).find_map(|index| {
            let trimmed = lines[index].trim_start_matches([' ', '-', '\t']);
            keys.iter().find_map(|key| {
                let rest = trimmed.strip_prefix(key)?.strip_prefix(':')?.trim();
                let unquoted = rest.trim_matches(|c| c == '"' || c == '\'');
                (unquoted == value || value.is_empty()).then(|| {
                    let column = lines[index].len() - trimmed.len();
                    (index, column)
                })
            })
        })
    };
    for group in &file.groups {
        let group_at = find_key(cursor, &["name"], &group.name);
        if let Some((line, _)) = group_at {
            cursor = line + 1;
        }
        let mut rules = Vec::new();
        for rule in &group.rules {
            let rule_at = find_key(cursor, &["alert", "record"], rule.name());
            if let Some((line, _)) = rule_at {
                cursor = line + 1;
            }
            rules.push(rule_at.map(|(l, c)| at(l, c)));
        }
        found.push((group_at.map(|(l, c)| at(l, c)), rules));
    }
    found
}

/// A group reduced to what Prometheus evaluates, so that formatting never counts as a
/// change: expressions re-printed from their syntax tree, durations in milliseconds, and
/// absent maps equal to empty ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalGroup {
    pub name: String,
    pub interval: Option<u64>,
    pub limit: u64,
    pub rules: Vec<NormalRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalRule {
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    pub for_millis: u64,
    pub keep_firing_millis: u64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The expression as its syntax tree prints it, or with whitespace collapsed when it does
/// not parse (a live file may hold what opsplan would not write).
pub fn normal_expr(expr: &str) -> String {
    match promql_parser::parser::parse(expr) {
        Ok(tree) => tree.to_string(),
        Err(_) => expr.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn normal_duration(value: &Option<YamlScalar>) -> Option<u64> {
    value.as_ref().map(|v| {
        let text = v.text();
        duration::parse(&text).unwrap_or(u64::MAX)
    })
}

fn normal_map(map: &Option<BTreeMap<String, YamlScalar>>) -> BTreeMap<String, String> {
    map.iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.text()))
        .collect()
}

pub fn normalize(group: &RuleGroupYaml) -> NormalGroup {
    NormalGroup {
        name: group.name.clone(),
        interval: normal_duration(&group.interval),
        limit: group.limit.unwrap_or(0),
        rules: group
            .rules
            .iter()
            .map(|rule| NormalRule {
                alert: rule.alert.clone(),
                record: rule.record.clone(),
                expr: normal_expr(&rule.expr.as_ref().map(YamlScalar::text).unwrap_or_default()),
                for_millis: normal_duration(&rule.for_duration).unwrap_or(0),
                keep_firing_millis: normal_duration(&rule.keep_firing_for).unwrap_or(0),
                labels: normal_map(&rule.labels),
                annotations: normal_map(&rule.annotations),
            })
            .collect(),
    }
}

/// What differs between two versions of a group, field by field, for the plan.
pub fn changed_fields(live: &NormalGroup, desired: &NormalGroup) -> Vec<String> {
    let mut fields = Vec::new();
    if live.interval != desired.interval {
        fields.push("interval".to_string());
    }
    if live.limit != desired.limit {
        fields.push("limit".to_string());
    }
    let name = |rule: &NormalRule| {
        rule.alert
            .clone()
            .or_else(|| rule.record.clone())
            .unwrap_or_default()
    };
    let live_names: Vec<String> = live.rules.iter().map(name).collect();
    let desired_names: Vec<String> = desired.rules.iter().map(name).collect();
    for added in desired_names.iter().filter(|n| !live_names.contains(n)) {
        fields.push(format!("rule {added} added"));
    }
    for removed in live_names.iter().filter(|n| !desired_names.contains(n)) {
        fields.push(format!("rule {removed} removed"));
    }
    for rule in &desired.rules {
        let Some(before) = live.rules.iter().find(|r| name(r) == name(rule)) else {
            continue;
        };
        let mut parts = Vec::new();
        if before.expr != rule.expr {
            parts.push("expr");
        }
        if before.for_millis != rule.for_millis {
            parts.push("for");
        }
        if before.keep_firing_millis != rule.keep_firing_millis {
            parts.push("keep_firing_for");
        }
        if before.labels != rule.labels {
            parts.push("labels");
        }
        if before.annotations != rule.annotations {
            parts.push("annotations");
        }
        if before.alert.is_some() != rule.alert.is_some() {
            parts.push("kind");
        }
        if !parts.is_empty() {
            fields.push(format!("rule {}: {}", name(rule), parts.join(", ")));
        }
    }
    if fields.is_empty() && live.rules != desired.rules {
        fields.push("rule order".to_string());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(text: &str) -> RuleGroupYaml {
        parse_file(text).unwrap().groups.remove(0)
    }

    #[test]
    fn reformatting_is_not_a_change() {
        let a = group(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum(rate(x[5m])) by (job) > 1\n    for: 1d\n",
        );
        let b = group(
            "groups:\n  - name: \"g\"\n    rules:\n      - alert: A\n        expr: |\n          sum by (job) (\n            rate(x[5m])\n          ) > 1\n        for: 24h\n        labels: {}\n",
        );
        assert_eq!(normalize(&a), normalize(&b));
    }

    #[test]
    fn every_field_change_counts() {
        let base = "groups:\n- name: g\n  interval: 1m\n  rules:\n  - alert: A\n    expr: up == 0\n    for: 5m\n    labels:\n      severity: page\n    annotations:\n      summary: down\n";
        let original = normalize(&group(base));
        for (from, to, field) in [
            ("interval: 1m", "interval: 2m", "interval"),
            ("up == 0", "up == 1", "rule A: expr"),
            ("for: 5m", "for: 6m", "rule A: for"),
            ("severity: page", "severity: ticket", "rule A: labels"),
            ("summary: down", "summary: gone", "rule A: annotations"),
        ] {
            let changed = normalize(&group(&base.replace(from, to)));
            assert_ne!(original, changed, "{field}");
            assert_eq!(changed_fields(&original, &changed), [field.to_string()]);
        }
    }

    #[test]
    fn groups_and_rules_are_located() {
        let text = "groups:\n- name: a\n  rules:\n  - alert: X\n    expr: up\n- name: b\n  rules:\n  - record: y\n    expr: up\n";
        let file = parse_file(text).unwrap();
        let found = locate(Path::new("f.yml"), text, &file);
        assert_eq!(found[0].0.as_ref().unwrap().line, 2);
        assert_eq!(found[0].1[0].as_ref().unwrap().line, 4);
        assert_eq!(found[1].0.as_ref().unwrap().line, 6);
        assert_eq!(found[1].1[0].as_ref().unwrap().line, 8);
    }
}
