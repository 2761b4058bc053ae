//! The target database: connection, history table, and the writer lock.
//!
//! One connection is kept for the whole run. The PostgreSQL advisory lock and the MySQL
//! named lock belong to that connection's session, so they are released by the server the
//! moment the process dies, and a killed apply never leaves a lock behind.

use std::path::PathBuf;
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::{Mutex, MutexGuard};

use super::Dialect;
use super::error::SchemaError;
use crate::engine::LockObserver;
use crate::lock::{FileLock, holder_description, operator};
use crate::secret::SecretUrl;

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: u64,
    pub description: String,
    pub script: String,
    pub checksum: String,
    pub checksum_algorithm: String,
    pub execution: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub success: bool,
    pub statements_committed: i64,
    pub statements_total: i64,
    pub note: Option<String>,
    pub applied_by: String,
}

impl AppliedMigration {
    /// The version as its file wrote it (`0003`), falling back to the bare number.
    pub fn shown_version(&self) -> String {
        super::files::parse_file_name(&self.script)
            .map(|(digits, _)| digits.to_string())
            .unwrap_or_else(|| self.version.to_string())
    }
}

/// A row about to be written.
#[derive(Debug, Clone)]
pub struct NewHistoryRow<'a> {
    pub version: u64,
    pub description: &'a str,
    pub script: &'a str,
    pub checksum: &'a str,
    pub execution: &'a str,
    pub duration_ms: i64,
    pub success: bool,
    pub statements_committed: i64,
    pub statements_total: i64,
    pub note: Option<&'a str>,
}

/// One apply run, for the apply history table.
#[derive(Debug, Clone)]
pub struct ApplyRun<'a> {
    pub run_id: &'a str,
    pub started_at: &'a str,
    pub finished_at: &'a str,
    pub plan_digest: &'a str,
    pub config_digest: &'a str,
    pub steps: Vec<ApplyRunStep>,
}

#[derive(Debug, Clone)]
pub struct ApplyRunStep {
    pub address: String,
    pub resource: String,
    pub status: &'static str,
    pub detail: Option<String>,
    pub duration_ms: i64,
}

/// One row of the apply history table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoggedStep {
    pub run_id: String,
    pub seq: i64,
    pub started_at: String,
    pub finished_at: String,
    pub applied_by: String,
    pub plan_digest: String,
    pub address: String,
    pub status: String,
    pub detail: Option<String>,
    pub duration_ms: i64,
}

/// What the plan needs to know about the database.
#[derive(Debug, Clone, Default)]
pub struct DatabaseState {
    /// `None` when the history table does not exist (or, for SQLite, the file does not).
    pub history: Option<Vec<AppliedMigration>>,
    /// Tables that exist without a history table: a database another tool manages.
    pub unmanaged_tables: Vec<String>,
    pub file_missing: bool,
}

pub struct Database {
    pub dialect: Dialect,
    url: SecretUrl,
    table: String,
    connection: Mutex<Option<AnyConnection>>,
    /// SQLite's writer lock, a file beside the database; servers use their own locks.
    file_lock: Option<FileLock>,
    locked: Mutex<bool>,
    /// Bounds connecting and each bookkeeping step; migrations run unbounded.
    timeout: Duration,
    /// The statement that records a migration, made once.
    insert_sql: OnceLock<String>,
}

static DRIVERS: Once = Once::new();

impl Database {
    pub fn new(url: SecretUrl, table: String, timeout: Duration) -> Database {
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dialect = Dialect::from_url(url.expose());
        let file_lock = match dialect {
            Dialect::Sqlite => sqlite_path(url.expose()).map(|path| FileLock::beside(&path)),
            Dialect::Postgres | Dialect::MySql => None,
        };
        Database {
            dialect,
            url,
            table,
            connection: Mutex::new(None),
            file_lock,
            locked: Mutex::new(false),
            timeout,
            insert_sql: OnceLock::new(),
        }
    }

    /// The address shown in messages, password removed.
    pub fn address(&self) -> String {
        self.url.redacted()
    }

