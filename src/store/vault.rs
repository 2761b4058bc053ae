//! HashiCorp Vault (or OpenBao) KV v1 and v2 as a store.
//!
//! The mount and its KV version are asked of Vault once per run through
//! `sys/internal/ui/mounts/<path>`, unless the configuration names the version. KV v2 writes
//! use check-and-set with the version read at plan time. Every error names the exact API
//! path that was used, and a denied KV v2 request reminds that policies name `data/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde::Deserialize;
use tokio::sync::OnceCell;
use vaultrs::api::kv2::requests::{ReadSecretMetadataRequest, SetSecretRequestOptions};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{Document, Store, StoreError};
use crate::config::{KvVersion, VaultConfig};
use crate::secret::Secret;

pub struct VaultStore {
    config: VaultConfig,
    client: Result<VaultClient, String>,
    location: OnceCell<Location>,
    notes: Mutex<Vec<String>>,
}

/// The mount and the secret's path inside it, as Vault says they are.
#[derive(Debug, Clone)]
struct Location {
    mount: String,
    path: String,
    version: KvVersion,
}

impl Location {
    /// The API path of the secret itself (reads and writes), without `/v1/`.
    fn api_path(&self) -> String {
        match self.version {
            KvVersion::V2 => format!("{}/data/{}", self.mount, self.path),
            _ => format!("{}/{}", self.mount, self.path),
        }
    }
}

impl VaultStore {
    pub fn new(config: VaultConfig) -> VaultStore {
        let client = build_client(&config);
        VaultStore {
            config,
            client,
            location: OnceCell::new(),
            notes: Mutex::new(Vec::new()),
        }
    }

    fn client(&self) -> Result<&VaultClient, StoreError> {
        self.client.as_ref().map_err(|message| StoreError::Backend {
            store: self.describe(),
            message: message.clone(),
        })
    }

    fn note(&self, text: String) {
        if let Ok(mut notes) = self.notes.lock()
            && !notes.contains(&text)
        {
            notes.push(text);
        }
    }

    /// The address as messages show it: any `user:password@` is masked.
    fn addr_shown(&self) -> String {
        crate::secret::SecretUrl::new(self.config.addr.clone()).redacted()
    }

    fn namespace_shown(&self) -> String {
        match &self.config.namespace {
            Some(namespace) => format!(" (namespace {namespace})"),
            None => String::new(),
        }
    }

    /// An error for `method /v1/path`, with the next step for the usual causes.
    fn failure(
        &self,
        method: &str,
        path: &str,
        error: ClientError,
        kv2_secret: bool,
    ) -> StoreError {
        let place = format!(
            "{method} {}/v1/{path}{}",
            self.addr_shown(),
            self.namespace_shown()
        );
        let message = match &error {
            ClientError::APIError { code: 403, errors } => {
                let mut text = format!("permission denied (403) on {place}");
                let said = plain_errors(errors);
                if !said.is_empty() && said != "permission denied" {
                    text.push_str(&format!(": {said}"));
                }
                text.push_str(&format!(
                    "; the token's policy must grant this path: path \"{path}\" {{ capabilities = \
                     [\"read\", \"create\", \"update\"] }}"
                ));
                if kv2_secret {
                    text.push_str(
                        " (on KV v2 a policy names the API path with data/, not the path that \
                         `bao kv get` / `vault kv get` shows)",
                    );
                }
                text
            }
            ClientError::APIError { code: 503, errors } => format!(
                "Vault is sealed or unavailable (503) on {place}: {}; unseal it (`bao operator \
                 unseal`) and run again",
                plain_errors(errors)
            ),
            ClientError::APIError { code, errors } => {
                format!("Vault answered {code} on {place}: {}", plain_errors(errors))
            }
            ClientError::RestClientError { source } => {
                let cause = crate::engine::error_chain(source);
                if cause.contains("timed out") {
                    format!(
                        "no answer within {} from Vault for {place}; check that Vault is up and \
                         answering there, or raise {}.vault.timeout",
                        humantime::format_duration(self.config.timeout),
                        self.config.section
                    )
                } else {
                    format!("cannot reach Vault or read its answer for {place}: {cause}")
                }
            }
            other => format!("{place} failed: {}", crate::engine::error_chain(other)),
        };
        StoreError::Backend {
            store: self.describe(),
            message,
        }
    }

    async fn location(&self) -> Result<&Location, StoreError> {
        self.location.get_or_try_init(|| self.find_location()).await
    }

