//! Real-world input: Lemmy's 247 PostgreSQL migrations, and the example application.

mod common;

use std::path::PathBuf;

use common::{Backend, Project, TestDatabase};

fn corpus() -> PathBuf {
    common::corpus_dir()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> usize {
    std::fs::create_dir_all(to).unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            copied += 1;
        }
    }
    copied
}

#[test]
fn lemmy_migrations_apply_on_postgres_and_survive_crlf() {
    let source = corpus().join("lemmy-postgres");
    assert!(
        source.is_dir(),
        "the corpus is missing at {}",
        source.display()
    );
    let Some(db) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let project = Project::new();
    let migrations = project.path().join("db/migrations");
    assert_eq!(copy_dir(&source, &migrations), 247);
    project.schema_config(&db.url, "");

    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2).expect_contains("Plan: 247 to add");
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("Apply complete! 247 applied.");
    assert_eq!(db.history().len(), 247);
    assert!(db.history().iter().all(|row| row.ends_with(":1")));
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("No changes.");

    // A checkout with CRLF line endings changes nothing.
    let file = migrations.join("20190226002946_create_user.sql");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains('\r'));
    std::fs::write(&file, text.replace('\n', "\r\n")).unwrap();
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("No changes.");
}

/// What `ops.toml.example` manages besides migrations.
const EXAMPLE_RESOURCES: &[&str] = &[
    "keyset.hmac",
    "alerts.group[\"opsplan-runbook\"]",
    "mail.settings",
];

/// The README's first command, and the example on PostgreSQL through `DATABASE_URL`.
#[test]
fn example_configuration_runs_as_it_is() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut targets = vec![None];
    if let Some(db) = TestDatabase::create(Backend::Postgres) {
        targets.push(Some(db));
    }
    for db in targets {
        let mut project = Project::new();
        copy_dir(
            &root.join("db/migrations"),
            &project.path().join("db/migrations"),
        );
        std::fs::copy(
            root.join("ops.toml.example"),
            project.path().join("ops.toml"),
        )
        .unwrap();
        if let Some(db) = &db {
            project.set_env("DATABASE_URL", &db.url);
        }
        project.run(&["validate"]).expect_code(0);
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2);
        // Every migration, and every other concern the example enables.
        for entry in std::fs::read_dir(root.join("db/migrations")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let stem = name.trim_end_matches(".sql");
            plan.expect_contains(&format!("# schema.migration[\"{stem}\"]"));
        }
        for address in EXAMPLE_RESOURCES {
            plan.expect_contains(&format!("# {address}"));
        }
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project
            .run(&["plan", "--detailed-exitcode"])
            .expect_code(0)
            .expect_contains("No changes.");
        if db.is_none() {
            assert!(project.path().join(".opsplan/authsvc.db").is_file());
        }
    }
}
