//! Broken back ends: every back end opsplan talks to (the database, Vault, SMTP, Redis,
//! Prometheus) down, hanging up, slow past its timeout, silent, answering with errors,
//! denying access, and Vault sealed. Each run must exit 1 within the configured timeout,
//! with a message that names the back end and the address it used, and never hang.
//!
//! Real servers give every failure they can be made to give: a sealed OpenBao, a token
//! without a policy, a PostgreSQL role or MariaDB user without rights, Prometheus without
//! its lifecycle API, aiosmtpd refusing a password. Silence, slowness, a hang-up and an
//! error status come from the small loopback servers in `tests/common/faults.rs`, said
//! plainly in each scenario's name; "slow" is a proxy in front of the real server.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::faults::{Behaviour, FaultServer, closed_port};
use common::openbao::OpenBao;
use common::smtp::SmtpServers;
use common::{Backend, Project, Run, TestDatabase, server_available, unique_name};
use prometheus::PrometheusServer;

/// The timeout every scenario configures for its back end.
const TIMEOUT: Duration = Duration::from_secs(2);
const TIMEOUT_SETTING: &str = "2s";
/// What a slow back end adds to each answer: well past the timeout.
const SLOW: Duration = Duration::from_secs(4);
/// Process start, reading the configuration and writing the answer, on a busy machine.
const SLACK: Duration = Duration::from_secs(4);
/// A run that lasts this long has hung.
const HANG: Duration = Duration::from_secs(60);

