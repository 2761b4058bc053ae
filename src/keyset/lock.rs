//! The file store's writer lock (see `crate::lock`), so that two applies never rotate the same
//! file at once. Vault needs none: KV v2 writes are check-and-set, and every store is re-read
//! and compared just before writing.

use std::time::Duration;

use crate::engine::LockObserver;
use crate::lock::{FileLock, LockFailure};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot use the key store lock {path}: {source}; check the folder's permissions")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the key store lock {path} is still held by {holder} after {waited}; wait for that \
         apply to finish, or raise --lock-timeout"
    )]
    Timeout {
        path: String,
        holder: String,
        waited: String,
    },
}

pub async fn acquire(
    lock: &FileLock,
    timeout: Duration,
    observer: &dyn LockObserver,
    address: &str,
) -> Result<(), LockError> {
    let path = lock.path().display().to_string();
    lock.acquire(timeout, observer, address)
        .await
        .map_err(|failure| match failure {
            LockFailure::Io(source) => LockError::Open { path, source },
            LockFailure::Busy { holder } => LockError::Timeout {
                path,
                holder,
                waited: humantime::format_duration(timeout).to_string(),
            },
        })
}