    pub fn backend(&self) -> &'static str {
        self.dialect.name()
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn sqlite_path(&self) -> Option<PathBuf> {
        sqlite_path(self.url.expose())
    }

    fn query_error(&self, action: &str, source: sqlx::Error) -> SchemaError {
        SchemaError::Query {
            backend: self.backend(),
            address: self.address(),
            action: action.to_string(),
            source,
        }
    }

    fn timed_out(&self, action: &str) -> SchemaError {
        SchemaError::TimedOut {
            backend: self.backend(),
            address: self.address(),
            action: action.to_string(),
            after: self.timeout,
        }
    }

    /// Connects (within the timeout), then runs one bookkeeping step within the timeout. A
    /// step cut short leaves its connection in the middle of a conversation, so the
    /// connection goes with it.
    async fn bounded<T>(
        &self,
        create: bool,
        action: &str,
        step: impl Future<Output = Result<T, SchemaError>>,
    ) -> Result<T, SchemaError> {
        drop(self.connection(create).await?);
        match tokio::time::timeout(self.timeout, step).await {
            Ok(result) => result,
            Err(_) => {
                self.connection.lock().await.take();
                Err(self.timed_out(action))
            }
        }
    }

    /// The open connection, opened on first use. `create` allows creating a SQLite file.
    async fn connection(
        &self,
        create: bool,
    ) -> Result<MutexGuard<'_, Option<AnyConnection>>, SchemaError> {
        let mut guard = self.connection.lock().await;
        if guard.is_some() {
            return Ok(guard);
        }

        let mut url = self.url.expose().to_string();
        if self.dialect == Dialect::Sqlite
            && let Some(path) = self.sqlite_path()
        {
            if create && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| SchemaError::CreateFolder {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            if !url.contains("mode=") {
                let mode = if create { "rwc" } else { "ro" };
                let separator = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{separator}mode={mode}");
            }
        }
        tracing::debug!(backend = self.backend(), address = %self.address(), "connecting");
        let connection = tokio::time::timeout(self.timeout, AnyConnection::connect(&url))
            .await
            .map_err(|_| self.timed_out("connecting"))?
            .map_err(|source| SchemaError::Connect {
                backend: self.backend(),
                address: self.address(),
                source,
            })?;
        *guard = Some(connection);
        Ok(guard)
    }

    pub async fn close(&self) {
        if let Some(connection) = self.connection.lock().await.take() {
            let _ = connection.close().await;
        }
    }

    /// Reads the history table without writing anything.
    pub async fn read(&self) -> Result<DatabaseState, SchemaError> {
        let locked = *self.locked.lock().await;
        if self.dialect == Dialect::Sqlite
            && !locked
            && let Some(path) = self.sqlite_path()
            && !path.exists()
        {
            return Ok(DatabaseState {
                file_missing: true,
                ..DatabaseState::default()
            });
        }
        self.bounded(
            locked,
            "reading the history table",
            self.read_history(locked),
        )
        .await
    }

    async fn read_history(&self, locked: bool) -> Result<DatabaseState, SchemaError> {
        let mut guard = self.connection(locked).await?;
        let connection = guard.as_mut().expect("connection is open");
        let mut tables = self.tables(connection).await?;
        if !tables.iter().any(|t| t.eq_ignore_ascii_case(&self.table)) {
            // opsplan's own lock table may exist alone if an apply died before the
            // history table was made.
            tables.retain(|t| !t.eq_ignore_ascii_case(&self.lock_holder_table()));
            return Ok(DatabaseState {
                history: None,
                unmanaged_tables: tables,
                file_missing: false,
            });
        }

        let sql = format!(
            "SELECT version, description, script, checksum, checksum_algorithm, execution, \
             applied_at, duration_ms, success, statements_committed, statements_total, note, \
             applied_by FROM {} ORDER BY version",
            self.table
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| self.query_error("reading the history table", e))?;
        let history = rows
            .iter()
            .map(history_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.query_error("decoding the history table", e))?;
        Ok(DatabaseState {
            history: Some(history),
            unmanaged_tables: Vec::new(),
            file_missing: false,
        })
    }

