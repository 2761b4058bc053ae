//! Crash injection: `opsplan apply` killed with SIGKILL at a random moment, then run again,
//! for every resource kind. After each kill, and again after the rerun, the invariants that
//! make apply re-runnable must hold:
//!
//! - schema (SQLite, PostgreSQL and MariaDB in turn): no migration applied twice, none
//!   recorded without its effect, none applied atomically without its record; a MySQL file
//!   whose DDL committed before the kill is recorded as interrupted, the next plan refuses
//!   it and names the commands that resolve it;
//! - key set (the file store): every state on disk is a whole document that holds the key
//!   that was primary before the rotation began, with `HMAC_SECRET` first in `HMAC_SECRETS`;
//! - mail settings (the file store): the published settings are the old ones or the new
//!   ones, whole, never a mixture or a torn file;
//! - alert rules (a real Prometheus): every rule file on disk is one that Prometheus loads.
//!
//! The rerun then converges: apply succeeds and the next plan shows no changes.
//!
//! `OPSPLAN_PROOF_TRIALS` sets the trials per kind (default 3; `scripts/proof crash` runs 50
//! per kind, 200 in all). Each kind prints one summary line of trials and failures.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{ALL, Backend, Project, TestDatabase, busy_statement};
use prometheus::PrometheusServer;

