//! The writer lock of the file settings store (see `crate::lock`).

use std::time::Duration;

use super::error::MailError;
use crate::engine::LockObserver;
use crate::lock::{FileLock, LockFailure};

pub async fn acquire(
    lock: &FileLock,
    timeout: Duration,
    observer: &dyn LockObserver,
    address: &str,
) -> Result<(), MailError> {
    let path = lock.path().display().to_string();
    lock.acquire(timeout, observer, address)
        .await
        .map_err(|failure| match failure {
            LockFailure::Io(cause) => MailError::LockFile { path, cause },
            LockFailure::Busy { holder } => MailError::LockBusy {
                path,
                holder,
                waited: timeout,
            },
        })
}