    async fn tables(&self, connection: &mut AnyConnection) -> Result<Vec<String>, SchemaError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Dialect::Postgres => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY table_name"
            }
            Dialect::MySql => {
                "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() ORDER BY table_name"
            }
        };
        let rows = sqlx::query(sql)
            .fetch_all(connection)
            .await
            .map_err(|e| self.query_error("listing tables", e))?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.query_error("listing tables", e))
    }

    /// Takes the writer lock, then makes sure the history table exists. The order matters:
    /// two applies creating the table at once would otherwise race on the catalog.
    pub async fn lock(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
        resource: &str,
    ) -> Result<(), SchemaError> {
        let deadline = Instant::now() + timeout;
        let mut last_holder = String::new();
        loop {
            let holder = match self.dialect {
                Dialect::Sqlite => self.try_lock_sqlite().await?,
                Dialect::Postgres | Dialect::MySql => {
                    self.bounded(true, "taking the writer lock", self.try_lock_server())
                        .await?
                }
            };
            let Some(holder) = holder else {
                break;
            };
            if Instant::now() >= deadline {
                return Err(SchemaError::LockBusy {
                    backend: self.backend(),
                    address: self.address(),
                    holder: crate::lock::shown_holder(holder),
                    waited: timeout,
                });
            }
            if !holder.is_empty() && holder != last_holder {
                observer.waiting(resource, &holder);
                last_holder = holder;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        *self.locked.lock().await = true;
        tracing::debug!(backend = self.backend(), "writer lock taken");
        self.bounded(
            true,
            "creating the history table",
            self.create_history_table(),
        )
        .await
    }

    pub async fn unlock(&self) {
        if !std::mem::replace(&mut *self.locked.lock().await, false) {
            return;
        }
        match self.dialect {
            Dialect::Sqlite => {
                if let Some(lock) = &self.file_lock {
                    lock.release();
                }
            }
            Dialect::Postgres | Dialect::MySql => {
                let sql = match self.dialect {
                    Dialect::Postgres => "SELECT pg_advisory_unlock_all()",
                    _ => "SELECT RELEASE_ALL_LOCKS()",
                };
                let release = async {
                    if let Some(connection) = self.connection.lock().await.as_mut() {
                        let _ = sqlx::query(sql).execute(connection).await;
                    }
                };
                // The server drops the lock with the session, so a release that takes too
                // long is abandoned together with its connection.
                if tokio::time::timeout(self.timeout, release).await.is_err() {
                    self.connection.lock().await.take();
                }
            }
        }
    }

    /// `Ok(None)` when the lock was taken, `Ok(Some(holder))` when someone else has it.
    async fn try_lock_sqlite(&self) -> Result<Option<String>, SchemaError> {
        let Some(lock) = &self.file_lock else {
            return Ok(None);
        };
        let holder = lock.try_take().map_err(|source| SchemaError::LockFile {
            path: lock.path().to_path_buf(),
            source,
        })?;
        match holder {
            // Not named yet: the caller tries again before it says who holds the lock.
            Some(holder) if holder.is_empty() => Ok(Some(holder)),
            Some(holder) => Ok(Some(format!(
                "{holder} (lock file {})",
                lock.path().display()
            ))),
            None => {
                // The database is created only once we are the writer.
                drop(self.connection(true).await?);
                Ok(None)
            }
        }
    }

    async fn try_lock_server(&self) -> Result<Option<String>, SchemaError> {
        let mut guard = self.connection(true).await?;
        let connection = guard.as_mut().expect("connection is open");
        match self.dialect {
            Dialect::Postgres => {
                let name = format!("opsplan {}", holder_description());
                let name: String = name.chars().take(63).collect();
                sqlx::query("SELECT set_config('application_name', $1, false)")
                    .bind(name)
                    .execute(&mut *connection)
                    .await
                    .map_err(|e| self.query_error("naming the session", e))?;
                // Without this, a backend whose client was killed keeps the lock until its
                // running statement ends; with it, the server notices within a second.
                // PostgreSQL before 14 lacks the setting, which is harmless.
                let _ = sqlx::raw_sql("SET client_connection_check_interval = '1s'")
                    .execute(&mut *connection)
                    .await;
                let taken: bool = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(LOCK_CLASS)
                    .bind(lock_key(&self.table))
                    .fetch_one(&mut *connection)
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|e| self.query_error("taking the advisory lock", e))?;
                if taken {
                    return Ok(None);
                }
                let holder = sqlx::query(
                    "SELECT a.pid::bigint, COALESCE(a.application_name, '')::text, \
                     COALESCE(a.usename::text, ''), COALESCE(host(a.client_addr), 'local socket'), \
                     COALESCE(to_char(a.backend_start AT TIME ZONE 'UTC', \
                       'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted \
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                       AND l.classid::text::bigint = $1 AND l.objid::text::bigint = $2 LIMIT 1",
                )
                .bind(i64::from(LOCK_CLASS))
                .bind(i64::from(lock_key(&self.table)))
                .fetch_optional(&mut *connection)
                .await
                .map_err(|e| self.query_error("looking up the lock holder", e))?;
                Ok(Some(match holder {
                    Some(row) => {
                        let pid: i64 = row.try_get(0).unwrap_or_default();
                        let app: String = row.try_get(1).unwrap_or_default();
                        let user: String = row.try_get(2).unwrap_or_default();
                        let client: String = row.try_get(3).unwrap_or_default();
                        let since: String = row.try_get(4).unwrap_or_default();
                        format!(
                            "{app} (server pid {pid}, user {user}, from {client}, connected since {since})"
                        )
                    }
                    // Released since the attempt failed: nobody to name, try again.
                    None => String::new(),
                }))
            }
            Dialect::MySql => {
                let name = self.mysql_lock_name(connection).await?;
                let taken: Option<i64> = sqlx::query("SELECT GET_LOCK(?, 0)")
                    .bind(name.clone())
                    .fetch_one(&mut *connection)
                    .await
                    .and_then(|row| row.try_get(0))
                    .map_err(|e| self.query_error("taking the named lock", e))?;
                if taken == Some(1) {
                    self.name_mysql_holder(connection, &name).await?;
                    return Ok(None);
                }
                self.mysql_holder(connection, &name).await
            }
            Dialect::Sqlite => Ok(None),
        }
    }

    /// Where a MySQL lock holder writes its name: unlike a PostgreSQL session's
    /// application_name, nothing of a MySQL session says which process it serves.
    fn lock_holder_table(&self) -> String {
        format!("{}_lock", self.table)
    }

    /// Records who holds the named lock, keyed by the lock and this connection's id, so a
    /// row left by a dead holder never names a live one.
    async fn name_mysql_holder(
        &self,
        connection: &mut AnyConnection,
        name: &str,
    ) -> Result<(), SchemaError> {
        let table = self.lock_holder_table();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (lock_name VARCHAR(64) NOT NULL PRIMARY KEY, \
             connection_id BIGINT NOT NULL, holder VARCHAR(255) NOT NULL)"
        );
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&mut *connection)
            .await
            .map_err(|e| self.query_error("creating the lock holder table", e))?;
        let holder: String = holder_description().chars().take(255).collect();
        sqlx::query(AssertSqlSafe(format!(
            "REPLACE INTO {table} (lock_name, connection_id, holder) VALUES (?, CONNECTION_ID(), ?)"
        )))
        .bind(name.to_string())
        .bind(holder)
        .execute(connection)
        .await
        .map_err(|e| self.query_error("naming the lock holder", e))?;
        Ok(())
    }

    /// Who holds the named lock: the name its holder wrote, and its connection. Empty in
    /// the moment between the holder taking the lock and writing its name.
    async fn mysql_holder(
        &self,
        connection: &mut AnyConnection,
        name: &str,
    ) -> Result<Option<String>, SchemaError> {
        let session = sqlx::query(
            "SELECT CAST(p.ID AS SIGNED), CAST(p.USER AS CHAR), CAST(p.HOST AS CHAR) \
             FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(?)",
        )
        .bind(name.to_string())
        .fetch_optional(&mut *connection)
        .await
        .map_err(|e| self.query_error("looking up the lock holder", e))?;
        let Some(session) = session else {
            // Released since GET_LOCK failed: nobody to name, try again.
            return Ok(Some(String::new()));
        };
        let id: i64 = session.try_get(0).unwrap_or_default();
        let user: String = session.try_get(1).unwrap_or_default();
        let host: String = session.try_get(2).unwrap_or_default();

        // The table is missing until the first holder makes it.
        let named = sqlx::query(AssertSqlSafe(format!(
            "SELECT CAST(holder AS CHAR) FROM {} WHERE lock_name = ? AND connection_id = ?",
            self.lock_holder_table()
        )))
        .bind(name.to_string())
        .bind(id)
        .fetch_optional(connection)
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get::<String, _>(0).ok());
        Ok(Some(match named {
            Some(holder) => format!("{holder} (connection {id}, {user}@{host})"),
            None => String::new(),
        }))
    }

    /// MySQL lock names are server-wide, so the database name is part of it.
    async fn mysql_lock_name(&self, connection: &mut AnyConnection) -> Result<String, SchemaError> {
        let database: Option<String> = sqlx::query("SELECT CAST(DATABASE() AS CHAR)")
            .fetch_one(connection)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.query_error("reading the current database", e))?;
        let name = format!("opsplan:{}:{}", database.unwrap_or_default(), self.table);
        Ok(if name.len() <= 64 {
            name
        } else {
            use sha2::Digest;
            format!("opsplan:{}", &hex::encode(sha2::Sha256::digest(name))[..48])
        })
    }

    async fn create_history_table(&self) -> Result<(), SchemaError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n\
             version BIGINT NOT NULL PRIMARY KEY,\n\
             description VARCHAR(255) NOT NULL,\n\
             script VARCHAR(255) NOT NULL,\n\
             checksum VARCHAR(64) NOT NULL,\n\
             checksum_algorithm VARCHAR(32) NOT NULL,\n\
             execution VARCHAR(32) NOT NULL,\n\
             applied_at VARCHAR(40) NOT NULL,\n\
             duration_ms BIGINT NOT NULL,\n\
             success INTEGER NOT NULL,\n\
             statements_committed INTEGER NOT NULL,\n\
             statements_total INTEGER NOT NULL,\n\
             note TEXT,\n\
             applied_by VARCHAR(255) NOT NULL)",
            self.table
        );
        let mut guard = self.connection(true).await?;
        let connection = guard.as_mut().expect("connection is open");
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(connection)
            .await
            .map_err(|e| self.query_error("creating the history table", e))?;
        Ok(())
    }

    /// The apply history table: `opsplan_apply_history`, or `<history table>_applies` when
    /// the history table has another name.
    pub fn apply_log_table(&self) -> String {
        if self.table == crate::config::DEFAULT_HISTORY_TABLE {
            "opsplan_apply_history".to_string()
        } else {
            format!("{}_applies", self.table)
        }
    }

    async fn create_apply_log_table(
        &self,
        connection: &mut AnyConnection,
    ) -> Result<(), SchemaError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n\
             run_id VARCHAR(64) NOT NULL,\n\
             seq INTEGER NOT NULL,\n\
             started_at VARCHAR(40) NOT NULL,\n\
             finished_at VARCHAR(40) NOT NULL,\n\
             applied_by VARCHAR(255) NOT NULL,\n\
             opsplan_version VARCHAR(32) NOT NULL,\n\
             plan_digest VARCHAR(80) NOT NULL,\n\
             config_digest VARCHAR(80) NOT NULL,\n\
             address VARCHAR(512) NOT NULL,\n\
             resource VARCHAR(255) NOT NULL,\n\
             status VARCHAR(16) NOT NULL,\n\
             detail TEXT,\n\
             duration_ms BIGINT NOT NULL,\n\
             PRIMARY KEY (run_id, seq))",
            self.apply_log_table()
        );
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(connection)
            .await
            .map_err(|e| self.query_error("creating the apply history table", e))?;
        Ok(())
    }

    /// Records one apply run, one row per step, in a single transaction.
    pub async fn record_apply(&self, run: &ApplyRun<'_>) -> Result<(), SchemaError> {
        self.bounded(true, "recording the apply", self.insert_apply(run))
            .await
    }

    async fn insert_apply(&self, run: &ApplyRun<'_>) -> Result<(), SchemaError> {
        let mut guard = self.session().await?;
        let connection = guard.as_mut().expect("connection is open");
        self.create_apply_log_table(connection).await?;
        let p = |n: usize| self.dialect.placeholder(n);
        let sql = format!(
            "INSERT INTO {} (run_id, seq, started_at, finished_at, applied_by, opsplan_version, \
             plan_digest, config_digest, address, resource, status, detail, duration_ms) \
             VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
            self.apply_log_table(),
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10),
            p(11),
            p(12),
            p(13)
        );
        let mut transaction = connection
            .begin()
            .await
            .map_err(|e| self.query_error("recording the apply", e))?;
        for (seq, step) in run.steps.iter().enumerate() {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(run.run_id.to_string())
                .bind(seq as i32)
                .bind(run.started_at.to_string())
                .bind(run.finished_at.to_string())
                .bind(operator())
                .bind(env!("CARGO_PKG_VERSION"))
                .bind(run.plan_digest.to_string())
                .bind(run.config_digest.to_string())
                .bind(step.address.clone())
                .bind(step.resource.clone())
                .bind(step.status.to_string())
                .bind(step.detail.clone())
                .bind(step.duration_ms)
                .execute(&mut *transaction)
                .await
                .map_err(|e| self.query_error("recording the apply", e))?;
        }
        transaction
            .commit()
            .await
            .map_err(|e| self.query_error("recording the apply", e))
    }

    /// The most recent `limit` runs' steps, newest run first.
    pub async fn list_applies(&self, limit: usize) -> Result<Vec<LoggedStep>, SchemaError> {
        let locked = *self.locked.lock().await;
        if self.dialect == Dialect::Sqlite
            && !locked
            && self.sqlite_path().is_some_and(|path| !path.exists())
        {
            return Ok(Vec::new());
        }
        self.bounded(
            locked,
            "reading the apply history",
            self.read_applies(locked, limit),
        )
        .await
    }

    async fn read_applies(
        &self,
        locked: bool,
        limit: usize,
    ) -> Result<Vec<LoggedStep>, SchemaError> {
        let mut guard = self.connection(locked).await?;
        let connection = guard.as_mut().expect("connection is open");
        let table = self.apply_log_table();
        if !self
            .tables(connection)
            .await?
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&table))
        {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT run_id, seq, started_at, finished_at, applied_by, plan_digest, address, \
             status, detail, duration_ms FROM {table} WHERE run_id IN (SELECT run_id FROM \
             (SELECT DISTINCT run_id, started_at FROM {table} ORDER BY started_at DESC LIMIT \
             {limit}) recent) ORDER BY started_at DESC, run_id, seq"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| self.query_error("reading the apply history", e))?;
        rows.iter()
            .map(|row| {
                Ok(LoggedStep {
                    run_id: row.try_get(0)?,
                    seq: row.try_get(1)?,
                    started_at: row.try_get(2)?,
                    finished_at: row.try_get(3)?,
                    applied_by: row.try_get(4)?,
                    plan_digest: row.try_get(5)?,
                    address: row.try_get(6)?,
                    status: row.try_get(7)?,
                    detail: row.try_get(8)?,
                    duration_ms: row.try_get(9)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| self.query_error("decoding the apply history", e))
    }

    /// The locked connection, for running migrations.
    pub async fn session(&self) -> Result<MutexGuard<'_, Option<AnyConnection>>, SchemaError> {
        self.connection(true).await
    }

    pub fn insert_sql(&self) -> &str {
        self.insert_sql.get_or_init(|| self.make_insert_sql())
    }

    fn make_insert_sql(&self) -> String {
        let p = |n: usize| self.dialect.placeholder(n);
        format!(
            "INSERT INTO {} (version, description, script, checksum, checksum_algorithm, \
             execution, applied_at, duration_ms, success, statements_committed, \
             statements_total, note, applied_by) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, \
             {}, {}, {}, {})",
            self.table,
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10),
            p(11),
            p(12),
            p(13)
        )
    }

    /// Writes one history row on `connection` (inside the caller's transaction, if any).
    pub async fn insert_row(
        &self,
        connection: &mut AnyConnection,
        row: &NewHistoryRow<'_>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(self.insert_sql().to_string()))
            .bind(row.version as i64)
            .bind(row.description.to_string())
            .bind(row.script.to_string())
            .bind(row.checksum.to_string())
            .bind(super::files::CHECKSUM_ALGORITHM)
            .bind(row.execution.to_string())
            .bind(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .bind(row.duration_ms)
            .bind(i32::from(row.success))
            .bind(row.statements_committed as i32)
            .bind(row.statements_total as i32)
            .bind(row.note.map(str::to_string))
            .bind(operator())
            .execute(connection)
            .await
            .map(|_| ())
    }

    /// Replaces the row of `row.version` on `connection`, in one transaction.
    pub async fn replace_row(
        &self,
        connection: &mut AnyConnection,
        row: &NewHistoryRow<'_>,
    ) -> Result<(), sqlx::Error> {
        let mut transaction = connection.begin().await?;
        self.remove_row(&mut transaction, row.version).await?;
        self.insert_row(&mut transaction, row).await?;
        transaction.commit().await
    }

    /// Deletes the row of `version` on `connection`; returns how many rows went.
    pub async fn remove_row(
        &self,
        connection: &mut AnyConnection,
        version: u64,
    ) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM {} WHERE version = {}",
            self.table,
            self.dialect.placeholder(1)
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(version as i64)
            .execute(connection)
            .await
            .map(|done| done.rows_affected())
    }

    pub async fn delete_row(&self, version: u64) -> Result<u64, SchemaError> {
        let mut guard = self.session().await?;
        let connection = guard.as_mut().expect("connection is open");
        self.remove_row(connection, version)
            .await
            .map_err(|e| self.query_error("deleting a history row", e))
    }

    pub async fn write_row(&self, row: &NewHistoryRow<'_>) -> Result<(), SchemaError> {
        let mut guard = self.session().await?;
        let connection = guard.as_mut().expect("connection is open");
        self.insert_row(connection, row)
            .await
            .map_err(|e| self.query_error("writing a history row", e))
    }
}

/// Every opsplan lock uses this first key ("opsp"), so it is easy to find in `pg_locks`.
const LOCK_CLASS: i32 = 0x6f70_7370;

fn lock_key(table: &str) -> i32 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(table.as_bytes());
    i32::from_be_bytes([digest[0] & 0x7f, digest[1], digest[2], digest[3]])
}

/// The file a `sqlite:` URL names; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

fn history_row(row: &AnyRow) -> Result<AppliedMigration, sqlx::Error> {
    Ok(AppliedMigration {
        version: row.try_get::<i64, _>(0)? as u64,
        description: row.try_get(1)?,
        script: row.try_get(2)?,
        checksum: row.try_get(3)?,
        checksum_algorithm: row.try_get(4)?,
        execution: row.try_get(5)?,
        applied_at: row.try_get(6)?,
        duration_ms: row.try_get(7)?,
        success: row.try_get::<i64, _>(8)? != 0,
        statements_committed: row.try_get(9)?,
        statements_total: row.try_get(10)?,
        note: row.try_get(11)?,
        applied_by: row.try_get(12)?,
    })
}
