//! Running one migration file, and what to say when it fails.

use std::time::Instant;

use sqlx::AnyConnection;
use sqlx::{AssertSqlSafe, Connection};

use super::Dialect;
use super::database::{Database, NewHistoryRow};
use super::error::SchemaError;
use super::files::MigrationFile;
use super::split::Statement;

/// Statements PostgreSQL (or SQLite) refuses inside a transaction block.
pub fn needs_no_transaction(statement: &Statement, dialect: Dialect) -> Option<&'static str> {
    match dialect {
        Dialect::Postgres => {
            if statement.starts_with(&["CREATE", "INDEX", "CONCURRENTLY"])
                || statement.starts_with(&["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"])
            {
                Some("CREATE INDEX CONCURRENTLY")
            } else if statement.starts_with(&["DROP", "INDEX", "CONCURRENTLY"]) {
                Some("DROP INDEX CONCURRENTLY")
            } else if statement.starts_with(&["REINDEX"]) && statement.has_word("CONCURRENTLY") {
                Some("REINDEX CONCURRENTLY")
            } else if statement.starts_with(&["CREATE", "DATABASE"]) {
                Some("CREATE DATABASE")
            } else if statement.starts_with(&["DROP", "DATABASE"]) {
                Some("DROP DATABASE")
            } else if statement.starts_with(&["VACUUM"]) {
                Some("VACUUM")
            } else if statement.starts_with(&["ALTER", "SYSTEM"]) {
                Some("ALTER SYSTEM")
            } else if statement.starts_with(&["CREATE", "TABLESPACE"])
                || statement.starts_with(&["DROP", "TABLESPACE"])
            {
                Some("a TABLESPACE statement")
            } else {
                None
            }
        }
        Dialect::Sqlite => statement.starts_with(&["VACUUM"]).then_some("VACUUM"),
        Dialect::MySql => None,
    }
}

/// DDL, which MySQL and MariaDB commit implicitly, together with any open transaction.
pub fn is_ddl(statement: &Statement) -> bool {
    matches!(
        statement.words.first().map(String::as_str),
        Some("CREATE" | "ALTER" | "DROP" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE")
    )
}

/// Runs `file` and records it. Returns a one-line account for the apply report.
///
/// A file that runs in one transaction writes its history row inside it. A no-transaction
/// file first records itself as interrupted, and a MySQL file does so inside its transaction
/// just before its first DDL, which commits that row together with everything before it;
/// when the file ends, that row is replaced with its outcome. A run killed in between leaves
/// the interrupted row, so no statement that may have committed is ever run again unasked.
pub async fn run_migration(
    database: &Database,
    file: &MigrationFile,
    shown_dir: &str,
) -> Result<String, SchemaError> {
    let dialect = database.dialect;
    let statements = file.statements(dialect);
    let started = Instant::now();
    let mut guard = database.session().await?;
    let connection = guard.as_mut().expect("connection is open");

    let shown_file = format!("{shown_dir}/{}", file.file_name);
    let execution = if file.no_transaction {
        "no-transaction"
    } else {
        "statements"
    };
    tracing::debug!(file = %shown_file, statements = statements.len(), no_transaction = file.no_transaction, "running migration");

    // `Ok(true)`: the file ran, and its interrupted row waits to be replaced with success.
    let outcome = if file.no_transaction {
        let marker = interrupted_row(file, execution, started, statements.len());
        database
            .insert_row(connection, &marker)
            .await
            .map_err(|e| not_started(database, &shown_file, e))?;
        run_one_at_a_time(connection, &statements)
            .await
            .map(|()| true)
    } else if dialect == Dialect::MySql {
        run_mysql(database, connection, file, &statements, started).await
    } else {
        run_in_transaction(database, connection, file, &statements, started)
            .await
            .map(|()| false)
    };

    if let Ok(true) = outcome {
        let row = row_for(
            file,
            execution,
            started,
            statements.len(),
            statements.len(),
            None,
        );
        database
            .replace_row(connection, &row)
            .await
            .map_err(|e| record_failed(database, &shown_file, file.version, e))?;
    }
    let Err(failure) = outcome else {
        return Ok(done(&statements, started));
    };
    let message = describe_failure(&failure, &shown_file, dialect, file, &statements);
    let recorded = if failure.committed > 0 {
        let note = format!(
            "statement {} of {} failed: {}; {} committed",
            failure.index + 1,
            statements.len(),
            failure.error_text(),
            committed_range(failure.committed)
        );
        let row = row_for(
            file,
            execution,
            started,
            failure.committed,
            statements.len(),
            Some(&note),
        );
        database.replace_row(connection, &row).await
    } else if file.no_transaction || dialect == Dialect::MySql {
        // Nothing committed: the version is as it was before this run, interrupted row and all.
        database
            .remove_row(connection, file.version)
            .await
            .map(|_| ())
    } else {
        Ok(())
    };
    if let Err(error) = recorded {
        return Err(SchemaError::Migration(format!(
            "{message}\nRecording the outcome of version {} also failed: {}; inspect {} before \
             the next apply",
            file.version,
            database_error_text(&error),
            database.table()
        )));
    }
    Err(SchemaError::Migration(message))
}

/// What the history table holds while a file that cannot run atomically is running.
fn interrupted_row<'a>(
    file: &'a MigrationFile,
    execution: &'a str,
    started: Instant,
    total: usize,
) -> NewHistoryRow<'a> {
    row_for(file, execution, started, 0, total, Some(INTERRUPTED_NOTE))
}

