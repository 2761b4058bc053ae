//! Alert rules through the binary: validation as strict as `promtool check rules`, the
//! semantic diff, the prune guard, and apply against a real Prometheus.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Project;
use prometheus::PrometheusServer;

/// The shared corpus: `OPSPLAN_CORPUS`, or `../shared/corpus` beside the repository.
fn corpus() -> Option<PathBuf> {
    let dir = common::corpus_dir();
    let rules = dir.join("prometheus-rules");
    if rules.is_dir() {
        return Some(rules);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the corpus is not at {}; set OPSPLAN_CORPUS",
            rules.display()
        );
    }
    eprintln!(
        "SKIPPED: the corpus is not at {}; set OPSPLAN_CORPUS",
        rules.display()
    );
    None
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/alerts")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// An ops.toml whose alerts go to Prometheus `server`, with `extra` lines in `[alerts]`.
fn prometheus_config(server: &PrometheusServer, extra: &str) -> String {
    format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{}\"\nrules_dir = \"{}\"\n{extra}\n",
        server.url,
        server.rules_dir().display()
    )
}

fn rule_file(groups: &[(&str, &[(&str, &str)])]) -> String {
    let mut text = String::from("groups:\n");
    for (name, rules) in groups {
        text.push_str(&format!("- name: {name}\n  rules:\n"));
        for (alert, expr) in *rules {
            text.push_str(&format!("  - alert: {alert}\n    expr: {expr}\n"));
        }
    }
    text
}

// Case 16: a rule file that repeats a group name is refused before anything is pushed.
#[test]
fn duplicate_group_names_in_one_file_are_refused_and_nothing_is_pushed() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));

    // What is live before: one valid group.
    let node_down: &[(&str, &str)] = &[("NodeDown", "up{job=\"node\"} == 0")];
    project.write(
        "ops/alerts/node.rules.yml",
        &rule_file(&[("node-alerts", node_down)]),
    );
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let live_file = server.rules_dir().join("node.rules.yml");
    let live_before = std::fs::read_to_string(&live_file).unwrap();
    let loaded_before = server.loaded();

    let disk_full: &[(&str, &str)] = &[("NodeDiskFull", "node_filesystem_avail_bytes == 0")];
    project.write(
        "ops/alerts/node.rules.yml",
        &rule_file(&[("node-alerts", node_down), ("node-alerts", disk_full)]),
    );
    let plan = project.run(&["plan"]);
    plan.expect_code(1)
        .expect_contains("ops/alerts/node.rules.yml")
        .expect_contains("node-alerts")
        .expect_contains("duplicate group name");
    assert!(
        plan.stderr.contains(
            "error: ops/alerts/node.rules.yml:6:3: duplicate group name \"node-alerts\": \
             groupname \"node-alerts\" is repeated in the same file ops/alerts/node.rules.yml \
             (first at ops/alerts/node.rules.yml:2:3)"
        ),
        "{}",
        plan.stderr
    );

    project.run(&["apply", "--auto-approve"]).expect_code(1);
    assert_eq!(std::fs::read_to_string(&live_file).unwrap(), live_before);
    assert_eq!(server.loaded(), loaded_before);
    assert_eq!(loaded_before.len(), 1);
    assert_eq!(loaded_before[0].rules, ["NodeDown"]);
}

// Case 16, second half: each included file is its own namespace (its own rendered file),
// so the same group name in two files is accepted; two files with one file name are not.
#[test]
fn same_group_name_in_two_files_is_accepted_as_separate_namespaces() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));
    let down: &[(&str, &str)] = &[("NodeDown", "up == 0")];
    let full: &[(&str, &str)] = &[("NodeDiskFull", "node_filesystem_avail_bytes == 0")];
    project.write("ops/alerts/a.yml", &rule_file(&[("node-alerts", down)]));
    project.write("ops/alerts/b.yml", &rule_file(&[("node-alerts", full)]));

    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("alerts.group[\"a.yml/node-alerts\"]")
        .expect_contains("alerts.group[\"b.yml/node-alerts\"]");
    let mut loaded: Vec<(String, String, Vec<String>)> = server
        .loaded()
        .into_iter()
        .map(|g| (g.file, g.name, g.rules))
        .collect();
    loaded.sort();
    assert_eq!(
        loaded,
        [
            (
                "a.yml".into(),
                "node-alerts".into(),
                vec!["NodeDown".into()]
            ),
            (
                "b.yml".into(),
                "node-alerts".into(),
                vec!["NodeDiskFull".into()]
            ),
        ]
    );

    // Two included files named alike would overwrite each other: refused, both named.
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\", \"ops/more/*.yml\"]",
    ));
    project.write("ops/more/a.yml", &rule_file(&[("other", full)]));
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains("ops/alerts/a.yml and ops/more/a.yml would both be rendered to");
}

