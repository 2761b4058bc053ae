use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{
    Cli, Failure, Loaded, Outcome, StderrLockObserver, load_replacing, parse_duration,
    write_metrics,
};
use crate::apply::{self, Reporter, StepResult, StepStatus};
use crate::plan::file::PlanDocument;
use crate::plan::{Change, Plan};
use crate::render;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan saved with `opsplan plan --out FILE`: apply exactly it, or refuse if live state
    /// moved since.
    pub plan_file: Option<PathBuf>,

    /// Force the replacement of an address now; `keyset.hmac` starts a key rotation now,
    /// or promotes a pending key now.
    #[arg(long, value_name = "ADDRESS")]
    pub replace: Vec<String>,

    /// Apply without asking for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub auto_approve: bool,

    /// How long to wait for another apply's lock, e.g. 30s or 5m (default 2m).
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,

    /// Send the mail verification message (to mail.verify_to) even when the mail settings
    /// did not change.
    #[arg(long)]
    pub send_verification: bool,

    /// Write Prometheus textfile-collector metrics to FILE.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// `json` prints one JSON object per event, for machines.
    #[arg(long, value_enum, default_value_t = ApplyFormat::Human)]
    pub format: ApplyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApplyFormat {
    Human,
    Json,
}

pub async fn run(cli: &Cli, args: &ApplyArgs) -> Result<Outcome, Failure> {
    let interactive = std::io::stdin().is_terminal();
    let saved = match &args.plan_file {
        Some(path) => Some(
            PlanDocument::load(path)
                .map_err(|error| Failure::Message(crate::engine::error_chain(&error)))?,
        ),
        None => None,
    };
    // A saved plan was reviewed already; a fresh one needs a yes or --auto-approve.
    if saved.is_none() && !args.auto_approve && !interactive {
        return Err(Failure::Message(
            "apply needs confirmation, and stdin is not a terminal: review `opsplan plan`, \
             then run `opsplan apply --auto-approve`, or apply a saved plan file"
                .to_string(),
        ));
    }

    let loaded = load_replacing(cli, &args.replace)?;
    if let Some(document) = &saved {
        check_same_configuration(document, &loaded, cli)?;
    }

    let timeout = loaded.lock_timeout(args.lock_timeout);
    // A saved plan locks and reads only what it will touch.
    let only: Option<std::collections::BTreeSet<String>> = saved.as_ref().map(|document| {
        document
            .resources
            .iter()
            .map(|r| r.address.clone())
            .collect()
    });
    if let Err(error) = loaded
        .engine
        .lock_only(only.as_ref(), timeout, &StderrLockObserver)
        .await
    {
        loaded.close().await;
        return Err(Failure::Message(crate::engine::error_chain(error.as_ref())));
    }
    let result = locked(&loaded, args, saved.as_ref(), only.as_ref(), interactive).await;
    loaded.engine.unlock_all().await;
    loaded.close().await;

    if let Some(path) = &args.metrics_file {
        let (failures, ok) = match &result {
            Ok((_, report)) => (failures_per_resource(report), true),
            Err(_) => (Vec::new(), false),
        };
        let success = ok && failures.is_empty();
        write_metrics(path, "apply", success, |metrics| {
            for (resource, count) in &failures {
                metrics.add(
                    "opsplan_apply_failures_total",
                    &[("resource", resource)],
                    *count as f64,
                );
            }
            // A counter is present from the first run on, so rate() and increase() work.
            for resource in loaded.engine.resources() {
                metrics.add(
                    "opsplan_apply_failures_total",
                    &[("resource", resource.address())],
                    0.0,
                );
            }
        })?;
    }
    result.and_then(|(outcome, report)| match report {
        Some(report) if !report.succeeded() => Err(Failure::Message(format!(
            "apply failed: {} step(s) failed, {} skipped",
            report.failed(),
            report.skipped()
        ))),
        _ => Ok(outcome),
    })
}

