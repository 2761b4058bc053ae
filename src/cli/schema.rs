use std::time::Duration;

use clap::Subcommand;

use super::{Cli, Failure, Outcome, StderrLockObserver, load, parse_duration};

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Adopt a database another tool migrated: record every file up to VERSION as applied
    /// without running it.
    Baseline {
        version: u64,
        #[arg(long, value_parser = parse_duration)]
        lock_timeout: Option<Duration>,
    },
    /// Record VERSION as applied, after finishing a failed migration by hand.
    MarkApplied {
        version: u64,
        #[arg(long, value_parser = parse_duration)]
        lock_timeout: Option<Duration>,
    },
    /// Forget VERSION, after reverting a failed or removed migration by hand.
    MarkRemoved {
        version: u64,
        #[arg(long, value_parser = parse_duration)]
        lock_timeout: Option<Duration>,
    },
}

pub async fn run(cli: &Cli, command: &SchemaCommand) -> Result<Outcome, Failure> {
    let loaded = load(cli)?;
    let Some(schema) = loaded.schema.clone() else {
        return Err(Failure::Message(format!(
            "{} has no [schema] section",
            cli.config.display()
        )));
    };
    let observer = StderrLockObserver;
    let result = match command {
        SchemaCommand::Baseline {
            version,
            lock_timeout,
        } => schema
            .baseline(*version, loaded.lock_timeout(*lock_timeout), &observer)
            .await
            .map(|files| {
                format!(
                    "Baseline recorded {} migration(s) as applied without running them: {}",
                    files.len(),
                    files.join(", ")
                )
            }),
        SchemaCommand::MarkApplied {
            version,
            lock_timeout,
        } => {
            schema
                .mark_applied(*version, loaded.lock_timeout(*lock_timeout), &observer)
                .await
        }
        SchemaCommand::MarkRemoved {
            version,
            lock_timeout,
        } => {
            schema
                .mark_removed(*version, loaded.lock_timeout(*lock_timeout), &observer)
                .await
        }
    };
    loaded.close().await;
    match result {
        Ok(message) => {
            println!("{message}");
            Ok(Outcome::Clean)
        }
        Err(error) => Err(Failure::Message(crate::engine::error_chain(&error))),
    }
}
