//! Drift of the key set through the binary: the file store, and Vault KV v2 on a real
//! OpenBao dev server (one per test).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::openbao::OpenBao;
use common::{Project, Run};
use opsplan::keyset::key_id;
use serde_json::{Value, json};

#[track_caller]
fn assert_lacks(run: &Run, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !run.all().contains(secret.as_str()),
            "a key appears in the output\n{}",
            run.all()
        );
    }
}

fn key_file(project: &Project) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(project.path().join(".opsplan/keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn write_key_file(project: &Project, fields: &BTreeMap<String, String>) {
    project.write(
        ".opsplan/keys.json",
        &serde_json::to_string_pretty(fields).unwrap(),
    );
}

fn list(fields: &BTreeMap<String, String>) -> Vec<String> {
    fields["HMAC_SECRETS"]
        .split(',')
        .map(str::to_string)
        .collect()
}

/// A file store holding a primary and a pending key, both published by opsplan.
fn two_keys() -> (Project, Vec<String>) {
    let project = Project::new();
    project.config("[keyset]\n");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
        .expect_code(0);
    let keys = list(&key_file(&project));
    assert_eq!(keys.len(), 2);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift");
    (project, keys)
}

#[test]
fn a_pending_key_removed_by_hand_from_the_file_is_drift_that_apply_records() {
    let (project, keys) = two_keys();
    let (primary, pending) = (key_id(&keys[0]), key_id(&keys[1]));
    let mut fields = key_file(&project);
    fields.insert("HMAC_SECRETS".into(), keys[0].clone());
    write_key_file(&project, &fields);

    let drift = project.run(&["drift"]);
    drift
        .expect_code(2)
        .expect_contains(&format!(
            "! keyset.hmac: file .opsplan/keys.json: pending key {pending} was removed from \
             HMAC_SECRETS outside opsplan\n"
        ))
        .expect_contains(
            "~ keyset.hmac: publish the key set again over the edits made outside opsplan",
        );
    assert_lacks(&drift, &keys);

    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2).expect_contains(&format!(
        "key {pending}: pending (removed outside opsplan) -> forgotten"
    ));
    assert_lacks(&plan, &keys);
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(list(&key_file(&project)), [keys[0].clone()]);
    let metadata: Value = serde_json::from_str(&key_file(&project)["opsplan_metadata"]).unwrap();
    assert_eq!(metadata["keys"][0]["id"], primary.as_str());
    assert_eq!(metadata["keys"].as_array().unwrap().len(), 1);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift");
}

#[test]
fn the_primary_removed_by_hand_is_refused_until_replace_accepts_it() {
    let (project, keys) = two_keys();
    let (primary, pending) = (key_id(&keys[0]), key_id(&keys[1]));
    let mut fields = key_file(&project);
    fields.insert("HMAC_SECRETS".into(), keys[1].clone());
    fields.insert("HMAC_SECRET".into(), keys[1].clone());
    write_key_file(&project, &fields);

    let finding = format!(
        "keyset.hmac: file .opsplan/keys.json: primary key {primary} was removed from \
         HMAC_SECRETS outside opsplan; the application now signs with {pending}, which \
         opsplan did not make primary; apply refuses to go on from here"
    );
    let drift = project.run(&["drift"]);
    drift
        .expect_code(2)
        .expect_contains(&format!("! {finding}"));
    assert!(
        !drift.all().contains("problem keyset.hmac"),
        "{}",
        drift.all()
    );
    let plan = project.run(&["plan"]);
    plan.expect_code(1).expect_contains(&finding);
    let before = std::fs::read_to_string(project.path().join(".opsplan/keys.json")).unwrap();
    project.run(&["apply", "--auto-approve"]).expect_code(1);
    let after = std::fs::read_to_string(project.path().join(".opsplan/keys.json")).unwrap();
    assert_eq!(before, after, "a refused apply writes nothing");

    // --replace accepts the store as it is and starts a rotation.
    project
        .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
        .expect_code(0);
    let now = list(&key_file(&project));
    assert_eq!(now[0], keys[1]);
    assert_eq!(now.len(), 2);
    project.run(&["drift"]).expect_code(0);
}