    async fn find_location(&self) -> Result<Location, StoreError> {
        let kv_path = self.config.kv_path.clone();
        let (mount, path, version) = match self.config.kv_version {
            KvVersion::Auto => {
                let request = MountInfoRequest {
                    path: kv_path.clone(),
                };
                let api = rustify::Endpoint::path(&request);
                let info = vaultrs::api::exec_with_result(self.client()?, request)
                    .await
                    .map_err(|error| {
                        let denied = matches!(error, ClientError::APIError { code: 403, .. });
                        let mut failure = self.failure("GET", &api, error, false);
                        if denied && let StoreError::Backend { message, .. } = &mut failure {
                            message.push_str(&format!(
                                "; opsplan asks this endpoint for the mount's KV version: grant \
                                 read on it, or set {}.vault.kv_version = 1 or 2",
                                self.config.section
                            ));
                        }
                        failure
                    })?;
                if info.kind != "kv" && info.kind != "generic" {
                    return Err(StoreError::Backend {
                        store: self.describe(),
                        message: format!(
                            "{} is a `{}` mount, not a KV secrets engine",
                            info.path, info.kind
                        ),
                    });
                }
                let version = match info.options.as_ref().and_then(|o| o.get("version")) {
                    Some(v) if v == "2" => KvVersion::V2,
                    _ => KvVersion::V1,
                };
                let mount = info.path.trim_matches('/').to_string();
                let path = kv_path
                    .strip_prefix(&mount)
                    .unwrap_or(&kv_path)
                    .trim_matches('/')
                    .to_string();
                (mount, path, version)
            }
            explicit => {
                let (mount, path) = kv_path.split_once('/').unwrap_or((&kv_path, ""));
                (mount.to_string(), path.to_string(), explicit)
            }
        };

        let path = if version == KvVersion::V2 {
            self.without_data_prefix(&mount, &path)?
        } else {
            path
        };
        if path.is_empty() {
            return Err(StoreError::Backend {
                store: self.describe(),
                message: format!(
                    "VAULT_KV_PATH `{kv_path}` names the mount {mount}/ but no secret inside it; \
                     write e.g. {mount}/opsplan/hmac"
                ),
            });
        }
        tracing::debug!(mount = %mount, path = %path, version = ?version, "vault secret located");
        Ok(Location {
            mount,
            path,
            version,
        })
    }

    /// `kv2/data/opsplan/hmac` means the secret `opsplan/hmac` of the KV v2 mount `kv2`:
    /// the `data/` segment belongs to the API, and adding it again would give `data/data/`.
    fn without_data_prefix(&self, mount: &str, path: &str) -> Result<String, StoreError> {
        let Some(rest) = path.strip_prefix("data/") else {
            return Ok(path.to_string());
        };
        if rest.starts_with("data/") {
            return Err(StoreError::Backend {
                store: self.describe(),
                message: format!(
                    "VAULT_KV_PATH {mount}/{path} repeats data/; do not include data/ in \
                     VAULT_KV_PATH: write {mount}/<path>, opsplan adds data/ on KV v2"
                ),
            });
        }
        self.note(format!(
            "VAULT_KV_PATH {mount}/{path} includes the KV v2 API segment data/; using the \
             secret {mount}/{rest} (API path {mount}/data/{rest}); do not include data/ in \
             VAULT_KV_PATH"
        ));
        Ok(rest.to_string())
    }

    async fn current_version(&self, location: &Location) -> Option<u64> {
        let request = ReadSecretMetadataRequest::builder()
            .mount(location.mount.clone())
            .path(location.path.clone())
            .build()
            .ok()?;
        vaultrs::api::exec_with_result(self.client().ok()?, request)
            .await
            .ok()
            .map(|metadata| metadata.current_version)
    }
}

#[async_trait]
impl Store for VaultStore {
    fn describe(&self) -> String {
        format!(
            "vault {}/{}{}",
            self.addr_shown(),
            self.config.kv_path,
            self.namespace_shown()
        )
    }