/// The note of an interrupted row.
pub const INTERRUPTED_NOTE: &str = "interrupted: the run stopped before it recorded the end of \
     this migration (killed, or its connection was lost); some statements may have committed";

/// A history row for `file`, timed from `started`; a row with a note records a failure.
fn row_for<'a>(
    file: &'a MigrationFile,
    execution: &'a str,
    started: Instant,
    committed: usize,
    total: usize,
    note: Option<&'a str>,
) -> NewHistoryRow<'a> {
    NewHistoryRow {
        version: file.version,
        description: &file.description,
        script: &file.file_name,
        checksum: &file.checksum,
        execution,
        duration_ms: elapsed_ms(started),
        success: note.is_none(),
        statements_committed: committed as i64,
        statements_total: total as i64,
        note,
    }
}

/// Where a file stopped.
struct Failure {
    /// 0-based index of the failing statement, when known.
    index: usize,
    /// How many statements before it stay committed.
    committed: usize,
    error: sqlx::Error,
    index_known: bool,
}

impl Failure {
    fn error_text(&self) -> String {
        database_error_text(&self.error)
    }
}

async fn run_in_transaction(
    database: &Database,
    connection: &mut AnyConnection,
    file: &MigrationFile,
    statements: &[Statement],
    started: Instant,
) -> Result<(), Failure> {
    let fail = |error: sqlx::Error, index: Option<usize>| Failure {
        index: index.unwrap_or(0),
        committed: 0,
        index_known: index.is_some(),
        error,
    };
    let mut transaction = connection.begin().await.map_err(|e| fail(e, None))?;
    if let Err(error) = sqlx::raw_sql(AssertSqlSafe(file.sql.clone()))
        .execute(&mut *transaction)
        .await
    {
        let index = statement_at_error(&error, &file.sql, statements);
        let _ = transaction.rollback().await;
        return Err(fail(error, index));
    }
    let row = row_for(
        file,
        "transaction",
        started,
        statements.len(),
        statements.len(),
        None,
    );
    database
        .insert_row(&mut transaction, &row)
        .await
        .map_err(|e| fail(e, None))?;
    transaction.commit().await.map_err(|e| fail(e, None))
}

/// MySQL: statements one by one inside a transaction, which rolls back DML but not DDL.
/// Just before the first DDL, the interrupted row joins the transaction, so the implicit
/// commit of that DDL commits the row with it; `Ok(true)` says that row waits to be replaced
/// with success. A file without DDL commits its success row with its statements, atomically.
async fn run_mysql(
    database: &Database,
    connection: &mut AnyConnection,
    file: &MigrationFile,
    statements: &[Statement],
    started: Instant,
) -> Result<bool, Failure> {
    let fail = |index: usize, committed: usize, index_known: bool, error| Failure {
        index,
        committed,
        index_known,
        error,
    };
    let last = statements.len().saturating_sub(1);
    let mut transaction = connection.begin().await.map_err(|e| fail(0, 0, false, e))?;
    let mut marked = false;
    for (index, statement) in statements.iter().enumerate() {
        if !marked && is_ddl(statement) {
            let marker = interrupted_row(file, "statements", started, statements.len());
            if let Err(error) = database.insert_row(&mut transaction, &marker).await {
                let _ = transaction.rollback().await;
                return Err(fail(index, 0, false, error));
            }
            marked = true;
        }
        if let Err(error) = sqlx::raw_sql(AssertSqlSafe(statement.text.clone()))
            .execute(&mut *transaction)
            .await
        {
            let _ = transaction.rollback().await;
            // Everything up to the last DDL before the failure was committed by that DDL.
            let committed = statements[..index]
                .iter()
                .rposition(is_ddl)
                .map_or(0, |last_ddl| last_ddl + 1);
            return Err(fail(index, committed, true, error));
        }
    }
    if !marked {
        let row = row_for(
            file,
            "statements",
            started,
            statements.len(),
            statements.len(),
            None,
        );
        if let Err(error) = database.insert_row(&mut transaction, &row).await {
            let _ = transaction.rollback().await;
            return Err(fail(last, 0, false, error));
        }
    }
    transaction
        .commit()
        .await
        .map(|()| marked)
        .map_err(|e| fail(last, 0, false, e))
}

