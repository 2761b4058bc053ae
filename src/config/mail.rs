//! The `[mail]` section: the mail provider the application uses, and its optional queue.
//!
//! Every key may be left out in favour of the runbook's variable of the same meaning:
//! `MAIL_PROVIDER`, `SMTP_HOST`, `SMTP_PORT`, `SMTP_USER`, `SMTP_PASS`, `SMTP_FROM` and
//! (in `[mail.queue]`) `MAIL_QUEUE_KEY`. A key written in the file always wins.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::Mailbox;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::keyset::{VaultConfig, VaultOwner, VaultSection, resolve_vault};
use super::located;
use crate::diagnostic::{Diagnostics, Location};
use crate::secret::{Secret, SecretUrl};

/// Where the settings are published unless `mail.store_path` says otherwise.
pub const DEFAULT_MAIL_STORE_PATH: &str = ".opsplan/mail.json";

/// How long opening a TCP connection may take, unless `mail.connect_timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server may take to answer any one step (greeting, TLS handshake, EHLO,
/// STARTTLS, AUTH, a message, QUIT), unless `mail.command_timeout` says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The queue length above which a plan warns, unless `mail.queue.backlog_warning` is set.
pub const DEFAULT_BACKLOG_WARNING: u64 = 1000;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct MailSection {
    pub provider: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<PortSetting>>,
    pub tls: Option<Spanned<String>>,
    /// A PEM file of certificate authorities to trust besides the built-in roots.
    pub tls_ca: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<SecretSetting>>,
    pub from: Option<Spanned<String>>,
    /// Where apply sends one verification message.
    pub verify_to: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub command_timeout: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub store_path: Option<Spanned<String>>,
    pub queue: Option<QueueSection>,
    pub depends_on: Vec<Spanned<String>>,
    /// `[mail.vault]`, read when `store = "vault"`.
    pub vault: VaultSection,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct QueueSection {
    pub url: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub backlog_warning: Option<Spanned<i64>>,
}

/// `port = 587` or `port = "587"` (what `${env:SMTP_PORT}` produces).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSetting {
    Number(i64),
    Text(String),
}

/// A password as read from the file: never shown by `Debug`.
#[derive(Debug, Clone, Default)]
pub struct SecretSetting(pub Secret);

impl<'de> Deserialize<'de> for SecretSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| SecretSetting(Secret::new(text)))
    }
}

/// The mail concern's desired state.
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub provider: MailProvider,
    /// The recipient of the verification message that apply sends.
    pub verify_to: Option<Mailbox>,
    pub store: MailStoreConfig,
    pub queue: Option<QueueConfig>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub depends_on: Vec<(String, Option<Location>)>,
}

#[derive(Debug, Clone)]
pub enum MailProvider {
    /// The application prints mail instead of sending it: development only.
    Console,
    Smtp(SmtpConfig),
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub tls_ca: Option<PathBuf>,
    pub credentials: Option<SmtpCredentials>,
    pub from: Mailbox,
}

#[derive(Debug, Clone)]
pub struct SmtpCredentials {
    pub user: String,
    pub password: Secret,
}

/// How the connection to the SMTP server is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain connection upgraded with the STARTTLS command; usually port 587.
    StartTls,
    /// TLS from the first byte ("SMTPS"); usually port 465.
    Implicit,
    /// No encryption: only without credentials, e.g. a relay on the local network.
    None,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::StartTls => "starttls",
            TlsMode::Implicit => "implicit",
            TlsMode::None => "none",
        }
    }

    /// The usual mode for a port: implicit TLS on 465, STARTTLS everywhere else.
    pub fn default_for_port(port: u16) -> TlsMode {
        if port == 465 {
            TlsMode::Implicit
        } else {
            TlsMode::StartTls
        }
    }
}

/// Where the published settings live.
#[derive(Debug, Clone)]
pub enum MailStoreConfig {
    File { path: PathBuf, display: String },
    Vault(VaultConfig),
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub url: SecretUrl,
    pub key: String,
    pub backlog_warning: u64,
}

/// One setting after the file and the environment were consulted, and where it came from.
struct Setting {
    value: String,
    span: Option<Range<usize>>,
    /// The runbook variable it came from, when the file did not set it.
    variable: Option<&'static str>,
}

