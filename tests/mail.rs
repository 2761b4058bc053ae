//! The mail concern through the binary, against real SMTP servers (python3-aiosmtpd with
//! plain, STARTTLS and implicit-TLS listeners), a silent TCP listener, and the Redis
//! server at 127.0.0.1:6379.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::smtp::{SilentServer, SmtpServers};
use common::{Project, Run, server_available, unique_name};

const PASSWORD: &str = "pw-not-for-logs";
const OTHER_PASSWORD: &str = "second-pw-not-for-logs";
const FROM: &str = "Équipe Ops <ops@example.com>";
const VERIFY_TO: &str = "admin@example.com";
const SUBJECT: &str = "opsplan mail verification";
const REDIS: &str = "127.0.0.1:6379";

/// Runs opsplan, killing it after `limit` as `timeout 120 opsplan …` would (and failing).
fn opsplan_within(project: &Project, args: &[&str], limit: Duration) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = project
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run opsplan");
    loop {
        if child.try_wait().unwrap().is_some() {
            let output = child.wait_with_output().unwrap();
            return (output.into(), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "opsplan {args:?} still ran after {limit:?} (a hang)\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `[mail]` section for the SMTP server on `port`, trusting the test CA. Credentials come
/// from the runbook's variables, which the test sets.
fn smtp_section(servers: &SmtpServers, port: u16, tls: &str, extra: &str) -> String {
    format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n\
         tls_ca = \"{}\"\nuser = \"${{env:SMTP_USER:-}}\"\npassword = \"${{env:SMTP_PASS:-}}\"\n\
         from = \"{FROM}\"\ncommand_timeout = \"5s\"\n{extra}\n",
        servers.ca.display()
    )
}

fn with_credentials(project: &mut Project, password: &str) {
    project.set_env("SMTP_USER", "ops");
    project.set_env("SMTP_PASS", password);
}

fn published(project: &Project) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(project.path().join(".opsplan/mail.json"))
        .expect("the published settings");
    serde_json::from_str(&text).unwrap()
}

fn field<'a>(settings: &'a serde_json::Map<String, serde_json::Value>, name: &str) -> &'a str {
    settings
        .get(name)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{name} is not published: {settings:?}"))
}

#[track_caller]
fn assert_lacks(run: &Run, text: &str) {
    assert!(
        !run.all().contains(text),
        "output must not contain {text:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout,
        run.stderr
    );
}

#[track_caller]
fn assert_probes_passed(run: &Run, tls_detail: &str) {
    for line in [
        "check smtp connect: ok (127.0.0.1:",
        "check smtp greeting: ok (EHLO answered",
        tls_detail,
        "check smtp auth: ok (user `ops` accepted",
        "check smtp quit: ok (221",
    ] {
        run.expect_contains(line);
    }
}

