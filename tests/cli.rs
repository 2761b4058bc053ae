//! The command line itself: configuration errors, exit codes, confirmation, the graph.

mod common;

use common::Project;

#[test]
fn every_configuration_problem_is_reported_with_its_place() {
    let project = Project::new();
    project.config(
        "[project]\nname = \"authsvc\"\n\n[schema]\nurll = \"sqlite://x.db\"\n\
         target = \"newest\"\nmigrations = \"${env:OPSPLAN_TEST_UNSET_VARIABLE}\"\n\n[keyset2]\n",
    );
    let run = project.run(&["validate"]);
    run.expect_code(1)
        .expect_contains("ops.toml:5:1: unknown key `schema.urll`")
        .expect_contains(
            "ops.toml:6:10: schema.target \"newest\" is neither \"latest\" nor a version number",
        )
        .expect_contains(
            "ops.toml:7:14: environment variable OPSPLAN_TEST_UNSET_VARIABLE is not set",
        )
        .expect_contains("ops.toml:9:2: unknown key `keyset2`")
        .expect_contains("4 problems found");
}

#[test]
fn toml_syntax_errors_name_line_and_column() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://a.db\nmigrations = 3\n");
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains("ops.toml:2:");
}

#[test]
fn missing_configuration_says_how_to_start() {
    let project = Project::new();
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains("cannot read configuration ops.toml")
        .expect_contains("opsplan init");
}

#[test]
fn a_dependency_cycle_is_printed_as_a_path() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://a.db\"\ndepends_on = [\"schema\"]\n");
    project
        .run(&["validate"])
        .expect_code(1)
        .expect_contains("ops.toml:3:15: dependency cycle: schema -> schema");
}

#[test]
fn an_unknown_dependency_lists_the_known_resources() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://a.db\"\ndepends_on = [\"keyset.hmca\"]\n");
    project
        .run(&["validate"])
        .expect_code(1)
        .expect_contains("schema depends on `keyset.hmca`, which is not a resource")
        .expect_contains("known resources: schema");
}

#[test]
fn apply_without_a_terminal_requires_auto_approve() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://.opsplan/a.db\"\n");
    project.migration("0001_a.sql", "CREATE TABLE a (id INTEGER);");
    project
        .run(&["apply"])
        .expect_code(1)
        .expect_contains("--auto-approve");
    assert!(!project.path().join(".opsplan/a.db").exists());
}

#[test]
fn plan_writes_nothing_and_exit_codes_follow_the_design() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://.opsplan/a.db\"\n");
    project.migration("0001_a.sql", "CREATE TABLE a (id INTEGER);");

    project
        .run(&["plan"])
        .expect_code(0)
        .expect_contains("Plan: 1 to add, 0 to change, 0 to destroy.");
    project.run(&["plan", "--detailed-exitcode"]).expect_code(2);
    assert!(
        !project.path().join(".opsplan").exists(),
        "plan must not create the database"
    );

    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("No changes.");
}

#[test]
fn environment_variables_and_defaults_fill_strings() {
    let mut project = Project::new();
    project.config(
        "[schema]\nurl = \"${env:OPSPLAN_TEST_DB:-sqlite://.opsplan/default.db}\"\n\
         migrations = \"${env:OPSPLAN_TEST_DIR}\"\n",
    );
    project.write("sql/0001_a.sql", "CREATE TABLE a (id INTEGER);");
    project.set_env("OPSPLAN_TEST_DIR", "sql");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert!(project.path().join(".opsplan/default.db").is_file());
}

#[test]
fn database_passwords_are_not_printed() {
    let project = Project::new();
    project.config("[schema]\nurl = \"postgres://app:hunter2-not-shown@127.0.0.1:1/none\"\n");
    let run = project.run(&["plan", "-vv"]);
    run.expect_code(1)
        .expect_contains("PostgreSQL at postgres://app:***@127.0.0.1:1/none");
    assert!(!run.all().contains("hunter2-not-shown"), "{}", run.all());
}

#[test]
fn graph_draws_dot_and_mermaid() {
    let project = Project::new();
    project.config("[schema]\nurl = \"sqlite://a.db\"\n");
    project
        .run(&["graph"])
        .expect_code(0)
        .expect_contains("digraph opsplan")
        .expect_contains("\"schema\";");
    project
        .run(&["graph", "--format", "mermaid"])
        .expect_code(0)
        .expect_contains("flowchart LR")
        .expect_contains("schema[\"schema\"]");
}

#[test]
fn init_writes_the_example_and_never_overwrites() {
    let project = Project::new();
    project.run(&["init"]).expect_code(0);
    let written = std::fs::read_to_string(project.path().join("ops.toml")).unwrap();
    assert_eq!(written, include_str!("../ops.toml.example"));
    project
        .run(&["init"])
        .expect_code(1)
        .expect_contains("already exists");
}

#[test]
fn target_limits_the_plan_to_one_resource_and_its_dependencies() {
    let project = Project::new();
    project.config(
        "[schema]\nurl = \"sqlite://.opsplan/a.db\"\n\n[alerts]\n[alerts.builtin]\n\
         migration_failures = { enabled = true }\n",
    );
    project.migration("0001_a.sql", "CREATE TABLE a (id INTEGER);");

    let run = project.run(&["plan", "--target", "schema.migration[\"0001_a\"]"]);
    run.expect_code(0)
        .expect_contains("# schema.migration[\"0001_a\"]")
        .expect_contains("the plan is limited to schema (--target)");
    assert!(!run.stdout.contains("alerts"), "{}", run.stdout);

    project
        .run(&["plan", "--target", "alerts", "--out", "plan.json"])
        .expect_code(0);
    project.run(&["apply", "plan.json"]).expect_code(0);
    assert!(
        !project.path().join(".opsplan/a.db").exists(),
        "only alerts were applied"
    );

    project
        .run(&["plan", "--target", "keyset.hmac"])
        .expect_code(1)
        .expect_contains(
            "--target keyset.hmac matches no resource; the configuration has alerts, schema",
        );
}
