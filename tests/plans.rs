//! Plans as artifacts: saved plans and their staleness, renderings, drift, metrics, history.

mod common;

use std::process::Command;

use common::{ALL, Backend, Project, TestDatabase, for_each_backend, server_available};

fn two_migrations(project: &Project) {
    project.migration(
        "0001_create_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email VARCHAR(320) NOT NULL);",
    );
    project.migration(
        "0002_add_locale.sql",
        "ALTER TABLE users ADD COLUMN locale VARCHAR(20);",
    );
}

fn applies_recorded(db: &TestDatabase) -> Vec<String> {
    if !db.table_exists("opsplan_apply_history") {
        return Vec::new();
    }
    db.column("SELECT status FROM opsplan_apply_history ORDER BY run_id, seq")
}

#[test]
fn a_saved_plan_applies_once_and_is_stale_the_second_time() {
    for_each_backend(ALL, |db| {
        let project = Project::new();
        project.schema_config(&db.url, "");
        two_migrations(&project);

        project.run(&["plan", "--out", "plan.json"]).expect_code(0);
        let document: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(project.path().join("plan.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(document["format_version"], 1);
        assert_eq!(document["resources"][0]["fingerprint"], "absent");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(project.path().join("plan.json"))
                .unwrap()
                .permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }

        project
            .run(&["apply", "plan.json"])
            .expect_code(0)
            .expect_contains("Apply complete! 2 applied.");
        assert_eq!(db.history(), ["1:1", "2:1"]);
        let recorded = applies_recorded(&db);
        assert_eq!(recorded, ["applied", "applied"]);

        project
            .run(&["apply", "plan.json"])
            .expect_code(1)
            .expect_contains("saved plan is stale: live state changed since the plan was created")
            .expect_contains("schema (planned against absent, now sha256:");
        assert_eq!(db.history(), ["1:1", "2:1"]);
        assert_eq!(
            applies_recorded(&db),
            recorded,
            "the stale apply ran nothing"
        );
    });
}

#[test]
fn a_saved_plan_goes_stale_when_another_apply_moves_live_state_first() {
    for_each_backend(&[Backend::Sqlite, Backend::Postgres], |db| {
        let project = Project::new();
        project.schema_config(&db.url, "");
        two_migrations(&project);
        project.run(&["apply", "--auto-approve"]).expect_code(0);

        project.migration(
            "0003_add_name.sql",
            "ALTER TABLE users ADD COLUMN name TEXT;",
        );
        project.run(&["plan", "--out", "plan.json"]).expect_code(0);
        // Someone applies without the saved plan in between.
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project
            .run(&["apply", "plan.json"])
            .expect_code(1)
            .expect_contains("saved plan is stale");
        assert_eq!(db.history(), ["1:1", "2:1", "3:1"]);
    });
}

#[test]
fn a_saved_plan_from_another_configuration_is_refused() {
    let db = TestDatabase::create(Backend::Sqlite).unwrap();
    let project = Project::new();
    project.schema_config(&db.url, "");
    two_migrations(&project);
    project.run(&["plan", "--out", "plan.json"]).expect_code(0);
    project.schema_config(&db.url, "target = 1");
    project
        .run(&["apply", "plan.json"])
        .expect_code(1)
        .expect_contains("the saved plan was made from a different configuration");
    assert!(db.history().is_empty());
}

#[test]
fn a_plan_file_of_an_unknown_format_version_is_refused_with_the_way_out() {
    let project = Project::new();
    project.write("plan.json", "{\"format_version\": 99}");
    project
        .run(&["show", "plan.json"])
        .expect_code(1)
        .expect_contains("plan.json has plan format version 99")
        .expect_contains("run plan again");
}

#[test]
fn show_renders_a_saved_plan_in_every_format_and_json_matches_the_schema() {
    let db = TestDatabase::create(Backend::Sqlite).unwrap();
    let project = Project::new();
    project.schema_config(&db.url, "");
    two_migrations(&project);
    project.run(&["plan", "--out", "plan.json"]).expect_code(0);

    project
        .run(&["show", "plan.json"])
        .expect_code(0)
        .expect_contains("+ schema.migration[\"0001_create_users\"]")
        .expect_contains("Plan: 2 to add, 0 to change, 0 to destroy.");
    project
        .run(&["show", "plan.json", "--format", "markdown"])
        .expect_code(0)
        .expect_contains("### opsplan plan: 2 to add, 0 to change, 0 to destroy")
        .expect_contains("<details>")
        .expect_contains("```mermaid");

    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../docs/plan.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for args in [
        &["show", "plan.json", "--format", "json"][..],
        &["plan", "--format", "json"][..],
    ] {
        let run = project.run(args);
        run.expect_code(0);
        let document: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}\n{}", run.stdout);
        assert_eq!(
            document["resources"][0]["changes"][0]["actions"],
            serde_json::json!(["create"])
        );
    }
}

