//! The key set through the binary: the file store, the environment, and Vault KV v1/v2 on a
//! real OpenBao dev server (one per test).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::openbao::{OpenBao, random_hex};
use common::{Project, Run};
use opsplan::keyset::key_id;
use serde_json::{Value, json};

/// Durations of seconds, with a margin so that a slow machine does not reach the next due
/// time between two commands that expect the same state.
const FILE_POLICY: &str = "[keyset]\nrotate_after = \"4s\"\npending_for = \"3s\"\n\
                           retired_for = \"3s\"\nretired_max = 5\n";

/// The published document of the file store: the list, the single key, the metadata.
fn published(project: &Project) -> (Vec<String>, String, Value) {
    let text = std::fs::read_to_string(project.path().join(".opsplan/keys.json")).unwrap();
    let fields: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    let list: Vec<String> = fields["HMAC_SECRETS"]
        .split(',')
        .map(str::to_string)
        .collect();
    let metadata: Value = serde_json::from_str(&fields["opsplan_metadata"]).unwrap();
    (list, fields["HMAC_SECRET"].clone(), metadata)
}

/// (id, state) of every key in the metadata, in published order.
fn states(metadata: &Value) -> Vec<(String, String)> {
    metadata["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ids(list: &[String]) -> Vec<String> {
    list.iter().map(|k| key_id(k)).collect()
}

/// The contract at every step: the first key signs, `HMAC_SECRET` is that key, every key
/// listed is one the metadata says may verify, and the metadata holds no key material.
#[track_caller]
fn check_contract(project: &Project, expected: &[(&str, &str)]) -> Vec<String> {
    let (list, single, metadata) = published(project);
    assert_eq!(single, list[0], "HMAC_SECRET must be the first key");
    let got = states(&metadata);
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        ids(&list),
        got.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    );
    let metadata_text = metadata.to_string();
    for key in &list {
        assert!(key.len() >= 32);
        assert!(!metadata_text.contains(key.as_str()));
    }
    list
}

fn apply(project: &Project, extra: &[&str]) -> Run {
    let mut args = vec!["apply", "--auto-approve"];
    args.extend_from_slice(extra);
    let run = project.run(&args);
    run.expect_code(0);
    run
}

#[test]
fn rotation_goes_pending_primary_retired_removed() {
    let project = Project::new();
    project.config(FILE_POLICY);

    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(2);
    assert_eq!(
        run.stdout,
        "keyset.hmac: no keys stored (file .opsplan/keys.json)\n\
         \n\
         opsplan will perform the following actions (+ created):\n\
         \n\
         \x20 # keyset.hmac: create the key set with a new primary key\n\
         \x20 + keyset.hmac\n\
         \x20     key (new):    primary: drawn from the OS random source at apply time\n\
         \x20     HMAC_SECRETS: absent -> 1 key (value hidden)\n\
         \n\
         Plan: 1 to add, 0 to change, 0 to destroy.\n"
    );
    assert!(!project.path().join(".opsplan/keys.json").exists());

    apply(&project, &[]);
    let list = ids(&published(&project).0);
    let a = list[0].clone();
    check_contract(&project, &[(&a, "primary")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(project.path().join(".opsplan/keys.json")).unwrap();
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);

    // The primary's time is up: a successor is published for verification only.
    std::thread::sleep(Duration::from_millis(4100));
    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(2)
        .expect_contains(&format!("primary {a} (age "))
        .expect_contains("s, rotation due 20")
        .expect_contains("publish a new pending key")
        .expect_contains("HMAC_SECRETS: 1 key -> 2 keys, primary unchanged (values hidden)");
    apply(&project, &[]);
    let b = ids(&published(&project).0)[1].clone();
    check_contract(&project, &[(&a, "primary"), (&b, "pending")]);
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);

    // The successor has been published long enough: it signs, the old key verifies.
    std::thread::sleep(Duration::from_millis(3100));
    let run = project.run(&["plan"]);
    run.expect_code(0)
        .expect_contains(&format!("promote {b} to primary, retire {a}"))
        .expect_contains(&format!("key {b}"))
        .expect_contains("-> primary")
        .expect_contains("-> retired (verifies until")
        .expect_contains("2 keys -> 2 keys, primary changed (values hidden)");
    apply(&project, &[]);
    check_contract(&project, &[(&b, "primary"), (&a, "retired")]);

    // The retired key's time is over: it is no longer published.
    std::thread::sleep(Duration::from_millis(3100));
    let run = project.run(&["plan"]);
    run.expect_contains(&format!("remove retired key(s) {a}"))
        .expect_contains("-> removed");
    apply(&project, &[]);
    check_contract(&project, &[(&b, "primary")]);
}