/// Plan probes and sends nothing; apply publishes and delivers one verification message.
fn probe_publish_and_verify(listener: &str, tls: &str, tls_detail: &str) {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let port = match listener {
        "implicit" => servers.implicit,
        _ => servers.starttls,
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(
        &servers,
        port,
        tls,
        &format!("verify_to = \"{VERIFY_TO}\""),
    ));

    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2);
    assert_probes_passed(&plan, tls_detail);
    plan.expect_contains("+ mail.settings")
        .expect_contains("+ mail.verification")
        .expect_contains(&format!(
            "      host:     127.0.0.1\n      port:     {port}\n"
        ))
        .expect_contains(&format!("      tls:      {tls}\n"))
        .expect_contains("      password: (sensitive)\n")
        .expect_contains(&format!("      from:     {FROM}\n"))
        .expect_contains("Plan: 2 to add, 0 to change, 0 to destroy.");
    assert_lacks(&plan, PASSWORD);
    // A plan never sends mail.
    assert!(servers.messages().is_empty());
    let verbs = servers.verbs(listener);
    for verb in ["MAIL", "RCPT", "DATA"] {
        assert!(!verbs.contains(&verb.to_string()), "{verbs:?}");
    }
    assert!(verbs.contains(&"AUTH".to_string()), "{verbs:?}");
    assert_eq!(verbs.last().map(String::as_str), Some("QUIT"), "{verbs:?}");

    let apply = project.run(&["apply", "--auto-approve"]);
    apply.expect_code(0);
    apply
        .expect_contains("mail.settings: done (7 setting(s) published to file ")
        .expect_contains(&format!(
            "mail.verification: done (verification message sent to {VERIFY_TO} through \
             127.0.0.1:{port}; the server answered 250 OK: queued by the opsplan test server)"
        ))
        .expect_contains("Apply complete! 2 applied.");
    assert_lacks(&apply, PASSWORD);

    let settings = published(&project);
    assert_eq!(field(&settings, "MAIL_PROVIDER"), "smtp");
    assert_eq!(field(&settings, "SMTP_HOST"), "127.0.0.1");
    assert_eq!(field(&settings, "SMTP_PORT"), port.to_string());
    assert_eq!(field(&settings, "SMTP_TLS"), tls);
    assert_eq!(field(&settings, "SMTP_USER"), "ops");
    assert_eq!(field(&settings, "SMTP_PASS"), PASSWORD);
    assert_eq!(field(&settings, "SMTP_FROM"), FROM);

    let messages = servers.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["listener"], listener);
    assert_eq!(message["from"], FROM);
    assert_eq!(message["to"], VERIFY_TO);
    assert_eq!(message["subject"], SUBJECT);
    assert_eq!(message["mail_from"], "ops@example.com");
    assert_eq!(message["rcpt_tos"], serde_json::json!([VERIFY_TO]));
    let raw = message["raw"].as_str().unwrap();
    assert!(raw.contains(&format!("Subject: {SUBJECT}\r\n")), "{raw}");
    assert!(raw.contains(&format!("To: {VERIFY_TO}\r\n")), "{raw}");

    // Settings in place: nothing to do, and no second message.
    let again = project.run(&["plan", "--detailed-exitcode"]);
    again
        .expect_code(0)
        .expect_contains("mail.settings: smtp settings published (127.0.0.1:")
        .expect_contains("No changes. Live state matches the configuration.");
    assert_lacks(&again, "mail.verification");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(servers.messages().len(), 1);

    // Asked for explicitly, the message goes out once more with nothing else changed.
    let asked = project.run(&["apply", "--auto-approve", "--send-verification"]);
    asked
        .expect_code(0)
        .expect_contains("+ mail.verification")
        .expect_contains("Apply complete! 1 applied.");
    assert_lacks(&asked, "mail.settings: done");
    assert_eq!(servers.messages().len(), 2);
}

#[test]
fn implicit_tls_port_handshakes_first_then_probes_publishes_and_verifies() {
    // Case 14 (a): implicit TLS on its own port succeeds.
    probe_publish_and_verify(
        "implicit",
        "implicit",
        "check smtp tls: ok (implicit TLS, certificate verified for 127.0.0.1)",
    );
}

#[test]
fn starttls_port_upgrades_then_probes_publishes_and_verifies() {
    // Case 14 (b): STARTTLS on its own port succeeds, and AUTH comes only after STARTTLS.
    probe_publish_and_verify("starttls", "starttls", "check smtp tls: ok (STARTTLS in ");
}

#[test]
fn starttls_comes_before_auth_on_the_wire() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(&servers, servers.starttls, "starttls", ""));
    project.run(&["plan"]).expect_code(0);
    assert_eq!(
        servers.verbs("starttls"),
        ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
    );
}

/// Case 14 (c) and its bound: a server that accepts and never speaks gives exit 1 within
/// the documented bound (connect_timeout + command_timeout, 10 s + 10 s by default), with
/// host:port, the timed-out step and the 465/587 hint; never a hang.
#[test]
fn silent_server_on_the_implicit_tls_port_times_out_with_the_hint() {
    // Port 465 itself when this machine lets the test bind it: then the mode is the one
    // that 465 implies. Otherwise a free port, with that mode written out.
    let (silent, config) = match SilentServer::start_on(465) {
        Some(silent) => (silent, "[mail]\n"),
        None => (SilentServer::start(), "[mail]\ntls = \"implicit\"\n"),
    };
    let mut project = Project::new();
    project.set_env("MAIL_PROVIDER", "smtp");
    project.set_env("SMTP_HOST", "127.0.0.1");
    project.set_env("SMTP_PORT", &silent.port.to_string());
    project.set_env("SMTP_FROM", "ops@example.com");
    project.config(config);

    let (apply, elapsed) = opsplan_within(
        &project,
        &["apply", "--auto-approve"],
        Duration::from_secs(120),
    );
    apply
        .expect_code(1)
        .expect_contains(&format!(
            "SMTP server 127.0.0.1:{}: timed out waiting for the server greeting/TLS \
             handshake after 10s (tried implicit TLS: a TLS handshake first)",
            silent.port
        ))
        .expect_contains("port 465 expects implicit TLS (mail.tls = \"implicit\")")
        .expect_contains("port 587 expects STARTTLS (mail.tls = \"starttls\")")
        .expect_contains("error: the plan was refused; nothing was applied");
    assert!(
        elapsed >= Duration::from_secs(10) && elapsed < Duration::from_secs(20),
        "took {elapsed:?}; the documented bound is 20 s"
    );
    assert!(!project.path().join(".opsplan/mail.json").exists());
}

