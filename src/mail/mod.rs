//! The mail concern: the provider settings the application reads, probed live.
//!
//! Live state is the settings document in the settings store, plus what the SMTP server
//! and the Redis queue say when asked. A plan probes the server (connect, greeting, TLS,
//! AUTH, QUIT) and reads the queue key, but sends no mail and writes nothing. Apply probes
//! again, publishes the settings, and then may send one verification message.

mod error;
mod lock;
mod queue;
mod settings;
mod smtp;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lettre::Message;
use lettre::message::header::ContentType;

pub use error::{MailError, PORT_HINT};
pub use queue::QueueState;

use crate::config::{MailConfig, MailProvider, MailStoreConfig};
use crate::diagnostic::Diagnostics;
use crate::engine::{Diff, DriftItem, LiveState, LockObserver, Resource, ResourceError};
use crate::graph::Dependency;
use crate::lock::FileLock;
use crate::plan::{Action, Attribute, Change, Check, Fingerprint};
use crate::secret::Secret;
use crate::store::{Document, FileStore, Store, StoreError, VaultStore};
use settings::{METADATA_FIELD, Metadata};
use smtp::{ProbeOutcome, SmtpServer};

/// The resource's address in plans and `depends_on`.
pub const ADDRESS: &str = "mail.settings";

/// The address of the verification message that apply sends.
pub const VERIFICATION_ADDRESS: &str = "mail.verification";

/// The subject of the verification message.
pub const VERIFICATION_SUBJECT: &str = "opsplan mail verification";

pub struct MailResource {
    config: MailConfig,
    store: Box<dyn Store>,
    /// Keeps two applies from publishing to the file store at once. Vault needs none: KV v2
    /// writes are check-and-set, and every store is re-read and compared before a write.
    writer_lock: Option<FileLock>,
    /// Used when the store holds no salt yet, so that one run compares consistently.
    fresh_salt: Vec<u8>,
    /// `apply --send-verification`: send the message even when nothing changed.
    send_verification: AtomicBool,
}

/// What a plan read.
pub struct MailState {
    document: Option<Document>,
    salt: Salt,
    /// What opsplan last published, field by field, when the document records it.
    published: Option<BTreeMap<String, String>>,
    probe: Option<ProbeOutcome>,
    queue: Option<Result<QueueState, MailError>>,
}

impl MailResource {
    pub fn new(config: MailConfig) -> MailResource {
        let (store, writer_lock): (Box<dyn Store>, Option<FileLock>) = match &config.store {
            MailStoreConfig::File { path, .. } => (
                Box::new(FileStore::new(path.clone())),
                Some(FileLock::beside(path)),
            ),
            MailStoreConfig::Vault(vault) => (Box::new(VaultStore::new(vault.clone())), None),
        };
        MailResource {
            config,
            store,
            writer_lock,
            fresh_salt: settings::new_salt(),
            send_verification: AtomicBool::new(false),
        }
    }

    /// Asks apply to send the verification message whatever the plan finds.
    pub fn request_verification(&self) {
        self.send_verification.store(true, Ordering::Relaxed);
    }

