//! The mail settings in Vault (KV v1 and v2 on a real OpenBao dev server, one per test) and
//! drift of the published settings, through the binary.

mod common;

use common::openbao::OpenBao;
use common::smtp::SmtpServers;
use common::{Project, Run};
use serde_json::{Value, json};

const PASSWORD: &str = "vault-pw-not-for-logs";
const OTHER_PASSWORD: &str = "second-vault-pw-not-for-logs";

#[track_caller]
fn assert_lacks(run: &Run, text: &str) {
    assert!(
        !run.all().contains(text),
        "output must not contain {text:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout,
        run.stderr
    );
}

/// A project whose mail settings go to `kv_path` on `bao`, through the STARTTLS listener.
fn vault_mail_project(bao: &OpenBao, servers: &SmtpServers, kv_path: &str) -> Project {
    let mut project = Project::new();
    project.set_env("VAULT_ADDR", &bao.addr);
    project.set_env("VAULT_TOKEN", &bao.root_token);
    // The key set's variable: it must not decide where the mail settings go.
    project.set_env("VAULT_KV_PATH", "secret/not/the/mail/settings");
    project.set_env("SMTP_USER", "ops");
    project.set_env("SMTP_PASS", PASSWORD);
    project.config(&format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         tls_ca = \"{}\"\nuser = \"${{env:SMTP_USER}}\"\npassword = \"${{env:SMTP_PASS}}\"\n\
         from = \"ops@example.com\"\ncommand_timeout = \"5s\"\nstore = \"vault\"\n\
         [mail.vault]\nkv_path = \"{kv_path}\"\n",
        servers.starttls,
        servers.ca.display()
    ));
    project
}

fn with_password(project: Project, password: &str) -> Project {
    let mut env: Vec<(String, String)> = project
        .env
        .iter()
        .filter(|(name, _)| name != "SMTP_PASS")
        .cloned()
        .collect();
    env.push(("SMTP_PASS".to_string(), password.to_string()));
    Project {
        dir: project.dir,
        env,
    }
}

