//! The schema cases of `shared/cases/schema.md`, each on every database where it applies.

mod common;

use common::{ALL, Backend, Project, TRANSACTIONAL, TestDatabase, for_each_backend};

const CREATE_USERS: &str =
    "CREATE TABLE users (\n    id    BIGINT PRIMARY KEY,\n    email TEXT NOT NULL UNIQUE\n);\n";

/// MySQL cannot put a UNIQUE index on TEXT without a length.
fn create_users(backend: Backend) -> String {
    match backend {
        Backend::MySql => CREATE_USERS.replace("TEXT", "VARCHAR(255)"),
        _ => CREATE_USERS.to_string(),
    }
}

fn project_for(database: &TestDatabase, extra: &str) -> Project {
    let project = Project::new();
    project.schema_config(&database.url, extra);
    project
}

#[test]
fn crlf_only_change_is_not_a_modification() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        let file = project.migration("0001_create_users.sql", &create_users(db.backend));
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        let checksum_before = db.column("SELECT checksum FROM opsplan_schema_history");

        let lf = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, lf.replace('\n', "\r\n")).unwrap();
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(0).expect_contains("No changes.");
        assert!(!plan.all().contains("modified"), "{}", plan.all());
        assert!(!plan.all().contains("checksum"), "{}", plan.all());
        assert_eq!(
            db.column("SELECT checksum FROM opsplan_schema_history"),
            checksum_before
        );

        // Control: a real edit is a modification, and nothing runs.
        let edited = create_users(db.backend).replace("email TEXT", "email VARCHAR(320)");
        let edited = if db.backend == Backend::MySql {
            create_users(db.backend).replace("VARCHAR(255)", "VARCHAR(320)")
        } else {
            edited
        };
        std::fs::write(&file, edited).unwrap();
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("0001_create_users.sql was modified after it was applied");
        assert_eq!(db.history(), ["1:1"]);
    });
}

#[test]
fn applied_file_that_is_gone_is_named_with_its_description_and_checksum() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        project.migration("0001_create_users.sql", &create_users(db.backend));
        project.migration(
            "0002_add_last_login.sql",
            "ALTER TABLE users ADD COLUMN last_login TIMESTAMP;",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        let checksum = db.column("SELECT checksum FROM opsplan_schema_history WHERE version = 2");

        project.remove_migration("0002_add_last_login.sql");
        project.migration(
            "0003_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale TEXT;",
        );
        let plan = project.run(&["plan"]);
        plan.expect_code(1)
            .expect_contains("applied migration 0002_add_last_login.sql")
            .expect_contains("description add_last_login")
            .expect_contains(&checksum[0][..12])
            .expect_contains("is not found in db/migrations");
        project.run(&["apply", "--auto-approve"]).expect_code(1);
        assert_eq!(db.history(), ["1:1", "2:1"]);
        assert!(!db.column_exists("users", "locale"));
    });
}

#[test]
fn database_ahead_of_the_files_is_refused_without_down_migrations() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        project.migration("0001_create_users.sql", &create_users(db.backend));
        project.migration(
            "0002_add_last_login.sql",
            "ALTER TABLE users ADD COLUMN last_login TIMESTAMP;",
        );
        project.migration(
            "0003_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale TEXT;",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);

        project.remove_migration("0003_add_locale.sql");
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("the database is ahead of the desired state")
            .expect_contains("0003_add_locale.sql");
        project.run(&["apply", "--auto-approve"]).expect_code(1);
        assert_eq!(db.history(), ["1:1", "2:1", "3:1"]);
        assert!(db.column_exists("users", "locale"));
    });
}

#[test]
fn out_of_order_migration_is_refused_unless_allowed() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        project.migration("0001_create_users.sql", &create_users(db.backend));
        project.migration(
            "0003_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale VARCHAR(20);",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);

        project.migration(
            "0002_users_email_idx.sql",
            "CREATE INDEX users_email_idx ON users (email);",
        );
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("0002_users_email_idx.sql is out of order")
            .expect_contains("older than the latest applied version 0003");
        assert_eq!(db.history(), ["1:1", "3:1"]);

        // Opting in: exactly 0002 is pending, it applies, and nothing re-runs afterwards.
        project.schema_config(&db.url, "allow_out_of_order = true");
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2).expect_contains("Plan: 1 to add");
        assert!(plan.stdout.contains("0002_users_email_idx"));
        assert!(!plan.stdout.contains("apply migration 0003"));
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project
            .run(&["plan", "--detailed-exitcode"])
            .expect_code(0)
            .expect_contains("No changes.");
        assert_eq!(db.history(), ["1:1", "2:1", "3:1"]);
    });
}

