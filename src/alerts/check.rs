//! Offline checks of rule groups, matching what `promtool check rules` (Prometheus 2.42)
//! accepts and refuses. The PromQL parser is newer than 2.42 in places, so the checks it
//! lacks are added here: units on range and offset durations, and functions that 2.42 does
//! not know.

use std::collections::BTreeMap;
use std::sync::Once;

use promql_parser::parser::{self, Expr};

use super::duration;
use super::rules::{RuleYaml, SourcedGroup, YamlScalar};
use super::template;
use crate::diagnostic::{Diagnostic, Diagnostics};

/// The PromQL functions of Prometheus 2.42, which rules are checked against.
const FUNCTIONS_2_42: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Aggregations that the parser knows and Prometheus 2.42 does not.
const NEWER_AGGREGATIONS: &[&str] = &["limitk", "limit_ratio"];

/// Teaches the parser `holt_winters`, which 2.42 has and newer versions renamed.
fn register_functions() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        use promql_parser::parser::value::ValueType;
        let holt_winters = parser::Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        if let Err(error) = parser::register_extra_functions(vec![holt_winters]) {
            tracing::debug!(%error, "holt_winters is already known to the PromQL parser");
        }
    });
}

/// Parses `expr` as Prometheus 2.42 would, or says why it would refuse it.
pub fn parse_expr(expr: &str) -> Result<Expr, String> {
    register_functions();
    if expr.trim().is_empty() {
        return Err("field 'expr' must be set in rule".to_string());
    }
    let tree = parser::parse(expr)
        .map_err(|error| format!("could not parse expression: {}", error.trim()))?;
    if let Some(bare) = bare_durations(expr).first() {
        return Err(format!(
            "could not parse expression: missing unit character in duration \"{bare}\""
        ));
    }
    let mut unknown = Vec::new();
    visit(&tree, &mut |node| match node {
        Expr::Call(call) if !FUNCTIONS_2_42.contains(&call.func.name) => {
            unknown.push(format!("unknown function with name \"{}\"", call.func.name));
        }
        Expr::Aggregate(aggregate) => {
            let op = aggregate.op.to_string();
            if NEWER_AGGREGATIONS.contains(&op.as_str()) {
                unknown.push(format!("unknown aggregation \"{op}\""));
            }
        }
        _ => {}
    });
    match unknown.into_iter().next() {
        Some(problem) => Err(format!("could not parse expression: {problem}")),
        None => Ok(tree),
    }
}

fn visit(expr: &Expr, f: &mut impl FnMut(&Expr)) {
    f(expr);
    match expr {
        Expr::Aggregate(e) => {
            visit(&e.expr, f);
            if let Some(param) = &e.param {
                visit(param, f);
            }
        }
        Expr::Unary(e) => visit(&e.expr, f),
        Expr::Binary(e) => {
            visit(&e.lhs, f);
            visit(&e.rhs, f);
        }
        Expr::Paren(e) => visit(&e.expr, f),
        Expr::Subquery(e) => visit(&e.expr, f),
        Expr::Call(call) => {
            for arg in &call.args.args {
                visit(arg, f);
            }
        }
        _ => {}
    }
}

/// Durations without a unit in ranges (`[10]`, `[5m:10]`) and after `offset`, outside
/// quoted strings. Prometheus 2.42 refuses them; the parser reads them as seconds.
pub fn bare_durations(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut code = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    // Blank out string literals so that brackets and words inside them do not count.
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            code.push(' ');
            let mut escaped = false;
            for inner in chars.by_ref() {
                code.push(' ');
                if escaped {
                    escaped = false;
                } else if inner == '\\' && c != '`' {
                    escaped = true;
                } else if inner == c {
                    break;
                }
            }
        } else {
            code.push(c);
        }
    }

    let mut rest = code.as_str();
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        for part in rest[open + 1..open + close].split(':') {
            let part = part.trim();
            if duration::is_bare_number(part) {
                found.push(part.to_string());
            }
        }
        rest = &rest[open + close + 1..];
    }

    let words: Vec<&str> = code
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        if pair[0].eq_ignore_ascii_case("offset") {
            let value = pair[1].trim_start_matches('-');
            if duration::is_bare_number(value) {
                found.push(pair[1].to_string());
            }
        }
    }
    found
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Every problem of every group, each naming file, group and rule.
pub fn check_groups(groups: &[SourcedGroup]) -> Diagnostics {
    let mut problems = Diagnostics::default();

    // Group names are unique per rendered file, as Prometheus requires.
    let mut seen: BTreeMap<(&str, &str), &SourcedGroup> = BTreeMap::new();
    for sourced in groups {
        let key = (sourced.namespace.as_str(), sourced.group.name.as_str());
        if let Some(first) = seen.get(&key) {
            let first_place = first
                .location
                .as_ref()
                .map_or_else(|| first.origin.display().to_string(), ToString::to_string);
            let message = if first.origin == sourced.origin {
                format!(
                    "duplicate group name \"{}\": groupname \"{}\" is repeated in the same file \
                     {} (first at {first_place})",
                    sourced.group.name,
                    sourced.group.name,
                    sourced.origin.display()
                )
            } else {
                format!(
                    "duplicate group name \"{}\": defined in {} and in {}, which render to the \
                     same rule file {}",
                    sourced.group.name,
                    first.origin.display(),
                    sourced.origin.display(),
                    sourced.namespace
                )
            };
            problems.push(place(sourced, None, message).with_help(
                "give each group in a rule file its own name; Prometheus refuses a file that \
                 repeats one",
            ));
        } else {
            seen.insert(key, sourced);
        }
    }

    for sourced in groups {
        check_group(sourced, &mut problems);
    }
    problems
}