impl Setting {
    fn describe(&self, key: &str) -> String {
        match self.variable {
            Some(variable) => format!("mail.{key} (from {variable})"),
            None => format!("mail.{key}"),
        }
    }
}

fn setting(
    written: &Option<Spanned<String>>,
    variable: &'static str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Option<Setting> {
    match written {
        Some(value) => Some(Setting {
            value: value.get_ref().trim().to_string(),
            span: Some(value.span()),
            variable: None,
        }),
        None => lookup(variable).map(|value| Setting {
            value: value.trim().to_string(),
            span: None,
            variable: Some(variable),
        }),
    }
    .filter(|setting| !setting.value.is_empty())
}

pub(super) fn resolve(
    section: Spanned<MailSection>,
    production: bool,
    base_dir: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    at: &impl Fn(&Range<usize>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> MailConfig {
    let section_span = section.span();
    let section = section.into_inner();
    // Settings that came from the environment point at the `[mail]` header.
    let place = |span: &Option<Range<usize>>| at(span.as_ref().unwrap_or(&section_span));

    let connect_timeout = super::timeout(
        &section.connect_timeout,
        "mail.connect_timeout",
        DEFAULT_CONNECT_TIMEOUT,
        at,
        problems,
    );
    let command_timeout = super::timeout(
        &section.command_timeout,
        "mail.command_timeout",
        DEFAULT_COMMAND_TIMEOUT,
        at,
        problems,
    );

    let provider_setting = setting(&section.provider, "MAIL_PROVIDER", lookup);
    let provider_name = provider_setting
        .as_ref()
        .map_or("console".to_string(), |s| s.value.to_ascii_lowercase());
    let provider_span = provider_setting.as_ref().and_then(|s| s.span.clone());

    let provider = match provider_name.as_str() {
        "console" => {
            if production {
                problems.push(located(
                    place(&provider_span),
                    "mail provider `console` is refused when project.environment is \
                     \"production\": the application would print mail instead of sending it"
                        .to_string(),
                    Some(
                        "set mail.provider = \"smtp\" with host, port and from, or \
                         MAIL_PROVIDER=smtp with SMTP_HOST, SMTP_PORT and SMTP_FROM",
                    ),
                ));
            }
            MailProvider::Console
        }
        "smtp" => MailProvider::Smtp(resolve_smtp(&section, base_dir, lookup, &place, problems)),
        other => {
            problems.push(located(
                place(&provider_span),
                format!(
                    "{} `{other}` is neither \"console\" nor \"smtp\"",
                    provider_setting
                        .as_ref()
                        .map_or("mail.provider".to_string(), |s| s.describe("provider"))
                ),
                Some("write provider = \"smtp\", or \"console\" for development"),
            ));
            MailProvider::Console
        }
    };

    let verify_to = section.verify_to.as_ref().and_then(|value| {
        let text = value.get_ref().trim();
        if text.is_empty() {
            return None;
        }
        if matches!(provider, MailProvider::Console) {
            problems.push(located(
                at(&value.span()),
                "mail.verify_to needs provider = \"smtp\": the console provider sends nothing"
                    .to_string(),
                Some("remove verify_to, or switch the provider to smtp"),
            ));
            return None;
        }
        mailbox(text, "mail.verify_to", place(&Some(value.span())), problems)
    });

    let store = resolve_store(&section, base_dir, lookup, at, problems);
    let queue = section
        .queue
        .as_ref()
        .and_then(|queue| resolve_queue(queue, lookup, &place, problems));

    MailConfig {
        provider,
        verify_to,
        store,
        queue,
        connect_timeout,
        command_timeout,
        depends_on: section
            .depends_on
            .iter()
            .map(|dep| (dep.get_ref().clone(), at(&dep.span())))
            .collect(),
    }
}

fn resolve_smtp(
    section: &MailSection,
    base_dir: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    place: &impl Fn(&Option<Range<usize>>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> SmtpConfig {
    let host = setting(&section.host, "SMTP_HOST", lookup);
    if host.is_none() {
        problems.push(located(
            place(&None),
            "mail provider `smtp` needs a host".to_string(),
            Some("set mail.host, or SMTP_HOST in the environment"),
        ));
    }

    let port_setting = match &section.port {
        Some(port) => Some(Setting {
            value: match port.get_ref() {
                PortSetting::Number(n) => n.to_string(),
                PortSetting::Text(text) => text.trim().to_string(),
            },
            span: Some(port.span()),
            variable: None,
        }),
        None => setting(&None, "SMTP_PORT", lookup),
    };
    let port = match &port_setting {
        None => 587,
        Some(port) => match port.value.parse::<u16>() {
            Ok(number) if number > 0 => number,
            _ => {
                problems.push(located(
                    place(&port.span),
                    format!(
                        "{} `{}` is not a TCP port number",
                        port.describe("port"),
                        port.value
                    ),
                    Some("use 587 (STARTTLS), 465 (implicit TLS) or your relay's port"),
                ));
                587
            }
        },
    };

    let tls = match &section.tls {
        None => TlsMode::default_for_port(port),
        Some(tls) => match tls.get_ref().trim().to_ascii_lowercase().as_str() {
            "starttls" => TlsMode::StartTls,
            "implicit" => TlsMode::Implicit,
            "none" => TlsMode::None,
            other => {
                problems.push(located(
                    place(&Some(tls.span())),
                    format!(
                        "mail.tls `{other}` is not one of \"starttls\", \"implicit\", \"none\""
                    ),
                    Some("465 expects \"implicit\" TLS and 587 expects \"starttls\""),
                ));
                TlsMode::default_for_port(port)
            }
        },
    };

    let tls_ca = section.tls_ca.as_ref().and_then(|value| {
        let text = value.get_ref().trim();
        if text.is_empty() {
            return None;
        }
        let path = base_dir.join(text);
        if !path.is_file() {
            problems.push(located(
                place(&Some(value.span())),
                format!("mail.tls_ca `{text}` is not a readable file"),
                Some("point it at a PEM file holding the certificate authority to trust"),
            ));
        }
        Some(path)
    });

    let user = setting(&section.user, "SMTP_USER", lookup);
    let password = match &section.password {
        Some(password) => Some((password.get_ref().0.clone(), Some(password.span()), None)),
        None => lookup("SMTP_PASS").map(|value| (Secret::new(value), None, Some("SMTP_PASS"))),
    }
    .filter(|(secret, _, _)| !secret.is_empty());
    let credentials = match (user, password) {
        (Some(user), Some((password, _, _))) => Some(SmtpCredentials {
            user: user.value,
            password,
        }),
        (Some(user), None) => {
            problems.push(located(
                place(&user.span),
                format!(
                    "{} is set, but the password is empty: authentication would fail or be \
                     skipped without a word",
                    user.describe("user")
                ),
                Some(
                    "set mail.password (e.g. \"${env:SMTP_PASS}\") or SMTP_PASS, or remove the \
                     user to send without authentication",
                ),
            ));
            None
        }
        (None, Some((_, span, variable))) => {
            problems.push(located(
                place(&span),
                format!(
                    "mail.password{} is set, but no user is",
                    variable.map_or(String::new(), |v| format!(" (from {v})"))
                ),
                Some("set mail.user or SMTP_USER, or remove the password"),
            ));
            None
        }
        (None, None) => None,
    };
    if credentials.is_some() && tls == TlsMode::None {
        problems.push(located(
            place(&section.tls.as_ref().map(Spanned::span)),
            "credentials will not be sent over an unencrypted connection (mail.tls = \"none\")"
                .to_string(),
            Some(
                "use port 465 with tls = \"implicit\" or port 587 with tls = \"starttls\", or \
                 remove user and password for a relay that needs no authentication",
            ),
        ));
    }

    let from = setting(&section.from, "SMTP_FROM", lookup);
    let from = match from {
        Some(from) => mailbox(
            &from.value,
            &from.describe("from"),
            place(&from.span),
            problems,
        ),
        None => {
            problems.push(located(
                place(&None),
                "mail provider `smtp` needs a from address".to_string(),
                Some("set mail.from, e.g. \"Ops <ops@example.com>\", or SMTP_FROM"),
            ));
            None
        }
    };

    SmtpConfig {
        host: host.map(|h| h.value).unwrap_or_default(),
        port,
        tls,
        tls_ca,
        credentials,
        // Without a valid address a problem was reported, and the run stops before any
        // use of this placeholder.
        from: from.unwrap_or_else(|| {
            Mailbox::new(None, "invalid@invalid".parse().expect("a valid address"))
        }),
    }
}

fn resolve_store(
    section: &MailSection,
    base_dir: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    at: &impl Fn(&Range<usize>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> MailStoreConfig {
    if let Some(store) = &section.store {
        match store.get_ref().trim() {
            "file" => {}
            "vault" => {
                return MailStoreConfig::Vault(resolve_vault(
                    &section.vault,
                    VaultOwner::MAIL,
                    lookup,
                    at,
                    problems,
                ));
            }
            other => problems.push(located(
                at(&store.span()),
                format!("mail.store `{other}` is not a known settings store"),
                Some("use store = \"file\" or store = \"vault\""),
            )),
        }
    }
    let display = section
        .store_path
        .as_ref()
        .map(|p| p.get_ref().trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_MAIL_STORE_PATH.to_string());
    MailStoreConfig::File {
        path: super::relative_to(base_dir, &display),
        display,
    }
}

fn resolve_queue(
    queue: &QueueSection,
    lookup: &impl Fn(&str) -> Option<String>,
    place: &impl Fn(&Option<Range<usize>>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> Option<QueueConfig> {
    let url = queue
        .url
        .as_ref()
        .filter(|url| !url.get_ref().trim().is_empty());
    let key = setting(&queue.key, "MAIL_QUEUE_KEY", lookup);

    let Some(url) = url else {
        problems.push(located(
            place(&None),
            "mail.queue needs a url, e.g. \"redis://127.0.0.1:6379/0\"".to_string(),
            Some("set mail.queue.url, or remove [mail.queue] when mail is not queued"),
        ));
        return None;
    };
    let url_text = url.get_ref().trim().to_string();
    if url_text.starts_with("rediss://") {
        problems.push(located(
            place(&Some(url.span())),
            "mail.queue.url: rediss:// (Redis over TLS) is not supported yet".to_string(),
            Some("use a redis:// URL on a trusted network, e.g. \"redis://127.0.0.1:6379/0\""),
        ));
    } else if !url_text.starts_with("redis://") {
        problems.push(located(
            place(&Some(url.span())),
            "mail.queue.url must start with redis://".to_string(),
            Some("for example \"redis://127.0.0.1:6379/0\""),
        ));
    }
    let Some(key) = key else {
        problems.push(located(
            place(&Some(url.span())),
            "mail.queue needs a key: the Redis list that the mail worker consumes".to_string(),
            Some("set mail.queue.key, or MAIL_QUEUE_KEY in the environment"),
        ));
        return None;
    };

    let backlog_warning = match &queue.backlog_warning {
        None => DEFAULT_BACKLOG_WARNING,
        Some(value) if *value.get_ref() >= 0 => *value.get_ref() as u64,
        Some(value) => {
            problems.push(located(
                place(&Some(value.span())),
                "mail.queue.backlog_warning must not be negative".to_string(),
                None,
            ));
            DEFAULT_BACKLOG_WARNING
        }
    };

    Some(QueueConfig {
        url: SecretUrl::new(url_text),
        key: key.value,
        backlog_warning,
    })
}

fn mailbox(
    text: &str,
    what: &str,
    location: Option<Location>,
    problems: &mut Diagnostics,
) -> Option<Mailbox> {
    match text.parse::<Mailbox>() {
        Ok(mailbox) => Some(mailbox),
        Err(error) => {
            problems.push(located(
                location,
                format!("{what} `{text}` is not a mail address ({error})"),
                Some("write an address, optionally with a name: \"Équipe Ops <ops@example.com>\""),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{Config, MailProvider, TlsMode};
    use crate::diagnostic::{Diagnostics, SourceFile};

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, Diagnostics> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(
            SourceFile::new("ops.toml", text),
            PathBuf::from("."),
            |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    #[test]
    fn runbook_variables_fill_an_empty_section() {
        let config = parse_with(
            "[mail]\n",
            &[
                ("MAIL_PROVIDER", "smtp"),
                ("SMTP_HOST", "mail.internal"),
                ("SMTP_PORT", "465"),
                ("SMTP_USER", "ops"),
                ("SMTP_PASS", "pw"),
                ("SMTP_FROM", "Équipe Ops <ops@example.com>"),
            ],
        )
        .unwrap();
        let MailProvider::Smtp(smtp) = config.mail.unwrap().provider else {
            panic!("expected smtp");
        };
        assert_eq!(smtp.host, "mail.internal");
        assert_eq!(smtp.port, 465);
        assert_eq!(smtp.tls, TlsMode::Implicit);
        assert_eq!(smtp.credentials.unwrap().password.expose(), "pw");
        assert_eq!(smtp.from.name.as_deref(), Some("Équipe Ops"));
    }

    #[test]
    fn port_587_defaults_to_starttls_and_console_is_the_default_provider() {
        let config = parse_with(
            "[mail]\nprovider = 'smtp'\nhost = 'h'\nfrom = 'a@b.c'\n",
            &[],
        );
        let MailProvider::Smtp(smtp) = config.unwrap().mail.unwrap().provider else {
            panic!("expected smtp");
        };
        assert_eq!((smtp.port, smtp.tls), (587, TlsMode::StartTls));
        let config = parse_with("[mail]\n", &[]).unwrap();
        assert!(matches!(
            config.mail.unwrap().provider,
            MailProvider::Console
        ));
    }

    #[test]
    fn user_without_password_is_a_config_error() {
        let error = parse_with(
            "[mail]\nprovider = 'smtp'\nhost = 'h'\nfrom = 'a@b.c'\nuser = 'ops'\n\
             password = '${env:SMTP_PASS:-}'\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:5:8: mail.user is set, but the password is empty"),
            "{text}"
        );
    }

    #[test]
    fn console_is_refused_in_production_and_problems_come_together() {
        let error = parse_with(
            "[project]\nenvironment = 'production'\n[mail]\nprovider = 'console'\n\
             connect_timeout = 'soon'\n[mail.queue]\nurl = 'http://x'\nkey = 'k'\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.len(), 3, "{error}");
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:4:12: mail provider `console` is refused"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:5:19: mail.connect_timeout `soon`"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:7:7: mail.queue.url must start"),
            "{text}"
        );
    }

    #[test]
    fn credentials_on_a_plain_connection_are_refused_offline() {
        let error = parse_with(
            "[mail]\nprovider = 'smtp'\nhost = 'h'\nport = 25\ntls = 'none'\nfrom = 'a@b.c'\n\
             user = 'ops'\npassword = 'pw-not-for-logs'\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:5:7: credentials will not be sent"),
            "{text}"
        );
        assert!(!text.contains("pw-not-for-logs"), "{text}");
    }

    #[test]
    fn the_vault_settings_store_reads_the_runbook_variables_but_not_vault_kv_path() {
        let env = [
            ("VAULT_ADDR", "https://vault.internal:8200/"),
            ("VAULT_TOKEN", "hvs.TESTTOKEN123"),
            ("VAULT_KV_PATH", "kv2/opsplan/hmac"),
            ("VAULT_NAMESPACE", "team-payments"),
        ];
        let config = parse_with(
            "[mail]\nstore = 'vault'\n[mail.vault]\nkv_path = '/kv2/opsplan/mail/'\n",
            &env,
        )
        .unwrap();
        let crate::config::MailStoreConfig::Vault(vault) = config.mail.unwrap().store else {
            panic!("expected the vault store");
        };
        assert_eq!(vault.section, "mail");
        assert_eq!(vault.addr, "https://vault.internal:8200");
        assert_eq!(vault.kv_path, "kv2/opsplan/mail");
        assert_eq!(vault.namespace.as_deref(), Some("team-payments"));
        assert_eq!(vault.token.expose(), "hvs.TESTTOKEN123");

        // VAULT_KV_PATH names the key set's secret, never the mail settings'.
        let error = parse_with("[mail]\nstore = 'vault'\n", &env).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("the Vault secret path `` must be <mount>/<path>"),
            "{text}"
        );
        assert!(text.contains("set mail.vault.kv_path"), "{text}");
        let error = parse_with(
            "[mail]\nstore = 'vault'\n[mail.vault]\nkv_path = 'kv/m'\nkv_version = 3\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("the vault settings store needs an address"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:5:14: mail.vault.kv_version `3`"),
            "{text}"
        );

        let error = parse_with(
            "[keyset]\nstore = 'vault'\n[mail]\nstore = 'vault'\n\
             [mail.vault]\nkv_path = 'kv2/opsplan/hmac'\n",
            &env,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("mail.vault.kv_path `kv2/opsplan/hmac` is the key set's secret"),
            "{error}"
        );
    }
}