#[test]
fn versions_are_ordered_as_numbers() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        project.migration(
            "1_create_accounts.sql",
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
        );
        project.migration(
            "2_add_email.sql",
            "ALTER TABLE accounts ADD COLUMN email VARCHAR(255);",
        );
        project.migration(
            "10_email_idx.sql",
            "CREATE INDEX accounts_email_idx ON accounts (email);",
        );

        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2);
        let order: Vec<&str> = plan
            .stdout
            .lines()
            .filter_map(|line| line.trim().strip_prefix("# schema.migration[\""))
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert_eq!(order, ["1_create_accounts", "2_add_email", "10_email_idx"]);

        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert_eq!(db.history(), ["1:1", "2:1", "10:1"]);
    });

    // With the database at {1, 2}, only 10 is pending.
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        project.migration(
            "1_create_accounts.sql",
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
        );
        project.migration(
            "2_add_email.sql",
            "ALTER TABLE accounts ADD COLUMN email VARCHAR(255);",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project.migration(
            "10_email_idx.sql",
            "CREATE INDEX accounts_email_idx ON accounts (email);",
        );
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2).expect_contains("Plan: 1 to add");
        assert!(plan.stdout.contains("# schema.migration[\"10_email_idx\"]"));
    });
}

#[test]
fn two_files_with_one_version_are_both_named() {
    for (first, second) in [
        ("0005_add_audit_log.sql", "0005_add_api_tokens.sql"),
        ("5_add_audit_log.sql", "0005_add_api_tokens.sql"),
    ] {
        for_each_backend(ALL, |db| {
            let project = project_for(&db, "");
            project.migration("0001_create_users.sql", &create_users(db.backend));
            project.migration(first, "CREATE TABLE audit_log (id BIGINT PRIMARY KEY);");
            project.migration(second, "CREATE TABLE api_tokens (id BIGINT PRIMARY KEY);");
            for command in [&["plan"][..], &["apply", "--auto-approve"][..]] {
                project
                    .run(command)
                    .expect_code(1)
                    .expect_contains("duplicate migration version 5")
                    .expect_contains(first)
                    .expect_contains(second);
            }
            assert!(!db.table_exists("opsplan_schema_history"));
            assert!(!db.table_exists("users"));
        });
    }
}

#[test]
fn badly_named_sql_files_are_listed_and_other_files_ignored() {
    for_each_backend(&[Backend::Sqlite, Backend::Postgres], |db| {
        let project = project_for(&db, "");
        project.migration("0001_create_users.sql", CREATE_USERS);
        project.migration("schema.sql", "CREATE TABLE x (id INT);");
        project.migration("V2__add_orders.sql", "CREATE TABLE orders (id INT);");
        project.migration("0003-add_notes.sql", "CREATE TABLE notes (id INT);");
        project.migration("README.md", "# notes");
        let plan = project.run(&["plan"]);
        plan.expect_code(1)
            .expect_contains("db/migrations/schema.sql")
            .expect_contains("db/migrations/V2__add_orders.sql")
            .expect_contains("db/migrations/0003-add_notes.sql")
            .expect_contains("<digits>_<description>.sql");
        assert!(!plan.all().contains("README.md"), "{}", plan.all());
        project.run(&["apply", "--auto-approve"]).expect_code(1);
        assert!(!db.table_exists("users"));
    });
}

#[test]
fn create_index_concurrently_in_a_transactional_file_is_caught_at_plan_time() {
    for_each_backend(&[Backend::Postgres], |db| {
        let project = project_for(&db, "");
        project.migration("0001_create_users.sql", CREATE_USERS);
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project.migration(
            "0004_users_email_idx.sql",
            "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);",
        );
        project.migration("0005_add_bio.sql", "ALTER TABLE users ADD COLUMN bio TEXT;");

        for command in [&["plan"][..], &["apply", "--auto-approve"][..]] {
            project
                .run(command)
                .expect_code(1)
                .expect_contains("0004_users_email_idx.sql")
                .expect_contains("cannot run inside a transaction block")
                .expect_contains("-- opsplan:no-transaction");
        }
        assert_eq!(db.history(), ["1:1"]);
        assert!(!db.column_exists("users", "bio"));
        let indexes =
            db.column("SELECT indexname::text FROM pg_indexes WHERE indexname = 'users_email_idx'");
        assert!(indexes.is_empty(), "{indexes:?}");
    });
}