fn place(sourced: &SourcedGroup, rule: Option<usize>, message: String) -> Diagnostic {
    let location = rule
        .and_then(|index| sourced.rule_locations.get(index).cloned().flatten())
        .or_else(|| sourced.location.clone());
    match location {
        Some(location) => Diagnostic::at(location, message),
        None => Diagnostic::new(format!("{}: {message}", sourced.origin.display())),
    }
}

fn check_group(sourced: &SourcedGroup, problems: &mut Diagnostics) {
    let group = &sourced.group;
    let name = &group.name;
    if name.is_empty() {
        problems.push(place(
            sourced,
            None,
            "group name must not be empty".to_string(),
        ));
    }
    if let Some(interval) = &group.interval
        && let Err(error) = duration::parse(&interval.text())
    {
        problems.push(place(
            sourced,
            None,
            format!("group \"{name}\": interval: {error}"),
        ));
    }
    if group.rules.is_empty() {
        tracing::debug!(group = %name, "group has no rules");
    }

    for (index, rule) in group.rules.iter().enumerate() {
        let prefix = format!("group \"{name}\", rule {}, \"{}\"", index + 1, rule.name());
        for problem in rule_problems(rule) {
            problems.push(place(sourced, Some(index), format!("{prefix}: {problem}")));
        }
    }
}

fn rule_problems(rule: &RuleYaml) -> Vec<String> {
    let mut problems = Vec::new();
    match (&rule.alert, &rule.record) {
        (Some(_), Some(_)) => {
            problems.push("only one of 'record' and 'alert' must be set".to_string())
        }
        (None, None) => problems.push("one of 'record' or 'alert' must be set".to_string()),
        (Some(alert), None) if alert.is_empty() => {
            problems.push("one of 'record' or 'alert' must be set".to_string())
        }
        _ => {}
    }

    let expr = rule.expr.as_ref().map(YamlScalar::text).unwrap_or_default();
    if let Err(error) = parse_expr(&expr) {
        problems.push(error);
    }

    for (field, value) in [
        ("for", &rule.for_duration),
        ("keep_firing_for", &rule.keep_firing_for),
    ] {
        if let Some(value) = value
            && let Err(error) = duration::parse(&value.text())
        {
            problems.push(format!("{field}: {error}"));
        }
    }

    if let Some(record) = &rule.record {
        if !valid_metric_name(record) {
            problems.push(format!("invalid recording rule name: {record}"));
        }
        if rule.annotations.is_some() {
            problems.push("invalid field 'annotations' in recording rule".to_string());
        }
        if rule.for_duration.is_some() {
            problems.push("invalid field 'for' in recording rule".to_string());
        }
        if rule.keep_firing_for.is_some() {
            problems.push("invalid field 'keep_firing_for' in recording rule".to_string());
        }
    }

    for (key, value) in rule.labels.iter().flatten() {
        if !valid_label_name(key) || key == "__name__" {
            problems.push(format!("invalid label name: {key}"));
        } else if rule.alert.is_some()
            && let Err(error) = template::check(&value.text())
        {
            problems.push(format!("label \"{key}\": template: {error}"));
        }
    }
    for (key, value) in rule.annotations.iter().flatten() {
        if !valid_label_name(key) {
            problems.push(format!("invalid annotation name: {key}"));
        } else if rule.alert.is_some()
            && let Err(error) = template::check(&value.text())
        {
            problems.push(format!("annotation \"{key}\": template: {error}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_offsets_need_units() {
        assert_eq!(bare_durations("increase(errors_total[10]) > 2"), ["10"]);
        assert_eq!(bare_durations("rate(x[5m:30])"), ["30"]);
        assert_eq!(bare_durations("x offset 5"), ["5"]);
        assert!(bare_durations("rate(x[5m]) offset 1h").is_empty());
        assert!(bare_durations("x{a=\"[10]\"}").is_empty());
        assert!(parse_expr("increase(errors_total[10]) > 2").is_err());
    }

    #[test]
    fn functions_are_those_of_prometheus_2_42() {
        assert!(parse_expr("holt_winters(x[5m], 0.5, 0.5)").is_ok());
        assert!(parse_expr("sort_by_label(x, \"a\")").is_err());
        assert!(parse_expr("limitk(2, x)").is_err());
        assert!(parse_expr("sum by (job) (rate(x[5m]))").is_ok());
    }
}