#[test]
fn silent_server_spoken_to_with_starttls_times_out_the_same_way() {
    let silent = SilentServer::start();
    let project = Project::new();
    project.config(&format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         from = \"ops@example.com\"\ncommand_timeout = \"2s\"\n",
        silent.port
    ));
    let (plan, elapsed) = opsplan_within(&project, &["plan"], Duration::from_secs(120));
    plan.expect_code(1)
        .expect_contains(&format!(
            "SMTP server 127.0.0.1:{}: timed out waiting for the server greeting/TLS \
             handshake after 2s (tried STARTTLS: a plaintext greeting first)",
            silent.port
        ))
        .expect_contains("port 465 expects implicit TLS");
    assert!(elapsed < Duration::from_secs(12), "took {elapsed:?}");
}

/// Case 14, forced conflicting mode: STARTTLS against a real implicit-TLS server. Both
/// sides wait for the other to speak first (lettre/lettre#1027); the same bound applies.
#[test]
fn starttls_forced_on_an_implicit_tls_server_is_bounded_too() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         tls_ca = \"{}\"\nuser = \"ops\"\npassword = \"${{env:SMTP_PASS}}\"\n\
         from = \"ops@example.com\"\n",
        servers.implicit,
        servers.ca.display()
    ));
    let (apply, elapsed) = opsplan_within(
        &project,
        &["apply", "--auto-approve"],
        Duration::from_secs(120),
    );
    apply
        .expect_code(1)
        .expect_contains(&format!(
            "SMTP server 127.0.0.1:{}: timed out waiting for the server greeting/TLS \
             handshake after 10s",
            servers.implicit
        ))
        .expect_contains("port 465 expects implicit TLS");
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}; the documented bound is 20 s"
    );
    assert!(!servers.verbs("implicit").contains(&"AUTH".to_string()));
    assert_lacks(&apply, PASSWORD);
}

#[test]
fn implicit_tls_against_a_starttls_port_fails_at_once_with_the_hint() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let project = Project::new();
    project.config(&smtp_section(&servers, servers.starttls, "implicit", ""));
    let (plan, elapsed) = opsplan_within(&project, &["plan"], Duration::from_secs(60));
    plan.expect_code(1)
        .expect_contains(&format!(
            "SMTP server 127.0.0.1:{}: the TLS handshake or greeting failed (tried implicit \
             TLS: a TLS handshake first)",
            servers.starttls
        ))
        .expect_contains("port 587 expects STARTTLS");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn a_certificate_from_an_untrusted_authority_is_refused() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&format!(
        "[mail]\nprovider = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\n\
         user = \"ops\"\npassword = \"${{env:SMTP_PASS}}\"\nfrom = \"ops@example.com\"\n",
        servers.starttls
    ));
    let plan = project.run(&["plan"]);
    plan.expect_code(1)
        .expect_contains(&format!(
            "SMTP server 127.0.0.1:{}: STARTTLS failed",
            servers.starttls
        ))
        .expect_contains("UnknownIssuer");
    assert!(!servers.verbs("starttls").contains(&"AUTH".to_string()));
}

