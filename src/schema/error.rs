use std::path::PathBuf;
use std::time::Duration;

/// Errors of the schema concern. Each names the back end and the address it used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot connect to {backend} at {address}")]
    Connect {
        backend: &'static str,
        address: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "{backend} at {address}: {action} did not finish within {}; check that the server is \
         up and answering there, or raise schema.timeout",
        humantime::format_duration(*after)
    )]
    TimedOut {
        backend: &'static str,
        address: String,
        action: String,
        after: Duration,
    },

    #[error("{backend} at {address}: {action} failed")]
    Query {
        backend: &'static str,
        address: String,
        action: String,
        #[source]
        source: sqlx::Error,
    },

    #[error(
        "another opsplan apply holds the lock on {backend} at {address}: {holder}; waited {}. \
         Wait for it to finish, or raise --lock-timeout",
        humantime::format_duration(*waited)
    )]
    LockBusy {
        backend: &'static str,
        address: String,
        holder: String,
        waited: Duration,
    },

    #[error("cannot use the lock file {}", path.display())]
    LockFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot create the folder {}", path.display())]
    CreateFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A migration failed; the message is complete and says what was committed.
    #[error("{0}")]
    Migration(String),

    #[error("{0}")]
    Refused(String),
}