/// Runs opsplan, killing it (and failing the scenario) if it outlives [`HANG`].
fn run_bounded(project: &Project, args: &[&str]) -> (Run, Duration) {
    let mut command = project.command(args);
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run opsplan");
    loop {
        if child.try_wait().unwrap().is_some() || started.elapsed() > HANG {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            return (output.into(), started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One broken back end and what opsplan must say about it.
struct Scenario<'a> {
    name: &'a str,
    project: &'a Project,
    args: &'a [&'a str],
    /// How long the run may take: the configured timeout for silence and slowness, none
    /// (beyond [`SLACK`]) when the failure is immediate.
    bound: Duration,
    /// Every one of these must appear in the output.
    expect: Vec<String>,
}

/// The results of one back end's scenarios.
#[derive(Default)]
struct Tally {
    backend: String,
    scenarios: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(backend: &str) -> Tally {
        Tally {
            backend: backend.to_string(),
            ..Tally::default()
        }
    }

    fn check(&mut self, scenario: Scenario<'_>) {
        self.scenarios += 1;
        let (run, elapsed) = run_bounded(scenario.project, scenario.args);
        let text = run.all();
        let mut problems = Vec::new();
        if run.code != 1 {
            problems.push(format!("exit {} instead of 1", run.code));
        }
        if elapsed > scenario.bound + SLACK {
            problems.push(format!(
                "took {elapsed:.1?}, more than {:?} + {SLACK:?}",
                scenario.bound
            ));
        }
        for expected in &scenario.expect {
            if !text.contains(expected.as_str()) {
                problems.push(format!("output lacks {expected:?}"));
            }
        }
        if text.contains("panicked") {
            problems.push("opsplan panicked".to_string());
        }
        let said = text
            .lines()
            .find(|line| line.starts_with("Error:"))
            .or_else(|| text.lines().find(|line| line.starts_with("error:")))
            .unwrap_or("");
        eprintln!(
            "back end {}/{}: exit {} in {elapsed:.1?}: {}",
            self.backend,
            scenario.name,
            run.code,
            said.trim()
        );
        if !problems.is_empty() {
            self.failures.push(format!(
                "{}/{}: {}\n--- stdout\n{}\n--- stderr\n{}",
                self.backend,
                scenario.name,
                problems.join("; "),
                run.stdout,
                run.stderr
            ));
        }
    }

    #[track_caller]
    fn finish(self) {
        eprintln!(
            "failures {}: {} scenarios, {} failures",
            self.backend,
            self.scenarios,
            self.failures.len()
        );
        assert!(self.failures.is_empty(), "{}", self.failures.join("\n\n"));
    }
}

fn silent() -> FaultServer {
    FaultServer::start(Behaviour::Answer {
        greeting: Vec::new(),
        reply: Vec::new(),
    })
}

fn hang_up() -> FaultServer {
    FaultServer::start(Behaviour::HangUp)
}

fn slow(upstream: u16) -> FaultServer {
    FaultServer::start(Behaviour::Delay {
        upstream,
        delay: SLOW,
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

// ---- Databases ----

fn schema_project(url: &str) -> Project {
    let project = Project::new();
    project.config(&format!(
        "[schema]\nurl = \"{url}\"\ntimeout = \"{TIMEOUT_SETTING}\"\n"
    ));
    project.migration(
        "0001_create_accounts.sql",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
    );
    project
}

/// The failures every database server shares: nobody listening, a hang-up, silence, and
/// a proxy that answers after the timeout.
fn database_network_failures(tally: &mut Tally, backend: &str, scheme: &str, real_port: u16) {
    let down = closed_port();
    let url = format!("{scheme}127.0.0.1:{down}/opsplan");
    let project = schema_project(&url);
    tally.check(Scenario {
        name: "down",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![format!("cannot connect to {backend} at {url}")],
    });

    let server = hang_up();
    let url = format!("{scheme}127.0.0.1:{}/opsplan", server.port);
    let project = schema_project(&url);
    tally.check(Scenario {
        name: "hangs up (loopback fault server)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: Duration::ZERO,
        expect: vec![format!("cannot connect to {backend} at {url}")],
    });

    let server = silent();
    let url = format!("{scheme}127.0.0.1:{}/opsplan", server.port);
    let project = schema_project(&url);
    tally.check(Scenario {
        name: "silent (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: TIMEOUT,
        expect: vec![
            format!("{backend} at {url}: connecting did not finish within {TIMEOUT_SETTING}"),
            "raise schema.timeout".to_string(),
        ],
    });

    let proxy = slow(real_port);
    let url = format!("{scheme}127.0.0.1:{}/opsplan", proxy.port);
    let project = schema_project(&url);
    tally.check(Scenario {
        name: "slow (delaying proxy)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: TIMEOUT,
        expect: vec![format!(
            "{backend} at {url}: connecting did not finish within {TIMEOUT_SETTING}"
        )],
    });
}

#[test]
fn postgres_failures_exit_1_in_time_naming_the_server() {
    if !server_available("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let mut tally = Tally::new("postgresql");
    database_network_failures(&mut tally, "PostgreSQL", "postgres://postgres@", 5432);

    // The server answers with an error: the database does not exist.
    let missing = unique_name("opsplan_missing");
    let url = format!("postgres://postgres@127.0.0.1:5432/{missing}");
    let project = schema_project(&url);
    tally.check(Scenario {
        name: "error: no such database",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![
            format!("cannot connect to PostgreSQL at {url}"),
            format!("database \"{missing}\" does not exist"),
        ],
    });

    // Access denied: a role that may connect but not create tables (PostgreSQL 15 and
    // later give ordinary roles no CREATE on the public schema; the test revokes it for
    // older servers too).
    if let Some(db) = TestDatabase::create(Backend::Postgres) {
        let role = unique_name("opsplan_ro");
        db.execute(&format!(
            "CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             GRANT CONNECT ON DATABASE {} TO {role}",
            db.url.rsplit('/').next().unwrap()
        ));
        let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
        let project = schema_project(&url);
        tally.check(Scenario {
            name: "denied: no CREATE on the schema",
            project: &project,
            args: &["apply", "--auto-approve"],
            bound: Duration::ZERO,
            expect: vec![
                format!("PostgreSQL at {url}: creating the history table failed"),
                "permission denied".to_string(),
            ],
        });
        drop(project);
        drop(db);
        common::postgres_admin(&format!("DROP ROLE IF EXISTS {role}"));
    }
    tally.finish();
}

#[test]
fn mariadb_failures_exit_1_in_time_naming_the_server() {
    if !server_available("MariaDB", "127.0.0.1:3306") {
        return;
    }
    let mut tally = Tally::new("mariadb");
    database_network_failures(&mut tally, "MySQL/MariaDB", "mysql://root@", 3306);

    // Access denied: a user with no rights on the database.
    if let Some(db) = TestDatabase::create(Backend::MySql) {
        let user = unique_name("opsplan_ro");
        common::mysql_admin(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-ro'"));
        common::mysql_admin(&format!(
            "CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw-ro'"
        ));
        let url = db.url.replacen("root@", &format!("{user}:pw-ro@"), 1);
        let shown = db.url.replacen("root@", &format!("{user}:***@"), 1);
        let project = schema_project(&url);
        tally.check(Scenario {
            name: "denied: no rights on the database",
            project: &project,
            args: &["plan"],
            bound: Duration::ZERO,
            expect: vec![
                format!("cannot connect to MySQL/MariaDB at {shown}"),
                "Access denied".to_string(),
            ],
        });
        common::mysql_admin(&format!("DROP USER IF EXISTS '{user}'@'%'"));
        common::mysql_admin(&format!("DROP USER IF EXISTS '{user}'@'localhost'"));
    }
    tally.finish();
}

#[test]
fn sqlite_file_that_is_not_a_database_is_an_error_naming_it() {
    let mut tally = Tally::new("sqlite");
    let project = Project::new();
    project.write(
        ".opsplan/app.db",
        &"not a database, just text\n".repeat(200),
    );
    let path = project.path().join(".opsplan/app.db");
    project.config(&format!(
        "[schema]\nurl = \"sqlite://{}\"\ntimeout = \"{TIMEOUT_SETTING}\"\n",
        path.display()
    ));
    project.migration(
        "0001_create_accounts.sql",
        "CREATE TABLE accounts (id BIGINT);",
    );
    tally.check(Scenario {
        name: "error: the file is not a database",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![
            format!("SQLite at sqlite://{}", path.display()),
            "file is not a database".to_string(),
        ],
    });
    tally.finish();
}

// ---- Vault ----

const KV_PATH: &str = "secret/opsplan/hmac";
const VAULT_TOKEN: &str = "hvs.failure-suite-token";

fn vault_project(addr: &str, token: &str) -> Project {
    let mut project = Project::new();
    project.config(&format!(
        "[keyset]\nstore = \"vault\"\nmin_key_length = 8\n[keyset.vault]\nkv_version = 2\n\
         timeout = \"{TIMEOUT_SETTING}\"\n"
    ));
    project.set_env("VAULT_ADDR", addr);
    project.set_env("VAULT_TOKEN", token);
    project.set_env("VAULT_KV_PATH", KV_PATH);
    project
}

#[test]
fn vault_failures_exit_1_in_time_naming_the_server() {
    let Some(bao) = OpenBao::start() else { return };
    let mut tally = Tally::new("vault");
    let place = |port: u16| format!("http://127.0.0.1:{port}/v1/secret/data/opsplan/hmac");

    let down = closed_port();
    let project = vault_project(&format!("http://127.0.0.1:{down}"), VAULT_TOKEN);
    tally.check(Scenario {
        name: "down",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![format!(
            "cannot reach Vault or read its answer for GET {}",
            place(down)
        )],
    });

    let server = hang_up();
    let project = vault_project(&format!("http://127.0.0.1:{}", server.port), VAULT_TOKEN);
    tally.check(Scenario {
        name: "hangs up (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![format!(
            "cannot reach Vault or read its answer for GET {}",
            place(server.port)
        )],
    });

    let server = silent();
    let project = vault_project(&format!("http://127.0.0.1:{}", server.port), VAULT_TOKEN);
    tally.check(Scenario {
        name: "silent (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: TIMEOUT,
        expect: vec![
            format!("GET {}", place(server.port)),
            format!("no answer within {TIMEOUT_SETTING}"),
        ],
    });

    let proxy = slow(bao.port);
    let project = vault_project(&format!("http://127.0.0.1:{}", proxy.port), &bao.root_token);
    tally.check(Scenario {
        name: "slow (delaying proxy)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: TIMEOUT,
        expect: vec![
            format!("GET {}", place(proxy.port)),
            format!("no answer within {TIMEOUT_SETTING}"),
        ],
    });

    let server = FaultServer::start(Behaviour::Http {
        status: 500,
        body: r#"{"errors":["internal error"]}"#.to_string(),
    });
    let project = vault_project(&format!("http://127.0.0.1:{}", server.port), VAULT_TOKEN);
    tally.check(Scenario {
        name: "error 500 (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![format!(
            "Vault answered 500 on GET {}: internal error",
            place(server.port)
        )],
    });

    // Access denied by the real server: a token whose policy names the path without data/.
    bao.put_policy(
        "no-data",
        "path \"secret/opsplan/*\" { capabilities = [\"read\"] }",
    );
    let limited = bao.create_token(&["no-data"], None);
    let project = vault_project(&bao.addr, &limited);
    tally.check(Scenario {
        name: "denied: policy without data/",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![
            format!("permission denied (403) on GET {}", place(bao.port)),
            "data/".to_string(),
        ],
    });

    // Sealed, by the real server.
    bao.seal();
    let project = vault_project(&bao.addr, &bao.root_token);
    tally.check(Scenario {
        name: "sealed",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: Duration::ZERO,
        expect: vec![format!(
            "Vault is sealed or unavailable (503) on GET {}",
            place(bao.port)
        )],
    });
    tally.finish();
}

// ---- SMTP ----

fn smtp_project(
    port: u16,
    tls: &str,
    credentials: Option<(&str, &str)>,
    ca: Option<&str>,
) -> Project {
    let mut project = Project::new();
    let ca = ca
        .map(|ca| format!("tls_ca = \"{ca}\"\n"))
        .unwrap_or_default();
    project.config(&format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n\
         {ca}from = \"ops@example.com\"\nuser = \"${{env:SMTP_USER:-}}\"\n\
         password = \"${{env:SMTP_PASS:-}}\"\nconnect_timeout = \"{TIMEOUT_SETTING}\"\n\
         command_timeout = \"{TIMEOUT_SETTING}\"\n"
    ));
    if let Some((user, password)) = credentials {
        project.set_env("SMTP_USER", user);
        project.set_env("SMTP_PASS", password);
    }
    project
}

#[test]
fn smtp_failures_exit_1_in_time_naming_the_server() {
    let Some(servers) = SmtpServers::start("ops", &["pw-right"]) else {
        return;
    };
    let ca = servers.ca.display().to_string();
    let mut tally = Tally::new("smtp");

    let down = closed_port();
    let project = smtp_project(down, "none", None, None);
    tally.check(Scenario {
        name: "down",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: strings(&[&format!("SMTP server 127.0.0.1:{down}: cannot connect")]),
    });

    let server = hang_up();
    let project = smtp_project(server.port, "starttls", None, None);
    tally.check(Scenario {
        name: "hangs up (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: strings(&[&format!("SMTP server 127.0.0.1:{}", server.port)]),
    });

    let server = silent();
    let project = smtp_project(server.port, "starttls", None, None);
    tally.check(Scenario {
        name: "silent (loopback fault server)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: TIMEOUT,
        expect: strings(&[
            &format!("SMTP server 127.0.0.1:{}", server.port),
            "timed out waiting for the server greeting",
        ]),
    });

    let proxy = slow(servers.starttls);
    let project = smtp_project(proxy.port, "starttls", None, Some(&ca));
    tally.check(Scenario {
        name: "slow (delaying proxy)",
        project: &project,
        args: &["plan"],
        bound: TIMEOUT,
        expect: strings(&[
            &format!("SMTP server 127.0.0.1:{}", proxy.port),
            "timed out",
        ]),
    });

    let server = FaultServer::start(Behaviour::Answer {
        greeting: b"421 4.3.2 service not available, closing channel\r\n".to_vec(),
        reply: b"421 4.3.2 service not available\r\n".to_vec(),
    });
    let project = smtp_project(server.port, "starttls", None, None);
    tally.check(Scenario {
        name: "error 421 greeting (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: strings(&[&format!("SMTP server 127.0.0.1:{}", server.port), "421"]),
    });

    // Access denied by the real server: a wrong password over STARTTLS.
    let project = smtp_project(
        servers.starttls,
        "starttls",
        Some(("ops", "pw-wrong")),
        Some(&ca),
    );
    tally.check(Scenario {
        name: "denied: wrong password",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: Duration::ZERO,
        expect: strings(&[
            &format!("SMTP server 127.0.0.1:{}", servers.starttls),
            "535",
        ]),
    });
    tally.finish();
}

// ---- Redis ----

fn queue_project(port: u16) -> Project {
    let project = Project::new();
    project.config(&format!(
        "[mail]\nprovider = \"console\"\nconnect_timeout = \"{TIMEOUT_SETTING}\"\n\
         command_timeout = \"{TIMEOUT_SETTING}\"\n[mail.queue]\n\
         url = \"redis://127.0.0.1:{port}/0\"\nkey = \"opsplan:failures:outbox\"\n"
    ));
    project
}

#[test]
fn redis_failures_exit_1_in_time_naming_the_server() {
    if !server_available("Redis", "127.0.0.1:6379") {
        return;
    }
    let mut tally = Tally::new("redis");
    let named = |port: u16| format!("Redis redis://127.0.0.1:{port}/0");

    let down = closed_port();
    let project = queue_project(down);
    tally.check(Scenario {
        name: "down",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![format!("{}: cannot connect", named(down))],
    });

    let server = hang_up();
    let project = queue_project(server.port);
    tally.check(Scenario {
        name: "hangs up (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port)],
    });

    let server = silent();
    let project = queue_project(server.port);
    tally.check(Scenario {
        name: "silent (loopback fault server)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: TIMEOUT,
        expect: vec![format!(
            "{}: no answer to the connection within {TIMEOUT_SETTING}",
            named(server.port)
        )],
    });

    let proxy = slow(6379);
    let project = queue_project(proxy.port);
    tally.check(Scenario {
        name: "slow (delaying proxy)",
        project: &project,
        args: &["plan"],
        bound: TIMEOUT,
        expect: vec![format!(
            "{}: no answer to the connection within {TIMEOUT_SETTING}",
            named(proxy.port)
        )],
    });

    let server = FaultServer::start(Behaviour::Redis {
        reply: b"-ERR internal error\r\n".to_vec(),
    });
    let project = queue_project(server.port);
    tally.check(Scenario {
        name: "error reply (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port), "internal error".to_string()],
    });

    let server = FaultServer::start(Behaviour::Redis {
        reply: b"-NOAUTH Authentication required.\r\n".to_vec(),
    });
    let project = queue_project(server.port);
    tally.check(Scenario {
        name: "denied: NOAUTH (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port), "Authentication required".to_string()],
    });
    tally.finish();
}

// ---- Prometheus ----

fn alerts_project(url: &str) -> Project {
    let project = Project::new();
    project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{url}\"\n\
         timeout = \"{TIMEOUT_SETTING}\"\nrules_dir = \"rules\"\n\
         [[alerts.group]]\nname = \"auth\"\n[[alerts.group.rule]]\nalert = \"AuthDown\"\n\
         expr = 'up{{job=\"authsvc\"}} == 0'\n"
    ));
    project
}

