//! The secret sweep: one project that uses every concern with real secrets (a database
//! password, a Vault token, HMAC keys from the environment and the ones apply generates,
//! an SMTP password, credentials in the Prometheus URL), run through every command and
//! output format at every log level, succeeding and failing. None of the secret values may
//! appear in any output, log, or file that opsplan writes.
//!
//! The key set and the mail settings are published to Vault, so no file of the project is
//! meant to hold a secret: a file store holds key material by design, and is swept by
//! `tests/keyset.rs` apart from the files beside it.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::path::{Path, PathBuf};

use common::faults::closed_port;
use common::openbao::OpenBao;
use common::smtp::SmtpServers;
use common::{Backend, Project, Run, TestDatabase};
use prometheus::PrometheusServer;

const DB_PASSWORD: &str = "db-pass-7Qx2vL";
const VAULT_TOKEN: &str = "sweep-vault-token-5TqR8m";
const SMTP_PASSWORD: &str = "smtp-pass-8WnJ3k";
const WRONG_SMTP_PASSWORD: &str = "wrong-smtp-pass-2Hc9";
const PROMETHEUS_PASSWORD: &str = "prom-pass-4KdZ6y";
const DESIRED_KEYS: &str = "sweep-primary-key-9f2c,sweep-old-key-1a7d";

/// Every way a run can ask for diagnostics: none, `-v`, `-vv`, and `RUST_LOG=trace`.
const LEVELS: &[(&str, &[&str], Option<&str>)] = &[
    ("quiet", &[], None),
    ("-v", &["-v"], None),
    ("-vv", &["-vv"], None),
    ("RUST_LOG=trace", &[], Some("trace")),
];

struct Sweep {
    project: Project,
    runs: Vec<(String, Run)>,
}

impl Sweep {
    fn run(
        &mut self,
        label: &str,
        args: &[&str],
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Run {
        let mut command = self.project.command(args);
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let run: Run = command.output().expect("run opsplan").into();
        self.runs.push((label.to_string(), clone_run(&run)));
        run
    }

    /// Runs `args` at every log level.
    fn at_every_level(&mut self, args: &[&str], env: &[(&str, &str)]) -> Vec<Run> {
        LEVELS
            .iter()
            .map(|(level, flags, rust_log)| {
                let mut all: Vec<&str> = flags.to_vec();
                all.extend_from_slice(args);
                let label = format!("{} [{level}]", args.join(" "));
                self.run(&label, &all, *rust_log, env)
            })
            .collect()
    }
}

fn clone_run(run: &Run) -> Run {
    Run {
        code: run.code,
        stdout: run.stdout.clone(),
        stderr: run.stderr.clone(),
    }
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path, bytes));
            }
        }
    }
    found
}