// Case 18: durations follow Prometheus's grammar, and every error comes in one run.
#[test]
fn durations_follow_prometheus_and_all_errors_come_in_one_run() {
    let project = Project::new();
    project.config("[alerts]\ninclude = [\"ops/alerts/*.yml\"]\n");
    let valid = "groups:\n- name: timing\n  rules:\n\
                 - alert: OneDay\n    expr: up == 0\n    for: 1d\n\
                 - alert: HourAndHalf\n    expr: up == 0\n    for: 1h30m\n\
                 - alert: NinetySeconds\n    expr: up == 0\n    for: 90s\n\
                 - alert: Immediately\n    expr: up == 0\n    for: 0s\n";
    let valid = valid.replace("\n- alert", "\n  - alert");
    let invalid = format!(
        "{valid}  - alert: BareNumber\n    expr: up == 0\n    for: 5\n\
         \x20 - alert: RangeWithoutUnit\n    expr: increase(errors_total[10]) > 2\n"
    );
    project.write("ops/alerts/timing.yml", &invalid);

    let run = project.run(&["plan"]);
    run.expect_code(1);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(
        errors,
        [
            "error: ops/alerts/timing.yml:16:5: group \"timing\", rule 5, \"BareNumber\": \
             for: invalid duration \"5\" (missing unit)",
            "error: ops/alerts/timing.yml:19:5: group \"timing\", rule 6, \
             \"RangeWithoutUnit\": could not parse expression: missing unit character in \
             duration \"10\"",
        ],
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("2 problems found; nothing was changed.")
    );
    project.run(&["validate"]).expect_code(1);

    // The valid four apply; `1d` is 24h, so writing `for: 24h` later is no change.
    project.write("ops/alerts/timing.yml", &valid);
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project.write(
        "ops/alerts/timing.yml",
        &valid.replace("for: 1d", "for: 24h"),
    );
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("No changes.");
    project.write(
        "ops/alerts/timing.yml",
        &valid.replace("for: 1d", "for: 25h"),
    );
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("~ alerts.group[\"timing.yml/timing\"]")
        .expect_contains("rule OneDay: for");
}

/// `opsplan validate` with one rule file included; its exit code.
fn opsplan_verdict(file: &Path) -> (bool, String) {
    let project = Project::new();
    project.config(&format!("[alerts]\ninclude = [\"{}\"]\n", file.display()));
    let run = project.run(&["validate"]);
    assert!(run.code == 0 || run.code == 1, "{}", run.all());
    (run.code == 0, run.all())
}

