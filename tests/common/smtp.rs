//! Real SMTP servers for the mail tests: `tests/servers/smtp_server.py` on Debian's
//! python3-aiosmtpd (plain, STARTTLS and implicit-TLS listeners with AUTH), and a TCP
//! listener that accepts connections and never sends a byte.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The interpreter that Debian's python3-aiosmtpd is installed for.
const PYTHON: &str = "/usr/bin/python3";

/// `true` when python3-aiosmtpd can be used; otherwise fails under CI, skips elsewhere.
pub fn aiosmtpd_available() -> bool {
    let found = Command::new(PYTHON)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "python3-aiosmtpd is missing, and CI=true requires it (scripts/deps/aiosmtpd.sh)"
            );
        }
        eprintln!("SKIPPED: python3-aiosmtpd is missing; run scripts/deps/aiosmtpd.sh");
    }
    found
}

/// One running instance of the three listeners, with its own folder for certificates,
/// the command log and received messages. Stopped when dropped.
pub struct SmtpServers {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
    pub plain: u16,
    pub starttls: u16,
    pub implicit: u16,
    /// The certificate authority that signed the servers' certificate.
    pub ca: PathBuf,
}

impl SmtpServers {
    /// Starts the servers, accepting `user` with any of `passwords`. `None` when skipped.
    pub fn start(user: &str, passwords: &[&str]) -> Option<SmtpServers> {
        if !aiosmtpd_available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary folder");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/smtp_server.py");
        let mut command = Command::new(PYTHON);
        command
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .args(["--user", user]);
        for password in passwords {
            command.args(["--password", password]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tests/servers/smtp_server.py");

        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the SMTP servers' ports");
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the SMTP test server did not start: {line:?}"));
        let port = |name: &str| ready[name].as_u64().expect("a port") as u16;
        Some(SmtpServers {
            stdin: child.stdin.take(),
            plain: port("plain"),
            starttls: port("starttls"),
            implicit: port("implicit"),
            ca: PathBuf::from(ready["ca"].as_str().expect("the CA file")),
            child,
            dir,
        })
    }

    /// Every command received so far, as `<listener> <VERB> [argument]`.
    pub fn commands(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("commands.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The commands a listener received, verbs only.
    pub fn verbs(&self, listener: &str) -> Vec<String> {
        self.commands()
            .iter()
            .filter_map(|line| line.strip_prefix(&format!("{listener} ")))
            .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    /// Every message received, in order: listener, mail_from, rcpt_tos, from, to, subject,
    /// raw.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let folder = self.dir.path().join("messages");
        let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(&folder)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter_map(|path| {
                        let number = path.file_stem()?.to_str()?.parse().ok()?;
                        (path.extension()? == "json").then_some((number, path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        numbered.sort();
        numbered
            .into_iter()
            .map(|(_, path)| serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServers {
    fn drop(&mut self) {
        // Closing stdin asks the script to stop; kill it in case it does not.
        drop(self.stdin.take());
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener that accepts every connection and never says a word.
pub struct SilentServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        Self::start_on(0).expect("bind a free port")
    }

    /// On a given port, e.g. 465 itself; `None` when it is taken or not permitted.
    pub fn start_on(port: u16) -> Option<SilentServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).ok()?;
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Some(SilentServer {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