#[test]
fn replace_forces_a_rotation_now() {
    let project = Project::new();
    project.config("[keyset]\n");
    apply(&project, &[]);
    let a = ids(&published(&project).0)[0].clone();

    let run = project.run(&["plan", "--replace", "keyset.hmac"]);
    run.expect_code(0)
        .expect_contains("publish a new pending key")
        .expect_contains("forced by --replace");
    apply(&project, &["--replace", "keyset.hmac"]);
    let b = ids(&published(&project).0)[1].clone();
    check_contract(&project, &[(&a, "primary"), (&b, "pending")]);

    // Without the flag the new key waits its day; with it, it is promoted now.
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
    apply(&project, &["--replace", "keyset.hmac"]);
    check_contract(&project, &[(&b, "primary"), (&a, "retired")]);

    project
        .run(&["plan", "--replace", "schema"])
        .expect_code(1)
        .expect_contains("--replace schema: only keyset.hmac can be replaced");
}

#[test]
fn a_second_apply_waits_for_the_file_lock_and_names_its_holder() {
    use std::io::Write;
    let project = Project::new();
    project.config("[keyset]\n");
    apply(&project, &[]);
    let mut held = std::fs::OpenOptions::new()
        .write(true)
        .open(project.path().join(".opsplan/keys.json.opsplan-lock"))
        .unwrap();
    held.lock().unwrap();
    writeln!(held, "ops@bastion pid 4242 since 2026-01-01T00:00:00Z").unwrap();
    let run = project.run(&[
        "apply",
        "--auto-approve",
        "--lock-timeout",
        "1s",
        "--replace",
        "keyset.hmac",
    ]);
    run.expect_code(1)
        .expect_contains("Waiting for the keyset.hmac lock, held by ops@bastion pid 4242")
        .expect_contains(
            "is still held by ops@bastion pid 4242 since 2026-01-01T00:00:00Z after 1s",
        );
    assert_eq!(published(&project).0.len(), 1, "nothing was written");
    held.unlock().unwrap();
    apply(&project, &["--replace", "keyset.hmac"]);
    assert_eq!(published(&project).0.len(), 2);
}

// ---- case 28: HMAC_SECRETS parsing in the environment store ----

fn env_project(secrets: Option<&str>, secret: Option<&str>) -> Project {
    let mut project = Project::new();
    project.config("[keyset]\nmin_key_length = 8\n");
    project.set_env("KMS_PROVIDER", "env");
    if let Some(secrets) = secrets {
        project.set_env("HMAC_SECRETS", secrets);
    }
    if let Some(secret) = secret {
        project.set_env("HMAC_SECRET", secret);
    }
    project
}

#[track_caller]
fn never_printed(run: &Run, values: &[&str]) {
    for value in values {
        assert!(
            !run.all().contains(value),
            "{value:?} was printed:\n{}",
            run.all()
        );
    }
}

#[test]
fn case_28_env_list_parsing() {
    let primary = key_id("k-2025-primary");
    let old = key_id("k-2024-old");

    // a) Whitespace is trimmed; the first entry is the primary.
    let project = env_project(Some(" k-2025-primary , k-2024-old "), None);
    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(0)
        .expect_contains(&format!(
            "keyset.hmac: 2 keys: primary {primary} (age unknown), retired {old} (age unknown)"
        ))
        .expect_contains("No changes.");
    never_printed(&run, &["k-2025-primary", "k-2024-old"]);

    // b) and c) An empty entry is an error naming its position, never a dropped key.
    let run = env_project(Some("k-2025-primary,k-2024-old,"), None).run(&["plan"]);
    run.expect_code(1)
        .expect_contains("HMAC_SECRETS entry 3 is empty");
    never_printed(&run, &["k-2025-primary", "k-2024-old"]);
    let run = env_project(Some(",k-2025-primary"), None).run(&["plan"]);
    run.expect_code(1)
        .expect_contains("HMAC_SECRETS entry 1 is empty");
    assert!(!run.all().contains(&primary), "no key is taken as primary");

    // d) A duplicate names both positions.
    let run = env_project(Some("k1,k1"), None).run(&["plan"]);
    run.expect_code(1)
        .expect_contains("duplicate key at positions 1 and 2");
    never_printed(&run, &["k1,", ",k1"]);

    // e) HMAC_SECRET alone is the one key.
    let run = env_project(None, Some("k-single")).run(&["plan", "--detailed-exitcode"]);
    run.expect_code(0).expect_contains(&format!(
        "keyset.hmac: 1 key: primary {} (age unknown)",
        key_id("k-single")
    ));
    never_printed(&run, &["k-single"]);

    // f) Both set: HMAC_SECRETS wins, and a warning names both variables.
    let run = env_project(Some("k-2025-primary,k-2024-old"), Some("k-single"))
        .run(&["plan", "--detailed-exitcode"]);
    run.expect_code(0)
        .expect_contains(&format!("primary {primary}"))
        .expect_contains(
            "Warning: keyset.hmac: both HMAC_SECRETS and HMAC_SECRET are set: HMAC_SECRETS is \
             used and HMAC_SECRET is ignored",
        );
    never_printed(&run, &["k-2025-primary", "k-2024-old", "k-single"]);
}

