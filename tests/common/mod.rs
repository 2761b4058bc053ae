//! Shared by the integration tests: a project folder, the binary, and real databases.
//!
//! Every test gets its own project folder and its own database, created here and dropped
//! when the test ends, so tests run in parallel and leave nothing behind. When a server is
//! missing the test fails under `CI=true` and is skipped, loudly, elsewhere.

#![allow(dead_code)]

pub mod faults;
pub mod openbao;
pub mod smtp;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row};

pub const POSTGRES_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MYSQL_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// `true` when the server at `address` answers; otherwise fails under CI, skips elsewhere.
pub fn server_available(name: &str, address: &str) -> bool {
    let reachable = address
        .parse()
        .ok()
        .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .is_some();
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} is not reachable at {address}, and CI=true requires it");
        }
        eprintln!("SKIPPED: {name} is not reachable at {address}");
    }
    reachable
}

/// The result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn expect_contains(&self, text: &str) -> &Self {
        assert!(
            self.all().contains(text),
            "expected output to contain {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The variables opsplan reads (the runbook's and its own), which a test sets explicitly
/// with [`Project::set_env`] or not at all: none comes from the machine's environment.
pub const AMBIENT: &[&str] = &[
    "OPSPLAN_CONFIG",
    "OPSPLAN_ENVIRONMENT",
    "RUST_LOG",
    "DATABASE_URL",
    "KMS_PROVIDER",
    "HMAC_SECRETS",
    "HMAC_SECRET",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_KV_PATH",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "MAIL_PROVIDER",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASS",
    "SMTP_FROM",
    "MAIL_QUEUE_KEY",
    "PROMETHEUS_URL",
];

/// A temporary project: `ops.toml`, `db/migrations/`, and an environment for the binary.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::create_dir_all(dir.path().join("db/migrations")).unwrap();
        Project {
            dir,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        path
    }

    pub fn migration(&self, name: &str, sql: &str) -> PathBuf {
        self.write(&format!("db/migrations/{name}"), sql)
    }

    pub fn remove_migration(&self, name: &str) {
        std::fs::remove_file(self.path().join("db/migrations").join(name)).unwrap();
    }

    pub fn config(&self, toml: &str) {
        self.write("ops.toml", toml);
    }

    /// An `ops.toml` with only a `[schema]` section for `url`, plus `extra` lines in it.
    pub fn schema_config(&self, url: &str, extra: &str) {
        self.config(&format!("[schema]\nurl = \"{url}\"\n{extra}\n"));
    }

    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_string(), value.to_string()));
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opsplan"));
        command
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .env("NO_COLOR", "1");
        for name in AMBIENT {
            command.env_remove(name);
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run opsplan").into()
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name for a throwaway database.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}_{}_{n}_{}", std::process::id(), fastrand_suffix())
}

fn fastrand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos % 100_000
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

/// A database created for one test and dropped afterwards.
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    name: String,
    _sqlite_dir: Option<tempfile::TempDir>,
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

