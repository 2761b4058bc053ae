//! The schema concern: SQL migration files against a database's history table.

mod database;
mod error;
pub mod files;
mod run;
pub mod split;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use database::{AppliedMigration, ApplyRun, ApplyRunStep, Database, DatabaseState, LoggedStep};
pub use error::SchemaError;
pub use files::MigrationFile;

use crate::config::{SchemaConfig, TargetVersion};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::engine::{Diff, DriftItem, LiveState, LockObserver, Resource, ResourceError};
use crate::graph::Dependency;
use crate::plan::{Action, Attribute, Change, Fingerprint};

/// The resource's address in plans and `depends_on`.
pub const ADDRESS: &str = "schema";

/// The SQL dialects opsplan speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub fn from_url(url: &str) -> Dialect {
        if url.starts_with("postgres") {
            Dialect::Postgres
        } else if url.starts_with("mysql") || url.starts_with("mariadb") {
            Dialect::MySql
        } else {
            Dialect::Sqlite
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL/MariaDB",
        }
    }

    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::MySql => "?".to_string(),
        }
    }

    /// Whether DDL takes part in transactions (it commits implicitly in MySQL).
    pub fn transactional_ddl(self) -> bool {
        self != Dialect::MySql
    }
}

/// The address of one migration: `schema.migration["0007_touch_updated_at"]`.
pub fn migration_address(file: &MigrationFile) -> String {
    format!("{ADDRESS}.migration[\"{}\"]", file.stem())
}

pub struct SchemaResource {
    config: SchemaConfig,
    files: Result<Vec<MigrationFile>, Diagnostics>,
    database: Database,
}