#[test]
fn env_store_reports_due_rotations_and_refuses_to_apply() {
    // The default minimum is 32 bytes: a short primary is reported and due for rotation.
    let mut project = Project::new();
    project.config("[keyset]\n");
    project.set_env("KMS_PROVIDER", "env");
    project.set_env("HMAC_SECRETS", "k-2025-primary,k-2024-old");
    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(2)
        .expect_contains(&format!(
            "key {} (primary, position 1 of HMAC_SECRETS) is shorter than min_key_length (32 \
             bytes); a rotation is due",
            key_id("k-2025-primary")
        ))
        .expect_contains("publish a new pending key")
        .expect_contains("env (process environment) is read-only, so apply will refuse");
    let run = project.run(&["apply", "--auto-approve"]);
    run.expect_code(1).expect_contains(
        "env (process environment) is read-only: opsplan cannot change the environment of the \
         running application; set [keyset] store = \"file\" or store = \"vault\"",
    );
    never_printed(&run, &["k-2025-primary", "k-2024-old"]);
}

// ---- SIGKILL during rotations ----

#[test]
fn killed_apply_never_loses_the_previous_primary() {
    // A template state to start each round from: P primary; and P primary with Q pending.
    let template = Project::new();
    template.config("[keyset]\n");
    apply(&template, &[]);
    let only_primary = std::fs::read(template.path().join(".opsplan/keys.json")).unwrap();
    let p = published(&template).0[0].clone();
    apply(&template, &["--replace", "keyset.hmac"]);
    let with_pending = std::fs::read(template.path().join(".opsplan/keys.json")).unwrap();

    let project = Project::new();
    project.config("[keyset]\n");
    let store = project.path().join(".opsplan/keys.json");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();

    // How long one apply takes here, so that the kills land all over it.
    std::fs::write(&store, &only_primary).unwrap();
    let started = std::time::Instant::now();
    apply(&project, &["--replace", "keyset.hmac"]);
    let span_ms = (started.elapsed().as_millis() as u64 * 3 / 2).max(10);

    // An observer reads the store continuously; every state it sees must hold P.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = {
        let (stop, store, p) = (stop.clone(), store.clone(), p.clone());
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(text) = std::fs::read_to_string(&store) {
                    let fields: BTreeMap<String, String> =
                        serde_json::from_str(&text).expect("the store is always a whole document");
                    let list: Vec<&str> = fields["HMAC_SECRETS"].split(',').collect();
                    assert!(
                        list.contains(&p.as_str()),
                        "a state without the old primary"
                    );
                    assert_eq!(fields["HMAC_SECRET"], list[0]);
                    seen += 1;
                }
            }
            seen
        })
    };

    let mut outcomes = BTreeMap::new();
    for round in 0..50u64 {
        let start = if round % 2 == 0 {
            &only_primary
        } else {
            &with_pending
        };
        // Replaced atomically, like the store itself, so the observer never sees a part.
        let staged = store.with_extension("staged");
        std::fs::write(&staged, start).unwrap();
        std::fs::rename(&staged, &store).unwrap();
        let mut child = project
            .command(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = u64::from_str_radix(&random_hex(2), 16).unwrap() % span_ms;
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        *outcomes
            .entry(if status.success() {
                "finished"
            } else {
                "killed"
            })
            .or_insert(0) += 1;

        assert!(
            published(&project).0.contains(&p),
            "round {round}: the previous primary is missing after SIGKILL"
        );
        // The rerun converges: one more apply, then nothing is left to do.
        apply(&project, &[]);
        project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
        assert!(published(&project).0.contains(&p), "round {round}");
        for leftover in std::fs::read_dir(store.parent().unwrap()).unwrap() {
            let name = leftover.unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(
                name == "keys.json"
                    || name.starts_with(".opsplan-")
                    || name.ends_with(".opsplan-lock"),
                "unexpected file {name}"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = observer.join().expect("the observer saw only valid states");
    eprintln!("SIGKILL rounds within {span_ms} ms: {outcomes:?}; {seen} states observed");
    assert!(
        outcomes.get("killed").copied().unwrap_or(0) >= 10,
        "{outcomes:?}"
    );
}

// ---- Vault (OpenBao) ----

/// A project whose key store is Vault at `kv_path`, with `token`.
fn vault_project(bao: &OpenBao, kv_path: &str, token: &str, extra: &str) -> Project {
    let mut project = Project::new();
    project.config(&format!("[keyset]\nmin_key_length = 8\n{extra}"));
    project.set_env("KMS_PROVIDER", "vault");
    project.set_env("VAULT_ADDR", &bao.addr);
    project.set_env("VAULT_TOKEN", token);
    project.set_env("VAULT_KV_PATH", kv_path);
    project.set_env("HMAC_SECRETS", "k-primary-2025,k-old-2024");
    project
}

const CASE_13_KEYS: &str = "k-primary-2025,k-old-2024";

#[test]
fn case_13_kv_v1_and_v2_paths() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_kv("kv2", 2);
    bao.enable_kv("kv1", 1);
    bao.kv2_put(
        "kv2",
        "opsplan/hmac",
        json!({ "HMAC_SECRETS": CASE_13_KEYS }),
    );
    bao.kv1_put(
        "kv1",
        "opsplan/hmac",
        json!({ "HMAC_SECRETS": CASE_13_KEYS }),
    );
    let summary = format!(
        "keyset.hmac: 2 keys: primary {} (age unknown), retired {} (age unknown)",
        key_id("k-primary-2025"),
        key_id("k-old-2024")
    );

    // a) KV v2: read at kv2/data/opsplan/hmac, keys from data.data, no changes.
    let root = bao.root_token.clone();
    let run = vault_project(&bao, "kv2/opsplan/hmac", &root, "").run(&[
        "plan",
        "--detailed-exitcode",
        "-v",
    ]);
    run.expect_code(0)
        .expect_contains(&summary)
        .expect_contains("path=kv2/data/opsplan/hmac")
        .expect_contains("No changes.");
    assert!(
        !run.all().contains("differs"),
        "the environment agrees with the store"
    );

    // b) KV v1: read at kv1/opsplan/hmac, without data/.
    let run = vault_project(&bao, "kv1/opsplan/hmac", &root, "").run(&[
        "plan",
        "--detailed-exitcode",
        "-v",
    ]);
    run.expect_code(0)
        .expect_contains(&summary)
        .expect_contains("path=kv1/opsplan/hmac")
        .expect_contains("No changes.");
    assert!(!run.all().contains("kv1/data"));

    // c) data/ in VAULT_KV_PATH is normalised, with a warning; never data/data/.
    let project = vault_project(&bao, "kv2/data/opsplan/hmac", &root, "");
    let run = project.run(&["plan", "--detailed-exitcode", "-v"]);
    run.expect_code(0)
        .expect_contains(&summary)
        .expect_contains("path=kv2/data/opsplan/hmac")
        .expect_contains("do not include data/ in VAULT_KV_PATH");
    assert!(!run.all().contains("data/data"), "{}", run.all());
    let run = project.run(&["apply", "--auto-approve", "--replace", "keyset.hmac"]);
    run.expect_code(0);
    assert!(!run.all().contains("data/data"), "{}", run.all());
    let (version, data) = bao.kv2_get("kv2", "opsplan/hmac");
    assert_eq!(version, 2);
    assert!(
        data["HMAC_SECRETS"]
            .as_str()
            .unwrap()
            .starts_with("k-primary-2025,")
    );
    let (status, _) = bao.root("GET", "kv2/data/data/opsplan/hmac", None);
    assert_eq!(status, 404, "nothing may be written at data/data/");
    // data/ twice is refused before any read of the secret.
    let run = vault_project(&bao, "kv2/data/data/opsplan/hmac", &root, "").run(&["plan", "-v"]);
    run.expect_code(1).expect_contains(
        "VAULT_KV_PATH kv2/data/data/opsplan/hmac repeats data/; do not include data/ in \
         VAULT_KV_PATH",
    );
    assert!(
        !run.all().contains("reading the Vault secret"),
        "{}",
        run.all()
    );

    // d) A policy without data/: the denied API path and the data/ hint.
    bao.put_policy(
        "no-data",
        "path \"kv2/opsplan/*\" { capabilities = [\"read\", \"create\", \"update\"] }\n\
         path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }",
    );
    let token = bao.create_token(&["no-data"], None);
    let run = vault_project(&bao, "kv2/opsplan/hmac", &token, "").run(&["plan"]);
    run.expect_code(1)
        .expect_contains(&format!(
            "permission denied (403) on GET {}/v1/kv2/data/opsplan/hmac",
            bao.addr
        ))
        .expect_contains("path \"kv2/data/opsplan/hmac\"")
        .expect_contains("on KV v2 a policy names the API path with data/");
    never_printed(&run, &[&token]);

    // e) Mount detection denied (OpenBao answers 403 on sys/internal/ui/mounts/... to a
    // token with no access inside the mount): the endpoint is named, never a bare 403.
    bao.put_policy(
        "no-detect",
        "path \"kv1/opsplan/*\" { capabilities = [\"read\", \"create\", \"update\"] }",
    );
    let token = bao.create_token(&["no-detect"], None);
    let run = vault_project(&bao, "kv2/opsplan/hmac", &token, "").run(&["plan"]);
    run.expect_code(1)
        .expect_contains(&format!(
            "permission denied (403) on GET {}/v1/sys/internal/ui/mounts/kv2/opsplan/hmac",
            bao.addr
        ))
        .expect_contains("set keyset.vault.kv_version = 1 or 2");
    // With the version given, no detection is asked for; the next error is the secret's.
    let explicit = "[keyset.vault]\nkv_version = 2\n";
    let run = vault_project(&bao, "kv2/opsplan/hmac", &token, explicit).run(&["plan"]);
    run.expect_code(1)
        .expect_contains("permission denied (403) on GET")
        .expect_contains("/v1/kv2/data/opsplan/hmac");
    assert!(!run.all().contains("sys/internal/ui/mounts"));
    // And a token that may use the secret works with the explicit version.
    bao.put_policy(
        "data-only",
        "path \"kv2/data/opsplan/*\" { capabilities = [\"read\", \"create\", \"update\"] }",
    );
    let token = bao.create_token(&["data-only"], None);
    let run = vault_project(&bao, "kv2/opsplan/hmac", &token, explicit).run(&["plan"]);
    run.expect_code(0)
        .expect_contains(&format!("primary {}", key_id("k-primary-2025")));
}

#[test]
fn case_24_namespace_is_sent_on_every_request() {
    // A real OpenBao namespace: the secret exists only inside it, so a request that left
    // the namespace out would find no mount at all.
    let Some(bao) = OpenBao::start() else { return };
    let (status, body) = bao.root("POST", "sys/namespaces/team-payments", None);
    assert_eq!(status, 200, "{body}");
    let root = bao.root_token.clone();
    let (status, body) = bao.request(
        "POST",
        "sys/mounts/kv2",
        Some(&root),
        Some("team-payments"),
        Some(json!({"type": "kv", "options": {"version": "2"}})),
    );
    assert!(status < 300, "{body}");
    let (status, body) = bao.request(
        "POST",
        "kv2/data/opsplan/hmac",
        Some(&root),
        Some("team-payments"),
        Some(json!({"data": {"HMAC_SECRETS": CASE_13_KEYS}})),
    );
    assert!(status < 300, "{body}");

    let mut project = vault_project(&bao, "kv2/opsplan/hmac", &root, "");
    project.set_env("VAULT_NAMESPACE", "team-payments");
    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(0)
        .expect_contains(&format!("primary {}", key_id("k-primary-2025")))
        .expect_contains("(namespace team-payments)");
    project
        .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
        .expect_code(0);
    let (status, body) = bao.request(
        "GET",
        "kv2/data/opsplan/hmac",
        Some(&root),
        Some("team-payments"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(body["data"]["metadata"]["version"], 2);

    // Without the namespace the same path does not exist in the root namespace.
    let run = vault_project(&bao, "kv2/opsplan/hmac", &root, "").run(&["plan"]);
    run.expect_code(1);
    let (status, _) = bao.root("GET", "kv2/data/opsplan/hmac", None);
    assert_ne!(status, 200, "nothing may be written to the root namespace");
}

#[test]
fn sealed_vault_is_an_error_naming_the_path() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_kv("kv2", 2);
    let root = bao.root_token.clone();
    let project = vault_project(
        &bao,
        "kv2/opsplan/hmac",
        &root,
        "[keyset.vault]\nkv_version = 2\n",
    );
    project.run(&["plan", "--detailed-exitcode"]).expect_code(2);
    bao.seal();
    let run = project.run(&["plan"]);
    run.expect_code(1)
        .expect_contains("Vault is sealed or unavailable (503) on GET")
        .expect_contains("/v1/kv2/data/opsplan/hmac")
        .expect_contains("unseal");
    never_printed(&run, &[&root]);
}

#[test]
fn vault_kv1_and_kv2_rotation_publishes_the_runbook_fields() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_kv("kv1", 1);
    let root = bao.root_token.clone();
    for (path, reader) in [("secret/app/hmac", 2u8), ("kv1/app/hmac", 1)] {
        let project = vault_project(&bao, path, &root, "");
        project.run(&["apply", "--auto-approve"]).expect_code(0);
        project
            .run(&["apply", "--auto-approve", "--replace", "keyset.hmac"])
            .expect_code(0);
        let (mount, secret) = path.split_once('/').unwrap();
        let data = if reader == 2 {
            bao.kv2_get(mount, secret).1
        } else {
            bao.kv1_get(mount, secret)
        };
        let list: Vec<&str> = data["HMAC_SECRETS"].as_str().unwrap().split(',').collect();
        assert_eq!(list.len(), 2);
        assert_eq!(data["HMAC_SECRET"].as_str().unwrap(), list[0]);
        let metadata: Value =
            serde_json::from_str(data["opsplan_metadata"].as_str().unwrap()).unwrap();
        assert_eq!(
            states(&metadata),
            vec![
                (key_id(list[0]), "primary".to_string()),
                (key_id(list[1]), "pending".to_string())
            ]
        );
        project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kv2_concurrent_writer_between_plan_and_apply() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_kv("kv2", 2);
    let before = bao.kv2_put("kv2", "app/hmac", json!({ "HMAC_SECRETS": CASE_13_KEYS }));
    assert_eq!(before, 1);

    let lookup = |name: &str| match name {
        "KMS_PROVIDER" => Some("vault".to_string()),
        "VAULT_ADDR" => Some(bao.addr.clone()),
        "VAULT_TOKEN" => Some(bao.root_token.clone()),
        "VAULT_KV_PATH" => Some("kv2/app/hmac".to_string()),
        _ => None,
    };
    let config = opsplan::config::Config::parse(
        opsplan::diagnostic::SourceFile::new("ops.toml", "[keyset]\nmin_key_length = 8\n"),
        std::path::PathBuf::from("."),
        lookup,
    )
    .unwrap();
    let resource = opsplan::keyset::KeysetResource::new(config.keyset.unwrap(), true);
    let engine = opsplan::engine::Engine::new(vec![std::sync::Arc::new(resource)]).unwrap();
    let plan = engine.plan().await;
    assert!(plan.has_changes(), "{plan:?}");

    // Another writer gets in between.
    let theirs = bao.kv2_put(
        "kv2",
        "app/hmac",
        json!({ "HMAC_SECRETS": "their-key-0001" }),
    );
    assert_eq!(theirs, 2);

    let report = opsplan::apply::apply(&engine, &plan, &opsplan::apply::Silent).await;
    assert_eq!(report.failed(), 1);
    let error = match &report.steps[0].status {
        opsplan::apply::StepStatus::Failed { error } => error.clone(),
        other => panic!("{other:?}"),
    };
    assert!(
        error.contains("changed since the plan was read (planned against version 1, now 2)"),
        "{error}"
    );
    let (version, data) = bao.kv2_get("kv2", "app/hmac");
    assert_eq!(version, 2);
    assert_eq!(data, json!({ "HMAC_SECRETS": "their-key-0001" }));

    // The check-and-set itself: a write planned against version 2 after a third writer.
    use opsplan::store::Store;
    let store = opsplan::store::VaultStore::new(match lookup_config(&bao) {
        opsplan::config::KeyStoreConfig::Vault(vault) => vault,
        _ => unreachable!(),
    });
    let read = store.read().await.unwrap().unwrap();
    assert_eq!(read.version, Some(2));
    bao.kv2_put(
        "kv2",
        "app/hmac",
        json!({ "HMAC_SECRETS": "third-key-0001" }),
    );
    let error = store.write(&read.fields, read.version).await.unwrap_err();
    assert!(
        error.to_string().contains(
            "kv2/data/app/hmac changed since the plan was read (planned against version 2, now 3)"
        ),
        "{error}"
    );
    assert_eq!(
        bao.kv2_get("kv2", "app/hmac").1,
        json!({ "HMAC_SECRETS": "third-key-0001" })
    );
}

fn lookup_config(bao: &OpenBao) -> opsplan::config::KeyStoreConfig {
    let lookup = |name: &str| match name {
        "VAULT_ADDR" => Some(bao.addr.clone()),
        "VAULT_TOKEN" => Some(bao.root_token.clone()),
        "VAULT_KV_PATH" => Some("kv2/app/hmac".to_string()),
        _ => None,
    };
    let config = opsplan::config::Config::parse(
        opsplan::diagnostic::SourceFile::new("ops.toml", "[keyset]\nstore = \"vault\"\n"),
        std::path::PathBuf::from("."),
        lookup,
    )
    .unwrap();
    config.keyset.unwrap().store
}

#[test]
fn vault_cacert_is_honoured() {
    let Some(bao) = OpenBao::start_tls() else {
        return;
    };
    let root = bao.root_token.clone();
    let project = vault_project(&bao, "secret/app/hmac", &root, "");
    let run = project.run(&["plan"]);
    run.expect_code(1).expect_contains("cannot reach Vault");
    never_printed(&run, &[&root]);

    let mut project = vault_project(&bao, "secret/app/hmac", &root, "");
    project.set_env(
        "VAULT_CACERT",
        bao.ca_cert.as_ref().unwrap().to_str().unwrap(),
    );
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("keyset.hmac: no keys stored");
}

// ---- case 12 (keys): no secret in any output or file ----

/// Every file under `dir`, as bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found
}

#[track_caller]
fn assert_clean(label: &str, run: &Run, secrets: &[String]) {
    for secret in secrets {
        let count = run.all().matches(secret.as_str()).count();
        assert_eq!(
            count,
            0,
            "{label}: {secret:?} appears in the output:\n{}",
            run.all()
        );
    }
}

#[test]
fn case_12_no_secret_in_any_output_or_file() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_kv("kv2", 2);
    bao.kv2_put("kv2", "app/hmac", json!({ "HMAC_SECRETS": "old-key-1a7d" }));
    bao.put_policy(
        "app",
        "path \"kv2/data/app/*\" { capabilities = [\"read\", \"create\", \"update\"] }\n\
         path \"kv2/metadata/app/*\" { capabilities = [\"read\"] }\n\
         path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }",
    );
    let token = bao.create_token(&["app"], None);

    let home = tempfile::tempdir().unwrap();
    let mut project = vault_project(&bao, "kv2/app/hmac", &token, "");
    project.set_env("HMAC_SECRETS", "new-primary-9f2c,old-key-1a7d");
    project.set_env("SMTP_PASS", "s3cr3t-Pa55-word");
    project.set_env("HOME", home.path().to_str().unwrap());
    let mut secrets: Vec<String> = [
        "new-primary-9f2c",
        "old-key-1a7d",
        "s3cr3t-Pa55-word",
        "hvs.TESTTOKEN123",
        token.as_str(),
        bao.root_token.as_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut runs: Vec<(String, Run)> = Vec::new();
    for args in [
        vec!["plan"],
        vec!["plan", "-v"],
        vec!["plan", "-vv"],
        vec!["plan", "-vv", "--replace", "keyset.hmac"],
        vec!["validate"],
    ] {
        runs.push((args.join(" "), project.run(&args)));
    }
    let mut trace = project.command(&["plan", "--replace", "keyset.hmac"]);
    trace.env("RUST_LOG", "trace");
    runs.push(("RUST_LOG=trace plan".into(), trace.output().unwrap().into()));
    let mut trace = project.command(&["apply", "--auto-approve", "--replace", "keyset.hmac"]);
    trace.env("RUST_LOG", "trace");
    let applied: Run = trace.output().unwrap().into();
    applied.expect_code(0);
    runs.push(("RUST_LOG=trace apply".into(), applied));
    let mut trace = project.command(&["apply", "--auto-approve", "--replace", "keyset.hmac"]);
    trace.env("RUST_LOG", "trace");
    let applied: Run = trace.output().unwrap().into();
    applied
        .expect_code(0)
        .expect_contains("primary changed (values hidden)");
    runs.push(("RUST_LOG=trace apply (promote)".into(), applied));

    // The material generated by those applies is a secret too.
    let data = bao.kv2_get("kv2", "app/hmac").1;
    for key in data["HMAC_SECRETS"].as_str().unwrap().split(',') {
        secrets.push(key.to_string());
    }
    assert!(secrets.len() > 7);

    // A failing apply: Vault unreachable, then a token Vault refuses, then Vault sealed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (label, addr, token) in [
        (
            "apply, Vault unreachable",
            closed_addr.as_str(),
            "hvs.TESTTOKEN123",
        ),
        (
            "apply, token refused",
            bao.addr.as_str(),
            "hvs.TESTTOKEN123",
        ),
    ] {
        let mut command =
            project.command(&["apply", "--auto-approve", "-vv", "--replace", "keyset.hmac"]);
        command
            .env("VAULT_ADDR", addr)
            .env("VAULT_TOKEN", token)
            .env("RUST_LOG", "trace");
        let run: Run = command.output().unwrap().into();
        run.expect_code(1);
        runs.push((label.to_string(), run));
    }
    // A token that may read but not write: the write fails, naming its API path.
    bao.put_policy(
        "read-only",
        "path \"kv2/data/app/*\" { capabilities = [\"read\"] }\n\
         path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }",
    );
    let reader = bao.create_token(&["read-only"], None);
    secrets.push(reader.clone());
    let mut command =
        project.command(&["apply", "--auto-approve", "-vv", "--replace", "keyset.hmac"]);
    command.env("VAULT_TOKEN", &reader).env("RUST_LOG", "trace");
    let run: Run = command.output().unwrap().into();
    run.expect_code(1).expect_contains(&format!(
        "permission denied (403) on POST {}/v1/kv2/data/app/hmac",
        bao.addr
    ));
    runs.push(("apply, write denied".into(), run));

    bao.seal();
    let mut command = project.command(&["apply", "--auto-approve", "--replace", "keyset.hmac"]);
    command.env("RUST_LOG", "trace");
    let run: Run = command.output().unwrap().into();
    run.expect_code(1).expect_contains("sealed");
    runs.push(("apply, Vault sealed".into(), run));

    for (label, run) in &runs {
        assert_clean(label, run, &secrets);
    }
    // The plan still says what changes, without values, and names the disagreement between
    // the environment and the store by key id.
    assert!(runs[3].1.stdout.contains("(values hidden)"));
    assert!(
        runs[0].1.stdout.contains(&format!(
            "HMAC_SECRETS in opsplan's environment (2 keys, primary {}) differs from the key \
             set in vault {}/kv2/app/hmac (1 key, primary {})",
            key_id("new-primary-9f2c"),
            bao.addr,
            key_id("old-key-1a7d")
        )),
        "{}",
        runs[0].1.stdout
    );
    for (path, bytes) in files_under(project.path())
        .into_iter()
        .chain(files_under(home.path()))
    {
        let text = String::from_utf8_lossy(&bytes);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} in {}",
                path.display()
            );
        }
    }
}