fn trials() -> usize {
    std::env::var("OPSPLAN_PROOF_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// A uniformly drawn moment in `0..span`, from the operating system's random source.
fn random_moment(span: Duration) -> Duration {
    let millis = span.as_millis().max(1) as u64;
    Duration::from_millis(getrandom::u64().expect("random source") % millis)
}

/// Trials of one kind, and what went wrong in them.
struct Tally {
    kind: &'static str,
    trials: usize,
    killed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(kind: &'static str) -> Tally {
        Tally {
            kind,
            trials: 0,
            killed: 0,
            failures: Vec::new(),
        }
    }

    /// Records a broken invariant of trial `trial`, when `held` is false.
    fn check(&mut self, trial: usize, held: bool, what: impl FnOnce() -> String) {
        if !held {
            self.failures.push(format!("trial {trial}: {}", what()));
        }
    }

    /// Prints the summary line and fails the test when any invariant broke.
    fn finish(self) {
        eprintln!(
            "crash injection, {}: {} trials ({} killed during apply, {} finished first), {} failures",
            self.kind,
            self.trials,
            self.killed,
            self.trials - self.killed,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{}:\n{}",
            self.kind,
            self.failures.join("\n")
        );
        // With enough trials, kills that never land during an apply would prove nothing.
        assert!(
            self.trials < 10 || self.killed * 5 >= self.trials,
            "{}: only {} of {} kills landed during an apply",
            self.kind,
            self.killed,
            self.trials
        );
    }
}

/// Starts `apply --auto-approve`, kills it with SIGKILL at a random moment within `span`,
/// and says whether it was still running when the kill landed.
fn apply_and_kill(project: &Project, extra: &[&str], span: Duration, tally: &mut Tally) {
    let mut args = vec!["apply", "--auto-approve"];
    args.extend_from_slice(extra);
    let mut child = project
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start opsplan");
    std::thread::sleep(random_moment(span));
    let running = child.try_wait().expect("poll opsplan").is_none();
    let _ = child.kill(); // SIGKILL
    child.wait().expect("reap opsplan");
    tally.trials += 1;
    if running {
        tally.killed += 1;
    }
}

/// How long one uninterrupted apply takes here (the fastest of three, each `run` on what a
/// fresh `prepare` made), so that the kills land all over it: before it starts work, during
/// every step, and, when a run is quicker than that, after it ends.
fn span_of<T>(mut prepare: impl FnMut() -> T, run: impl Fn(&T)) -> Duration {
    (0..3)
        .map(|_| {
            let prepared = prepare();
            let started = Instant::now();
            run(&prepared);
            started.elapsed()
        })
        .min()
        .unwrap()
        .max(Duration::from_millis(20))
}

/// Reruns apply until the live state converges: exit 0, and then a plan with no changes.
fn rerun_converges(project: &Project, trial: usize, tally: &mut Tally) {
    let rerun = project.run(&["apply", "--auto-approve"]);
    tally.check(trial, rerun.code == 0, || {
        format!("the rerun exited {}: {}", rerun.code, rerun.all())
    });
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    tally.check(trial, plan.code == 0, || {
        format!(
            "the plan after the rerun exited {}: {}",
            plan.code,
            plan.all()
        )
    });
}

// ---- schema ----

const SCHEMA_VERSIONS: u64 = 6;
/// The migration with DDL after its first statement: on MySQL it cannot run atomically.
const DDL_VERSION: u64 = 4;

/// Six migrations; each leaves one row in `effects` naming its version, so an effect can be
/// counted. Version 4 also creates a table.
fn schema_project(db: &TestDatabase) -> Project {
    let project = Project::new();
    project.schema_config(&db.url, "");
    project.migration(
        "0001_create_effects.sql",
        "CREATE TABLE effects (version INTEGER NOT NULL, note VARCHAR(40));\n\
         INSERT INTO effects (version, note) VALUES (1, 'created');\n",
    );
    for version in 2..=SCHEMA_VERSIONS {
        let mut sql = format!(
            "INSERT INTO effects (version, note) VALUES ({version}, 'first half');\n{}\n",
            busy_statement(db.backend, 0.05, 100_000)
        );
        if version == DDL_VERSION {
            sql.push_str("CREATE TABLE audit_marks (id INTEGER PRIMARY KEY);\n");
        }
        sql.push_str(&format!(
            "UPDATE effects SET note = 'whole' WHERE version = {version};\n"
        ));
        project.migration(&format!("{version:04}_step_{version}.sql"), &sql);
    }
    project
}

/// Each version's history row (`true` when successful) and its rows in `effects`.
fn schema_state(db: &TestDatabase) -> (BTreeMap<u64, bool>, BTreeMap<u64, Vec<String>>) {
    let history = db
        .history()
        .iter()
        .map(|row| {
            let (version, success) = row.split_once(':').unwrap();
            (version.parse().unwrap(), success == "1")
        })
        .collect();
    let mut effects: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    if db.table_exists("effects") {
        let query = match db.backend {
            Backend::Sqlite => "SELECT version || ':' || note FROM effects",
            _ => "SELECT CONCAT_WS(':', version, note) FROM effects",
        };
        for row in db.column(query) {
            let (version, note) = row.split_once(':').unwrap();
            effects
                .entry(version.parse().unwrap())
                .or_default()
                .push(note.to_string());
        }
    }
    (history, effects)
}

/// What a finished migration leaves in `effects`.
fn whole(version: u64) -> Vec<String> {
    vec![if version == 1 { "created" } else { "whole" }.to_string()]
}

/// Whether `version` runs atomically on `backend` (MySQL commits DDL implicitly).
fn atomic(backend: Backend, version: u64) -> bool {
    backend != Backend::MySql || !(version == 1 || version == DDL_VERSION)
}

/// The invariants of the state a kill left, and an operator's resolution of a version that
/// MySQL could not roll back: revert it by hand, then `opsplan schema mark-removed`.
fn check_schema_after_kill(db: &TestDatabase, project: &Project, trial: usize, tally: &mut Tally) {
    let backend = db.backend;
    let (history, effects) = schema_state(db);
    for version in 1..=SCHEMA_VERSIONS {
        let rows = effects.get(&version).cloned().unwrap_or_default();
        tally.check(trial, rows.len() <= 1, || {
            format!(
                "{backend:?}: version {version} took effect {} times",
                rows.len()
            )
        });
        match history.get(&version) {
            Some(true) => tally.check(trial, rows == whole(version), || {
                format!("{backend:?}: version {version} is recorded, its effects are {rows:?}")
            }),
            Some(false) => tally.check(trial, !atomic(backend, version), || {
                format!("{backend:?}: atomic version {version} has an unsuccessful row")
            }),
            None => {
                let untouched = rows.is_empty()
                    && !(version == DDL_VERSION && db.table_exists("audit_marks"))
                    && !(version == 1 && db.table_exists("effects"));
                tally.check(trial, untouched, || {
                    format!(
                        "{backend:?}: version {version} is not recorded, yet it left \
                         {rows:?} (history {history:?})"
                    )
                });
            }
        }
    }

    let interrupted: Vec<u64> = history
        .iter()
        .filter(|(_, success)| !**success)
        .map(|(version, _)| *version)
        .collect();
    for version in interrupted {
        let plan = project.run(&["plan"]);
        let named = plan.code == 1
            && plan
                .all()
                .contains(&format!("version {version} is partially applied"))
            && plan
                .all()
                .contains(&format!("opsplan schema mark-removed {version}"));
        tally.check(trial, named, || {
            format!(
                "{backend:?}: the plan after an interrupted version {version} exited {}: {}",
                plan.code,
                plan.all()
            )
        });
        if version == 1 {
            db.execute("DROP TABLE IF EXISTS effects");
        } else {
            db.execute(&format!("DELETE FROM effects WHERE version = {version}"));
        }
        if version == DDL_VERSION {
            db.execute("DROP TABLE IF EXISTS audit_marks");
        }
        let resolved = project.run(&["schema", "mark-removed", &version.to_string()]);
        tally.check(trial, resolved.code == 0, || {
            format!("{backend:?}: mark-removed {version}: {}", resolved.all())
        });
    }
}

#[test]
fn schema_apply_killed_at_random_moments_converges() {
    let mut tally = Tally::new("schema");
    let mut spans = BTreeMap::new();
    for trial in 0..trials() {
        let backend = ALL[trial % ALL.len()];
        let Some(db) = TestDatabase::create(backend) else {
            continue;
        };
        let span = *spans.entry(trial % ALL.len()).or_insert_with(|| {
            span_of(
                || {
                    let scratch = TestDatabase::create(backend).expect("the server answered");
                    let timed = schema_project(&scratch);
                    (scratch, timed)
                },
                |(_, timed)| {
                    timed.run(&["apply", "--auto-approve"]).expect_code(0);
                },
            )
        });
        let project = schema_project(&db);
        apply_and_kill(&project, &[], span, &mut tally);
        check_schema_after_kill(&db, &project, trial, &mut tally);
        rerun_converges(&project, trial, &mut tally);

        let (history, effects) = schema_state(&db);
        let converged = (1..=SCHEMA_VERSIONS)
            .all(|v| history.get(&v) == Some(&true) && effects.get(&v) == Some(&whole(v)));
        tally.check(trial, converged, || {
            format!("{backend:?}: after the rerun, history {history:?}, effects {effects:?}")
        });
    }
    tally.finish();
}

// ---- key set ----

#[test]
fn keyset_rotation_killed_at_random_moments_keeps_the_primary() {
    let mut tally = Tally::new("key set");
    let span = span_of(
        || {
            let timed = Project::new();
            timed.config("[keyset]\n");
            timed.run(&["apply", "--auto-approve"]).expect_code(0);
            timed
        },
        |timed| {
            timed
                .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
                .expect_code(0);
        },
    );

    for trial in 0..trials() {
        let project = Project::new();
        project.config("[keyset]\n");
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        let store = project.path().join(".opsplan/keys.json");
        let primary = match published_keys(&store) {
            Ok(keys) => keys[0].clone(),
            Err(problem) => panic!("the first apply published no key set: {problem}"),
        };

        apply_and_kill(&project, &["--replace", "keyset.hmac"], span, &mut tally);
        let after_kill = published_keys(&store);
        tally.check(
            trial,
            after_kill
                .as_ref()
                .is_ok_and(|keys| keys.contains(&primary)),
            || format!("after the kill the key store is {after_kill:?}, without the old primary"),
        );
        rerun_converges(&project, trial, &mut tally);
        let after_rerun = published_keys(&store);
        tally.check(
            trial,
            after_rerun
                .as_ref()
                .is_ok_and(|keys| keys.contains(&primary)),
            || format!("after the rerun the key store lacks the old primary: {after_rerun:?}"),
        );
    }
    tally.finish();
}

/// The published `HMAC_SECRETS`, checked to be a whole document whose `HMAC_SECRET` is the
/// first key. Key material stays inside the test.
fn published_keys(store: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(store).map_err(|e| format!("unreadable: {e}"))?;
    let fields: BTreeMap<String, String> =
        serde_json::from_str(&text).map_err(|e| format!("not a whole document: {e}"))?;
    let (Some(list), Some(primary), Some(_)) = (
        fields.get("HMAC_SECRETS"),
        fields.get("HMAC_SECRET"),
        fields.get("opsplan_metadata"),
    ) else {
        return Err(format!("fields missing: {:?}", fields.keys()));
    };
    let keys: Vec<String> = list.split(',').map(str::to_string).collect();
    if keys[0] != *primary {
        return Err("HMAC_SECRET is not the first of HMAC_SECRETS".to_string());
    }
    Ok(keys)
}

// ---- mail settings ----

#[test]
fn mail_settings_killed_at_random_moments_are_never_half_written() {
    let Some(servers) = common::smtp::SmtpServers::start("ops", &["unused-password"]) else {
        return;
    };
    let smtp = format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         from = \"Auth Service <no-reply@example.com>\"\n",
        servers.plain
    );
    let console = "[mail]\nprovider = \"console\"\n".to_string();
    // The published fields of each desired state, metadata aside.
    let fields_of = |config: &str| -> BTreeMap<String, String> {
        let project = Project::new();
        project.config(config);
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        published_settings(&project.path().join(".opsplan/mail.json")).expect("published")
    };
    let (smtp_fields, console_fields) = (fields_of(&smtp), fields_of(&console));

    let span = span_of(
        || {
            let timed = Project::new();
            timed.config(&console);
            timed.run(&["apply", "--auto-approve"]).expect_code(0);
            timed.config(&smtp);
            timed
        },
        |timed| {
            timed.run(&["apply", "--auto-approve"]).expect_code(0);
        },
    );

    let mut tally = Tally::new("mail settings");
    for trial in 0..trials() {
        let project = Project::new();
        let (from, to) = if trial.is_multiple_of(2) {
            (&console, &smtp)
        } else {
            (&smtp, &console)
        };
        project.config(from);
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project.config(to);

        apply_and_kill(&project, &[], span, &mut tally);
        let store = project.path().join(".opsplan/mail.json");
        let after_kill = published_settings(&store);
        let whole = after_kill
            .as_ref()
            .is_ok_and(|fields| *fields == smtp_fields || *fields == console_fields);
        tally.check(trial, whole, || {
            format!("after the kill the settings are {after_kill:?}")
        });
        rerun_converges(&project, trial, &mut tally);
    }
    tally.finish();
}

/// The published mail settings without their metadata, or why they are not a whole document.
fn published_settings(store: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(store).map_err(|e| format!("unreadable: {e}"))?;
    let mut fields: BTreeMap<String, String> =
        serde_json::from_str(&text).map_err(|e| format!("not a whole document: {e}"))?;
    fields
        .remove("opsplan_metadata")
        .ok_or("no opsplan_metadata field")?;
    Ok(fields)
}

// ---- alert rules ----

/// Two groups whose rules differ between the two desired states, so every apply writes.
fn alerts_config(server: &PrometheusServer, variant: usize) -> String {
    let (wait, threshold) = if variant.is_multiple_of(2) {
        ("5m", 1)
    } else {
        ("10m", 2)
    };
    let mut config = format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{}\"\nrules_dir = \"{}\"\n",
        server.url,
        server.rules_dir().display()
    );
    for group in ["auth", "queue"] {
        config.push_str(&format!(
            "\n[[alerts.group]]\nname = \"{group}\"\n\n[[alerts.group.rule]]\n\
             alert = \"{group}Down\"\nexpr = 'up{{job=\"{group}\"}} < {threshold}'\n\
             for = \"{wait}\"\nlabels = {{ severity = \"page\" }}\n"
        ));
    }
    config
}