fn promtool_verdict(file: &Path) -> (bool, String) {
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(file)
        .output()
        .expect("run promtool");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn validate_and_promtool_agree_on_invalid_and_valid_rules() {
    if !prometheus::installed("promtool") {
        return;
    }
    let invalid = fixtures("invalid");
    assert!(invalid.len() >= 30, "{} invalid rule files", invalid.len());
    let mut disagreements = Vec::new();
    for (file, expected) in invalid
        .iter()
        .map(|f| (f, false))
        .chain(fixtures("valid").iter().map(|f| (f, true)))
    {
        let (ours, our_output) = opsplan_verdict(file);
        let (theirs, their_output) = promtool_verdict(file);
        if ours != expected || theirs != expected {
            disagreements.push(format!(
                "{}: expected valid={expected}, opsplan valid={ours}, promtool valid={theirs}\n\
                 opsplan: {our_output}\npromtool: {their_output}",
                file.display()
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}

#[test]
fn corpus_applies_to_prometheus_and_the_next_plan_is_clean() {
    let Some(corpus) = corpus() else {
        return;
    };
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        &format!("include = [\"{}/*.yml\"]", corpus.display()),
    ));

    project
        .run(&["validate"])
        .expect_code(0)
        .expect_contains("is valid");
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("Plan: 56 to add, 0 to change, 0 to destroy.");
    // One reload for the whole apply, after the last file is written.
    let applied = project.run(&["apply", "--auto-approve"]);
    applied
        .expect_code(0)
        .expect_contains("Apply complete! 56 applied.")
        .expect_contains("Prometheus reloaded, 56 group(s) in 56 file(s) verified");
    assert_eq!(applied.all().matches("Prometheus reloaded").count(), 1);
    assert_eq!(
        applied
            .all()
            .matches("Prometheus reloads after the last group of this apply")
            .count(),
        55
    );

    let loaded = server.loaded();
    let files: std::collections::BTreeSet<&str> = loaded.iter().map(|g| g.file.as_str()).collect();
    assert_eq!(files.len(), 56);
    let rules: usize = loaded.iter().map(|g| g.rules.len()).sum();
    assert_eq!(rules, 446);
    for group in &loaded {
        for health in &group.healths {
            assert!(health == "ok" || health == "unknown", "{group:?}");
        }
    }

    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("alerts: 56 group(s), 446 rule(s) in 56 file(s)")
        .expect_contains(&format!(
            "check prometheus: ok (Prometheus at {} has 56 group(s) loaded, 56 of them from {})",
            server.url,
            server.rules_dir().display()
        ))
        .expect_contains("No changes.");
    project.run(&["drift"]).expect_code(0);
}

#[test]
fn corpus_expressions_print_back_to_the_same_syntax_tree() {
    let Some(corpus) = corpus() else {
        return;
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(corpus).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let file = opsplan::alerts::rules::parse_file(&text).unwrap();
        for rule in file.groups.iter().flat_map(|g| &g.rules) {
            let expr = rule.expr.as_ref().unwrap().text();
            let tree = opsplan::alerts::check::parse_expr(&expr).unwrap();
            let printed = tree.to_string();
            let mut reparsed = opsplan::alerts::check::parse_expr(&printed)
                .unwrap_or_else(|e| panic!("{expr}\nprinted as {printed}\n{e}"));
            // The printer sorts label matchers, whose order has no meaning; apart from
            // that the tree read back is the tree printed.
            let mut original = tree.clone();
            sort_matchers(&mut original);
            sort_matchers(&mut reparsed);
            assert_eq!(reparsed, original, "{expr}\nprinted as {printed}");
            assert_eq!(reparsed.to_string(), printed, "printing is stable");
            checked += 1;
        }
    }
    assert_eq!(checked, 446);
}

fn sort_matchers(expr: &mut promql_parser::parser::Expr) {
    use promql_parser::parser::Expr;
    let sort = |matchers: &mut promql_parser::label::Matchers| {
        matchers
            .matchers
            .sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    };
    match expr {
        Expr::Aggregate(e) => {
            sort_matchers(&mut e.expr);
            if let Some(param) = &mut e.param {
                sort_matchers(param);
            }
        }
        Expr::Unary(e) => sort_matchers(&mut e.expr),
        Expr::Binary(e) => {
            sort_matchers(&mut e.lhs);
            sort_matchers(&mut e.rhs);
        }
        Expr::Paren(e) => sort_matchers(&mut e.expr),
        Expr::Subquery(e) => sort_matchers(&mut e.expr),
        Expr::Call(call) => call.args.args.iter_mut().for_each(|arg| sort_matchers(arg)),
        Expr::VectorSelector(vs) => sort(&mut vs.matchers),
        Expr::MatrixSelector(ms) => sort(&mut ms.vs.matchers),
        _ => {}
    }
}

// A corrupted apply: Prometheus refuses the reload (here another rule file it loads is
// broken, which opsplan cannot see), so the previous file is restored and apply exits 1.
#[test]
fn refused_reload_restores_the_previous_file_and_exits_1() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));
    let v1: &[(&str, &str)] = &[("AuthDown", "up{job=\"auth\"} == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v1)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let live_file = server.rules_dir().join("auth.yml");
    let v1_text = std::fs::read_to_string(&live_file).unwrap();

    // Someone breaks a file that Prometheus also loads.
    std::fs::write(
        server.other_dir().join("broken.yml"),
        "groups:\n- name: x\n  rules:\n  - alert: X\n    expr: sum(\n",
    )
    .unwrap();
    let v2: &[(&str, &str)] = &[
        ("AuthDown", "up{job=\"auth\"} == 0"),
        ("AuthSlow", "up > 1"),
    ];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v2)]));
    let run = project.run(&["apply", "--auto-approve"]);
    run.expect_code(1)
        .expect_contains(&format!(
            "Prometheus at {}/-/reload refused the reload (HTTP 500)",
            server.url
        ))
        .expect_contains("the previous ")
        .expect_contains("was restored");

    assert_eq!(std::fs::read_to_string(&live_file).unwrap(), v1_text);
    let loaded = server.loaded();
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!(loaded[0].name, "auth");
    assert_eq!(loaded[0].rules, ["AuthDown"]);

    // Once the other file is fixed, the same apply goes through.
    std::fs::remove_file(server.other_dir().join("broken.yml")).unwrap();
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert_eq!(server.loaded()[0].rules, ["AuthDown", "AuthSlow"]);
    assert_eq!(
        std::fs::read_to_string(server.rules_dir().join("auth.yml.previous")).unwrap(),
        v1_text
    );
}