fn failures_per_resource(report: &Option<apply::ApplyReport>) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for step in report.iter().flat_map(|r| &r.steps) {
        if matches!(step.status, StepStatus::Failed { .. }) {
            match counts
                .iter_mut()
                .find(|(resource, _)| *resource == step.resource)
            {
                Some((_, count)) => *count += 1,
                None => counts.push((step.resource.clone(), 1)),
            }
        }
    }
    counts
}

fn check_same_configuration(
    document: &PlanDocument,
    loaded: &Loaded,
    cli: &Cli,
) -> Result<(), Failure> {
    if document.config.digest == loaded.config.digest {
        return Ok(());
    }
    Err(Failure::Message(format!(
        "the saved plan was made from a different configuration ({} with digest {}…; {} now \
         has {}…); run `opsplan plan --out FILE` again",
        document.config.path,
        &document.config.digest[..12.min(document.config.digest.len())],
        cli.config.display(),
        &loaded.config.digest[..12]
    )))
}

async fn locked(
    loaded: &Loaded,
    args: &ApplyArgs,
    saved: Option<&PlanDocument>,
    only: Option<&std::collections::BTreeSet<String>>,
    interactive: bool,
) -> Result<(Outcome, Option<apply::ApplyReport>), Failure> {
    // Planned under the lock: what another apply did while we waited is already seen.
    let fresh = crate::engine::plan_from(loaded.engine.observe_only(only).await);
    let json = args.format == ApplyFormat::Json;

    let plan: Plan = match saved {
        Some(document) => {
            if !document.errors.is_empty() {
                return Err(Failure::Message(
                    "the saved plan has errors and cannot be applied; fix them and plan again"
                        .to_string(),
                ));
            }
            refuse_if_stale(document, &fresh)?;
            document.plan()
        }
        None => {
            if !json {
                anstream::print!("{}", render::human::plan(&fresh));
            }
            if !fresh.is_ok() {
                if json {
                    emit_json(
                        &serde_json::json!({"event": "plan_refused", "errors": fresh.failures}),
                    );
                }
                return Err(Failure::Message(
                    "the plan was refused; nothing was applied".to_string(),
                ));
            }
            fresh
        }
    };

    if !plan.has_changes() {
        if json {
            emit_json(&serde_json::json!({"event": "no_changes"}));
        } else if saved.is_some() {
            println!("No changes. The saved plan had nothing to do.");
        }
        return Ok((Outcome::Clean, None));
    }

    if saved.is_none() && !args.auto_approve && interactive && !confirm()? {
        return Err(Failure::Message(
            "apply cancelled; nothing was changed".to_string(),
        ));
    }

    let plan_digest = match saved {
        Some(document) => document.digest(),
        None => {
            PlanDocument::new(&plan, &loaded.config.source.path, &loaded.config.digest).digest()
        }
    };
    let started_at = now();
    let report = if json {
        apply::apply(&loaded.engine, &plan, &JsonReporter).await
    } else {
        let reporter = LineReporter {
            total: plan.changes().count(),
            started: std::sync::atomic::AtomicUsize::new(0),
        };
        apply::apply(&loaded.engine, &plan, &reporter).await
    };
    // The history lives in the target database, written under its lock.
    if only.is_none_or(|only| only.contains(crate::schema::ADDRESS)) {
        record_history(loaded, &report, &plan_digest, &started_at).await;
    }
    if json {
        emit_json(&serde_json::json!({
            "event": "apply_finished",
            "applied": report.applied(),
            "failed": report.failed(),
            "skipped": report.skipped(),
        }));
    } else {
        anstream::print!("\n{}", render::human::report(&report));
    }
    Ok((Outcome::Clean, Some(report)))
}