#[test]
fn markdown_of_five_thousand_migrations_stays_under_the_comment_limit() {
    let db = TestDatabase::create(Backend::Sqlite).unwrap();
    let project = Project::new();
    project.schema_config(&db.url, "");
    for version in 1..=5000 {
        project.migration(
            &format!("{version:05}_create_table_{version}.sql"),
            &format!("CREATE TABLE t{version} (id INTEGER);"),
        );
    }
    let run = project.run(&["plan", "--format", "markdown"]);
    run.expect_code(0)
        .expect_contains("### opsplan plan: 5000 to add, 0 to change, 0 to destroy")
        .expect_contains("**Truncated:**")
        .expect_contains("more were cut to stay under GitHub's 65536-character comment limit");
    let characters = run.stdout.chars().count();
    assert!(characters < 65_536, "{characters} characters");
    assert!(
        characters > 50_000,
        "the budget is used, not wasted: {characters}"
    );
}

#[test]
fn drift_reports_an_edited_migration_apart_from_pending_work() {
    for_each_backend(&[Backend::Sqlite, Backend::Postgres], |db| {
        let project = Project::new();
        project.schema_config(&db.url, "");
        two_migrations(&project);
        project.run(&["apply", "--auto-approve"]).expect_code(0);

        // Only new files: pending, not drift.
        project.migration(
            "0003_add_name.sql",
            "ALTER TABLE users ADD COLUMN name TEXT;",
        );
        project
            .run(&["drift"])
            .expect_code(0)
            .expect_contains("No drift")
            .expect_contains(
                "+ schema.migration[\"0003_add_name\"]: apply migration 0003_add_name.sql",
            );

        // An applied file edited: drift, named.
        project.migration(
            "0002_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale VARCHAR(40);",
        );
        let run = project.run(&["drift", "--format", "json"]);
        run.expect_code(2);
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(
            report["drift"][0]["address"],
            "schema.migration[\"0002_add_locale\"]"
        );
        assert!(
            report["drift"][0]["message"]
                .as_str()
                .unwrap()
                .contains("0002_add_locale.sql was modified after it was applied")
        );
        assert_eq!(
            report["pending"][0]["address"],
            "schema.migration[\"0003_add_name\"]"
        );

        // The ignore list silences it.
        project.config(&format!(
            "[schema]\nurl = \"{}\"\n[drift]\nignore = [\"schema.migration[\\\"0002*\"]\n",
            db.url
        ));
        project
            .run(&["drift"])
            .expect_code(0)
            .expect_contains("Ignored by [drift] ignore: 1");
        assert_eq!(db.history(), ["1:1", "2:1"], "drift writes nothing");
    });
}