// A group that Prometheus loads but that is not where opsplan expects it fails
// verification, and the file is taken back.
#[test]
fn verification_failure_restores_the_previous_state() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    // A rules folder that Prometheus's rule_files does not cover.
    let elsewhere = project.path().join("not-loaded");
    project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"{}\"\nrules_dir = \"{}\"\n\
         include = [\"ops/alerts/*.yml\"]\n",
        server.url,
        elsewhere.display()
    ));
    let rules: &[(&str, &str)] = &[("AuthDown", "up == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", rules)]));
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(1)
        .expect_contains("did not load group auth from auth.yml")
        .expect_contains("was restored and Prometheus reloaded");
    assert!(!elsewhere.join("auth.yml").exists());
}

#[test]
fn unreachable_prometheus_refuses_the_plan_and_leaves_no_file() {
    let project = Project::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\nprometheus_url = \"http://127.0.0.1:{port}\"\n\
         include = [\"ops/alerts/*.yml\"]\n"
    ));
    let rules: &[(&str, &str)] = &[("AuthDown", "up == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", rules)]));
    for command in [&["plan"][..], &["apply", "--auto-approve"]] {
        project
            .run(command)
            .expect_code(1)
            .expect_contains(&format!(
                "Error: alerts: Prometheus at http://127.0.0.1:{port}/api/v1/rules did not \
                 answer"
            ))
            .expect_contains("start Prometheus with --web.enable-lifecycle");
    }
    assert!(!project.path().join(".opsplan/rules/auth.yml").exists());
}

#[test]
fn credentials_in_the_prometheus_url_are_never_shown() {
    let project = Project::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\n\
         prometheus_url = \"http://ops:hunter2secret@127.0.0.1:{port}\"\n\
         [[alerts.group]]\nname = \"auth\"\n[[alerts.group.rule]]\nalert = \"A\"\nexpr = \"up\"\n"
    ));
    for args in [
        &["plan"][..],
        &["apply", "--auto-approve"],
        &["-vv", "plan"],
    ] {
        let run = project.run(args);
        assert!(!run.all().contains("hunter2secret"), "{}", run.all());
        assert!(run.all().contains("127.0.0.1"), "{}", run.all());
    }
}

