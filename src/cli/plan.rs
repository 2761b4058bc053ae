use std::path::PathBuf;

use clap::Args;

use super::{Cli, Failure, Outcome, PlanFormat, load_replacing, print_plan, write_metrics};
use crate::plan::file::PlanDocument;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Save the plan to FILE (JSON, mode 0600) for `opsplan apply FILE`.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// How to print the plan.
    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub format: PlanFormat,

    /// Plan only this resource (and what it depends on); repeatable. For exceptional
    /// situations: the rest of the configuration is not read.
    #[arg(long, value_name = "ADDRESS")]
    pub target: Vec<String>,

    /// Force the replacement of an address now; `keyset.hmac` starts a key rotation now,
    /// or promotes a pending key now.
    #[arg(long, value_name = "ADDRESS")]
    pub replace: Vec<String>,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Write Prometheus textfile-collector metrics to FILE.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
}

pub async fn run(cli: &Cli, args: &PlanArgs) -> Result<Outcome, Failure> {
    let loaded = load_replacing(cli, &args.replace)?;
    let plan = if args.target.is_empty() {
        loaded.engine.plan().await
    } else {
        let only = loaded
            .engine
            .targeted(&args.target)
            .map_err(Failure::Message)?;
        eprintln!(
            "warning: the plan is limited to {} (--target); other resources were not read",
            only.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        crate::engine::plan_from(loaded.engine.observe_only(Some(&only)).await)
    };
    loaded.close().await;

    let document = PlanDocument::new(&plan, &cli.config, &loaded.config.digest);
    print_plan(&document, args.format);
    if let Some(path) = &args.metrics_file {
        write_metrics(path, "plan", plan.is_ok(), |metrics| {
            metrics.clear("opsplan_pending_changes");
            for resource in &plan.resources {
                metrics.set(
                    "opsplan_pending_changes",
                    &[("resource", &resource.address)],
                    resource.changes.len() as f64,
                );
            }
        })?;
    }
    if !plan.is_ok() {
        return Err(Failure::Message(
            "the plan was refused; see the errors above".to_string(),
        ));
    }
    if let Some(out) = &args.out {
        document
            .save(out)
            .map_err(|error| Failure::Message(crate::engine::error_chain(&error)))?;
        if args.format == PlanFormat::Human {
            println!(
                "\nSaved the plan to {}. To carry out exactly this plan, run:\n    opsplan apply {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(if plan.has_changes() && args.detailed_exitcode {
        Outcome::Changes
    } else {
        Outcome::Clean
    })
}