/// No-transaction files: each statement on its own, committed as it completes.
async fn run_one_at_a_time(
    connection: &mut AnyConnection,
    statements: &[Statement],
) -> Result<(), Failure> {
    for (index, statement) in statements.iter().enumerate() {
        if let Err(error) = sqlx::raw_sql(AssertSqlSafe(statement.text.clone()))
            .execute(&mut *connection)
            .await
        {
            return Err(Failure {
                index,
                committed: index,
                index_known: true,
                error,
            });
        }
    }
    Ok(())
}

fn describe_failure(
    failure: &Failure,
    shown_file: &str,
    dialect: Dialect,
    file: &MigrationFile,
    statements: &[Statement],
) -> String {
    let total = statements.len();
    let mut message = if failure.index_known {
        let line = statements.get(failure.index).map_or(1, |s| s.line);
        format!(
            "{shown_file}: statement {} of {total} (line {line}) failed: {}",
            failure.index + 1,
            failure.error_text()
        )
    } else {
        format!("{shown_file} failed: {}", failure.error_text())
    };

    if failure.committed == 0 {
        if file.no_transaction || dialect == Dialect::MySql {
            message.push_str(
                "\nNo statement of this file was committed; nothing was recorded. Fix the file \
                 and run apply again.",
            );
        } else {
            message.push_str(&format!(
                "\nThe transaction was rolled back: nothing of {} was applied and nothing was \
                 recorded. Fix the file and run apply again.",
                file.file_name
            ));
        }
        return message;
    }

    let committed = committed_range(failure.committed);
    if dialect == Dialect::MySql && !file.no_transaction {
        message.push_str(&format!(
            "\n{committed} were DDL that MySQL/MariaDB committed implicitly and could not be \
             rolled back."
        ));
    } else {
        message.push_str(&format!(
            "\nstatement {} of {total} failed; {committed} {} committed.",
            failure.index + 1,
            if failure.committed == 1 {
                "was"
            } else {
                "were"
            }
        ));
    }
    message.push_str(&format!(
        "\nVersion {} is recorded as failed. Inspect the database, finish or revert the change \
         by hand, then run `opsplan schema mark-applied {}` or `opsplan schema mark-removed {}`.",
        file.version, file.version, file.version
    ));
    message
}

fn committed_range(committed: usize) -> String {
    match committed {
        1 => "statement 1".to_string(),
        2 => "statements 1–2".to_string(),
        n => format!("statements 1–{n}"),
    }
}

/// The server's message, with its code when it has one.
pub fn database_error_text(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        None => error.to_string(),
    }
}

/// Maps PostgreSQL's error position (characters into the file) to the statement index.
fn statement_at_error(error: &sqlx::Error, sql: &str, statements: &[Statement]) -> Option<usize> {
    let db = error.as_database_error()?;
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    let sqlx::postgres::PgErrorPosition::Original(position) = pg.position()? else {
        return None;
    };
    let byte = sql
        .char_indices()
        .nth(position.saturating_sub(1))
        .map_or(sql.len(), |(at, _)| at);
    statements.iter().rposition(|s| s.offset <= byte)
}

fn record_failed(
    database: &Database,
    shown_file: &str,
    version: u64,
    error: sqlx::Error,
) -> SchemaError {
    SchemaError::Migration(format!(
        "{shown_file} ran, but recording it in {} failed: {}. The table says version \
         {version} was interrupted; check the table and the schema, then run `opsplan schema \
         mark-applied {version}`",
        database.table(),
        database_error_text(&error)
    ))
}

/// The interrupted row could not be written, so nothing of the file was run.
fn not_started(database: &Database, shown_file: &str, error: sqlx::Error) -> SchemaError {
    SchemaError::Migration(format!(
        "{shown_file} was not run: recording its start in {} failed: {}. Check that the \
         table is writable by this user, then run apply again",
        database.table(),
        database_error_text(&error)
    ))
}

fn done(statements: &[Statement], started: Instant) -> String {
    format!(
        "{} statement(s) in {} ms",
        statements.len(),
        started.elapsed().as_millis()
    )
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}