/// Whether Prometheus loads every rule file in its rule folders right now.
fn prometheus_loads(server: &PrometheusServer) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let code = agent
        .post(&format!("{}/-/reload", server.url))
        .send_empty()
        .map(|response| response.status().as_u16())
        .map_err(|e| format!("reload request: {e}"))?;
    if code == 200 {
        return Ok(());
    }
    let files: Vec<String> = std::fs::read_dir(server.rules_dir())
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Err(format!(
        "reload answered {code}; the rule folder holds {files:?}"
    ))
}

#[test]
fn alert_rules_killed_at_random_moments_stay_loadable() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&alerts_config(&server, 0));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let mut variant = 0;
    let span = span_of(
        || {
            variant += 1;
            project.config(&alerts_config(&server, variant));
        },
        |()| {
            project.run(&["apply", "--auto-approve"]).expect_code(0);
        },
    );

    let mut tally = Tally::new("alert rules");
    for trial in 0..trials() {
        project.config(&alerts_config(&server, trial));
        apply_and_kill(&project, &[], span, &mut tally);
        let loads = prometheus_loads(&server);
        tally.check(trial, loads.is_ok(), || {
            format!("after the kill: {loads:?}")
        });
        rerun_converges(&project, trial, &mut tally);
        let loaded: Vec<String> = server.loaded().into_iter().map(|g| g.name).collect();
        tally.check(trial, loaded == ["auth", "queue"], || {
            format!("after the rerun Prometheus has loaded {loaded:?}")
        });
    }
    tally.finish();
}
