//! Saved plans and renderings across every concern: the plans-and-secrets cases and the
//! pinned renderings of a plan that touches every resource kind.

mod common;

use std::path::{Path, PathBuf};

use common::openbao::OpenBao;
use common::smtp::SmtpServers;
use common::{Backend, Project, Run, TestDatabase};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_migrations(project: &Project) {
    for entry in std::fs::read_dir(root().join("db/migrations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            project.path().join("db/migrations").join(entry.file_name()),
        )
        .unwrap();
    }
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

const RULES: &str = "groups:\n- name: auth\n  rules:\n  - alert: AuthDown\n    \
                     expr: up{job=\"authsvc\"} == 0\n    for: 5m\n";

/// Case 11: a plan saved against empty live state applies once; the second apply is stale
/// and touches nothing.
#[test]
fn saved_plan_made_against_empty_state_cannot_be_replayed() {
    let Some(db) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let mut project = Project::new();
    project.migration(
        "0001_create_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL);",
    );
    project.migration(
        "0002_add_locale.sql",
        "ALTER TABLE users ADD COLUMN locale TEXT;",
    );
    project.write("alerts/auth.rules.yml", RULES);
    project.config(&format!(
        "[schema]\nurl = \"{}\"\n\n[keyset]\nstore = \"env\"\nmin_key_length = 16\n\n\
         [alerts]\ninclude = [\"alerts/*.yml\"]\n[alerts.builtin]\nmigration_failures = \
         {{ enabled = false }}\ntoken_reuse = {{ enabled = false }}\nrate_limit_spikes = \
         {{ enabled = false }}\n",
        db.url
    ));
    project.set_env(
        "HMAC_SECRETS",
        "k-2025-primary-0123456789,k-2024-old-0123456789",
    );

    let plan = project.run(&["plan", "--out", "plan.json", "--detailed-exitcode"]);
    plan.expect_code(2);
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.path().join("plan.json")).unwrap())
            .unwrap();
    let fingerprints: Vec<(&str, &str)> = document["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap(),
                r["fingerprint"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        fingerprints.contains(&("schema", "absent")),
        "{fingerprints:?}"
    );
    assert!(
        fingerprints.contains(&("alerts", "absent")),
        "{fingerprints:?}"
    );

    project.run(&["apply", "plan.json"]).expect_code(0);
    assert_eq!(db.history(), ["1:1", "2:1"]);
    let rules = project.path().join(".opsplan/rules/auth.rules.yml");
    let written = modified(&rules);
    let applies = db.column("SELECT COUNT(*) FROM opsplan_apply_history");

    std::thread::sleep(std::time::Duration::from_millis(20));
    project
        .run(&["apply", "plan.json"])
        .expect_code(1)
        .expect_contains("saved plan is stale: live state changed since the plan was created")
        .expect_contains("schema (planned against absent")
        .expect_contains("alerts (planned against absent");
    assert_eq!(db.history(), ["1:1", "2:1"]);
    assert_eq!(
        db.column("SELECT COUNT(*) FROM opsplan_apply_history"),
        applies
    );
    assert_eq!(modified(&rules), written, "the rule file was not rewritten");
}