#[test]
fn no_secret_in_any_command_format_log_level_or_file() {
    let Some(db) = TestDatabase::create(Backend::Postgres) else {
        return;
    };
    let Some(bao) = OpenBao::start() else { return };
    let Some(smtp) = SmtpServers::start("ops", &[SMTP_PASSWORD]) else {
        return;
    };
    let Some(prometheus) = PrometheusServer::start() else {
        return;
    };

    // Vault: a KV v2 mount, a policy for the two secrets, and a token with a known value.
    bao.enable_kv("kv2", 2);
    bao.put_policy(
        "app",
        "path \"kv2/data/app/*\" { capabilities = [\"read\", \"create\", \"update\"] }\n\
         path \"kv2/metadata/app/*\" { capabilities = [\"read\"] }\n\
         path \"sys/internal/ui/mounts/*\" { capabilities = [\"read\"] }",
    );
    bao.create_token(&["app"], Some(VAULT_TOKEN));

    // PostgreSQL trusts loopback, so the password is sent and ignored: it is still a
    // password in the URL, which opsplan must never show.
    let url = db
        .url
        .replacen("postgres@", "postgres:${env:DB_PASSWORD}@", 1);
    let prometheus_url =
        prometheus
            .url
            .replacen("http://", "http://ops:${env:PROMETHEUS_PASSWORD}@", 1);
    let home = tempfile::tempdir().unwrap();
    let mut project = Project::new();
    project.config(&format!(
        "[schema]\nurl = \"{url}\"\n\n\
         [keyset]\nstore = \"vault\"\nmin_key_length = 8\n\n\
         [alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{prometheus_url}\"\n\
         rules_dir = \"{rules}\"\n\
         [alerts.builtin]\nmigration_failures = {{ enabled = true }}\n\n\
         [mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\n\
         tls_ca = \"{ca}\"\nuser = \"ops\"\npassword = \"${{env:SMTP_PASS}}\"\n\
         from = \"Ops <ops@example.com>\"\nverify_to = \"admin@example.com\"\n\
         command_timeout = \"5s\"\nstore = \"vault\"\n[mail.vault]\nkv_path = \"kv2/app/mail\"\n\
         [mail.queue]\nurl = \"redis://127.0.0.1:6379/0\"\nkey = \"{queue}\"\n",
        rules = prometheus.rules_dir().display(),
        port = smtp.starttls,
        ca = smtp.ca.display(),
        queue = common::unique_name("opsplan:sweep:outbox"),
    ));
    project.migration(
        "0001_create_users.sql",
        "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT NOT NULL);",
    );
    project.migration(
        "0002_create_tokens.sql",
        "CREATE TABLE tokens (id BIGINT PRIMARY KEY, key_id TEXT NOT NULL);",
    );
    project.set_env("KMS_PROVIDER", "vault");
    project.set_env("VAULT_ADDR", &bao.addr);
    project.set_env("VAULT_TOKEN", VAULT_TOKEN);
    project.set_env("VAULT_KV_PATH", "kv2/app/hmac");
    project.set_env("HMAC_SECRETS", DESIRED_KEYS);
    project.set_env("SMTP_PASS", SMTP_PASSWORD);
    // The passwords in URLs come from the environment, as operators write them, so that
    // ops.toml itself holds no secret and is swept like every other file.
    project.set_env("DB_PASSWORD", DB_PASSWORD);
    project.set_env("PROMETHEUS_PASSWORD", PROMETHEUS_PASSWORD);
    project.set_env("HOME", home.path().to_str().unwrap());
    let mut sweep = Sweep {
        project,
        runs: Vec::new(),
    };
    let mut secrets: Vec<String> = [
        DB_PASSWORD,
        VAULT_TOKEN,
        SMTP_PASSWORD,
        WRONG_SMTP_PASSWORD,
        PROMETHEUS_PASSWORD,
        bao.root_token.as_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(DESIRED_KEYS.split(',').map(str::to_string))
    .collect();

    // Everything that reads, in every format, before anything is applied.
    let plan_file = sweep.project.path().join("plans/sweep.json");
    let plan_file = plan_file.to_str().unwrap().to_string();
    let metrics = sweep.project.path().join("metrics/opsplan.prom");
    let metrics = metrics.to_str().unwrap().to_string();
    for args in [
        vec!["validate"],
        vec!["plan"],
        vec!["plan", "--format", "markdown"],
        vec!["plan", "--format", "json"],
        vec!["plan", "--detailed-exitcode", "--metrics-file", &metrics],
        vec!["graph", "--format", "dot"],
        vec!["graph", "--format", "mermaid"],
        vec!["drift"],
        vec!["drift", "--format", "json", "--metrics-file", &metrics],
        vec!["history"],
    ] {
        sweep.at_every_level(&args, &[]);
    }
    let saved = sweep.run(
        "plan --out",
        &["-vv", "plan", "--out", &plan_file],
        Some("trace"),
        &[],
    );
    saved.expect_code(0);
    for format in ["human", "markdown", "json"] {
        sweep.at_every_level(&["show", &plan_file, "--format", format], &[]);
    }

    // Applies: the saved plan, then a forced rotation, then its promotion, with JSON events.
    sweep
        .run(
            "apply PLANFILE",
            &["-vv", "apply", &plan_file],
            Some("trace"),
            &[],
        )
        .expect_code(0);
    sweep
        .run(
            "apply --replace keyset.hmac --format json",
            &[
                "apply",
                "--auto-approve",
                "--replace",
                "keyset.hmac",
                "--format",
                "json",
            ],
            Some("trace"),
            &[],
        )
        .expect_code(0);
    sweep
        .run(
            "apply --replace keyset.hmac -vv",
            &[
                "-vv",
                "apply",
                "--auto-approve",
                "--replace",
                "keyset.hmac",
                "--metrics-file",
                &metrics,
            ],
            Some("trace"),
            &[],
        )
        .expect_code(0);
    for args in [vec!["plan"], vec!["drift"], vec!["history"]] {
        sweep.at_every_level(&args, &[]);
    }
    assert_eq!(
        smtp.messages().len(),
        1,
        "the first apply sends one verification message, the rotations none"
    );

    // Failing runs: each back end broken in turn, at the most verbose level.
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let failing_url = format!(
        "postgres://postgres:${{env:DB_PASSWORD}}@127.0.0.1:{}/x",
        closed_port()
    );
    let failing: &[(&str, Vec<(&str, &str)>)] = &[
        ("Vault unreachable", vec![("VAULT_ADDR", closed.as_str())]),
        (
            "Vault refuses the token",
            vec![("VAULT_TOKEN", "hvs.not-a-token-0000")],
        ),
        (
            "SMTP refuses the password",
            vec![("SMTP_PASS", WRONG_SMTP_PASSWORD)],
        ),
    ];
    for (label, env) in failing {
        for args in [
            vec!["plan", "--replace", "keyset.hmac"],
            vec!["apply", "--auto-approve", "--replace", "keyset.hmac"],
            vec!["drift", "--format", "json"],
        ] {
            for run in sweep.at_every_level(&args, env) {
                // A refused SMTP password is not drift: `drift` lists it as a problem.
                if args[0] == "drift" && env[0].0 == "SMTP_PASS" {
                    run.expect_code(0).expect_contains("\"problems\": [\n    {");
                } else {
                    assert_eq!(run.code, 1, "{label}: {args:?} should fail\n{}", run.all());
                }
            }
        }
    }
    let mut broken_db = Sweep {
        project: Project::new(),
        runs: Vec::new(),
    };
    broken_db
        .project
        .schema_config(&failing_url, "timeout = \"2s\"");
    broken_db.project.set_env("DB_PASSWORD", DB_PASSWORD);
    broken_db
        .project
        .migration("0001_create_users.sql", "CREATE TABLE users (id BIGINT);");
    for args in [
        vec!["plan"],
        vec!["apply", "--auto-approve"],
        vec!["history"],
    ] {
        for run in broken_db.at_every_level(&args, &[]) {
            run.expect_code(1)
                .expect_contains("postgres://postgres:***@127.0.0.1:");
        }
    }
    let mut broken_prometheus = Sweep {
        project: Project::new(),
        runs: Vec::new(),
    };
    let closed_prometheus = format!(
        "http://ops:${{env:PROMETHEUS_PASSWORD}}@127.0.0.1:{}",
        closed_port()
    );
    broken_prometheus
        .project
        .set_env("PROMETHEUS_PASSWORD", PROMETHEUS_PASSWORD);
    broken_prometheus.project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{closed_prometheus}\"\n\
         [alerts.builtin]\nmigration_failures = {{ enabled = true }}\n"
    ));
    for args in [vec!["plan"], vec!["apply", "--auto-approve"], vec!["drift"]] {
        for run in broken_prometheus.at_every_level(&args, &[]) {
            run.expect_code(1)
                .expect_contains("http://ops:***@127.0.0.1:");
        }
    }

    // The key material apply generated is a secret too.
    let (_, published) = bao.kv2_get("kv2", "app/hmac");
    for key in published["HMAC_SECRETS"].as_str().unwrap().split(',') {
        secrets.push(key.to_string());
    }
    assert!(secrets.len() >= 10, "{secrets:?}");

    // The sweep: every output, then every file opsplan wrote.
    let mut found = Vec::new();
    let runs: Vec<&(String, Run)> = sweep
        .runs
        .iter()
        .chain(&broken_db.runs)
        .chain(&broken_prometheus.runs)
        .collect();
    for (label, run) in &runs {
        for secret in &secrets {
            let count = run.all().matches(secret.as_str()).count();
            if count > 0 {
                found.push(format!("{label}: {secret:?} appears {count} time(s)"));
            }
        }
    }
    let mut files = files_under(sweep.project.path());
    files.extend(files_under(home.path()));
    files.extend(files_under(&prometheus.rules_dir()));
    files.extend(files_under(broken_db.project.path()));
    files.extend(files_under(broken_prometheus.project.path()));
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                found.push(format!("{secret:?} in {}", path.display()));
            }
        }
    }
    // The verification message goes out over SMTP; it must not carry a secret either.
    for message in smtp.messages() {
        let raw = message["raw"].as_str().unwrap_or_default();
        for secret in &secrets {
            if raw.contains(secret.as_str()) {
                found.push(format!("{secret:?} in the verification message"));
            }
        }
    }
    eprintln!(
        "sweep: {} runs, {} files, {} secret values, {} occurrences",
        runs.len(),
        files.len(),
        secrets.len(),
        found.len()
    );
    assert!(found.is_empty(), "{}", found.join("\n"));
    assert!(
        files
            .iter()
            .any(|(path, _)| path.ends_with("plans/sweep.json"))
    );
    assert!(
        files
            .iter()
            .any(|(path, _)| path.ends_with("metrics/opsplan.prom"))
    );
}