/// Case 25 (a): a server that offers AUTH without TLS. opsplan refuses to send the
/// credentials, explains 465/587, and the server never sees AUTH.
#[test]
fn credentials_are_never_sent_over_an_unencrypted_connection() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    project.set_env("MAIL_PROVIDER", "smtp");
    project.set_env("SMTP_HOST", "127.0.0.1");
    project.set_env("SMTP_PORT", &servers.plain.to_string());
    project.set_env("SMTP_FROM", "ops@example.com");
    with_credentials(&mut project, PASSWORD);
    project.config("[mail]\n");

    let apply = project.run(&["apply", "--auto-approve"]);
    apply.expect_code(1).expect_contains(&format!(
        "SMTP server 127.0.0.1:{} does not offer STARTTLS, so the connection would stay \
             unencrypted; credentials will not be sent over an unencrypted connection. Use \
             port 465 with mail.tls = \"implicit\" or port 587 with mail.tls = \"starttls\"",
        servers.plain
    ));
    assert_lacks(&apply, PASSWORD);
    let verbs = servers.verbs("plain");
    assert!(verbs.contains(&"EHLO".to_string()), "{verbs:?}");
    assert!(!verbs.contains(&"AUTH".to_string()), "{verbs:?}");
    assert!(!project.path().join(".opsplan/mail.json").exists());

    // Forcing tls = "none" with credentials is refused before any connection is made.
    let before = servers.commands().len();
    project.config("[mail]\ntls = \"none\"\n");
    let plan = project.run(&["plan"]);
    plan.expect_code(1).expect_contains(
        "ops.toml:2:7: credentials will not be sent over an unencrypted connection \
         (mail.tls = \"none\")",
    );
    assert_lacks(&plan, PASSWORD);
    assert_eq!(servers.commands().len(), before);
}

/// Case 25 (b): without credentials no AUTH is attempted and the message is accepted.
#[test]
fn without_credentials_no_auth_is_attempted_and_mail_is_accepted() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    project.set_env("MAIL_PROVIDER", "smtp");
    project.set_env("SMTP_HOST", "127.0.0.1");
    project.set_env("SMTP_PORT", &servers.plain.to_string());
    project.set_env("SMTP_FROM", "ops@example.com");
    project.config(&format!(
        "[mail]\ntls = \"none\"\nverify_to = \"{VERIFY_TO}\"\n"
    ));

    let apply = project.run(&["apply", "--auto-approve"]);
    apply
        .expect_code(0)
        .expect_contains("mail.verification: done (verification message sent to");
    assert_lacks(&apply, "check smtp auth");
    let verbs = servers.verbs("plain");
    assert!(!verbs.contains(&"AUTH".to_string()), "{verbs:?}");
    assert!(verbs.contains(&"DATA".to_string()), "{verbs:?}");
    let messages = servers.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["subject"], SUBJECT);
    let settings = published(&project);
    assert_eq!(field(&settings, "SMTP_TLS"), "none");
    assert!(!settings.contains_key("SMTP_USER") && !settings.contains_key("SMTP_PASS"));
}

/// Case 25 (c): a user with an empty password is a configuration error at plan time.
#[test]
fn user_with_an_empty_password_is_a_config_error_at_plan_time() {
    let mut project = Project::new();
    project.set_env("MAIL_PROVIDER", "smtp");
    project.set_env("SMTP_HOST", "127.0.0.1");
    project.set_env("SMTP_PORT", "2525");
    project.set_env("SMTP_FROM", "ops@example.com");
    project.set_env("SMTP_USER", "ops");
    project.set_env("SMTP_PASS", "");
    project.config("[mail]\n");
    let plan = project.run(&["plan"]);
    plan.expect_code(1).expect_contains(
        "error: ops.toml:1:1: mail.user (from SMTP_USER) is set, but the password is empty",
    );
    assert_lacks(&plan, "check smtp");
}

#[test]
fn changing_only_the_password_shows_changed_and_never_a_value() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD, OTHER_PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(&servers, servers.starttls, "starttls", ""));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    // Unchanged: no change at all.
    let same = project.run(&["plan", "--detailed-exitcode"]);
    same.expect_code(0).expect_contains("No changes.");

    let mut changed = Project {
        dir: project.dir,
        env: Vec::new(),
    };
    with_credentials(&mut changed, OTHER_PASSWORD);
    let plan = changed.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("~ mail.settings\n      password: changed\n\n")
        .expect_contains("Plan: 0 to add, 1 to change, 0 to destroy.");
    assert_lacks(&plan, PASSWORD);
    assert_lacks(&plan, OTHER_PASSWORD);
    assert_lacks(&plan, "host");

    changed.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(field(&published(&changed), "SMTP_PASS"), OTHER_PASSWORD);
    changed.run(&["plan", "--detailed-exitcode"]).expect_code(0);
}