#[test]
fn no_transaction_directive_runs_statements_separately() {
    for_each_backend(&[Backend::Postgres], |db| {
        let project = project_for(&db, "");
        project.migration(
            "0001_create_users.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT, name TEXT);",
        );
        project.migration(
            "0002_indexes.sql",
            "-- opsplan:no-transaction\n\
             CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n\
             CREATE INDEX CONCURRENTLY users_name_idx ON users (name);\n",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        let valid = db.column(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indisvalid AND c.relname IN ('users_email_idx', 'users_name_idx') ORDER BY 1",
        );
        assert_eq!(valid, ["users_email_idx", "users_name_idx"]);
        assert_eq!(db.history(), ["1:1", "2:1"]);
    });
}

#[test]
fn no_transaction_failure_says_what_was_committed_and_records_failure() {
    for_each_backend(&[Backend::Postgres], |db| {
        let project = project_for(&db, "");
        project.migration(
            "0001_create_users.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT);",
        );
        project.migration(
            "0002_indexes.sql",
            "-- opsplan:no-transaction\n\
             CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n\
             CREATE INDEX CONCURRENTLY users_missing_idx ON users (missing_column);\n",
        );
        project
            .run(&["apply", "--auto-approve"])
            .expect_code(1)
            .expect_contains("0002_indexes.sql")
            .expect_contains("statement 2 of 2 failed; statement 1 was committed");
        assert_eq!(db.history(), ["1:1", "2:0"]);
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("version 2 is partially applied; resolve manually, then mark it");
    });
}

#[test]
fn mysql_failure_after_implicit_commits_is_recorded_as_partial() {
    for_each_backend(&[Backend::MySql], |db| {
        let project = project_for(&db, "");
        project.migration(
            "0007_create_users.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, bio TEXT);",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project.migration(
            "0008_split_profiles.sql",
            "CREATE TABLE profiles (user_id BIGINT PRIMARY KEY, bio TEXT);\n\
             ALTER TABLE users DROP COLUMN bio;\n\
             INSERT INTO profiles (user_id, bio) SELECT id, bio FROM users;\n",
        );
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2)
            .expect_contains("0008_split_profiles.sql has 2 DDL statement(s) mixed with DML");

        project
            .run(&["apply", "--auto-approve"])
            .expect_code(1)
            .expect_contains("0008_split_profiles.sql")
            .expect_contains("statement 3 of 3")
            .expect_contains("Unknown column")
            .expect_contains(
                "statements 1–2 were DDL that MySQL/MariaDB committed implicitly and could not be rolled back",
            );
        assert_eq!(db.history(), ["7:1", "8:0"]);

        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("version 8 is partially applied; resolve manually, then mark it");
        // apply must not re-run the file from statement 1.
        let again = project.run(&["apply", "--auto-approve"]);
        again.expect_code(1);
        assert!(!again.all().contains("already exists"), "{}", again.all());

        // The operator finishes the data move by hand and marks the version applied.
        project.run(&["schema", "mark-applied", "8"]).expect_code(0);
        assert_eq!(db.history(), ["7:1", "8:1"]);
        project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
    });
}

#[test]
fn failed_transactional_migration_leaves_no_trace_and_recovers_without_force() {
    for_each_backend(TRANSACTIONAL, |db| {
        let project = project_for(&db, "");
        project.migration(
            "0001_init.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL,);",
        );
        let apply = project.run(&["apply", "--auto-approve"]);
        apply
            .expect_code(1)
            .expect_contains("0001_init.sql")
            .expect_contains("syntax error");
        assert!(!db.table_exists("users"));
        assert_eq!(db.history(), Vec::<String>::new());

        project.migration(
            "0001_init.sql",
            "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL);",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert!(db.table_exists("users"));
        assert_eq!(db.history(), ["1:1"]);
    });
}

#[test]
fn existing_database_is_adopted_only_by_baseline() {
    for_each_backend(ALL, |db| {
        let project = project_for(&db, "");
        db.execute(&create_users(db.backend));
        project.migration("0001_create_users.sql", &create_users(db.backend));
        project.migration(
            "0002_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale VARCHAR(20);",
        );

        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("opsplan schema baseline")
            .expect_contains("users");
        project.run(&["apply", "--auto-approve"]).expect_code(1);
        assert!(!db.column_exists("users", "locale"));

        project.run(&["schema", "baseline", "1"]).expect_code(0);
        let plan = project.run(&["plan", "--detailed-exitcode"]);
        plan.expect_code(2).expect_contains("Plan: 1 to add");
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert!(db.column_exists("users", "locale"));
        assert_eq!(db.history(), ["1:1", "2:1"]);
    });
}

#[test]
fn pinned_target_applies_up_to_that_version() {
    for_each_backend(&[Backend::Sqlite], |db| {
        let project = project_for(&db, "target = 1");
        project.migration("0001_create_users.sql", CREATE_USERS);
        project.migration(
            "0002_add_locale.sql",
            "ALTER TABLE users ADD COLUMN locale TEXT;",
        );
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert_eq!(db.history(), ["1:1"]);

        project.schema_config(&db.url, "target = \"latest\"");
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        assert_eq!(db.history(), ["1:1", "2:1"]);

        project.schema_config(&db.url, "target = 1");
        project
            .run(&["plan"])
            .expect_code(1)
            .expect_contains("the database is ahead of the desired state");
    });
}