/// Refuses the whole saved plan, before anything is touched, when any resource's live state
/// no longer has the fingerprint it was planned against.
fn refuse_if_stale(document: &PlanDocument, fresh: &Plan) -> Result<(), Failure> {
    let mut moved = Vec::new();
    for planned in &document.resources {
        match fresh
            .resources
            .iter()
            .find(|r| r.address == planned.address)
        {
            Some(now) if now.live_source != planned.live_source => moved.push(format!(
                "{} (planned against {}, now configured for {})",
                planned.address, planned.live_source, now.live_source
            )),
            Some(now) if now.fingerprint == planned.fingerprint => {}
            Some(now) => moved.push(format!(
                "{} (planned against {}, now {})",
                planned.address,
                short(&planned.fingerprint.0),
                short(&now.fingerprint.0)
            )),
            None => {
                let reason = fresh
                    .failures
                    .iter()
                    .find(|f| f.address == planned.address)
                    .map(|f| f.messages.join("; "))
                    .unwrap_or_else(|| "no longer in the configuration".to_string());
                moved.push(format!("{} ({reason})", planned.address));
            }
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    Err(Failure::Message(format!(
        "saved plan is stale: live state changed since the plan was created: {}. Nothing was \
         applied; run `opsplan plan --out FILE` again and review the new plan",
        moved.join(", ")
    )))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Writes the run to the apply history table of the target database, if there is one. A
/// failure to record is reported but does not undo or fail the apply.
async fn record_history(
    loaded: &Loaded,
    report: &apply::ApplyReport,
    plan_digest: &str,
    started_at: &str,
) {
    let Some(schema) = &loaded.schema else {
        return;
    };
    let run_id = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        std::process::id()
    );
    let finished_at = now();
    let steps = report
        .steps
        .iter()
        .map(|step| {
            let (status, detail) = match &step.status {
                StepStatus::Applied { detail } => ("applied", Some(detail.clone())),
                StepStatus::Failed { error } => ("failed", Some(error.clone())),
                StepStatus::Skipped { blocked_by } => {
                    ("skipped", Some(format!("blocked by {blocked_by}")))
                }
            };
            crate::schema::ApplyRunStep {
                address: step.address.clone(),
                resource: step.resource.clone(),
                status,
                detail,
                duration_ms: i64::try_from(step.duration_ms).unwrap_or(i64::MAX),
            }
        })
        .collect();
    let run = crate::schema::ApplyRun {
        run_id: &run_id,
        started_at,
        finished_at: &finished_at,
        plan_digest,
        config_digest: &loaded.config.digest,
        steps,
    };
    if let Err(error) = schema.record_apply(&run).await {
        eprintln!(
            "warning: the apply was not recorded in the apply history: {}",
            crate::engine::error_chain(&error)
        );
    }
}

fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(19).collect()
}

fn confirm() -> Result<bool, Failure> {
    print!(
        "\nDo you want to perform these actions? Only 'yes' will be accepted.\n  Enter a value: "
    );
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|error| Failure::Message(format!("cannot read the answer: {error}")))?;
    Ok(answer.trim() == "yes")
}

/// Prints one line per step as it starts and ends, with the step's place in the plan.
struct LineReporter {
    total: usize,
    started: std::sync::atomic::AtomicUsize,
}

impl Reporter for LineReporter {
    fn step_started(&self, change: &Change) {
        let step = self
            .started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        anstream::println!(
            "[{step}/{}] {}: {}…",
            self.total,
            change.address,
            change.summary
        );
    }

    fn step_finished(&self, change: &Change, result: &StepResult) {
        match &result.status {
            StepStatus::Applied { detail } => {
                anstream::println!("{}: done ({detail})", change.address);
            }
            StepStatus::Failed { .. } => {
                anstream::println!("{}: failed after {} ms", change.address, result.duration_ms);
            }
            StepStatus::Skipped { .. } => {}
        }
    }
}

/// One JSON object per line for every step event.
struct JsonReporter;

impl Reporter for JsonReporter {
    fn step_started(&self, change: &Change) {
        emit_json(&serde_json::json!({
            "event": "step_started",
            "address": change.address,
            "actions": change.action.as_list(),
            "summary": change.summary,
        }));
    }

    fn step_finished(&self, _change: &Change, result: &StepResult) {
        let mut value = serde_json::to_value(result).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("event".to_string(), "step_finished".into());
        }
        emit_json(&value);
    }
}

fn emit_json(value: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}
