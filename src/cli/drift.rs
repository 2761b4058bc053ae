use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{Cli, Failure, Outcome, load, write_metrics};
use crate::engine::DriftItem;

#[derive(Debug, Args)]
pub struct DriftArgs {
    #[arg(long, value_enum, default_value_t = DriftFormat::Human)]
    pub format: DriftFormat,

    /// Write Prometheus textfile-collector metrics to FILE.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriftFormat {
    Human,
    Json,
}

/// What `opsplan drift --format json` prints.
#[derive(Debug, Serialize)]
struct DriftReport {
    drift: Vec<DriftItem>,
    ignored: Vec<DriftItem>,
    pending: Vec<Pending>,
    /// Problems that block pending work but are not drift (for example an out-of-order file).
    problems: Vec<Problem>,
    errors: Vec<Problem>,
}

#[derive(Debug, Serialize)]
struct Pending {
    address: String,
    actions: &'static [&'static str],
    summary: String,
}

#[derive(Debug, Serialize)]
struct Problem {
    address: String,
    message: String,
}

/// A pattern from `[drift] ignore`: an address, or a prefix ending in `*`.
fn ignored(patterns: &[String], address: &str) -> bool {
    patterns
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => address.starts_with(prefix),
            None => address == pattern,
        })
}

pub async fn run(cli: &Cli, args: &DriftArgs) -> Result<Outcome, Failure> {
    let loaded = load(cli)?;
    let observations = loaded.engine.observe().await;
    loaded.close().await;

    let mut report = DriftReport {
        drift: Vec::new(),
        ignored: Vec::new(),
        pending: Vec::new(),
        problems: Vec::new(),
        errors: Vec::new(),
    };
    let mut per_resource = Vec::new();
    for observation in observations {
        let address = observation.address.clone();
        match observation.outcome {
            Err(message) => report.errors.push(Problem { address, message }),
            Ok((_, diff)) => {
                let mut drift_count = 0;
                for item in diff.drift {
                    if ignored(&loaded.config.drift_ignore, &item.address) {
                        report.ignored.push(item);
                    } else {
                        drift_count += 1;
                        report.drift.push(item);
                    }
                }
                for change in &diff.changes {
                    report.pending.push(Pending {
                        address: change.address.clone(),
                        actions: change.action.as_list(),
                        summary: change.summary.clone(),
                    });
                }
                // A refusal that repeats a drift item is reported once, as drift.
                let drift_messages: Vec<&String> = report
                    .drift
                    .iter()
                    .chain(&report.ignored)
                    .map(|item| &item.message)
                    .collect();
                let problems: Vec<String> = diff
                    .refusals
                    .into_iter()
                    .filter(|message| !drift_messages.contains(&message))
                    .collect();
                for message in problems {
                    report.problems.push(Problem {
                        address: address.clone(),
                        message,
                    });
                }
                per_resource.push((address, drift_count, diff.changes.len()));
            }
        }
    }

    if let Some(path) = &args.metrics_file {
        write_metrics(path, "drift", report.errors.is_empty(), |metrics| {
            metrics.clear("opsplan_drift_resources");
            metrics.clear("opsplan_pending_changes");
            for (address, drift, pending) in &per_resource {
                metrics.set(
                    "opsplan_drift_resources",
                    &[("resource", address)],
                    *drift as f64,
                );
                metrics.set(
                    "opsplan_pending_changes",
                    &[("resource", address)],
                    *pending as f64,
                );
            }
        })?;
    }

    match args.format {
        DriftFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        ),
        DriftFormat::Human => print_human(&report),
    }

    if !report.errors.is_empty() {
        return Err(Failure::Message(
            "drift detection could not read every resource; see the errors above".to_string(),
        ));
    }
    Ok(if report.drift.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Changes
    })
}

fn print_human(report: &DriftReport) {
    if report.drift.is_empty() {
        println!("No drift: live state matches what opsplan applied.");
    } else {
        println!(
            "Drift: {} out-of-band change(s) to what opsplan applied:",
            report.drift.len()
        );
        for item in &report.drift {
            println!("  ! {}: {}", item.address, item.message);
        }
    }
    if !report.ignored.is_empty() {
        println!("Ignored by [drift] ignore: {}", report.ignored.len());
        for item in &report.ignored {
            println!("  . {}", item.address);
        }
    }
    if report.pending.is_empty() {
        println!("Pending: nothing; the configuration is not ahead of live state.");
    } else {
        println!(
            "Pending: {} change(s) the configuration is ahead by (run `opsplan plan`):",
            report.pending.len()
        );
        for pending in &report.pending {
            let symbol = match pending.actions {
                ["create"] => "+",
                ["update"] => "~",
                ["delete"] => "-",
                _ => "-/+",
            };
            println!("  {symbol} {}: {}", pending.address, pending.summary);
        }
    }
    for problem in &report.problems {
        println!("  problem {}: {}", problem.address, problem.message);
    }
    for error in &report.errors {
        eprintln!("error: {}: {}", error.address, error.message);
    }
}
