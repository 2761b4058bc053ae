//! Advisory file locks for what opsplan writes on local disk: the key file, the mail settings
//! file and a SQLite database.
//!
//! A lock is a file beside the thing it guards, `<file>.opsplan-lock`, locked with the
//! operating system's advisory lock. The operating system drops the lock when the process
//! ends, so a killed apply never leaves one behind. While held, the file names its holder
//! (`user@host pid N since TIME`) for whoever waits.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::LockObserver;

/// How often a waiting apply tries the lock again.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

pub struct FileLock {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockFailure {
    /// The lock file cannot be created, opened or locked.
    Io(std::io::Error),
    /// Another process still held it when the timeout ran out.
    Busy { holder: String },
}

impl FileLock {
    /// The lock guarding `target`: `<target>.opsplan-lock`.
    pub fn beside(target: &Path) -> FileLock {
        let mut path = target.as_os_str().to_owned();
        path.push(".opsplan-lock");
        FileLock {
            path: PathBuf::from(path),
            held: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One attempt: `Ok(None)` when the lock is now ours, `Ok(Some(holder))` when another
    /// process has it. The holder is empty in the moment between another process taking
    /// the lock and writing its name (or releasing it); callers wait for the name.
    pub fn try_take(&self) -> std::io::Result<Option<String>> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = writeln!(file, "{}", holder_description());
                let _ = file.flush();
                *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
                Ok(None)
            }
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&self.path).unwrap_or_default();
                Ok(Some(holder.trim().to_string()))
            }
            Err(TryLockError::Error(source)) => Err(source),
        }
    }

    /// Takes the lock, waiting up to `timeout` and telling `observer` who holds it
    /// whenever the holder changes.
    pub async fn acquire(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
        address: &str,
    ) -> Result<(), LockFailure> {
        let deadline = Instant::now() + timeout;
        let mut last_holder = String::new();
        loop {
            let Some(holder) = self.try_take().map_err(LockFailure::Io)? else {
                tracing::debug!(path = %self.path.display(), "file lock taken");
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(LockFailure::Busy {
                    holder: shown_holder(holder),
                });
            }
            if !holder.is_empty() && holder != last_holder {
                observer.waiting(address, &holder);
                last_holder = holder;
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    pub fn release(&self) {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(file) = held {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }
}

/// A holder as read from a lock, for messages: a lock whose holder has not written its name
/// yet is "another process".
pub fn shown_holder(holder: String) -> String {
    if holder.is_empty() {
        "another process".to_string()
    } else {
        holder
    }
}

/// Who is running, as `user@host`; looked up once per run (every history row names it).
pub fn operator() -> String {
    static OPERATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OPERATOR
        .get_or_init(|| {
            let user = whoami::username().unwrap_or_else(|_| "unknown".to_string());
            let host = whoami::hostname().unwrap_or_else(|_| "unknown-host".to_string());
            format!("{user}@{host}")
        })
        .clone()
}

/// Who holds a lock: `user@host pid N since TIME`.
pub fn holder_description() -> String {
    format!(
        "{} pid {} since {}",
        operator(),
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_sees_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("keys.json");
        let first = FileLock::beside(&target);
        let second = FileLock::beside(&target);
        assert_eq!(first.try_take().unwrap(), None);
        let holder = second.try_take().unwrap().expect("the lock is held");
        assert!(
            holder.contains(&format!("pid {}", std::process::id())),
            "{holder}"
        );
        assert!(holder.starts_with(&crate::lock::operator()), "{holder}");
        assert!(dir.path().join("keys.json.opsplan-lock").exists());
        first.release();
        assert_eq!(second.try_take().unwrap(), None);
    }
}