#[test]
fn metrics_file_counts_failures_across_runs_and_passes_promtool() {
    let db = TestDatabase::create(Backend::Sqlite).unwrap();
    let project = Project::new();
    project.schema_config(&db.url, "");
    project.migration("0001_bad.sql", "CREATE TABLE broken (id INTEGER,);");

    for _ in 0..2 {
        project
            .run(&[
                "apply",
                "--auto-approve",
                "--metrics-file",
                "metrics/opsplan.prom",
            ])
            .expect_code(1);
    }
    project
        .run(&["plan", "--metrics-file", "metrics/opsplan.prom"])
        .expect_code(0);
    let text = std::fs::read_to_string(project.path().join("metrics/opsplan.prom")).unwrap();
    assert!(
        text.contains("opsplan_apply_failures_total{resource=\"schema\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("opsplan_last_run_success{command=\"apply\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("opsplan_last_run_success{command=\"plan\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("opsplan_pending_changes{resource=\"schema\"} 1\n"),
        "{text}"
    );

    let promtool = which("promtool");
    match promtool {
        Some(promtool) => {
            let output = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(std::fs::File::open(project.path().join("metrics/opsplan.prom")).unwrap())
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("promtool is not installed, and CI=true requires it")
        }
        None => eprintln!("SKIPPED: promtool is not installed"),
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}

#[test]
fn history_lists_every_apply_with_its_steps() {
    for_each_backend(ALL, |db| {
        let project = Project::new();
        project.schema_config(&db.url, "");
        project.migration(
            "0001_create_users.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY);",
        );
        project
            .run(&["history"])
            .expect_code(0)
            .expect_contains("No apply recorded yet");
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project.migration("0002_broken.sql", "ALTER TABLE nope ADD COLUMN x INTEGER;");
        project.run(&["apply", "--auto-approve"]).expect_code(1);

        let run = project.run(&["history", "--format", "json"]);
        run.expect_code(0);
        let steps: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        let seen: Vec<(String, String)> = steps
            .iter()
            .map(|s| {
                (
                    s["address"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "schema.migration[\"0002_broken\"]".to_string(),
                    "failed".to_string()
                ),
                (
                    "schema.migration[\"0001_create_users\"]".to_string(),
                    "applied".to_string()
                ),
            ],
            "{:?}",
            db.backend
        );
        assert!(
            steps[0]["plan_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        project
            .run(&["history"])
            .expect_code(0)
            .expect_contains("(failed)")
            .expect_contains("failed   schema.migration[\"0002_broken\"]");
    });
}

#[test]
fn apply_streams_one_json_object_per_event() {
    let db = TestDatabase::create(Backend::Sqlite).unwrap();
    let project = Project::new();
    project.schema_config(&db.url, "");
    two_migrations(&project);
    let run = project.run(&["apply", "--auto-approve", "--format", "json"]);
    run.expect_code(0);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "step_started",
            "step_finished",
            "step_started",
            "step_finished",
            "apply_finished"
        ]
    );
    assert_eq!(events[1]["status"], "applied");
    assert_eq!(events[4]["applied"], 2);
}

#[test]
fn database_credentials_never_reach_plans_renderings_or_logs() {
    if !server_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let password = "pw-9f2c-never-printed";
    let mut project = Project::new();
    project.config("[schema]\n");
    two_migrations(&project);
    // A user that does not exist: every command fails to connect, after handling the URL.
    project.set_env(
        "DATABASE_URL",
        &format!("postgres://opsplan_nobody:{password}@127.0.0.1:5432/postgres"),
    );
    let mut outputs = Vec::new();
    for args in [
        &["plan"][..],
        &["plan", "-vv"][..],
        &["plan", "--format", "json"][..],
        &["plan", "--format", "markdown"][..],
        &["apply", "--auto-approve", "-vv"][..],
        &["drift", "--format", "json"][..],
        &["history"][..],
    ] {
        outputs.push(project.run(args).all());
    }
    let mut traced = project.command(&["plan"]);
    traced.env("RUST_LOG", "trace");
    outputs.push(common::Run::from(traced.output().unwrap()).all());
    for output in &outputs {
        assert!(!output.contains(password), "{output}");
    }
    assert!(outputs[0].contains("postgres://opsplan_nobody:***@127.0.0.1:5432/postgres"));
}