/// Case 12: no secret in any command's output, in the saved plan, or in its renderings.
#[test]
fn secrets_stay_out_of_saved_plans_renderings_and_logs() {
    let Some(bao) = OpenBao::start() else { return };
    let Some(servers) = SmtpServers::start("ops", &["s3cr3t-Pa55-word"]) else {
        return;
    };
    bao.enable_kv("kv2", 2);
    bao.kv2_put(
        "kv2",
        "app/hmac",
        serde_json::json!({ "HMAC_SECRETS": "old-key-1a7d" }),
    );
    bao.put_policy(
        "app",
        "path \"kv2/data/app/*\" { capabilities = [\"read\", \"create\", \"update\"] }\n\
         path \"kv2/metadata/app/*\" { capabilities = [\"read\"] }\n\
         path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }",
    );
    let token = bao.create_token(&["app"], None);

    let mut project = Project::new();
    project.config(&format!(
        "[keyset]\nmin_key_length = 8\n\n[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\n\
         port = {}\ntls = \"starttls\"\ntls_ca = \"{}\"\nuser = \"ops\"\n\
         password = \"${{env:SMTP_PASS}}\"\nfrom = \"ops@example.com\"\n",
        servers.starttls,
        servers.ca.display()
    ));
    project.set_env("KMS_PROVIDER", "vault");
    project.set_env("VAULT_ADDR", &bao.addr);
    project.set_env("VAULT_TOKEN", &token);
    project.set_env("VAULT_KV_PATH", "kv2/app/hmac");
    project.set_env("HMAC_SECRETS", "new-primary-9f2c,old-key-1a7d");
    project.set_env("SMTP_PASS", "s3cr3t-Pa55-word");
    let secrets = [
        "new-primary-9f2c",
        "old-key-1a7d",
        "s3cr3t-Pa55-word",
        "hvs.TESTTOKEN123",
        token.as_str(),
    ];

    let mut runs: Vec<(String, Run)> = Vec::new();
    let plan = project.run(&["plan", "--out", "p.json"]);
    plan.expect_code(0);
    runs.push(("plan --out".into(), plan));
    for args in [
        &["plan"][..],
        &["plan", "-v"][..],
        &["plan", "-vv"][..],
        &["plan", "--format", "json"][..],
        &["plan", "--format", "markdown"][..],
        &["show", "p.json"][..],
        &["show", "p.json", "--format", "json"][..],
        &["show", "p.json", "--format", "markdown"][..],
        &["drift", "--format", "json"][..],
    ] {
        runs.push((args.join(" "), project.run(args)));
    }
    let mut traced = project.command(&["plan", "-vv"]);
    traced.env("RUST_LOG", "trace");
    runs.push((
        "RUST_LOG=trace plan".into(),
        traced.output().unwrap().into(),
    ));

    // The case's token, which this Vault refuses: every command fails, and says so safely.
    for args in [
        &["plan", "-vv"][..],
        &["apply", "--auto-approve", "-vv"][..],
    ] {
        let mut refused = project.command(args);
        refused
            .env("VAULT_TOKEN", "hvs.TESTTOKEN123")
            .env("RUST_LOG", "trace");
        let run: Run = refused.output().unwrap().into();
        assert_eq!(run.code, 1, "{}", run.all());
        runs.push((format!("{} with a refused token", args.join(" ")), run));
    }

    // A deliberately failing apply: Vault unreachable.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut failing = project.command(&["apply", "--auto-approve", "-vv"]);
    failing.env("VAULT_ADDR", &closed_addr);
    let failed: Run = failing.output().unwrap().into();
    assert_eq!(failed.code, 1, "{}", failed.all());
    runs.push(("failing apply".into(), failed));

    for (label, run) in &runs {
        for secret in secrets {
            assert_eq!(
                run.all().matches(secret).count(),
                0,
                "{label} printed {secret}:\n{}",
                run.all()
            );
        }
    }
    let saved = std::fs::read(project.path().join("p.json")).unwrap();
    let saved = String::from_utf8(saved).unwrap();
    for secret in secrets {
        assert!(!saved.contains(secret), "p.json holds {secret}");
    }
    // The plan still says what changes, without values.
    runs[1]
        .1
        .expect_contains("HMAC_SECRETS in opsplan's environment (2 keys, primary ")
        .expect_contains("differs from the key set in vault")
        .expect_contains("password: (sensitive)");
}

fn example_project() -> Project {
    let project = Project::new();
    copy_migrations(&project);
    std::fs::copy(
        root().join("ops.toml.example"),
        project.path().join("ops.toml"),
    )
    .unwrap();
    project
}

fn settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r#""created_at": "[^"]+""#, r#""created_at": "[time]""#);
    settings.add_filter(r#""digest": "[0-9a-f]{64}""#, r#""digest": "[digest]""#);
    settings.add_filter(r"sha256:[0-9a-f]{64}", "sha256:[fingerprint]");
    settings.add_filter(
        r#""opsplan_version": "[^"]+""#,
        r#""opsplan_version": "[version]""#,
    );
    settings.set_snapshot_path(root().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings
}

/// The three renderings of one plan that touches every resource kind, pinned.
#[test]
fn renderings_of_a_plan_over_every_resource_kind() {
    let project = example_project();
    project.run(&["plan", "--out", "plan.json"]).expect_code(0);
    let human = project.run(&["show", "plan.json"]);
    human.expect_code(0);
    let markdown = project.run(&["show", "plan.json", "--format", "markdown"]);
    markdown.expect_code(0);
    let json = project.run(&["show", "plan.json", "--format", "json"]);
    json.expect_code(0);

    let kinds: std::collections::BTreeSet<String> =
        serde_json::from_str::<serde_json::Value>(&json.stdout).unwrap()["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap().to_string())
            .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");

    settings().bind(|| {
        insta::assert_snapshot!("plan_human", human.stdout);
        insta::assert_snapshot!("plan_markdown", markdown.stdout);
        insta::assert_snapshot!("plan_json", json.stdout);
    });

    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../docs/plan.schema.json")).unwrap();
    let document: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
