//! The command line: one module per subcommand, all driving the library.

mod apply;
mod drift;
mod graph;
mod history;
mod init;
mod plan;
mod schema;
mod show;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::alerts::AlertsResource;
use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::diagnostic::Diagnostics;
use crate::engine::{Engine, LockObserver, Resource};
use crate::keyset::KeysetResource;
use crate::mail::MailResource;
use crate::schema::SchemaResource;

/// How long `apply` waits for another apply's lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Plan and apply the operational state of an application.
#[derive(Debug, Parser)]
#[command(name = "opsplan", version, about, max_term_width = 100)]
pub struct Cli {
    /// The desired-state file.
    #[arg(short, long, global = true, env = "OPSPLAN_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,

    /// More diagnostics on stderr: -v for debug, -vv for trace. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = ColorMode::Auto)]
    pub color: ColorMode,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorMode {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Offline checks: configuration, migration files, PromQL, templates, key and mail policies.
    Validate,
    /// Compare live state with the configuration and show what apply would do.
    Plan(plan::PlanArgs),
    /// Take the lock, plan again, and carry out the plan in dependency order.
    Apply(apply::ApplyArgs),
    /// Read-only: report out-of-band changes apart from pending work; exits 2 on drift.
    Drift(drift::DriftArgs),
    /// Render a saved plan file.
    Show(show::ShowArgs),
    /// List recorded apply runs, newest first, from the target database.
    History(history::HistoryArgs),
    /// Draw the dependency graph.
    Graph(graph::GraphArgs),
    /// Write a starting ops.toml that runs with nothing installed.
    Init,
    /// Repair and adoption commands for the schema history.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
}

/// Exit codes, the same in every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success, nothing to do.
    Clean,
    /// Success, and there are changes (plan) or drift.
    Changes,
}

/// An error already shown to the user, or one to show.
#[derive(Debug)]
pub enum Failure {
    Diagnostics(Diagnostics),
    Message(String),
}

impl From<Diagnostics> for Failure {
    fn from(problems: Diagnostics) -> Self {
        Failure::Diagnostics(problems)
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(&cli));
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Changes) => ExitCode::from(2),
        Err(Failure::Diagnostics(problems)) => {
            let count = problems.len();
            for problem in &problems.0 {
                anstream::eprintln!("{} {problem}", error_label());
            }
            if count > 1 {
                eprintln!("{count} problems found; nothing was changed.");
            }
            ExitCode::from(1)
        }
        Err(Failure::Message(message)) => {
            anstream::eprintln!("{} {message}", error_label());
            ExitCode::from(1)
        }
    }
}

fn error_label() -> String {
    let style = anstyle::Style::new()
        .fg_color(Some(anstyle::AnsiColor::Red.into()))
        .bold();
    format!("{}error:{}", style.render(), style.render_reset())
}

async fn dispatch(cli: &Cli) -> Result<Outcome, Failure> {
    match &cli.command {
        Command::Validate => validate::run(cli).await,
        Command::Plan(args) => plan::run(cli, args).await,
        Command::Apply(args) => apply::run(cli, args).await,
        Command::Drift(args) => drift::run(cli, args).await,
        Command::Show(args) => show::run(cli, args),
        Command::Graph(args) => graph::run(cli, args).await,
        Command::History(args) => history::run(cli, args).await,
        Command::Init => init::run(cli),
        Command::Schema(command) => schema::run(cli, command).await,
    }
}

/// The configuration, its resources, and their offline problems, all reported together.
pub struct Loaded {
    pub config: Config,
    pub engine: Engine,
    pub schema: Option<Arc<SchemaResource>>,
}

pub fn load(cli: &Cli) -> Result<Loaded, Failure> {
    load_replacing(cli, &[])
}

/// Like [`load`], with the addresses given to `--replace`.
pub fn load_replacing(cli: &Cli, replace: &[String]) -> Result<Loaded, Failure> {
    let config = Config::load(&cli.config)?;
    let mut resources: Vec<Arc<dyn Resource>> = Vec::new();
    // Reading every migration file and every included rule file is most of the work before
    // the first request; the two concerns read theirs side by side.
    let (schema, alerts) = std::thread::scope(|scope| {
        let alerts = scope.spawn(|| config.alerts.clone().map(AlertsResource::new));
        let schema = config
            .schema
            .clone()
            .map(|schema| Arc::new(SchemaResource::new(schema)));
        let alerts = alerts
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (schema, alerts)
    });
    if let Some(schema) = &schema {
        resources.push(schema.clone());
    }
    if let Some(alerts) = alerts {
        resources.push(Arc::new(alerts));
    }
    if let Some(mail) = config.mail.clone() {
        let mail = MailResource::new(mail);
        if matches!(&cli.command, Command::Apply(args) if args.send_verification) {
            mail.request_verification();
        }
        resources.push(Arc::new(mail));
    }
    if let Some(keyset) = config.keyset.clone() {
        let force = replace.iter().any(|a| a == crate::keyset::ADDRESS);
        resources.push(Arc::new(KeysetResource::new(keyset, force)));
    }
    for address in replace {
        if address != crate::keyset::ADDRESS {
            let known: Vec<&str> = resources.iter().map(|r| r.address()).collect();
            return Err(Failure::Message(format!(
                "--replace {address}: only {} can be replaced (a forced key rotation); the \
                 configuration has {}",
                crate::keyset::ADDRESS,
                known.join(", ")
            )));
        }
        if !resources.iter().any(|r| r.address() == address) {
            return Err(Failure::Message(format!(
                "--replace {address}: the configuration has no [keyset] section"
            )));
        }
    }
    let engine = Engine::new(resources)?;
    let problems = engine.validate();
    if !problems.is_empty() {
        return Err(problems.into());
    }
    Ok(Loaded {
        config,
        engine,
        schema,
    })
}

impl Loaded {
    pub async fn close(&self) {
        if let Some(schema) = &self.schema {
            schema.close().await;
        }
    }

    pub fn lock_timeout(&self, flag: Option<Duration>) -> Duration {
        flag.or(self.config.lock_timeout)
            .unwrap_or(DEFAULT_LOCK_TIMEOUT)
    }
}

/// Tells the user who holds the lock they are waiting for.
pub struct StderrLockObserver;

impl LockObserver for StderrLockObserver {
    fn waiting(&self, address: &str, holder: &str) {
        eprintln!("Waiting for the {address} lock, held by {holder}");
    }
}

/// How a plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Human,
    Markdown,
    Json,
}

/// Prints a plan document in the chosen format.
pub fn print_plan(document: &crate::plan::file::PlanDocument, format: PlanFormat) {
    match format {
        PlanFormat::Human => anstream::print!("{}", crate::render::human::plan(&document.plan())),
        PlanFormat::Markdown => print!("{}", crate::render::markdown::plan(document)),
        PlanFormat::Json => print!("{}", document.to_json()),
    }
}

/// Loads the metrics file, lets `update` change it, records the run, and saves it.
pub fn write_metrics(
    path: &std::path::Path,
    command: &str,
    success: bool,
    update: impl FnOnce(&mut crate::metrics::Metrics),
) -> Result<(), Failure> {
    let mut metrics = crate::metrics::Metrics::load(path);
    update(&mut metrics);
    crate::metrics::record_run(&mut metrics, command, success);
    metrics.save(path).map_err(|error| {
        Failure::Message(format!(
            "cannot write the metrics file {}: {error}",
            path.display()
        ))
    })
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration ({error}); write e.g. 30s, 5m, 1h"))
}
