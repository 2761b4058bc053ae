use clap::{Args, ValueEnum};

use super::{Cli, Failure, Outcome, load};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// How many runs to list, newest first.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,

    #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
    pub format: HistoryFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryFormat {
    Human,
    Json,
}

pub async fn run(cli: &Cli, args: &HistoryArgs) -> Result<Outcome, Failure> {
    let loaded = load(cli)?;
    let Some(schema) = loaded.schema.clone() else {
        return Err(Failure::Message(format!(
            "the apply history is kept in the target database, and {} has no [schema] section",
            cli.config.display()
        )));
    };
    let steps = schema.list_applies(args.limit.max(1)).await;
    loaded.close().await;
    let steps = steps.map_err(|error| Failure::Message(crate::engine::error_chain(&error)))?;

    if args.format == HistoryFormat::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&steps).expect("history serializes")
        );
        return Ok(Outcome::Clean);
    }
    if steps.is_empty() {
        println!(
            "No apply recorded yet in {}.",
            schema.apply_history_location()
        );
        return Ok(Outcome::Clean);
    }
    let mut current = "";
    for step in &steps {
        if step.run_id != current {
            current = &step.run_id;
            let failed = steps
                .iter()
                .filter(|s| s.run_id == step.run_id && s.status != "applied")
                .count();
            let verdict = if failed == 0 { "succeeded" } else { "failed" };
            println!(
                "\n{} by {} ({verdict}), plan {}",
                step.started_at,
                step.applied_by,
                step.plan_digest.chars().take(19).collect::<String>()
            );
        }
        println!(
            "  {:<8} {} ({} ms){}",
            step.status,
            step.address,
            step.duration_ms,
            step.detail
                .as_deref()
                .filter(|_| step.status != "applied")
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    Ok(Outcome::Clean)
}