#[test]
fn other_fields_show_before_and_after() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(&servers, servers.starttls, "starttls", ""));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    project.config(
        &smtp_section(&servers, servers.starttls, "starttls", "")
            .replace(FROM, "Alerts <alerts@example.com>"),
    );
    project
        .run(&["plan"])
        .expect_code(0)
        .expect_contains(&format!(
            "  ~ mail.settings\n      from: {FROM} -> Alerts <alerts@example.com>\n"
        ));
}

#[test]
fn switching_to_console_removes_the_smtp_fields_and_keeps_unmanaged_ones() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(&servers, servers.starttls, "starttls", ""));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    // A field the application reads that opsplan does not manage.
    let path = project.path().join(".opsplan/mail.json");
    let mut document = published(&project);
    document.insert("MAIL_RETRY_LIMIT".into(), "5".into());
    std::fs::write(&path, serde_json::to_string(&document).unwrap()).unwrap();

    project.config("[mail]\nprovider = \"console\"\n");
    let plan = project.run(&["plan"]);
    plan.expect_code(0).expect_contains(&format!(
        "  ~ mail.settings\n      provider: smtp -> console\n      host:     127.0.0.1 -> \
         (none)\n      port:     {} -> (none)\n      tls:      starttls -> (none)\n      \
         user:     ops -> (none)\n      password: (sensitive) -> (none)\n      from:     {FROM} \
         -> (none)\n",
        servers.starttls
    ));
    assert_lacks(&plan, PASSWORD);
    assert_lacks(&plan, "MAIL_RETRY_LIMIT");

    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let settings = published(&project);
    let mut names: Vec<&str> = settings.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["MAIL_PROVIDER", "MAIL_RETRY_LIMIT", "opsplan_metadata"]
    );
    assert_eq!(field(&settings, "MAIL_RETRY_LIMIT"), "5");
}