/// Messages show the Prometheus URL without its password, but every request, the reload
/// included, must still carry the credentials it was given.
#[test]
fn every_request_to_prometheus_carries_the_url_credentials() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    // A relay in front of the real server keeps a copy of each request; Prometheus itself
    // ignores the credentials.
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let relay = common::faults::FaultServer::start(common::faults::Behaviour::Relay {
        upstream: server.url.rsplit(':').next().unwrap().parse().unwrap(),
        sent: sent.clone(),
    });
    let project = Project::new();
    project.config(&format!(
        "[alerts]\ntarget = \"prometheus\"\n\
         prometheus_url = \"http://ops:hunter2secret@127.0.0.1:{}\"\nrules_dir = \"{}\"\n\
         [[alerts.group]]\nname = \"auth\"\n[[alerts.group.rule]]\nalert = \"A\"\nexpr = \"up\"\n",
        relay.port,
        server.rules_dir().display()
    ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    let sent = String::from_utf8_lossy(&sent.lock().unwrap()).into_owned();
    let requests: Vec<&str> = sent
        .split("\r\n\r\n")
        .filter(|head| head.starts_with("GET ") || head.starts_with("POST "))
        .collect();
    assert!(
        requests
            .iter()
            .any(|head| head.starts_with("POST /-/reload ")),
        "{sent}"
    );
    for head in &requests {
        // base64 of `ops:hunter2secret`
        assert!(
            head.lines()
                .any(|line| line
                    .eq_ignore_ascii_case("authorization: Basic b3BzOmh1bnRlcjJzZWNyZXQ=")),
            "a request without the URL's credentials:\n{head}"
        );
    }
}

#[test]
fn every_field_change_is_a_change_and_reformatting_is_not() {
    let project = Project::new();
    project.config("[alerts]\ninclude = [\"rules/*.yml\"]\n");
    let base = "groups:\n- name: api\n  interval: 1m\n  rules:\n  - alert: ApiErrors\n    expr: sum(rate(http_errors_total[5m])) by (job) > 1\n    for: 5m\n    labels:\n      severity: page\n    annotations:\n      summary: errors on {{ $labels.job }}\n";
    project.write("rules/api.yml", base);
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    let reformatted = "groups:\n  - name: \"api\"\n    interval: 60s\n    rules:\n      - alert: ApiErrors\n        expr: |\n          sum by (job) (\n            rate(http_errors_total[5m])\n          ) > 1\n        for: 300s\n        labels: {severity: \"page\"}\n        annotations:\n          summary: 'errors on {{ $labels.job }}'\n";
    project.write("rules/api.yml", reformatted);
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains("No changes.");

    for (from, to, field) in [
        ("interval: 1m", "interval: 2m", "interval"),
        (
            "[5m])) by (job) > 1",
            "[5m])) by (job) > 2",
            "rule ApiErrors: expr",
        ),
        ("for: 5m", "for: 10m", "rule ApiErrors: for"),
        (
            "severity: page",
            "severity: ticket",
            "rule ApiErrors: labels",
        ),
        (
            "summary: errors on",
            "summary: failures on",
            "rule ApiErrors: annotations",
        ),
    ] {
        project.write("rules/api.yml", &base.replace(from, to));
        let run = project.run(&["plan", "--detailed-exitcode"]);
        run.expect_code(2)
            .expect_contains("~ alerts.group[\"api.yml/api\"]")
            .expect_contains(&format!("changed: {field}"))
            .expect_contains("Plan: 0 to add, 1 to change, 0 to destroy.");
        let diff_line = |sign: char, text: &str| {
            run.stdout
                .lines()
                .any(|line| line.trim_start().starts_with(sign) && line.contains(text))
        };
        assert!(diff_line('-', from) && diff_line('+', to), "{}", run.stdout);
    }
}

#[test]
fn live_groups_are_deleted_only_when_fully_managed() {
    let project = Project::new();
    let two: &[(&str, &str)] = &[("A", "up == 0")];
    project.config("[alerts]\ninclude = [\"rules/*.yml\"]\n");
    project.write("rules/app.yml", &rule_file(&[("keep", two), ("old", two)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    // `old` is removed from the desired state: kept, with a warning.
    project.write("rules/app.yml", &rule_file(&[("keep", two)]));
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(0)
        .expect_contains(
            "Warning: alerts: 1 live group(s) are not in the desired state and are kept: \
             alerts.group[\"app.yml/old\"]. Set alerts.fully_managed = true to delete them",
        );

    // Fully managed: deleted.
    project.config("[alerts]\ninclude = [\"rules/*.yml\"]\nfully_managed = true\n");
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("- alerts.group[\"app.yml/old\"]")
        .expect_contains("Plan: 0 to add, 0 to change, 1 to destroy.");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let rendered = std::fs::read_to_string(project.path().join(".opsplan/rules/app.yml")).unwrap();
    assert!(!rendered.contains("name: old"), "{rendered}");

    // An empty desired set deletes nothing, even fully managed, unless allowed.
    project.config("[alerts]\nfully_managed = true\n");
    project
        .run(&["plan"])
        .expect_code(1)
        .expect_contains("the desired state holds no rule groups")
        .expect_contains("alerts.allow_delete_all = true");
    project.config("[alerts]\nfully_managed = true\nallow_delete_all = true\n");
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("Apply complete! 1 applied.");
    assert!(!project.path().join(".opsplan/rules/app.yml").exists());
    assert!(
        project
            .path()
            .join(".opsplan/rules/app.yml.previous")
            .exists()
    );
}

#[test]
fn inline_rules_are_checked_with_their_place_in_ops_toml() {
    let project = Project::new();
    project.config(
        "[alerts]\n\n[[alerts.group]]\nname = \"auth\"\ninterval = \"1m\"\n\n\
         [[alerts.group.rule]]\nalert = \"AuthDown\"\nexpr = \"up{job='auth'} == 0\"\n\
         for = \"5\"\nannotations = { summary = \"{{ $nope }}\" }\n\n\
         [[alerts.group.rule]]\nalert = \"AuthOk\"\nexpr = \"up == 1\"\nfor = \"1h30m\"\n",
    );
    let run = project.run(&["validate"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(
            "error: ops.toml:8:9: group \"auth\", rule 1, \"AuthDown\": for: invalid duration \
             \"5\" (missing unit)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "error: ops.toml:8:9: group \"auth\", rule 1, \"AuthDown\": annotation \"summary\": \
             template: undefined variable \"$nope\""
        ),
        "{}",
        run.stderr
    );

    project.config(
        "[alerts]\n\n[[alerts.group]]\nname = \"auth\"\n\n[[alerts.group.rule]]\n\
         alert = \"AuthDown\"\nexpr = \"up{job='auth'} == 0\"\nfor = \"5m\"\n",
    );
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("alerts.group[\"auth\"]: done (wrote .opsplan/rules/opsplan.rules.yml)");
}

#[test]
fn the_example_configuration_runs_with_nothing_installed() {
    let project = Project::new();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ops.toml.example"))
            .unwrap();
    project.config(&example);
    project.run(&["validate"]).expect_code(0);
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("alerts.group[\"opsplan-runbook\"]");
    let rendered = project.path().join(".opsplan/rules/opsplan.rules.yml");
    let text = std::fs::read_to_string(&rendered).unwrap();
    for expected in [
        "alert: OpsplanMigrationFailed",
        "increase(opsplan_apply_failures_total{resource=\"schema\"}[15m]) > 0",
        "alert: AuthTokenReuseRepeated",
        "sum(increase(authsvc_token_reuse_events_total[10m])) > 3",
        "alert: AuthRateLimitSpike",
        "sum(rate(authsvc_rate_limited_requests_total[5m])) > 5",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
    project.run(&["plan", "--detailed-exitcode"]).expect_code(0);

    if prometheus::installed("promtool") {
        let (valid, output) = promtool_verdict(&rendered);
        assert!(valid, "{output}");
    }

    // Thresholds and metric names are configurable.
    project.config(&example.replace(
        "token_reuse = { enabled = true }",
        "token_reuse = { enabled = true, metric = \"auth_reuse_total\", threshold = 10 }",
    ));
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("rule AuthTokenReuseRepeated: expr, annotations")
        .expect_contains("+    expr: sum(increase(auth_reuse_total[10m])) > 10");
}

// Drift: a rendered file edited, emptied of a group, given a group by hand, or deleted on
// the host is drift, and the plan shows the change that restores the desired state.
#[test]
fn rule_files_changed_on_the_host_are_drift_that_apply_corrects() {
    let project = Project::new();
    project.config(
        "[alerts]\ninclude = [\"ops/alerts/*.yml\"]\n\n[[alerts.group]]\nname = \"inline\"\n\
         [[alerts.group.rule]]\nalert = \"InlineDown\"\nexpr = \"up == 0\"\n",
    );
    let auth: &[(&str, &str)] = &[("AuthDown", "up{job=\"auth\"} == 0")];
    let api: &[(&str, &str)] = &[("ApiDown", "up{job=\"api\"} == 0")];
    project.write(
        "ops/alerts/auth.yml",
        &rule_file(&[("auth", auth), ("api", api)]),
    );
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift: live state matches what opsplan applied.");
    let state =
        std::fs::read_to_string(project.path().join(".opsplan/rules/.opsplan-state.json")).unwrap();
    assert!(state.contains("\"auth.yml\""), "{state}");
    assert!(state.contains("\"opsplan.rules.yml\""), "{state}");

    // Comments and layout are not drift: the groups read the same.
    let live = project.path().join(".opsplan/rules/auth.yml");
    let written = std::fs::read_to_string(&live).unwrap();
    std::fs::write(&live, format!("# reviewed by ops\n{written}")).unwrap();
    project.run(&["drift"]).expect_code(0);

    // A hand edit of one group, and a group added by hand.
    let edited: &[(&str, &str)] = &[("AuthDown", "up{job=\"auth\"} == 1")];
    let extra: &[(&str, &str)] = &[("Extra", "up > 2")];
    std::fs::write(
        &live,
        rule_file(&[("auth", edited), ("api", api), ("extra", extra)]),
    )
    .unwrap();
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains("Drift: 2 out-of-band change(s) to what opsplan applied:")
        .expect_contains(
            "! alerts.group[\"auth.yml/auth\"]: group auth in .opsplan/rules/auth.yml was \
             edited on the host since opsplan wrote it",
        )
        .expect_contains(
            "! alerts.group[\"auth.yml/extra\"]: group extra was added by hand to \
             .opsplan/rules/auth.yml, which opsplan wrote",
        )
        .expect_contains("~ alerts.group[\"auth.yml/auth\"]: update group auth");
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("~ alerts.group[\"auth.yml/auth\"]")
        .expect_contains("Plan: 0 to add, 1 to change, 0 to destroy.");
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    // The hand-added group is kept (not fully managed), so it stays drift.
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains("Drift: 1 out-of-band change(s)")
        .expect_contains("alerts.group[\"auth.yml/extra\"]");
    std::fs::write(&live, rule_file(&[("auth", auth), ("api", api)])).unwrap();
    project.run(&["drift"]).expect_code(0);

    // A group removed by hand, and a deleted file.
    std::fs::write(&live, rule_file(&[("auth", auth)])).unwrap();
    std::fs::remove_file(project.path().join(".opsplan/rules/opsplan.rules.yml")).unwrap();
    project
        .run(&["drift", "--format", "json"])
        .expect_code(2)
        .expect_contains("group api was removed from .opsplan/rules/auth.yml on the host")
        .expect_contains(
            "the rule file .opsplan/rules/opsplan.rules.yml that opsplan wrote was deleted on \
             the host",
        )
        .expect_contains("\"address\": \"alerts.group[\\\"inline\\\"]\"");
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(0)
        .expect_contains("Apply complete! 2 applied.");
    project.run(&["drift"]).expect_code(0);
}

// Pending work is not drift: the configuration and the included files changed, not the
// rendered files.
#[test]
fn changed_configuration_is_pending_work_and_not_drift() {
    let project = Project::new();
    let config = |expr: &str| {
        format!(
            "[alerts]\ninclude = [\"ops/alerts/*.yml\"]\n\n[[alerts.group]]\nname = \
             \"inline\"\n[[alerts.group.rule]]\nalert = \"InlineDown\"\nexpr = \"{expr}\"\n"
        )
    };
    project.config(&config("up == 0"));
    let v1: &[(&str, &str)] = &[("AuthDown", "up == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v1)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);

    project.config(&config("up == 2"));
    let v2: &[(&str, &str)] = &[("AuthDown", "up == 0"), ("AuthSlow", "up > 1")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v2)]));
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift: live state matches what opsplan applied.")
        .expect_contains("Pending: 2 change(s) the configuration is ahead by")
        .expect_contains("~ alerts.group[\"auth.yml/auth\"]: update group auth")
        .expect_contains("~ alerts.group[\"inline\"]: update group inline");
}

#[test]
fn drift_ignore_silences_rule_file_drift() {
    let project = Project::new();
    project.config(
        "[alerts]\ninclude = [\"ops/alerts/*.yml\"]\n\n[drift]\n\
         ignore = [\"alerts.group[\\\"auth.yml/*\"]\n",
    );
    let v1: &[(&str, &str)] = &[("AuthDown", "up == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v1)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let edited: &[(&str, &str)] = &[("AuthDown", "up == 1")];
    std::fs::write(
        project.path().join(".opsplan/rules/auth.yml"),
        rule_file(&[("auth", edited)]),
    )
    .unwrap();
    project
        .run(&["drift"])
        .expect_code(0)
        .expect_contains("No drift")
        .expect_contains("Ignored by [drift] ignore: 1")
        .expect_contains(". alerts.group[\"auth.yml/auth\"]");
}

// Rule files written without a reload (an apply killed before it, or the file target) are
// drift against Prometheus, and the next apply reloads it.
#[test]
fn rules_prometheus_has_not_loaded_are_drift_and_apply_reloads_them() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    let v1: &[(&str, &str)] = &[("AuthDown", "up{job=\"auth\"} == 0")];
    let api: &[(&str, &str)] = &[("ApiDown", "up{job=\"api\"} == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v1)]));
    project.write("ops/alerts/api.yml", &rule_file(&[("api", api)]));
    project.config(&format!(
        "[alerts]\nrules_dir = \"{}\"\ninclude = [\"ops/alerts/*.yml\"]\n",
        server.rules_dir().display()
    ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    assert!(server.loaded().is_empty());

    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains("Drift: 2 out-of-band change(s)")
        .expect_contains(&format!(
            "! alerts.group[\"auth.yml/auth\"]: Prometheus at {} has not loaded group auth from \
             {}/auth.yml",
            server.url,
            server.rules_dir().display()
        ));
    project
        .run(&["plan", "--detailed-exitcode"])
        .expect_code(2)
        .expect_contains("reload group auth from")
        .expect_contains("Plan: 0 to add, 2 to change, 0 to destroy.");
    let run = project.run(&["apply", "--auto-approve"]);
    run.expect_code(0)
        .expect_contains("Prometheus reloaded, 2 group(s) in 2 file(s) verified");
    assert_eq!(run.all().matches("Prometheus reloaded").count(), 1);
    assert_eq!(server.loaded().len(), 2);
    project.run(&["drift"]).expect_code(0);

    // A hand edit that Prometheus has not reloaded either: both are reported.
    let edited: &[(&str, &str)] = &[("AuthDown", "up{job=\"auth\"} == 0"), ("X", "up > 3")];
    std::fs::write(
        server.rules_dir().join("auth.yml"),
        rule_file(&[("auth", edited)]),
    )
    .unwrap();
    project
        .run(&["drift"])
        .expect_code(2)
        .expect_contains("group auth in ")
        .expect_contains("was edited on the host since opsplan wrote it")
        .expect_contains(&format!(
            "Prometheus at {} serves group auth with rules [AuthDown] where the file has \
             [AuthDown, X]",
            server.url
        ));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    project.run(&["drift"]).expect_code(0);
    assert_eq!(server.loaded().len(), 2);
}

// A corrupted apply that writes several files: one reload for all of them, and when
// Prometheus refuses it, every file written by the apply is put back.
#[test]
fn a_refused_reload_restores_every_file_the_apply_wrote() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));
    let v1: &[(&str, &str)] = &[("A", "up == 0")];
    project.write("ops/alerts/a.yml", &rule_file(&[("a", v1)]));
    project.write("ops/alerts/b.yml", &rule_file(&[("b", v1)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let before: Vec<String> = ["a.yml", "b.yml", ".opsplan-state.json"]
        .iter()
        .map(|name| std::fs::read_to_string(server.rules_dir().join(name)).unwrap())
        .collect();

    std::fs::write(
        server.other_dir().join("broken.yml"),
        "groups:\n- name: x\n  rules:\n  - alert: X\n    expr: sum(\n",
    )
    .unwrap();
    let v2: &[(&str, &str)] = &[("A", "up == 0"), ("B", "up > 1")];
    project.write("ops/alerts/a.yml", &rule_file(&[("a", v2)]));
    project.write("ops/alerts/b.yml", &rule_file(&[("b", v2)]));
    project.write("ops/alerts/c.yml", &rule_file(&[("c", v2)]));
    project
        .run(&["apply", "--auto-approve"])
        .expect_code(1)
        .expect_contains("refused the reload (HTTP 500)")
        .expect_contains(&format!(
            "the previous {dir}/a.yml, {dir}/b.yml, {dir}/c.yml was restored, but reloading \
             Prometheus again failed too",
            dir = server.rules_dir().display()
        ));
    let after: Vec<String> = ["a.yml", "b.yml", ".opsplan-state.json"]
        .iter()
        .map(|name| std::fs::read_to_string(server.rules_dir().join(name)).unwrap())
        .collect();
    assert_eq!(after, before);
    assert!(!server.rules_dir().join("c.yml").exists());
    let loaded = server.loaded();
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    assert!(loaded.iter().all(|g| g.rules == ["A"]), "{loaded:?}");
    project.run(&["drift"]).expect_code(0);
}

// Case 11, variant: a saved plan, then a rule file changes and a plain apply runs; the saved
// plan is then stale and writes nothing.
#[test]
fn saved_plan_is_stale_after_an_apply_without_it() {
    let Some(server) = PrometheusServer::start() else {
        return;
    };
    let project = Project::new();
    project.config(&prometheus_config(
        &server,
        "include = [\"ops/alerts/*.yml\"]",
    ));
    let v1: &[(&str, &str)] = &[("AuthDown", "up == 0")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v1)]));
    project
        .run(&["plan", "--out", "plan.json"])
        .expect_code(0)
        .expect_contains("Saved the plan to plan.json");

    let v2: &[(&str, &str)] = &[("AuthDown", "up == 0"), ("AuthSlow", "up > 1")];
    project.write("ops/alerts/auth.yml", &rule_file(&[("auth", v2)]));
    project.run(&["apply", "--auto-approve"]).expect_code(0);
    let files = || {
        let mut names: Vec<(String, String)> = std::fs::read_dir(server.rules_dir())
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(entry.path()).unwrap(),
                )
            })
            .collect();
        names.sort();
        names
    };
    let written = files();
    let loaded = server.loaded();
    assert_eq!(loaded[0].rules, ["AuthDown", "AuthSlow"]);

    project
        .run(&["apply", "plan.json"])
        .expect_code(1)
        .expect_contains("saved plan is stale: live state changed since the plan was created")
        .expect_contains("alerts (planned against absent");
    assert_eq!(files(), written);
    assert_eq!(server.loaded(), loaded);
}
