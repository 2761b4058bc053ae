//! One writer at a time, under pressure: 2 to 8 `opsplan apply` processes started together
//! against one fresh database, many times over, on SQLite, PostgreSQL and MariaDB.
//!
//! In every trial exactly one process applies the migrations; every other one waits for the
//! lock (and says who holds it) and then finds nothing to do. Never an "already exists",
//! never a duplicate key while the history table is created, never two rows for one version.
//!
//! `OPSPLAN_PROOF_TRIALS` sets the trials per database (default 3; `scripts/proof
//! concurrency` runs 50).

mod common;

use std::process::Stdio;

use common::{ALL, Backend, Project, Run, TestDatabase, busy_statement};

fn trials() -> usize {
    std::env::var("OPSPLAN_PROOF_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// What a waiting run must say about the holder, per database.
fn names_the_holder(backend: Backend, line: &str) -> bool {
    match backend {
        // The holder's session carries `opsplan <user>@<host> pid <pid> since <time>`.
        Backend::Postgres => {
            line.contains(" pid ") && line.contains(" since ") && line.contains("server pid")
        }
        Backend::Sqlite => {
            line.contains(" pid ") && line.contains(" since ") && line.contains("lock file")
        }
        Backend::MySql => {
            line.contains(" pid ") && line.contains(" since ") && line.contains("connection ")
        }
    }
}

struct Trial {
    processes: usize,
    runs: Vec<Run>,
}

fn run_trial(backend: Backend, processes: usize) -> Option<(Trial, Vec<String>)> {
    let db = TestDatabase::create(backend)?;
    let project = Project::new();
    project.schema_config(&db.url, "");
    project.migration(
        "0001_create_accounts.sql",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
    );
    project.migration(
        "0002_wait_a_little.sql",
        &busy_statement(backend, 0.5, 1_000_000),
    );
    project.migration(
        "0003_add_plan_tier.sql",
        "ALTER TABLE accounts ADD COLUMN plan_tier VARCHAR(20) NOT NULL DEFAULT 'free';",
    );

    let children: Vec<_> = (0..processes)
        .map(|_| {
            project
                .command(&["apply", "--auto-approve"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start opsplan")
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap().into())
        .collect();
    let history = db.history();
    Some((Trial { processes, runs }, history))
}

/// Everything wrong with one trial; empty when it behaved.
fn problems(backend: Backend, trial: &Trial, history: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let appliers = trial
        .runs
        .iter()
        .filter(|run| run.code == 0 && run.stdout.contains("Apply complete! 3 applied."))
        .count();
    if appliers != 1 {
        problems.push(format!("{appliers} processes applied the migrations"));
    }
    for (n, run) in trial.runs.iter().enumerate() {
        let applied = run.code == 0 && run.stdout.contains("Apply complete! 3 applied.");
        let found_nothing = run.code == 0 && run.stdout.contains("No changes.");
        if !applied && !found_nothing {
            problems.push(format!("process {n} exited {}", run.code));
        }
        let text = run.all().to_lowercase();
        for word in ["already exists", "duplicate", "panicked"] {
            if text.contains(word) {
                problems.push(format!("process {n} said {word:?}"));
            }
        }
        for line in run
            .stderr
            .lines()
            .filter(|l| l.starts_with("Waiting for the"))
        {
            if !names_the_holder(backend, line) {
                problems.push(format!(
                    "process {n} waited without naming the holder: {line}"
                ));
            }
        }
    }
    if history != ["1:1", "2:1", "3:1"] {
        problems.push(format!("history holds {history:?}"));
    }
    problems
}

fn hammer(backend: Backend) {
    let trials = trials();
    let mut failures = Vec::new();
    let mut waited = 0;
    let mut ran = 0;
    for trial in 0..trials {
        // 2, 3, … 8 processes, then around again.
        let processes = 2 + trial % 7;
        let Some((outcome, history)) = run_trial(backend, processes) else {
            return;
        };
        ran += 1;
        waited += outcome
            .runs
            .iter()
            .filter(|run| run.stderr.contains("Waiting for the schema lock"))
            .count();
        let found = problems(backend, &outcome, &history);
        if !found.is_empty() {
            let output: Vec<String> = outcome.runs.iter().map(Run::all).collect();
            failures.push(format!(
                "trial {trial} ({} processes): {}\n{}",
                outcome.processes,
                found.join("; "),
                output.join("\n=====\n")
            ));
        }
    }
    eprintln!(
        "concurrency {backend:?}: {ran} trials of 2 to 8 applies, {} failures, {waited} runs \
         waited for the lock and named its holder",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        ran == 0 || waited > 0,
        "{backend:?}: no run ever waited for the lock, so the holder's name was never checked"
    );
}

#[test]
fn concurrent_applies_on_sqlite() {
    hammer(ALL[0]);
}

#[test]
fn concurrent_applies_on_postgres() {
    hammer(ALL[1]);
}

#[test]
fn concurrent_applies_on_mariadb() {
    hammer(ALL[2]);
}