impl TestDatabase {
    /// `None` (skipped) when the server is missing outside CI.
    pub fn create(backend: Backend) -> Option<TestDatabase> {
        sqlx::any::install_default_drivers();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/test.db", dir.path().display());
                Some(TestDatabase {
                    backend,
                    url,
                    name: String::new(),
                    _sqlite_dir: Some(dir),
                })
            }
            Backend::Postgres => {
                if !server_available("PostgreSQL", "127.0.0.1:5432") {
                    return None;
                }
                let name = unique_name("opsplan_t");
                admin(POSTGRES_ADMIN, &format!("CREATE DATABASE {name}"));
                Some(TestDatabase {
                    backend,
                    url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                    name,
                    _sqlite_dir: None,
                })
            }
            Backend::MySql => {
                if !server_available("MariaDB", "127.0.0.1:3306") {
                    return None;
                }
                let name = unique_name("opsplan_t");
                admin(MYSQL_ADMIN, &format!("CREATE DATABASE {name}"));
                Some(TestDatabase {
                    backend,
                    url: format!("mysql://root@127.0.0.1:3306/{name}"),
                    name,
                    _sqlite_dir: None,
                })
            }
        }
    }

    /// Runs statements against this database.
    pub fn execute(&self, sql: &str) {
        let url = self.connect_url();
        block_on(async move {
            let mut connection = AnyConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
                .execute(&mut connection)
                .await
                .unwrap();
        });
    }

    /// The first column of every row, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        let url = self.connect_url();
        block_on(async move {
            let mut connection = AnyConnection::connect(&url).await.unwrap();
            let rows = sqlx::query(AssertSqlSafe(sql.to_string()))
                .fetch_all(&mut connection)
                .await
                .unwrap();
            rows.iter()
                .map(|row| {
                    row.try_get::<String, _>(0)
                        .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
                        .unwrap_or_else(|_| "NULL".to_string())
                })
                .collect()
        })
    }

    pub fn table_exists(&self, table: &str) -> bool {
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
            Backend::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '{table}'"
            ),
            Backend::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ),
        };
        self.column(&sql) == ["1"]
    }

    pub fn column_exists(&self, table: &str, column: &str) -> bool {
        let sql = match self.backend {
            Backend::Sqlite => {
                format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'")
            }
            Backend::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 current_schema() AND table_name = '{table}' AND column_name = '{column}'"
            ),
            Backend::MySql => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 DATABASE() AND table_name = '{table}' AND column_name = '{column}'"
            ),
        };
        self.column(&sql) == ["1"]
    }

    /// `version:success` for every history row, in version order.
    pub fn history(&self) -> Vec<String> {
        if !self.table_exists("opsplan_schema_history") {
            return Vec::new();
        }
        let url = self.connect_url();
        block_on(async move {
            let mut connection = AnyConnection::connect(&url).await.unwrap();
            let rows =
                sqlx::query("SELECT version, success FROM opsplan_schema_history ORDER BY version")
                    .fetch_all(&mut connection)
                    .await
                    .unwrap();
            rows.iter()
                .map(|row| {
                    let version: i64 = row.try_get(0).unwrap();
                    let success: i64 = row.try_get(1).unwrap();
                    format!("{version}:{success}")
                })
                .collect()
        })
    }

    fn connect_url(&self) -> String {
        match self.backend {
            Backend::Sqlite => format!("{}?mode=rwc", self.url),
            _ => self.url.clone(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let drop_sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        match self.backend {
            Backend::Sqlite => {}
            Backend::Postgres => {
                admin(
                    POSTGRES_ADMIN,
                    &format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{}' AND pid <> pg_backend_pid()",
                        self.name
                    ),
                );
                admin(POSTGRES_ADMIN, &drop_sql);
            }
            Backend::MySql => admin(MYSQL_ADMIN, &drop_sql),
        }
    }
}

/// Runs `sql` on the PostgreSQL server as its superuser.
pub fn postgres_admin(sql: &str) {
    admin(POSTGRES_ADMIN, sql);
}

/// Runs `sql` on the MariaDB server as root.
pub fn mysql_admin(sql: &str) {
    admin(MYSQL_ADMIN, sql);
}

fn admin(url: &str, sql: &str) {
    let url = url.to_string();
    let sql = sql.to_string();
    block_on(async move {
        let mut connection = AnyConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Runs `body` once per backend that is available.
pub fn for_each_backend(backends: &[Backend], body: impl Fn(TestDatabase)) {
    for backend in backends {
        if let Some(database) = TestDatabase::create(*backend) {
            body(database);
        }
    }
}

/// A statement that keeps `backend` busy: `seconds` of sleep on a server, or counting to
/// `sqlite_count` on SQLite, which cannot sleep.
pub fn busy_statement(backend: Backend, seconds: f64, sqlite_count: u64) -> String {
    match backend {
        Backend::Postgres => format!("SELECT pg_sleep({seconds});"),
        Backend::MySql => format!("SELECT SLEEP({seconds});"),
        Backend::Sqlite => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < \
             {sqlite_count}) SELECT count(*) FROM n;"
        ),
    }
}

pub const ALL: &[Backend] = &[Backend::Sqlite, Backend::Postgres, Backend::MySql];
pub const TRANSACTIONAL: &[Backend] = &[Backend::Sqlite, Backend::Postgres];

/// The shared real-world corpus: `OPSPLAN_CORPUS`, or `shared/corpus` beside the repository
/// (or beside one of its parent folders).
pub fn corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OPSPLAN_CORPUS") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .map(|dir| dir.join("shared/corpus"))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| manifest.join("../shared/corpus"))
}