#[test]
fn file_store_secrets_stay_in_the_store() {
    let home = tempfile::tempdir().unwrap();
    let mut project = Project::new();
    project.config(FILE_POLICY);
    project.set_env("HOME", home.path().to_str().unwrap());
    let mut runs = Vec::new();
    for args in [
        vec!["apply", "--auto-approve", "-vv"],
        vec!["apply", "--auto-approve", "-vv", "--replace", "keyset.hmac"],
        vec!["plan", "-vv", "--replace", "keyset.hmac"],
    ] {
        let mut command = project.command(&args);
        command.env("RUST_LOG", "trace");
        let run: Run = command.output().unwrap().into();
        run.expect_code(0);
        runs.push(run);
    }
    let (list, _, _) = published(&project);
    assert_eq!(list.len(), 2);
    for run in &runs {
        assert_clean("file store", run, &list);
    }
    for (path, bytes) in files_under(project.path())
        .into_iter()
        .chain(files_under(home.path()))
    {
        if path.ends_with(".opsplan/keys.json") {
            continue;
        }
        let text = String::from_utf8_lossy(&bytes);
        for key in &list {
            assert!(!text.contains(key.as_str()), "a key in {}", path.display());
        }
    }
}

// ---- case 11 (keys): the live-state fingerprint, and a plan applied twice ----