#[test]
fn prometheus_failures_exit_1_in_time_naming_the_server() {
    let Some(real) = PrometheusServer::start() else {
        return;
    };
    let real_port: u16 = real.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut tally = Tally::new("prometheus");
    let named = |port: u16| format!("Prometheus at http://127.0.0.1:{port}");

    let down = closed_port();
    let project = alerts_project(&format!("http://127.0.0.1:{down}"));
    tally.check(Scenario {
        name: "down",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(down)],
    });

    let server = hang_up();
    let project = alerts_project(&format!("http://127.0.0.1:{}", server.port));
    tally.check(Scenario {
        name: "hangs up (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port)],
    });

    let server = silent();
    let project = alerts_project(&format!("http://127.0.0.1:{}", server.port));
    tally.check(Scenario {
        name: "silent (loopback fault server)",
        project: &project,
        args: &["apply", "--auto-approve"],
        bound: TIMEOUT,
        expect: vec![format!(
            "{}/api/v1/rules did not answer within {TIMEOUT_SETTING}",
            named(server.port)
        )],
    });

    let proxy = slow(real_port);
    let project = alerts_project(&format!("http://127.0.0.1:{}", proxy.port));
    tally.check(Scenario {
        name: "slow (delaying proxy)",
        project: &project,
        args: &["plan"],
        bound: TIMEOUT,
        expect: vec![format!(
            "{}/api/v1/rules did not answer within {TIMEOUT_SETTING}",
            named(proxy.port)
        )],
    });

    let server = FaultServer::start(Behaviour::Http {
        status: 500,
        body: r#"{"status":"error","errorType":"internal","error":"rule manager stopped"}"#
            .to_string(),
    });
    let project = alerts_project(&format!("http://127.0.0.1:{}", server.port));
    tally.check(Scenario {
        name: "error 500 (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port), "rule manager stopped".to_string()],
    });

    let server = FaultServer::start(Behaviour::Http {
        status: 401,
        body: "Unauthorized".to_string(),
    });
    let project = alerts_project(&format!("http://127.0.0.1:{}", server.port));
    tally.check(Scenario {
        name: "denied: 401 (loopback fault server)",
        project: &project,
        args: &["plan"],
        bound: Duration::ZERO,
        expect: vec![named(server.port), "401".to_string()],
    });
    tally.finish();
}