    fn notes(&self) -> Vec<String> {
        self.notes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    async fn read(&self) -> Result<Option<Document>, StoreError> {
        let location = self.location().await?.clone();
        let api = location.api_path();
        tracing::debug!(path = %api, "reading the Vault secret");
        let (data, version) = match location.version {
            KvVersion::V2 => {
                let request = vaultrs::api::kv2::requests::ReadSecretRequest::builder()
                    .mount(location.mount.clone())
                    .path(location.path.clone())
                    .build()
                    .map_err(|error| self.invalid(error.to_string()))?;
                match vaultrs::api::exec_with_result(self.client()?, request).await {
                    Ok(response) => (response.data, Some(response.metadata.version)),
                    Err(error) if not_found(&error) => {
                        // A deleted latest version still has a version number, which the
                        // next check-and-set write must name.
                        return Ok(self
                            .current_version(&location)
                            .await
                            .map(|version| Document {
                                fields: BTreeMap::new(),
                                version: Some(version),
                            }));
                    }
                    Err(error) => return Err(self.failure("GET", &api, error, true)),
                }
            }
            _ => match vaultrs::kv1::get_raw(self.client()?, &location.mount, &location.path).await
            {
                Ok(response) => (response.data, None),
                Err(ClientError::APIError { code: 404, .. }) => return Ok(None),
                Err(error) => return Err(self.failure("GET", &api, error, false)),
            },
        };
        let serde_json::Value::Object(map) = data else {
            // A deleted KV v2 version answers with `data: null`.
            return Ok(Some(Document {
                fields: BTreeMap::new(),
                version,
            }));
        };
        let fields = map
            .into_iter()
            .map(|(name, value)| {
                let text = match value {
                    serde_json::Value::String(text) => text,
                    other => other.to_string(),
                };
                (name, Secret::new(text))
            })
            .collect();
        Ok(Some(Document { fields, version }))
    }

    async fn write(
        &self,
        fields: &BTreeMap<String, Secret>,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let location = self.location().await?.clone();
        let api = location.api_path();
        let clear: HashMap<&str, &str> = fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose()))
            .collect();
        match location.version {
            KvVersion::V2 => {
                let cas = expected.unwrap_or(0);
                let options = SetSecretRequestOptions {
                    cas: u32::try_from(cas).unwrap_or(u32::MAX),
                };
                let result = vaultrs::kv2::set_with_options(
                    self.client()?,
                    &location.mount,
                    &location.path,
                    &clear,
                    options,
                )
                .await;
                match result {
                    Ok(_) => Ok(()),
                    Err(ClientError::APIError { code: 400, errors })
                        if errors.iter().any(|e| e.contains("check-and-set")) =>
                    {
                        let found = match self.current_version(&location).await {
                            Some(version) => version.to_string(),
                            None => "a newer one".to_string(),
                        };
                        Err(StoreError::Conflict {
                            store: self.describe(),
                            path: api,
                            expected: match expected {
                                Some(version) => version.to_string(),
                                None => "0 (no secret)".to_string(),
                            },
                            found,
                        })
                    }
                    Err(error) => Err(self.failure("POST", &api, error, true)),
                }
            }
            _ => vaultrs::kv1::set(self.client()?, &location.mount, &location.path, &clear)
                .await
                .map_err(|error| self.failure("POST", &api, error, false)),
        }
    }
}

impl VaultStore {
    fn invalid(&self, message: String) -> StoreError {
        StoreError::Backend {
            store: self.describe(),
            message,
        }
    }
}

/// A 404: with Vault's error list, or (a deleted KV v2 version) with the version's
/// metadata instead, which the client cannot read as an error list.
fn not_found(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::APIError { code: 404, .. }
            | ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code: 404, .. },
            }
    )
}

/// Vault's error list on one line: "1 error occurred:\n\t* permission denied\n\n" reads
/// as "permission denied".
fn plain_errors(errors: &[String]) -> String {
    errors
        .iter()
        .flat_map(|error| error.lines())
        .map(|line| line.trim().trim_start_matches("* ").trim())
        .filter(|line| !line.is_empty() && !line.ends_with("occurred:"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn build_client(config: &VaultConfig) -> Result<VaultClient, String> {
    // The builder panics on an address it cannot parse: check it first.
    if let Err(error) = url::Url::parse(&config.addr) {
        return Err(format!(
            "the Vault address {} is not a URL ({error}); write e.g. https://vault.example:8200",
            crate::secret::SecretUrl::new(config.addr.clone()).redacted()
        ));
    }
    let mut settings = VaultClientSettingsBuilder::default();
    // Every setting is given, so nothing is taken from the environment behind our back.
    settings
        .address(&config.addr)
        .token(config.token.expose())
        .namespace(config.namespace.clone())
        .ca_certs(
            config
                .cacert
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
        )
        .verify(true)
        .identity(None)
        .timeout(Some(config.timeout));
    let settings = settings
        .build()
        .map_err(|error| format!("invalid Vault settings: {error}"))?;
    if let Some(path) = &config.cacert
        && !path.exists()
    {
        return Err(format!(
            "VAULT_CACERT {} does not exist; point it at the PEM file of the CA that signed \
             Vault's certificate",
            path.display()
        ));
    }
    VaultClient::new(settings).map_err(|error| {
        format!(
            "cannot set up the Vault client for {}: {}",
            crate::secret::SecretUrl::new(config.addr.clone()).redacted(),
            crate::engine::error_chain(&error)
        )
    })
}

/// `GET sys/internal/ui/mounts/<path>`: which mount holds a path, and its KV version.
struct MountInfoRequest {
    path: String,
}

#[derive(Debug, Deserialize)]
struct MountInfo {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    options: Option<HashMap<String, String>>,
}

impl rustify::Endpoint for MountInfoRequest {
    type Response = MountInfo;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        format!("sys/internal/ui/mounts/{}", self.path)
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::GET
    }
}
