//! The writer lock of the file settings store: an advisory lock on a file beside it.
//!
//! The operating system releases the lock when the process ends, so a killed apply never
//! leaves one behind. The file holds `user@host pid N since TIME` for whoever waits.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::MailError;
use crate::engine::LockObserver;

pub struct FileLock {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

impl FileLock {
    /// The lock for the store at `store_path`: `<store_path>.opsplan-lock`.
    pub fn beside(store_path: &Path) -> FileLock {
        let mut path = store_path.as_os_str().to_owned();
        path.push(".opsplan-lock");
        FileLock {
            path: PathBuf::from(path),
            held: Mutex::new(None),
        }
    }

    pub async fn lock(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
        resource: &str,
    ) -> Result<(), MailError> {
        let deadline = Instant::now() + timeout;
        let mut last_holder = String::new();
        loop {
            let Some(holder) = self.try_lock()? else {
                tracing::debug!(path = %self.path.display(), "mail settings lock taken");
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(MailError::LockBusy {
                    path: self.path.display().to_string(),
                    holder,
                    waited: timeout,
                });
            }
            if holder != last_holder {
                observer.waiting(resource, &holder);
                last_holder = holder;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn unlock(&self) {
        if let Some(file) = self.held.lock().expect("lock state").take() {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }

    /// `Ok(None)` when taken, `Ok(Some(holder))` when another process has it.
    fn try_lock(&self) -> Result<Option<String>, MailError> {
        let failed = |source: std::io::Error| MailError::LockFile {
            path: self.path.display().to_string(),
            cause: source,
        };
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = writeln!(file, "{}", holder_description());
                *self.held.lock().expect("lock state") = Some(file);
                Ok(None)
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&self.path).unwrap_or_default();
                let holder = holder.trim();
                Ok(Some(if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                }))
            }
            Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
        }
    }
}

/// `user@host pid N since TIME`.
fn holder_description() -> String {
    let user = whoami::username().unwrap_or_else(|_| "unknown".to_string());
    let host = whoami::hostname().unwrap_or_else(|_| "unknown-host".to_string());
    format!(
        "{user}@{host} pid {} since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}