// ---- Completed steps stay reported as completed ----

/// The schema applies, then Prometheus refuses the reload because its lifecycle API is off:
/// the report says the migration was applied and the rules failed, and apply exits 1.
#[test]
fn a_failure_after_completed_steps_reports_them_as_completed() {
    let Some(prometheus) = PrometheusServer::start_without_lifecycle() else {
        return;
    };
    let project = Project::new();
    project.config(&format!(
        "[schema]\nurl = \"sqlite://.opsplan/app.db\"\n\
         [alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{}\"\n\
         timeout = \"{TIMEOUT_SETTING}\"\nrules_dir = \"{}\"\ndepends_on = [\"schema\"]\n\
         [[alerts.group]]\nname = \"auth\"\n[[alerts.group.rule]]\nalert = \"AuthDown\"\n\
         expr = 'up{{job=\"authsvc\"}} == 0'\n",
        prometheus.url,
        prometheus.rules_dir().display()
    ));
    project.migration(
        "0001_create_accounts.sql",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY);",
    );

    let (run, elapsed) = run_bounded(&project, &["apply", "--auto-approve"]);
    run.expect_code(1)
        .expect_contains("schema.migration[\"0001_create_accounts\"]: done (1 statement(s)")
        .expect_contains(&format!(
            "Error: alerts.group[\"auth\"]: Prometheus at {}/-/reload refused the reload \
             (HTTP 403): Lifecycle API is not enabled.",
            prometheus.url
        ))
        .expect_contains("Apply failed: 1 applied, 1 failed, 0 skipped.");
    assert!(elapsed < TIMEOUT + SLACK, "took {elapsed:?}");

    // What completed stays completed: the next plan has only the rules left to do.
    let (plan, _) = run_bounded(&project, &["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("schema: 1 migration(s) applied")
        .expect_contains("Plan: 1 to add, 0 to change, 0 to destroy.");
    assert!(!plan.all().contains("+ schema.migration"), "{}", plan.all());
}