    /// The SMTP server with the configured bounds; `None` for the console provider.
    fn smtp(&self) -> Option<SmtpServer<'_>> {
        match &self.config.provider {
            MailProvider::Console => None,
            MailProvider::Smtp(smtp) => Some(SmtpServer {
                config: smtp,
                connect_timeout: self.config.connect_timeout,
                command_timeout: self.config.command_timeout,
            }),
        }
    }

    async fn read_document(&self) -> Result<(Option<Document>, Salt, Option<Metadata>), MailError> {
        let document = self.store.read().await?;
        let metadata =
            match document.as_ref().and_then(|d| d.get(METADATA_FIELD)) {
                Some(text) => Some(serde_json::from_str::<Metadata>(text.expose()).map_err(
                    |_| MailError::Metadata {
                        store: self.store.describe(),
                    },
                )?),
                None => None,
            };
        let stored = metadata
            .as_ref()
            .and_then(|m| hex::decode(&m.fingerprint_salt).ok())
            .filter(|salt| !salt.is_empty());
        let salt = match stored {
            Some(bytes) => Salt {
                bytes,
                stored: true,
            },
            None => Salt {
                bytes: self.fresh_salt.clone(),
                stored: false,
            },
        };
        Ok((document, salt, metadata))
    }

    /// The managed fields of a live document, without opsplan's metadata.
    fn live_fields(document: Option<&Document>) -> BTreeMap<String, Secret> {
        document
            .map(|d| {
                d.fields
                    .iter()
                    .filter(|(name, _)| name.as_str() != METADATA_FIELD)
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Edits made to the published settings outside opsplan, one item per field.
    fn drift(&self, state: &MailState, live: &BTreeMap<String, Secret>) -> Vec<DriftItem> {
        let item = |message: String| DriftItem {
            address: ADDRESS.to_string(),
            message,
        };
        match (&state.document, &state.published) {
            // A KV v2 secret whose latest version was deleted: opsplan never writes that.
            (Some(document), _) if document.fields.is_empty() && document.version.is_some() => {
                vec![item(format!(
                    "the published settings were deleted from {} (latest version {} has no \
                     data)",
                    self.store.describe(),
                    document.version.unwrap_or_default()
                ))]
            }
            (Some(_), Some(published)) => settings::edits(live, published, &state.salt.bytes)
                .into_iter()
                .map(item)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn compare(&self, state: &MailState) -> Diff {
        let mut diff = Diff::default();
        let live = Self::live_fields(state.document.as_ref());
        let version = state.document.as_ref().and_then(|d| d.version);

        diff.live_summary = match (&state.document, live.get("MAIL_PROVIDER")) {
            (None, _) => "no settings published yet".to_string(),
            (Some(_), Some(provider)) => match (live.get("SMTP_HOST"), live.get("SMTP_PORT")) {
                (Some(host), Some(port)) => format!(
                    "{} settings published ({}:{})",
                    provider.expose(),
                    host.expose(),
                    port.expose()
                ),
                _ => format!("{} settings published", provider.expose()),
            },
            (Some(_), None) => "a settings document without MAIL_PROVIDER".to_string(),
        };

        if let Some(probe) = &state.probe {
            diff.checks.extend(probe.passed.iter().cloned());
            if let Some(failure) = &probe.failure {
                diff.refusals.push(failure.to_string());
            }
        }

        if let (Some(queue), Some(outcome)) = (&self.config.queue, &state.queue) {
            match outcome {
                Ok(QueueState::Missing) => diff.checks.push(Check {
                    name: "queue".to_string(),
                    passed: true,
                    detail: format!(
                        "{} key `{}` does not exist yet; the first message pushed creates it",
                        queue.url, queue.key
                    ),
                }),
                Ok(QueueState::List { length }) => {
                    diff.checks.push(Check {
                        name: "queue".to_string(),
                        passed: true,
                        detail: format!(
                            "{} key `{}` is a list of {length} message(s)",
                            queue.url, queue.key
                        ),
                    });
                    if *length > queue.backlog_warning {
                        diff.warnings.push(format!(
                            "the mail queue `{}` holds {length} messages, more than \
                             mail.queue.backlog_warning ({}): is the mail worker running?",
                            queue.key, queue.backlog_warning
                        ));
                    }
                }
                Err(error) => diff.refusals.push(error.to_string()),
            }
        }

        diff.drift = self.drift(state, &live);

        let desired = settings::desired_fields(&self.config);
        let attributes = settings::attributes(&live, &desired, &state.salt.bytes);
        // Drift that already matches the configuration is still published again, so that
        // opsplan's record of what it published matches the store once more.
        let settings_change =
            !attributes.is_empty() || state.document.is_none() || !diff.drift.is_empty();
        if settings_change {
            let store = self.store.describe();
            let (action, summary) = match &state.document {
                None => (
                    Action::Create,
                    format!("publish the mail settings to {store}"),
                ),
                Some(_) if !diff.drift.is_empty() => (
                    Action::Update,
                    format!(
                        "publish the mail settings to {store} again, over the edits made \
                         outside opsplan"
                    ),
                ),
                Some(_) => (
                    Action::Update,
                    format!("update the mail settings in {store}"),
                ),
            };
            diff.changes.push(Change {
                address: ADDRESS.to_string(),
                action,
                summary,
                attributes,
                data: serde_json::json!({
                    "live_fingerprint": settings::fingerprint(
                        &live,
                        state.salt.stored(),
                        version,
                    )
                    .0,
                    "document_exists": state.document.is_some(),
                    "expected_version": version,
                }),
            });
        }

        let asked = self.send_verification.load(Ordering::Relaxed);
        match (&self.config.provider, &self.config.verify_to) {
            (MailProvider::Smtp(smtp), Some(recipient)) if settings_change || asked => {
                diff.changes.push(Change {
                    address: VERIFICATION_ADDRESS.to_string(),
                    action: Action::Create,
                    summary: format!(
                        "send one verification message to {} through {}:{}",
                        recipient.email, smtp.host, smtp.port
                    ),
                    attributes: vec![
                        Attribute::added("from", smtp.from.to_string()),
                        Attribute::added("to", recipient.to_string()),
                        Attribute::added("subject", VERIFICATION_SUBJECT),
                    ],
                    data: serde_json::json!({ "to": recipient.email.to_string() }),
                });
            }
            (_, None) if asked => diff.refusals.push(
                "apply --send-verification needs a recipient: set mail.verify_to".to_string(),
            ),
            _ => {}
        }
        diff
    }

    async fn publish(&self, change: &Change) -> Result<String, MailError> {
        // The settings reach the application only once the server accepts them.
        if let Some(server) = self.smtp() {
            let probe = server.probe().await;
            if let Some(failure) = probe.failure {
                return Err(failure);
            }
        }

        let (document, salt, _) = self.read_document().await?;
        let live = Self::live_fields(document.as_ref());
        let version = document.as_ref().and_then(|d| d.version);
        let found = settings::fingerprint(&live, salt.stored(), version).0;
        let expected = change
            .data
            .get("live_fingerprint")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        // The version read at plan time: a KV v2 write is check-and-set against it.
        let expected_version = change
            .data
            .get("expected_version")
            .and_then(serde_json::Value::as_u64);
        if let Some(found_version) = version
            && expected_version != Some(found_version)
        {
            return Err(StoreError::Conflict {
                store: self.store.describe(),
                path: "the mail settings".to_string(),
                expected: match expected_version {
                    Some(v) => v.to_string(),
                    None => "0 (no secret)".to_string(),
                },
                found: found_version.to_string(),
            }
            .into());
        }
        if found != expected {
            return Err(MailError::StoreChanged {
                store: self.store.describe(),
                expected: expected.to_string(),
                found,
            });
        }

        let desired = settings::desired_fields(&self.config);
        // Fields opsplan does not manage are kept as they are.
        let mut fields: BTreeMap<String, Secret> = live
            .into_iter()
            .filter(|(name, _)| !settings::FIELDS.iter().any(|f| f.variable == name))
            .collect();
        let published = desired.len();
        for (name, value) in desired {
            fields.insert(name.to_string(), value);
        }
        let metadata = Metadata {
            managed_by: "opsplan".to_string(),
            fingerprint_salt: hex::encode(&salt.bytes),
            updated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            published: settings::published_record(&fields, &salt.bytes),
        };
        fields.insert(
            METADATA_FIELD.to_string(),
            Secret::new(serde_json::to_string(&metadata).expect("metadata serializes")),
        );
        self.store.write(&fields, expected_version).await?;
        tracing::debug!(store = %self.store.describe(), published, "mail settings written");
        Ok(format!(
            "{published} setting(s) published to {}",
            self.store.describe()
        ))
    }

    async fn send_verification(&self) -> Result<String, MailError> {
        let (Some(server), Some(recipient)) = (self.smtp(), &self.config.verify_to) else {
            return Err(MailError::Refused(
                "no verification recipient: set mail.verify_to and provider = \"smtp\"".to_string(),
            ));
        };
        let smtp = server.config;
        let sent_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = format!(
            "This message was sent by `opsplan apply` to verify the mail settings published \
             to {}.\n\nServer: {}:{} ({})\nSent at: {sent_at}\n\nNo reply is needed.\n",
            self.store.describe(),
            smtp.host,
            smtp.port,
            smtp.tls.name()
        );
        let message = Message::builder()
            .from(smtp.from.clone())
            .to(recipient.clone())
            .subject(VERIFICATION_SUBJECT)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|error| MailError::Message(error.to_string()))?;
        let answer = server
            .send(message.envelope(), &message.formatted())
            .await?;
        Ok(format!(
            "verification message sent to {} through {}; the server answered {answer}",
            recipient.email,
            server.address()
        ))
    }
}

#[async_trait]
impl Resource for MailResource {
    fn address(&self) -> &str {
        ADDRESS
    }

    fn kind(&self) -> &'static str {
        "mail"
    }

    fn live_source(&self) -> String {
        let mut parts = vec![self.store.describe()];
        if let MailProvider::Smtp(smtp) = &self.config.provider {
            parts.push(format!(
                "SMTP {}:{} ({})",
                smtp.host,
                smtp.port,
                smtp.tls.name()
            ));
        }
        if let Some(queue) = &self.config.queue {
            parts.push(format!("Redis {} key {}", queue.url, queue.key));
        }
        parts.join("; ")
    }

    fn dependencies(&self) -> Vec<Dependency> {
        Dependency::declared(ADDRESS, &self.config.depends_on)
    }

    fn validate(&self) -> Diagnostics {
        // Everything offline was checked when the section was read.
        Diagnostics::default()
    }

    async fn lock(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        if let Some(lock) = &self.writer_lock {
            lock::acquire(lock, timeout, observer, ADDRESS).await?;
        }
        Ok(())
    }

    async fn unlock(&self) {
        if let Some(lock) = &self.writer_lock {
            lock.release();
        }
    }

    async fn read(&self) -> Result<LiveState, ResourceError> {
        let probe = async {
            match self.smtp() {
                Some(server) => Some(server.probe().await),
                None => None,
            }
        };
        let queue = async {
            match &self.config.queue {
                Some(queue) => Some(
                    queue::inspect(
                        queue,
                        self.config.connect_timeout,
                        self.config.command_timeout,
                    )
                    .await,
                ),
                None => None,
            }
        };
        let (document, probe, queue) = tokio::join!(self.read_document(), probe, queue);
        let (document, salt, metadata) = document?;
        Ok(Box::new(MailState {
            document,
            salt,
            published: metadata
                .map(|m| m.published)
                .filter(|published| !published.is_empty()),
            probe,
            queue,
        }))
    }

    fn fingerprint(&self, live: &LiveState) -> Fingerprint {
        let state = expect_state(live);
        match &state.document {
            None => Fingerprint::absent(),
            Some(document) => settings::fingerprint(
                &Self::live_fields(Some(document)),
                state.salt.stored(),
                document.version,
            ),
        }
    }

    fn diff(&self, live: &LiveState) -> Result<Diff, ResourceError> {
        Ok(self.compare(expect_state(live)))
    }

    async fn apply(&self, change: &Change) -> Result<String, ResourceError> {
        let result = match change.address.as_str() {
            ADDRESS => self.publish(change).await,
            VERIFICATION_ADDRESS => self.send_verification().await,
            other => Err(MailError::Refused(format!(
                "{other} is not a change the mail concern makes"
            ))),
        };
        Ok(result?)
    }
}

/// The salt of the keyed fingerprints: the store's own, or a fresh one until it has one.
struct Salt {
    bytes: Vec<u8>,
    stored: bool,
}

impl Salt {
    fn stored(&self) -> Option<&[u8]> {
        self.stored.then_some(self.bytes.as_slice())
    }
}

fn expect_state(live: &LiveState) -> &MailState {
    live.downcast_ref::<MailState>()
        .expect("mail live state is a MailState")
}