fn file_engine(dir: &Path) -> opsplan::engine::Engine {
    let config = opsplan::config::Config::parse(
        opsplan::diagnostic::SourceFile::new("ops.toml", "[keyset]\n"),
        dir.to_path_buf(),
        |_| None,
    )
    .unwrap();
    let resource = opsplan::keyset::KeysetResource::new(config.keyset.unwrap(), false);
    opsplan::engine::Engine::new(vec![std::sync::Arc::new(resource)]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn case_11_fingerprint_and_a_plan_applied_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(".opsplan/keys.json");
    let engine = file_engine(dir.path());

    // Nothing stored: the fingerprint is the explicit "absent" marker.
    let plan = engine.plan().await;
    assert!(plan.resources[0].fingerprint.is_absent());
    let data = serde_json::to_string(&plan).unwrap();
    assert!(data.contains("\"live_fingerprint\":\"absent\""), "{data}");

    let report = opsplan::apply::apply(&engine, &plan, &opsplan::apply::Silent).await;
    assert!(report.succeeded(), "{report:?}");
    let written = std::fs::read(&store).unwrap();

    // The same plan again: live state moved on, so it is refused and nothing is written.
    let report = opsplan::apply::apply(&engine, &plan, &opsplan::apply::Silent).await;
    assert_eq!(report.failed(), 1);
    let opsplan::apply::StepStatus::Failed { error } = &report.steps[0].status else {
        panic!("{report:?}")
    };
    assert!(
        error.contains("the key set changed since the plan was read (live state fingerprint"),
        "{error}"
    );
    assert!(error.contains("planned against absent"), "{error}");
    assert_eq!(std::fs::read(&store).unwrap(), written);

    // Stable while nothing changes; different as soon as the store changes.
    let first = engine.plan().await.resources[0].fingerprint.clone();
    let second = engine.plan().await.resources[0].fingerprint.clone();
    assert!(!first.is_absent());
    assert_eq!(first, second);
    let mut fields: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let list = format!("{},{}", fields["HMAC_SECRETS"], random_hex(32));
    fields.insert("HMAC_SECRETS".into(), list);
    std::fs::write(&store, serde_json::to_vec(&fields).unwrap()).unwrap();
    let third = engine.plan().await.resources[0].fingerprint.clone();
    assert_ne!(first, third);
}

/// Case 24 as written: a stub HTTP server (no Vault behind it, so that every request's
/// headers can be recorded) answers the mount lookup and a KV v2 read.
#[test]
fn case_24_stub_records_the_namespace_header_on_every_request() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let recorded =
        std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Option<String>)>::new()));
    let log = recorded.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut namespace = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("x-vault-namespace")
                {
                    namespace = Some(value.trim().to_string());
                }
            }
            // The query (vaultrs sends an empty one on KV v2 reads) is not part of the path.
            let target = request_line.split_whitespace().nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("").to_string();
            log.lock().unwrap().push((path.clone(), namespace));
            let data = if path.starts_with("/v1/sys/internal/ui/mounts/") {
                json!({"path": "kv2/", "type": "kv", "options": {"version": "2"}})
            } else {
                json!({
                    "data": {"HMAC_SECRETS": CASE_13_KEYS},
                    "metadata": {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "",
                                 "custom_metadata": null, "destroyed": false, "version": 1}
                })
            };
            let body = json!({
                "request_id": "stub", "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": data, "wrap_info": null, "warnings": null, "auth": null
            })
            .to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });

    let mut project = Project::new();
    project.config("[keyset]\nmin_key_length = 8\n");
    project.set_env("KMS_PROVIDER", "vault");
    project.set_env("VAULT_ADDR", &addr);
    project.set_env("VAULT_TOKEN", "hvs.TESTTOKEN123");
    project.set_env("VAULT_KV_PATH", "kv2/opsplan/hmac");
    project.set_env("VAULT_NAMESPACE", "team-payments");
    let run = project.run(&["plan", "--detailed-exitcode"]);
    run.expect_code(0)
        .expect_contains(&format!("primary {}", key_id("k-primary-2025")));
    never_printed(&run, &["hvs.TESTTOKEN123"]);

    let recorded = recorded.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![
            (
                "/v1/sys/internal/ui/mounts/kv2/opsplan/hmac".to_string(),
                Some("team-payments".to_string())
            ),
            (
                "/v1/kv2/data/opsplan/hmac".to_string(),
                Some("team-payments".to_string())
            ),
        ]
    );
}