/// Publishes to `mount` (KV `version`), then changes only the password: the plan says
/// `password: changed` and nothing else, and no output ever holds either password.
fn publish_and_change_the_password(version: u8) {
    let Some(bao) = OpenBao::start() else { return };
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD, OTHER_PASSWORD]) else {
        return;
    };
    let mount = format!("kv{version}");
    bao.enable_kv(&mount, version);
    let project = vault_mail_project(&bao, &servers, &format!("{mount}/app/mail"));
    let read = |bao: &OpenBao| -> Value {
        match version {
            2 => bao.kv2_get(&mount, "app/mail").1,
            _ => bao.kv1_get(&mount, "app/mail"),
        }
    };

    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains(&format!(
            "mail.settings: no settings published yet (vault {}/{mount}/app/mail; SMTP \
             127.0.0.1:{} (starttls))",
            bao.addr, servers.starttls
        ))
        .expect_contains("+ mail.settings")
        .expect_contains("      password: (sensitive)\n");
    assert_lacks(&plan, PASSWORD);

    let apply = project.run(&["apply", "--auto-approve"]);
    apply.expect_code(0).expect_contains(&format!(
        "mail.settings: done (7 setting(s) published to vault {}/{mount}/app/mail)",
        bao.addr
    ));
    assert_lacks(&apply, PASSWORD);
    let stored = read(&bao);
    assert_eq!(stored["MAIL_PROVIDER"], "smtp");
    assert_eq!(stored["SMTP_HOST"], "127.0.0.1");
    assert_eq!(stored["SMTP_PORT"], servers.starttls.to_string());
    assert_eq!(stored["SMTP_USER"], "ops");
    assert_eq!(stored["SMTP_PASS"], PASSWORD);
    let metadata: Value =
        serde_json::from_str(stored["opsplan_metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["managed_by"], "opsplan");
    assert!(!metadata.to_string().contains(PASSWORD));
    if version == 2 {
        assert_eq!(bao.kv2_get(&mount, "app/mail").0, 1);
    }
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
    project.run(&["drift"]).expect_code(0);

    let project = with_password(project, OTHER_PASSWORD);
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("~ mail.settings\n      password: changed\n\n")
        .expect_contains("Plan: 0 to add, 1 to change, 0 to destroy.");
    assert_lacks(&plan, PASSWORD);
    assert_lacks(&plan, OTHER_PASSWORD);
    let saved = project.path().join("mail.plan");
    let out = project.run(&["plan", "--out", saved.to_str().unwrap(), "--format", "json"]);
    out.expect_code(0);
    assert_lacks(&out, OTHER_PASSWORD);
    let saved_text = std::fs::read_to_string(&saved).unwrap();
    assert!(!saved_text.contains(PASSWORD) && !saved_text.contains(OTHER_PASSWORD));

    // Only pending work: the store was not touched.
    let drift = project.run(&["drift"]);
    drift
        .expect_code(0)
        .expect_contains("No drift")
        .expect_contains("~ mail.settings: update the mail settings in vault");

    let apply = project.run(&["-vv", "apply", saved.to_str().unwrap()]);
    apply.expect_code(0);
    assert_lacks(&apply, PASSWORD);
    assert_lacks(&apply, OTHER_PASSWORD);
    assert_eq!(read(&bao)["SMTP_PASS"], OTHER_PASSWORD);
    if version == 2 {
        assert_eq!(bao.kv2_get(&mount, "app/mail").0, 2);
    }
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
}

#[test]
fn mail_settings_publish_to_vault_kv2_and_a_password_change_shows_changed() {
    publish_and_change_the_password(2);
}

#[test]
fn mail_settings_publish_to_vault_kv1_and_a_password_change_shows_changed() {
    publish_and_change_the_password(1);
}

/// KV v2 check-and-set with the version read at plan time: a write in between is refused,
/// naming both versions, and the other writer's version stays.
#[tokio::test(flavor = "multi_thread")]
async fn kv2_writer_between_plan_and_apply_is_refused_with_the_versions() {
    let Some(bao) = OpenBao::start() else { return };
    let first = bao.kv2_put("secret", "app/mail", json!({ "MAIL_PROVIDER": "smtp" }));
    assert_eq!(first, 1);
    let lookup = |name: &str| match name {
        "VAULT_ADDR" => Some(bao.addr.clone()),
        "VAULT_TOKEN" => Some(bao.root_token.clone()),
        _ => None,
    };
    let config = opsplan::config::Config::parse(
        opsplan::diagnostic::SourceFile::new(
            "ops.toml",
            "[mail]\nprovider = \"console\"\nstore = \"vault\"\n\
             [mail.vault]\nkv_path = \"secret/app/mail\"\n",
        ),
        std::path::PathBuf::from("."),
        lookup,
    )
    .unwrap();
    let resource = opsplan::mail::MailResource::new(config.mail.unwrap());
    let engine = opsplan::engine::Engine::new(vec![std::sync::Arc::new(resource)]).unwrap();
    let plan = engine.plan().await;
    assert!(plan.has_changes(), "{plan:?}");

    // Another writer gets in between.
    let theirs = bao.kv2_put("secret", "app/mail", json!({ "MAIL_PROVIDER": "theirs" }));
    assert_eq!(theirs, 2);

    let report = opsplan::apply::apply(&engine, &plan, &opsplan::apply::Silent).await;
    assert_eq!(report.failed(), 1);
    let error = match &report.steps[0].status {
        opsplan::apply::StepStatus::Failed { error } => error.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        error.contains(
            "the mail settings changed since the plan was read (planned against \
                        version 1, now 2); run plan again"
        ),
        "{error}"
    );
    assert_eq!(
        bao.kv2_get("secret", "app/mail"),
        (2, json!({ "MAIL_PROVIDER": "theirs" }))
    );
}

/// A hand edit of the settings in Vault is drift naming the field, never the password.
#[test]
fn vault_settings_edited_by_hand_are_drift() {
    let Some(bao) = OpenBao::start() else { return };
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let project = vault_mail_project(&bao, &servers, "secret/app/mail");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let (_, mut data) = bao.kv2_get("secret", "app/mail");
    data["SMTP_PASS"] = json!("typed-by-hand-not-for-logs");
    bao.kv2_put("secret", "app/mail", data);

    let drift = project.run(&["drift"]);
    drift
        .expect_code(2)
        .expect_contains("! mail.settings: SMTP_PASS changed outside opsplan\n");
    assert_lacks(&drift, "typed-by-hand-not-for-logs");
    assert_lacks(&drift, PASSWORD);
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("      password: changed\n");
    assert_lacks(&plan, "typed-by-hand-not-for-logs");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(bao.kv2_get("secret", "app/mail").1["SMTP_PASS"], PASSWORD);
    project.run(&["drift"]).expect_code(0);

    // The whole secret deleted: drift, and apply publishes it again with cas = 3.
    let (status, _) = bao.root("DELETE", "secret/data/app/mail", None);
    assert_eq!(status, 204);
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains(&format!(
            "! mail.settings: the published settings were deleted from vault \
             {}/secret/app/mail (latest version 3 has no data)",
            bao.addr
        ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(bao.kv2_get("secret", "app/mail").0, 4);
    project.run(&["drift"]).expect_code(0);
}

fn console_project() -> Project {
    let project = Project::new();
    project.config("[mail]\nprovider = \"console\"\n");
    project
}

fn edit_published(project: &Project, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = project.path().join(".opsplan/mail.json");
    let mut settings: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut settings);
    std::fs::write(&path, serde_json::to_string_pretty(&settings).unwrap()).unwrap();
}

#[test]
fn a_hand_edit_of_the_settings_file_is_drift_that_apply_corrects() {
    let project = console_project();
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift");

    edit_published(&project, |settings| {
        settings.insert("MAIL_PROVIDER".into(), json!("smtp"));
        settings.insert("SMTP_HOST".into(), json!("mail.example.net"));
        settings.insert("SMTP_PASS".into(), json!("hand-typed-not-for-logs"));
        settings.insert("MAIL_RETRY_LIMIT".into(), json!("5"));
    });
    let drift = project.run(&["drift"]);
    drift
        .expect_code(2)
        .expect_contains("Drift: 3 out-of-band change(s) to what opsplan applied:")
        .expect_contains("! mail.settings: MAIL_PROVIDER changed outside opsplan (now `smtp`)")
        .expect_contains(
            "! mail.settings: SMTP_HOST added outside opsplan (now `mail.example.net`)",
        )
        .expect_contains("! mail.settings: SMTP_PASS added outside opsplan\n")
        .expect_contains("~ mail.settings: publish the mail settings to file ");
    assert_lacks(&drift, "hand-typed-not-for-logs");
    assert_lacks(&drift, "MAIL_RETRY_LIMIT");

    let json = project.run(&["drift", "--format", "json"]);
    json.expect_code(2);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["drift"].as_array().unwrap().len(), 3);
    assert_eq!(report["drift"][0]["address"], "mail.settings");

    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("      provider: smtp -> console\n")
        .expect_contains("      host:     mail.example.net -> (none)");
    assert_lacks(&plan, "hand-typed-not-for-logs");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift");
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
}

fn queue_config(key: &str) -> String {
    format!(
        "[mail]\nprovider = \"console\"\n[mail.queue]\nurl = \"redis://127.0.0.1:6379/0\"\n\
         key = \"{key}\"\n"
    )
}

/// An edit that happens to match the configuration is drift too; apply records it again.
#[test]
fn a_hand_edit_that_matches_the_configuration_is_published_again() {
    if !common::server_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let key = common::unique_name("opsplan:mail:drift");
    let project = console_project();
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    edit_published(&project, |settings| {
        settings.insert("MAIL_QUEUE_KEY".into(), json!(key));
    });
    project.config(&queue_config(&key));

    let drift = project.run(&["drift"]);
    drift
        .expect_code(2)
        .expect_contains(&format!(
            "! mail.settings: MAIL_QUEUE_KEY added outside opsplan (now `{key}`)"
        ))
        .expect_contains("over the edits made outside opsplan");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift")
        .expect_contains("Pending: nothing");
}

/// `ops.toml` ahead of an untouched store: pending work, and no drift.
#[test]
fn a_changed_configuration_with_an_untouched_store_is_pending_work_only() {
    if !common::server_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let key = common::unique_name("opsplan:mail:pending");
    let project = console_project();
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project.config(&queue_config(&key));

    let drift = project.run(&["drift"]);
    drift
        .expect_code(0)
        .expect_contains("No drift: live state matches what opsplan applied.")
        .expect_contains("Pending: 1 change(s)")
        .expect_contains("~ mail.settings: update the mail settings in file ");
    let json = project.run(&["drift", "--format", "json"]);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["drift"], json!([]));
    assert_eq!(report["pending"][0]["address"], "mail.settings");
}