#[test]
fn hmac_secret_edited_by_hand_is_put_back_and_edited_metadata_is_refused() {
    let (project, keys) = two_keys();
    let (primary, pending) = (key_id(&keys[0]), key_id(&keys[1]));
    let mut fields = key_file(&project);
    fields.insert("HMAC_SECRET".into(), keys[1].clone());
    write_key_file(&project, &fields);
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains(&format!(
            "! keyset.hmac: file .opsplan/keys.json: HMAC_SECRET was edited outside opsplan: it \
         holds key {pending}, not the first key of HMAC_SECRETS, {primary}"
        ));
    project
        .run(&["plan"])
        .expect_code(0)
        .expect_contains(&format!(
            "HMAC_SECRET: key {pending} -> key {primary} (value hidden)"
        ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(key_file(&project)["HMAC_SECRET"], keys[0]);
    project.run(&["drift"]).expect_code(0);

    // A key's state edited in the metadata: opsplan's record can no longer be trusted.
    let mut fields = key_file(&project);
    fields.insert(
        "opsplan_metadata".into(),
        fields["opsplan_metadata"].replace("\"pending\"", "\"retired\""),
    );
    write_key_file(&project, &fields);
    project.run(&["drift"]).expect_code(2).expect_contains(
        "! keyset.hmac: file .opsplan/keys.json: opsplan_metadata was edited outside \
         opsplan: its digest no longer matches the key states and times it holds",
    );
    project.run(&["plan"]).expect_code(1);
}

#[test]
fn a_rotation_merely_due_is_pending_work_not_drift() {
    let project = Project::new();
    project.config("[keyset]\nrotate_after = \"2s\"\n");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    std::thread::sleep(Duration::from_millis(2200));
    let drift = project.run(&["drift"]);
    drift
        .expect_code(0)
        .expect_contains("No drift: live state matches what opsplan applied.")
        .expect_contains("Pending: 1 change(s)")
        .expect_contains("~ keyset.hmac: publish a new pending key");
    let json = project.run(&["drift", "--format", "json"]);
    json.expect_code(0);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["drift"], json!([]));
    assert_eq!(report["pending"][0]["address"], "keyset.hmac");
}

fn vault_project(bao: &OpenBao) -> Project {
    let mut project = Project::new();
    project.config("[keyset]\nstore = \"vault\"\n");
    project.set_env("VAULT_ADDR", &bao.addr);
    project.set_env("VAULT_TOKEN", &bao.root_token);
    project.set_env("VAULT_KV_PATH", "secret/app/hmac");
    project
}

#[test]
fn a_key_removed_by_hand_from_vault_kv2_is_drift() {
    let Some(bao) = OpenBao::start() else { return };
    let project = vault_project(&bao);
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
        .expect_code(0);
    let (version, mut data) = bao.kv2_get("secret", "app/hmac");
    assert_eq!(version, 2);
    let keys: Vec<String> = data["HMAC_SECRETS"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    project.run(&["drift"]).expect_code(0);

    data["HMAC_SECRETS"] = json!(keys[0]);
    bao.kv2_put("secret", "app/hmac", data);
    let drift = project.run(&["drift", "--format", "json"]);
    drift.expect_code(2);
    assert_lacks(&drift, &keys);
    let report: Value = serde_json::from_str(&drift.stdout).unwrap();
    assert_eq!(
        report["drift"],
        json!([{
            "address": "keyset.hmac",
            "message": format!(
                "vault {}/secret/app/hmac: pending key {} was removed from HMAC_SECRETS \
                 outside opsplan",
                bao.addr,
                key_id(&keys[1])
            ),
        }])
    );
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(bao.kv2_get("secret", "app/hmac").0, 4);
    project.run(&["drift"]).expect_code(0);
}

#[test]
fn a_kv2_secret_deleted_by_hand_is_refused_until_replace_publishes_a_new_set() {
    let Some(bao) = OpenBao::start() else { return };
    let project = vault_project(&bao);
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let (status, _) = bao.root("DELETE", "secret/data/app/hmac", None);
    assert_eq!(status, 204);

    let finding = format!(
        "keyset.hmac: vault {}/secret/app/hmac: the secret was deleted outside opsplan: its \
         latest version (1) has no data, so the application has no key; apply refuses",
        bao.addr
    );
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains(&format!("! {finding}"));
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains(&finding)
        .expect_contains("and publish a new key set");
    project
        .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
        .expect_code(0);
    let (version, data) = bao.kv2_get("secret", "app/hmac");
    assert_eq!(version, 2);
    assert_eq!(data["HMAC_SECRETS"], data["HMAC_SECRET"]);
    project.run(&["drift"]).expect_code(0);
}