#[test]
fn console_provider_runs_with_nothing_installed() {
    let project = Project::new();
    project.config("[mail]\nprovider = \"console\"\n");
    let plan = project.run(&["plan", "--detailed-exitcode"]);
    plan.expect_code(2)
        .expect_contains("mail.settings: no settings published yet (file ")
        .expect_contains("  + mail.settings\n      provider: console\n");
    assert_lacks(&plan, "check smtp");

    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let settings = published(&project);
    assert_eq!(field(&settings, "MAIL_PROVIDER"), "console");
    assert!(!settings.contains_key("SMTP_HOST"));
    let metadata: serde_json::Value =
        serde_json::from_str(field(&settings, "opsplan_metadata")).unwrap();
    assert_eq!(metadata["managed_by"], "opsplan");
    assert_eq!(metadata["fingerprint_salt"].as_str().unwrap().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(project.path().join(".opsplan/mail.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);
}

#[test]
fn console_is_refused_in_production() {
    let project = Project::new();
    project.config("[project]\nenvironment = \"production\"\n\n[mail]\nprovider = \"console\"\n");
    project.run(&["plan"]).expect_code(1).expect_contains(
        "error: ops.toml:5:12: mail provider `console` is refused when project.environment \
         is \"production\"",
    );
    project.run(&["validate"]).expect_code(1);
}

#[test]
fn a_second_apply_waits_for_the_settings_lock_and_names_its_holder() {
    use std::io::Write;
    let project = Project::new();
    project.config("[mail]\nprovider = \"console\"\n");
    std::fs::create_dir_all(project.path().join(".opsplan")).unwrap();
    let mut held =
        std::fs::File::create(project.path().join(".opsplan/mail.json.opsplan-lock")).unwrap();
    held.try_lock()
        .expect("take the lock as another apply would");
    writeln!(held, "deployer@ci-7 pid 4242 since 2026-01-01T00:00:00Z").unwrap();

    let apply = project.run(&["apply", "--auto-approve", "--lock-timeout", "1s"]);
    apply
        .expect_code(1)
        .expect_contains("Waiting for the mail.settings lock, held by deployer@ci-7 pid 4242")
        .expect_contains(
            "another opsplan apply holds the mail settings lock .opsplan/mail.json.opsplan-lock: \
             deployer@ci-7 pid 4242 since 2026-01-01T00:00:00Z; waited 1s",
        );
    assert!(!project.path().join(".opsplan/mail.json").exists());

    held.unlock().unwrap();
    project.run(&["apply", "--auto-approve"]).expect_code(0);
}

fn redis() -> Option<redis::Connection> {
    if !server_available("Redis", REDIS) {
        return None;
    }
    let client = redis::Client::open(format!("redis://{REDIS}/")).unwrap();
    Some(client.get_connection().expect("connect to Redis"))
}

/// Deletes the test's key when the test ends.
struct RedisKey(String);

impl Drop for RedisKey {
    fn drop(&mut self) {
        if let Some(mut connection) = redis::Client::open(format!("redis://{REDIS}/"))
            .ok()
            .and_then(|c| c.get_connection().ok())
        {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.0).query(&mut connection);
        }
    }
}

fn queue_project(key: &str, extra: &str) -> Project {
    let project = Project::new();
    project.config(&format!(
        "[mail]\nprovider = \"console\"\n\n[mail.queue]\nurl = \"redis://{REDIS}/0\"\n\
         key = \"{key}\"\n{extra}\n"
    ));
    project
}

#[test]
fn queue_key_that_does_not_exist_yet_is_reported_and_left_alone() {
    let Some(mut connection) = redis() else {
        return;
    };
    let key = RedisKey(unique_name("opsplan:mail:missing"));
    let project = queue_project(&key.0, "");
    let plan = project.run(&["plan"]);
    plan.expect_code(0).expect_contains(&format!(
        "check queue: ok (redis://{REDIS}/0 key `{}` does not exist yet; the first message \
         pushed creates it)",
        key.0
    ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(field(&published(&project), "MAIL_QUEUE_KEY"), key.0);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&key.0)
        .query(&mut connection)
        .unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn queue_list_length_is_reported_and_the_list_is_untouched_by_apply() {
    let Some(mut connection) = redis() else {
        return;
    };
    let key = RedisKey(unique_name("opsplan:mail:list"));
    let _: () = redis::cmd("RPUSH")
        .arg(&key.0)
        .arg(&["one", "two", "three"][..])
        .query(&mut connection)
        .unwrap();
    let project = queue_project(&key.0, "backlog_warning = 2");
    let plan = project.run(&["plan"]);
    plan.expect_code(0)
        .expect_contains(&format!(
            "check queue: ok (redis://{REDIS}/0 key `{}` is a list of 3 message(s))",
            key.0
        ))
        .expect_contains(&format!(
            "Warning: mail.settings: the mail queue `{}` holds 3 messages, more than \
             mail.queue.backlog_warning (2): is the mail worker running?",
            key.0
        ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(&key.0)
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert_eq!(items, ["one", "two", "three"]);
}

#[test]
fn queue_key_of_another_type_is_an_error_and_is_never_touched() {
    let Some(mut connection) = redis() else {
        return;
    };
    let key = RedisKey(unique_name("opsplan:mail:string"));
    let _: () = redis::cmd("SET")
        .arg(&key.0)
        .arg("keep-me")
        .query(&mut connection)
        .unwrap();
    let project = queue_project(&key.0, "");
    let expected = format!(
        "Redis redis://{REDIS}/0: key `{}` is a string, not a list, so the mail worker cannot \
         consume it. opsplan never deletes or overwrites it",
        key.0
    );
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains(&expected);
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(1)
        .expect_contains(&expected);
    let value: String = redis::cmd("GET")
        .arg(&key.0)
        .query(&mut connection)
        .unwrap();
    assert_eq!(value, "keep-me");
    let kind: String = redis::cmd("TYPE")
        .arg(&key.0)
        .query(&mut connection)
        .unwrap();
    assert_eq!(kind, "string");
    assert!(!project.path().join(".opsplan/mail.json").exists());
}

#[test]
fn queue_key_comes_from_the_runbook_variable() {
    let Some(_connection) = redis() else {
        return;
    };
    let key = RedisKey(unique_name("opsplan:mail:env"));
    let mut project = Project::new();
    project.set_env("MAIL_QUEUE_KEY", &key.0);
    project.config(&format!(
        "[mail]\nprovider = \"console\"\n[mail.queue]\nurl = \"redis://{REDIS}/0\"\n"
    ));
    project
        .run(&["plan"])
        .expect_code(0)
        .expect_contains(&format!("      queue_key: {}\n", key.0));
}

#[test]
fn unreachable_or_silent_redis_is_a_bounded_error_without_the_url_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let project = Project::new();
    project.config(&format!(
        "[mail]\nprovider = \"console\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"2s\"\n\
         [mail.queue]\nurl = \"redis://:redis-pw-not-for-logs@127.0.0.1:{closed_port}/0\"\n\
         key = \"mail:outbox\"\n"
    ));
    let plan = project.run(&["plan"]);
    plan.expect_code(1).expect_contains(&format!(
        "Redis redis://:***@127.0.0.1:{closed_port}/0: cannot connect"
    ));
    assert_lacks(&plan, "redis-pw-not-for-logs");

    let silent = SilentServer::start();
    project.config(&format!(
        "[mail]\nprovider = \"console\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"2s\"\n\
         [mail.queue]\nurl = \"redis://:redis-pw-not-for-logs@127.0.0.1:{}/0\"\n\
         key = \"mail:outbox\"\n",
        silent.port
    ));
    let (plan, elapsed) = opsplan_within(&project, &["plan"], Duration::from_secs(60));
    plan.expect_code(1).expect_contains(&format!(
        "Redis redis://:***@127.0.0.1:{}/0: no answer to the connection within 2s",
        silent.port
    ));
    assert_lacks(&plan, "redis-pw-not-for-logs");
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}

/// The password appears in no output at any verbosity; on disk only in the store.
#[test]
fn password_appears_nowhere_in_output_or_logs() {
    let Some(servers) = SmtpServers::start("ops", &[PASSWORD, OTHER_PASSWORD]) else {
        return;
    };
    let mut project = Project::new();
    with_credentials(&mut project, PASSWORD);
    project.config(&smtp_section(
        &servers,
        servers.starttls,
        "starttls",
        &format!("verify_to = \"{VERIFY_TO}\""),
    ));
    let encoded = [
        base64_of(&format!("\0ops\0{PASSWORD}")),
        base64_of(PASSWORD),
    ];

    let mut runs = vec![
        project.run(&["-vv", "plan"]),
        project.run(&["-vv", "apply", "--auto-approve"]),
    ];
    let mut trace = project.command(&["plan"]);
    trace.env("RUST_LOG", "trace");
    runs.push(trace.output().unwrap().into());

    // A changed password, and a refused one, at the highest verbosity.
    let mut changed = project.command(&["-vv", "plan"]);
    changed
        .env("SMTP_PASS", OTHER_PASSWORD)
        .env("RUST_LOG", "trace");
    runs.push(changed.output().unwrap().into());
    let mut refused = project.command(&["-vv", "apply", "--auto-approve"]);
    refused
        .env("SMTP_PASS", "wrong-pw-not-for-logs")
        .env("RUST_LOG", "trace");
    let refused: Run = refused.output().unwrap().into();
    refused
        .expect_code(1)
        .expect_contains("rejected the credentials of user `ops`");
    runs.push(refused);

    for run in &runs {
        assert!(
            run.stderr.contains("DEBUG") || run.stderr.contains("TRACE"),
            "{}",
            run.stderr
        );
        for secret in [PASSWORD, OTHER_PASSWORD, "wrong-pw-not-for-logs"]
            .iter()
            .map(|s| s.to_string())
            .chain(encoded.iter().cloned())
        {
            assert_lacks(run, &secret);
        }
    }
    assert_eq!(runs[1].code, 0, "{}", runs[1].all());

    // On disk, only the store holds it.
    let mut holders = Vec::new();
    for entry in walk(project.path()) {
        if std::fs::read(&entry)
            .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(PASSWORD))
        {
            holders.push(entry.strip_prefix(project.path()).unwrap().to_path_buf());
        }
    }
    assert_eq!(holders, [std::path::PathBuf::from(".opsplan/mail.json")]);
}

fn walk(folder: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