impl SchemaResource {
    pub fn new(config: SchemaConfig) -> SchemaResource {
        let files = files::load_migrations(&config.migrations_dir, &config.migrations_display);
        let database = Database::new(
            config.url.clone(),
            config.history_table.clone(),
            config.timeout,
        );
        SchemaResource {
            config,
            files,
            database,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.database.dialect
    }

    fn files(&self) -> &[MigrationFile] {
        self.files.as_deref().unwrap_or_default()
    }

    fn file(&self, version: u64) -> Option<&MigrationFile> {
        self.files().iter().find(|f| f.version == version)
    }

    /// The files the target asks for, in version order.
    fn desired(&self) -> Vec<&MigrationFile> {
        self.files()
            .iter()
            .filter(|f| match self.config.target {
                TargetVersion::Latest => true,
                TargetVersion::Version(target) => f.version <= target,
            })
            .collect()
    }

    fn compare(&self, state: &DatabaseState) -> Diff {
        let mut diff = Diff::default();
        let shown_dir = &self.config.migrations_display;

        if let TargetVersion::Version(target) = self.config.target
            && self.file(target).is_none()
        {
            diff.refusals.push(format!(
                "schema.target {target} matches no file in {shown_dir}; \
                     set it to an existing version or to \"latest\""
            ));
        }

        let history = match &state.history {
            Some(history) => history.as_slice(),
            None => {
                if !state.unmanaged_tables.is_empty() {
                    let shown: Vec<&str> = state
                        .unmanaged_tables
                        .iter()
                        .take(8)
                        .map(String::as_str)
                        .collect();
                    diff.refusals.push(format!(
                        "{} at {} already holds {} table(s) ({}{}) but no {} history table: it \
                         is managed by another tool or by hand. opsplan adopts it only when told: \
                         run `opsplan schema baseline <version>` with the last migration that \
                         is already in place",
                        self.database.backend(),
                        self.database.address(),
                        state.unmanaged_tables.len(),
                        shown.join(", "),
                        if state.unmanaged_tables.len() > 8 {
                            ", …"
                        } else {
                            ""
                        },
                        self.config.history_table
                    ));
                }
                &[]
            }
        };
        diff.live_summary = summarize(state, history);

        let applied: BTreeMap<u64, &AppliedMigration> =
            history.iter().map(|row| (row.version, row)).collect();
        let newest_file = self.files().iter().map(|f| f.version).max();
        let latest_applied = history
            .iter()
            .filter(|r| r.success)
            .max_by_key(|r| r.version);

        // Out-of-band changes to what was applied are drift; the plan refuses them too.
        for row in history {
            let message = if !row.success {
                format!(
                    "version {} is partially applied; resolve manually, then mark it. {} \
                     failed at {}: {}. Inspect the database, finish or revert the change by \
                     hand, then run `opsplan schema mark-applied {}` (finished) or \
                     `opsplan schema mark-removed {}` (reverted)",
                    row.version,
                    row.script,
                    row.applied_at,
                    row.note.as_deref().unwrap_or("no detail recorded"),
                    row.version,
                    row.version
                )
            } else {
                match self.file(row.version) {
                    Some(file) if file.checksum == row.checksum => continue,
                    Some(file) => format!(
                        "{shown_dir}/{} was modified after it was applied (applied {} with \
                         checksum {}, the file now has {}). Restore the applied content and put \
                         the change in a new migration; line-ending changes (CRLF/LF) alone are \
                         not modifications",
                        file.file_name,
                        row.applied_at,
                        short(&row.checksum),
                        short(&file.checksum)
                    ),
                    None if newest_file.is_none_or(|newest| row.version > newest) => format!(
                        "the database is ahead of the desired state: {} (version {}) is applied \
                         but {shown_dir} {}. opsplan never runs down migrations: deploy the \
                         newer migrations, or restore a backup to go back",
                        row.script,
                        row.version,
                        match newest_file.and_then(|v| self.file(v)) {
                            Some(newest) => format!("only goes up to {}", newest.prefix),
                            None => "holds no migrations".to_string(),
                        }
                    ),
                    None => format!(
                        "applied migration {} (version {}, description {}, checksum {}) is not \
                         found in {shown_dir}. Restore the file, or if the change was reverted \
                         by hand, run `opsplan schema mark-removed {}`",
                        row.script,
                        row.version,
                        row.description,
                        short(&row.checksum),
                        row.version
                    ),
                }
            };
            diff.refusals.push(message.clone());
            diff.drift.push(DriftItem {
                address: row_address(row),
                message,
            });
        }

        if let (TargetVersion::Version(target), Some(latest)) = (self.config.target, latest_applied)
            && latest.version > target
            && self.file(latest.version).is_some()
        {
            diff.refusals.push(format!(
                "the database is ahead of the desired state: {} is applied but schema.target \
                     is {target}. opsplan never runs down migrations",
                latest.script
            ));
        }

        for file in self.desired() {
            if applied.contains_key(&file.version) {
                continue;
            }
            if let Some(latest) = latest_applied.filter(|l| l.version > file.version) {
                if !self.config.allow_out_of_order {
                    diff.refusals.push(format!(
                        "{shown_dir}/{} is out of order: version {} is older than the latest \
                         applied version {} ({}). Renumber it above {}, or set \
                         schema.allow_out_of_order = true if it is independent of the newer ones",
                        file.file_name,
                        file.prefix,
                        latest.shown_version(),
                        latest.script,
                        latest.shown_version()
                    ));
                    continue;
                }
                diff.warnings.push(format!(
                    "{} is applied out of order, after version {}",
                    file.file_name,
                    latest.shown_version()
                ));
            }
            diff.changes.push(self.change_for(file));
        }

        if self.dialect() == Dialect::MySql {
            for change in &diff.changes {
                if let Some(warning) = self.mysql_mixing_warning(change) {
                    diff.warnings.push(warning);
                }
            }
        }
        diff
    }

    fn change_for(&self, file: &MigrationFile) -> Change {
        let statements = file.statements(self.dialect()).len();
        let execution = if file.no_transaction {
            format!("no transaction, {statements} statement(s) one at a time")
        } else if self.dialect().transactional_ddl() {
            format!("one transaction, {statements} statement(s)")
        } else {
            format!("{statements} statement(s); DDL commits implicitly on MySQL/MariaDB")
        };
        Change {
            address: migration_address(file),
            action: Action::Create,
            summary: format!("apply migration {}", file.file_name),
            attributes: vec![
                Attribute::added("version", file.version.to_string()),
                Attribute::added(
                    "file",
                    format!("{}/{}", self.config.migrations_display, file.file_name),
                ),
                Attribute::added("checksum", short(&file.checksum)),
                Attribute::added("execution", execution),
            ],
            data: serde_json::json!({
                "version": file.version,
                "checksum": file.checksum,
            }),
        }
    }

    fn mysql_mixing_warning(&self, change: &Change) -> Option<String> {
        let version = change.data.get("version")?.as_u64()?;
        let file = self.file(version)?;
        let statements = file.statements(Dialect::MySql);
        let ddl = statements.iter().filter(|s| run::is_ddl(s)).count();
        let mixed = ddl >= 1 && ddl < statements.len();
        (ddl > 1 || mixed).then(|| {
            format!(
                "{} has {ddl} DDL statement(s){} out of {}: MySQL/MariaDB commits each DDL \
                 statement at once, so a failure part-way cannot be rolled back. Consider one \
                 DDL statement per file",
                file.file_name,
                if mixed { " mixed with DML" } else { "" },
                statements.len()
            )
        })
    }

    /// Validation that needs no database: names, duplicates, statements that cannot run
    /// inside a transaction.
    fn offline_problems(&self) -> Diagnostics {
        let mut problems = match &self.files {
            Ok(_) => Diagnostics::default(),
            Err(problems) => problems.clone(),
        };
        for file in self.files() {
            if file.no_transaction {
                continue;
            }
            for (index, statement) in file.statements(self.dialect()).iter().enumerate() {
                if let Some(what) = run::needs_no_transaction(statement, self.dialect()) {
                    problems.push(
                        Diagnostic::at(
                            Location {
                                file: format!(
                                    "{}/{}",
                                    self.config.migrations_display, file.file_name
                                )
                                .into(),
                                line: statement.line,
                                column: 1,
                            },
                            format!(
                                "statement {} ({what}) cannot run inside a transaction block, \
                                 and {} runs in one",
                                index + 1,
                                file.file_name
                            ),
                        )
                        .with_help(format!(
                            "put `{}` on the file's first line so that its statements run one \
                             at a time, ideally with this statement alone in its file",
                            files::NO_TRANSACTION_DIRECTIVE
                        )),
                    );
                }
            }
        }
        problems
    }

    fn expect_state<'a>(&self, live: &'a LiveState) -> &'a DatabaseState {
        live.downcast_ref::<DatabaseState>()
            .expect("schema live state is a DatabaseState")
    }

    /// `opsplan schema baseline VERSION`: records every file up to `version` as applied
    /// without running it, for a database that another tool brought to that point.
    pub async fn baseline(
        &self,
        version: u64,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<Vec<String>, SchemaError> {
        self.database.lock(timeout, observer, ADDRESS).await?;
        let result = self.baseline_locked(version).await;
        self.database.unlock().await;
        result
    }

    async fn baseline_locked(&self, version: u64) -> Result<Vec<String>, SchemaError> {
        if self.file(version).is_none() {
            return Err(SchemaError::Refused(format!(
                "no file in {} has version {version}; baseline names the last migration that is \
                 already in place",
                self.config.migrations_display
            )));
        }
        let state = self.database.read().await?;
        if state.history.as_ref().is_some_and(|h| !h.is_empty()) {
            return Err(SchemaError::Refused(format!(
                "{} already has rows; baseline only adopts a database that opsplan has never \
                 migrated",
                self.config.history_table
            )));
        }
        let mut recorded = Vec::new();
        for file in self.files().iter().filter(|f| f.version <= version) {
            self.database
                .write_row(&database::NewHistoryRow {
                    version: file.version,
                    description: &file.description,
                    script: &file.file_name,
                    checksum: &file.checksum,
                    execution: "baseline",
                    duration_ms: 0,
                    success: true,
                    statements_committed: 0,
                    statements_total: 0,
                    note: Some("recorded by `opsplan schema baseline`; not run by opsplan"),
                })
                .await?;
            recorded.push(file.file_name.clone());
        }
        Ok(recorded)
    }

    /// `opsplan schema mark-applied VERSION`: an operator finished a failed migration by hand.
    pub async fn mark_applied(
        &self,
        version: u64,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<String, SchemaError> {
        let Some(file) = self.file(version) else {
            return Err(SchemaError::Refused(format!(
                "no file in {} has version {version}",
                self.config.migrations_display
            )));
        };
        self.database.lock(timeout, observer, ADDRESS).await?;
        let result = async {
            self.database.delete_row(version).await?;
            self.database
                .write_row(&database::NewHistoryRow {
                    version,
                    description: &file.description,
                    script: &file.file_name,
                    checksum: &file.checksum,
                    execution: "marked-applied",
                    duration_ms: 0,
                    success: true,
                    statements_committed: 0,
                    statements_total: 0,
                    note: Some("marked applied by an operator with `opsplan schema mark-applied`"),
                })
                .await?;
            Ok(format!("{} is now recorded as applied", file.file_name))
        }
        .await;
        self.database.unlock().await;
        result
    }

    /// `opsplan schema mark-removed VERSION`: forget a version an operator reverted by hand.
    pub async fn mark_removed(
        &self,
        version: u64,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<String, SchemaError> {
        self.database.lock(timeout, observer, ADDRESS).await?;
        let result = self.database.delete_row(version).await;
        self.database.unlock().await;
        match result? {
            0 => Err(SchemaError::Refused(format!(
                "{} has no row for version {version}",
                self.config.history_table
            ))),
            _ => Ok(format!(
                "version {version} is no longer recorded; the next plan treats its file, if \
                 any, as pending"
            )),
        }
    }

    pub async fn close(&self) {
        self.database.close().await;
    }

    /// Records an apply run in the target database; call it while the lock is held.
    pub async fn record_apply(&self, run: &ApplyRun<'_>) -> Result<(), SchemaError> {
        self.database.record_apply(run).await
    }

    pub async fn list_applies(&self, limit: usize) -> Result<Vec<LoggedStep>, SchemaError> {
        self.database.list_applies(limit).await
    }

    /// Where the apply history is kept, for messages.
    pub fn apply_history_location(&self) -> String {
        format!(
            "{} in {} at {}",
            self.database.apply_log_table(),
            self.database.backend(),
            self.database.address()
        )
    }
}

#[async_trait]
impl Resource for SchemaResource {
    fn address(&self) -> &str {
        ADDRESS
    }

    fn kind(&self) -> &'static str {
        "schema"
    }

    fn live_source(&self) -> String {
        format!("{} at {}", self.database.backend(), self.database.address())
    }

    fn dependencies(&self) -> Vec<Dependency> {
        Dependency::declared(ADDRESS, &self.config.depends_on)
    }

    fn validate(&self) -> Diagnostics {
        self.offline_problems()
    }

    async fn lock(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        Ok(self.database.lock(timeout, observer, ADDRESS).await?)
    }

    async fn unlock(&self) {
        self.database.unlock().await;
    }

    async fn read(&self) -> Result<LiveState, ResourceError> {
        Ok(Box::new(self.database.read().await?))
    }

    fn fingerprint(&self, live: &LiveState) -> Fingerprint {
        let state = self.expect_state(live);
        // An empty history table is the same state as none: apply's lock creates the table,
        // and a plan made before that must not look stale because of it.
        let history = state.history.as_ref().filter(|rows| !rows.is_empty());
        let Some(history) = history else {
            return if state.unmanaged_tables.is_empty() {
                Fingerprint::absent()
            } else {
                let names: Vec<&[u8]> = state
                    .unmanaged_tables
                    .iter()
                    .map(|t| t.as_bytes())
                    .collect();
                Fingerprint::of(names)
            };
        };
        let rows: Vec<String> = history
            .iter()
            .map(|row| {
                format!(
                    "{}|{}|{}|{}|{}",
                    row.version, row.checksum, row.success, row.execution, row.applied_at
                )
            })
            .collect();
        Fingerprint::of(
            std::iter::once(b"history".as_slice()).chain(rows.iter().map(|r| r.as_bytes())),
        )
    }

    fn diff(&self, live: &LiveState) -> Result<Diff, ResourceError> {
        Ok(self.compare(self.expect_state(live)))
    }

    async fn apply(&self, change: &Change) -> Result<String, ResourceError> {
        let version = change
            .data
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                SchemaError::Refused(format!("{}: no version in the plan", change.address))
            })?;
        let file = self.file(version).ok_or_else(|| {
            SchemaError::Refused(format!(
                "{}: the file for version {version} is gone since the plan was made",
                change.address
            ))
        })?;
        let planned = change
            .data
            .get("checksum")
            .and_then(serde_json::Value::as_str);
        if planned != Some(file.checksum.as_str()) {
            return Err(Box::new(SchemaError::Refused(format!(
                "{} changed since the plan was made; run plan again",
                file.file_name
            ))));
        }
        Ok(run::run_migration(&self.database, file, &self.config.migrations_display).await?)
    }
}

fn row_address(row: &AppliedMigration) -> String {
    format!(
        "{ADDRESS}.migration[\"{}\"]",
        row.script.trim_end_matches(".sql")
    )
}

fn summarize(state: &DatabaseState, history: &[AppliedMigration]) -> String {
    if state.file_missing {
        return "database file does not exist yet".to_string();
    }
    if state.history.is_none() {
        return "no history table yet".to_string();
    }
    match history
        .iter()
        .filter(|r| r.success)
        .max_by_key(|r| r.version)
    {
        Some(latest) => format!(
            "{} migration(s) applied, latest {}",
            history.iter().filter(|r| r.success).count(),
            latest.script
        ),
        None => "no migrations applied".to_string(),
    }
}

/// The first 12 hex digits of a checksum: enough to tell files apart in a message.
pub fn short(checksum: &str) -> String {
    checksum.chars().take(12).collect()
}
