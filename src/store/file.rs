//! The default store: one JSON file, mode 0600, replaced atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;

use super::{Document, Store, StoreError};
use crate::secret::Secret;

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }
}

#[async_trait]
impl Store for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.shown())
    }

    async fn read(&self) -> Result<Option<Document>, StoreError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    store: self.describe(),
                    path: self.shown(),
                    source,
                });
            }
        };
        let raw: BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|error| StoreError::Corrupt {
                store: self.describe(),
                path: self.shown(),
                // The position only: serde_json's message could quote the content.
                reason: format!("not a JSON object of strings (line {})", error.line()),
            })?;
        Ok(Some(Document {
            fields: raw.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            version: None,
        }))
    }

    async fn write(
        &self,
        fields: &BTreeMap<String, Secret>,
        _expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let clear: BTreeMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        let text = serde_json::to_string_pretty(&clear).map_err(|error| StoreError::Backend {
            store: self.describe(),
            message: format!("cannot encode the document: {error}"),
        })?;
        write_private_atomically(&self.path, text.as_bytes()).map_err(|source| {
            StoreError::Write {
                store: self.describe(),
                path: self.shown(),
                source,
            }
        })
    }
}

/// Writes `bytes` to a temporary file beside `path` with mode 0600, syncs it, and renames it
/// over `path`, so a reader sees the old file or the new one and never a part.
pub fn write_private_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut temporary = tempfile::Builder::new()
        .prefix(".opsplan-")
        .permissions(private_permissions())
        .tempfile_in(parent)?;
    temporary.write_all(bytes)?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|error| error.error)?;
    if let Ok(directory) = std::fs::File::open(parent) {
        let _ = directory.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn private_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("keys.json"));
        assert_eq!(store.read().await.unwrap(), None);

        let mut fields = BTreeMap::new();
        fields.insert("HMAC_SECRET".to_string(), Secret::new("k-primary"));
        store.write(&fields, None).await.unwrap();

        let document = store.read().await.unwrap().unwrap();
        assert_eq!(document.get("HMAC_SECRET").unwrap().expose(), "k-primary");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("keys.json")).unwrap().permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
    }
}
