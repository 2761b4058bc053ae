//! The plan as operators read it in a terminal or a CI log.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use crate::apply::{ApplyReport, StepStatus};
use crate::plan::{Action, Plan};

fn paint(style: Style, text: &str) -> String {
    format!("{}{text}{}", style.render(), style.render_reset())
}

fn bold() -> Style {
    Style::new().bold()
}

fn red() -> Style {
    Style::new().fg_color(Some(AnsiColor::Red.into())).bold()
}

fn yellow() -> Style {
    Style::new().fg_color(Some(AnsiColor::Yellow.into())).bold()
}

/// The plan: what was read, each change under its address, then the summary line.
pub fn plan(plan: &Plan) -> String {
    let mut out = String::new();

    for resource in &plan.resources {
        let _ = writeln!(
            out,
            "{}: {} ({})",
            paint(bold(), &resource.address),
            resource.live_summary,
            resource.live_source
        );
        for check in &resource.checks {
            let mark = if check.passed { "ok" } else { "FAILED" };
            let _ = writeln!(out, "  check {}: {mark} ({})", check.name, check.detail);
        }
    }
    for failure in &plan.failures {
        let _ = writeln!(
            out,
            "{}: {}",
            paint(bold(), &failure.address),
            paint(red(), "cannot be planned")
        );
    }
    if !plan.resources.is_empty() || !plan.failures.is_empty() {
        out.push('\n');
    }

    for resource in &plan.resources {
        for warning in &resource.warnings {
            let _ = writeln!(
                out,
                "{} {}: {warning}",
                paint(yellow(), "Warning:"),
                resource.address
            );
        }
    }
    if plan.resources.iter().any(|r| !r.warnings.is_empty()) {
        out.push('\n');
    }

    if !plan.failures.is_empty() {
        for failure in &plan.failures {
            for message in &failure.messages {
                let _ = writeln!(
                    out,
                    "{} {}: {message}",
                    paint(red(), "Error:"),
                    failure.address
                );
            }
        }
        let count: usize = plan.failures.iter().map(|f| f.messages.len()).sum();
        let _ = writeln!(
            out,
            "\nPlan failed with {count} error(s); nothing was changed."
        );
        return out;
    }

    if !plan.has_changes() {
        out.push_str("No changes. Live state matches the configuration.\n");
        return out;
    }

    let mut legend: Vec<Action> = plan.changes().map(|c| c.action).collect();
    legend.sort();
    legend.dedup();
    out.push_str("opsplan will perform the following actions");
    let symbols: Vec<String> = legend
        .iter()
        .map(|action| {
            format!(
                "{} {}",
                paint(action.style(), action.symbol()),
                action.verb()
            )
        })
        .collect();
    let _ = writeln!(out, " ({}):\n", symbols.join(", "));

    for change in plan.changes() {
        let _ = writeln!(
            out,
            "  # {}: {}",
            paint(bold(), &change.address),
            change.summary
        );
        let _ = writeln!(
            out,
            "  {} {}",
            paint(change.action.style(), change.action.symbol()),
            change.address
        );
        let width = change
            .attributes
            .iter()
            .map(|a| a.name.len())
            .max()
            .unwrap_or(0);
        for attribute in &change.attributes {
            let value = match (&attribute.before, &attribute.after) {
                (Some(before), Some(after)) => format!("{before} -> {after}"),
                (None, Some(after)) => after.clone(),
                (Some(before), None) => format!("{before} -> (none)"),
                (None, None) => "(none)".to_string(),
            };
            let label = format!("{}:", attribute.name);
            let _ = writeln!(out, "      {label:width$} {value}", width = width + 1);
        }
        out.push('\n');
    }

    out.push_str(&summary_line(plan));
    out.push('\n');
    out
}

/// `Plan: 3 to add, 0 to change, 0 to destroy.` Replacements count as add and destroy.
pub fn summary_line(plan: &Plan) -> String {
    let summary = plan.summary();
    format!(
        "{} {} to add, {} to change, {} to destroy.",
        paint(bold(), "Plan:"),
        summary.create + summary.replace,
        summary.update,
        summary.delete + summary.replace
    )
}

/// After apply: which steps failed, which were skipped and why, and the totals.
pub fn report(report: &ApplyReport) -> String {
    let mut out = String::new();
    for step in &report.steps {
        match &step.status {
            StepStatus::Applied { .. } => {}
            StepStatus::Failed { error } => {
                let _ = writeln!(out, "{} {}: {error}", paint(red(), "Error:"), step.address);
            }
            StepStatus::Skipped { blocked_by } => {
                let _ = writeln!(
                    out,
                    "Skipped {}: it depends on {blocked_by}, which did not apply",
                    step.address
                );
            }
        }
    }
    if report.succeeded() {
        let _ = writeln!(
            out,
            "{} {} applied.",
            paint(bold(), "Apply complete!"),
            report.applied()
        );
    } else {
        let _ = writeln!(
            out,
            "{} {} applied, {} failed, {} skipped.",
            paint(red(), "Apply failed:"),
            report.applied(),
            report.failed(),
            report.skipped()
        );
    }
    out
}
