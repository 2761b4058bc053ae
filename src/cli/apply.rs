use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::Args;

use super::{Cli, Failure, Outcome, StderrLockObserver, load_replacing, parse_duration};
use crate::apply::{self, Reporter, StepResult, StepStatus};
use crate::plan::Change;
use crate::render;

#[derive(Debug, Args)]
pub struct ApplyArgs {
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
}

pub async fn run(cli: &Cli, args: &ApplyArgs) -> Result<Outcome, Failure> {
    let interactive = std::io::stdin().is_terminal();
    if !args.auto_approve && !interactive {
        return Err(Failure::Message(
            "apply needs confirmation, and stdin is not a terminal: review `opsplan plan`, \
             then run `opsplan apply --auto-approve`"
                .to_string(),
        ));
    }

    let loaded = load_replacing(cli, &args.replace)?;
    let timeout = loaded.lock_timeout(args.lock_timeout);
    if let Err(error) = loaded.engine.lock_all(timeout, &StderrLockObserver).await {
        loaded.close().await;
        return Err(Failure::Message(crate::engine::error_chain(error.as_ref())));
    }

    let result = locked(&loaded, args, interactive).await;
    loaded.engine.unlock_all().await;
    loaded.close().await;
    result
}

async fn locked(
    loaded: &super::Loaded,
    args: &ApplyArgs,
    interactive: bool,
) -> Result<Outcome, Failure> {
    // Planned under the lock: what another apply did while we waited is already seen.
    let plan = loaded.engine.plan().await;
    anstream::print!("{}", render::human::plan(&plan));
    if !plan.is_ok() {
        return Err(Failure::Message(
            "the plan was refused; nothing was applied".to_string(),
        ));
    }
    if !plan.has_changes() {
        return Ok(Outcome::Clean);
    }

    if !args.auto_approve && interactive && !confirm()? {
        return Err(Failure::Message(
            "apply cancelled; nothing was changed".to_string(),
        ));
    }

    let report = apply::apply(&loaded.engine, &plan, &LineReporter).await;
    anstream::print!("\n{}", render::human::report(&report));
    if report.succeeded() {
        Ok(Outcome::Clean)
    } else {
        Err(Failure::Message(format!(
            "apply failed: {} step(s) failed, {} skipped",
            report.failed(),
            report.skipped()
        )))
    }
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

/// Prints one line per step as it starts and ends.
struct LineReporter;

impl Reporter for LineReporter {
    fn step_started(&self, change: &Change) {
        anstream::println!("{}: {}…", change.address, change.summary);
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
