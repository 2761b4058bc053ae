//! One writer at a time: concurrent applies, and an apply killed mid-migration.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ALL, Backend, Project, TestDatabase, for_each_backend};

const ITERATIONS: usize = 20;

#[test]
fn two_concurrent_applies_apply_each_migration_once() {
    for_each_backend(ALL, |_| {});
    for backend in ALL {
        for iteration in 0..ITERATIONS {
            let Some(db) = TestDatabase::create(*backend) else {
                break;
            };
            let project = Project::new();
            project.schema_config(&db.url, "");
            project.migration(
                "0001_create_accounts.sql",
                "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
            );
            project.migration(
                "0002_add_plan_tier.sql",
                "ALTER TABLE accounts ADD COLUMN plan_tier VARCHAR(20) NOT NULL DEFAULT 'free';",
            );

            let children: Vec<_> = (0..2)
                .map(|_| {
                    project
                        .command(&["apply", "--auto-approve"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let runs: Vec<common::Run> = children
                .into_iter()
                .map(|child| child.wait_with_output().unwrap().into())
                .collect();

            let context = || {
                format!(
                    "{backend:?} iteration {iteration}\n{}\n=====\n{}",
                    runs[0].all(),
                    runs[1].all()
                )
            };
            let appliers = runs
                .iter()
                .filter(|run| run.stdout.contains("Apply complete! 2 applied."))
                .count();
            assert_eq!(appliers, 1, "{}", context());
            for run in &runs {
                let waited_then_found_nothing = run.code == 0 && run.stdout.contains("No changes.");
                let applied = run.code == 0 && run.stdout.contains("Apply complete! 2 applied.");
                let lock_busy =
                    run.code == 1 && run.stderr.contains("another opsplan apply holds the lock");
                assert!(
                    applied || waited_then_found_nothing || lock_busy,
                    "{}",
                    context()
                );
                let text = run.all().to_lowercase();
                assert!(!text.contains("already exists"), "{}", context());
                assert!(!text.contains("duplicate"), "{}", context());
            }
            assert_eq!(db.history(), ["1:1", "2:1"], "{}", context());
        }
    }
}

/// A project whose `users` table is applied, then an apply of `name` (which must take longer
/// than three seconds) killed with SIGKILL three seconds in.
fn kill_three_seconds_into(db: &TestDatabase, name: &str, sql: &str) -> Project {
    let project = Project::new();
    project.schema_config(&db.url, "");
    project.migration(
        "0001_create_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY);",
    );
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project.migration(name, sql);

    let mut child = project
        .command(&["apply", "--auto-approve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{:?}: the slow apply ended early",
        db.backend
    );
    child.kill().unwrap();
    child.wait().unwrap();
    project
}

#[test]
fn apply_killed_during_a_slow_migration_converges_on_rerun() {
    for (backend, slow) in [
        (
            Backend::Postgres,
            "SELECT pg_sleep(8);\nALTER TABLE users ADD COLUMN tz TEXT;\n",
        ),
        (
            Backend::MySql,
            "SELECT SLEEP(8);\nALTER TABLE users ADD COLUMN tz TEXT;\n",
        ),
        (
            Backend::Sqlite,
            // A recursive query that keeps SQLite busy for several seconds.
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000000) \
             SELECT count(*) FROM n;\nALTER TABLE users ADD COLUMN tz TEXT;\n",
        ),
    ] {
        let Some(db) = TestDatabase::create(backend) else {
            continue;
        };
        let project = kill_three_seconds_into(&db, "0003_slow.sql", slow);

        let started = std::time::Instant::now();
        let rerun = project.run(&["apply", "--auto-approve"]);
        rerun
            .expect_code(0)
            .expect_contains("Apply complete! 1 applied.");
        assert_eq!(db.history(), ["1:1", "3:1"], "{backend:?}");
        assert!(db.column_exists("users", "tz"));
        eprintln!(
            "{backend:?}: rerun after SIGKILL took {:?}",
            started.elapsed()
        );
    }
}

/// A file that cannot run atomically (MySQL DDL, or a no-transaction file), killed after
/// some of it committed: the next plan refuses the version instead of running its statements
/// again, and names the commands that resolve it.
#[test]
fn apply_killed_after_a_commit_it_cannot_undo_is_refused_until_resolved() {
    for (backend, file) in [
        (
            Backend::MySql,
            "CREATE TABLE audit (id BIGINT PRIMARY KEY);\nSELECT SLEEP(8);\n\
             ALTER TABLE users ADD COLUMN tz TEXT;\n",
        ),
        (
            Backend::Postgres,
            "-- opsplan:no-transaction\nCREATE TABLE audit (id BIGINT PRIMARY KEY);\n\
             SELECT pg_sleep(8);\nALTER TABLE users ADD COLUMN tz TEXT;\n",
        ),
    ] {
        let Some(db) = TestDatabase::create(backend) else {
            continue;
        };
        let project = kill_three_seconds_into(&db, "0002_audit.sql", file);

        assert!(db.table_exists("audit"), "{backend:?}");
        assert_eq!(db.history(), ["1:1", "2:0"], "{backend:?}");
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains(
                "version 2 is partially applied; resolve manually, then mark it. \
                 0002_audit.sql failed at ",
            )
            .expect_contains(
                "interrupted: the run stopped before it recorded the end of this migration \
                 (killed, or its connection was lost); some statements may have committed",
            )
            .expect_contains(
                "`opsplan schema mark-applied 2` (finished) or `opsplan schema mark-removed 2` \
                 (reverted)",
            );

        // The operator reverts what committed, forgets the version, and applies again.
        db.execute("DROP TABLE audit");
        project.run(&["schema", "mark-removed", "2"]).expect_code(0);
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert_eq!(db.history(), ["1:1", "2:1"], "{backend:?}");
        assert!(db.column_exists("users", "tz"), "{backend:?}");
    }
}
