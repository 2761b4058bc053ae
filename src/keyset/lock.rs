//! The file store's writer lock: an advisory lock on `<store>.lock`, whose content says who
//! holds it, so that two applies never rotate the same file at once. Vault needs none: KV v2
//! writes are check-and-set, and every store is re-read and compared just before writing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::LockObserver;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the key store lock {path}; check the folder's permissions")]
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

pub struct FileLock {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

impl FileLock {
    /// A lock beside the store file.
    pub fn beside(store: &Path) -> FileLock {
        let mut name = store.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        FileLock {
            path: store.with_file_name(name),
            held: Mutex::new(None),
        }
    }

    pub async fn acquire(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
        address: &str,
    ) -> Result<(), LockError> {
        let shown = self.path.display().to_string();
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| LockError::Open {
                path: shown.clone(),
                source,
            })?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|source| LockError::Open {
                path: shown.clone(),
                source,
            })?;
        let started = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let holder = holder_of(&mut file);
                    if started.elapsed() >= timeout {
                        return Err(LockError::Timeout {
                            path: shown,
                            holder,
                            waited: humantime::format_duration(timeout).to_string(),
                        });
                    }
                    if !told {
                        observer.waiting(address, &holder);
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(TryLockError::Error(source)) => {
                    return Err(LockError::Open {
                        path: shown,
                        source,
                    });
                }
            }
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", holder_description());
        let _ = file.flush();
        if let Ok(mut held) = self.held.lock() {
            *held = Some(file);
        }
        Ok(())
    }

    pub fn release(&self) {
        if let Ok(mut held) = self.held.lock()
            && let Some(file) = held.take()
        {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }
}

fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "another opsplan apply".to_string()
    } else {
        text.to_string()
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
