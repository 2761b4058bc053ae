//! A Prometheus server for one test: its own port, configuration, rule folders and storage,
//! killed when the test ends. `scripts/deps/prometheus.sh` installs Debian's package.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrometheusServer {
    child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

/// Whether `program` is on the PATH; fails under `CI=true`, skips loudly elsewhere.
pub fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{program} is not installed, and CI=true requires it (scripts/deps/prometheus.sh)"
            );
        }
        eprintln!("SKIPPED: {program} is not installed; run scripts/deps/prometheus.sh");
    }
    found
}

impl PrometheusServer {
    /// Starts Prometheus loading `<dir>/rules/*.yml` and `<dir>/other/*.yml`; `None` when it
    /// is not installed (outside CI).
    pub fn start() -> Option<PrometheusServer> {
        Self::launch(true)
    }

    /// Like [`PrometheusServer::start`], without `--web.enable-lifecycle`: reloads are
    /// refused with 403.
    pub fn start_without_lifecycle() -> Option<PrometheusServer> {
        Self::launch(false)
    }

    fn launch(lifecycle: bool) -> Option<PrometheusServer> {
        if !installed("prometheus") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  evaluation_interval: 1m\nrule_files:\n  - {}/rules/*.yml\n  - {}/other/*.yml\n",
                dir.path().display(),
                dir.path().display()
            ),
        )
        .unwrap();

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(lifecycle.then_some("--web.enable-lifecycle"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("start prometheus");
        let server = PrometheusServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        server.wait_ready();
        Some(server)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let agent = agent();
        while Instant::now() < deadline {
            if let Ok(response) = agent.get(&format!("{}/-/ready", self.url)).call()
                && response.status().is_success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Prometheus at {} did not become ready; its log:\n{}",
            self.url,
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    /// The folder opsplan writes to, covered by `rule_files`.
    pub fn rules_dir(&self) -> PathBuf {
        self.dir.path().join("rules")
    }

    /// Another folder Prometheus loads, which opsplan does not manage.
    pub fn other_dir(&self) -> PathBuf {
        self.dir.path().join("other")
    }

    /// `GET /api/v1/rules`: every loaded group as (file name, group, rule names, healths).
    pub fn loaded(&self) -> Vec<LoadedGroup> {
        let mut response = agent()
            .get(&format!("{}/api/v1/rules", self.url))
            .call()
            .expect("rules API");
        let body = response.body_mut().read_to_string().unwrap();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|group| LoadedGroup {
                file: Path::new(group["file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                name: group["name"].as_str().unwrap().to_string(),
                rules: group["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|rule| rule["name"].as_str().unwrap().to_string())
                    .collect(),
                healths: group["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|rule| rule["health"].as_str().unwrap().to_string())
                    .collect(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedGroup {
    pub file: String,
    pub name: String,
    pub rules: Vec<String>,
    pub healths: Vec<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into()
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
