//! The `[keyset]` section: where the HMAC keys are stored and how they rotate.
//!
//! Values left out of the section fall back to the runbook's environment variables:
//! `KMS_PROVIDER` chooses the store, `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_KV_PATH`,
//! `VAULT_NAMESPACE` and `VAULT_CACERT` configure Vault, and the `env` store reads
//! `HMAC_SECRETS` / `HMAC_SECRET`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::located;
use crate::diagnostic::{Diagnostics, Location};
use crate::secret::Secret;

/// Where the key file goes unless `path` says otherwise, relative to the configuration.
pub const DEFAULT_KEY_FILE: &str = ".opsplan/keys.json";

/// The shortest key accepted unless `min_key_length` says otherwise, in bytes.
pub const DEFAULT_MIN_KEY_LENGTH: usize = 32;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct KeysetSection {
    /// `file` (default), `env` or `vault`.
    pub store: Option<Spanned<String>>,
    /// The file store's path.
    pub path: Option<Spanned<String>>,
    pub min_key_length: Option<Spanned<i64>>,
    /// How long a key signs before a successor is published.
    pub rotate_after: Option<Spanned<String>>,
    /// How long a new key is published for verification only before it signs.
    pub pending_for: Option<Spanned<String>>,
    /// How long a retired key stays published for verification.
    pub retired_for: Option<Spanned<String>>,
    /// At most this many retired keys stay published.
    pub retired_max: Option<Spanned<i64>>,
    pub depends_on: Vec<Spanned<String>>,
    pub vault: VaultSection,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct VaultSection {
    pub addr: Option<Spanned<String>>,
    pub kv_path: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    pub cacert: Option<Spanned<String>>,
    /// `"auto"` (default), `1` or `2`.
    pub kv_version: Option<Spanned<KvVersionSetting>>,
    /// Bounds each request to Vault, from connecting to the last byte of the answer.
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KvVersionSetting {
    Number(i64),
    Name(String),
}

/// The KV engine version of the Vault mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvVersion {
    /// Asked of Vault through `sys/internal/ui/mounts/<path>`.
    Auto,
    V1,
    V2,
}

/// The key set's desired state.
#[derive(Debug, Clone)]
pub struct KeysetConfig {
    pub store: KeyStoreConfig,
    pub min_key_length: usize,
    pub rotate_after: Duration,
    pub pending_for: Duration,
    pub retired_for: Duration,
    pub retired_max: usize,
    pub depends_on: Vec<(String, Option<Location>)>,
    /// `HMAC_SECRETS` / `HMAC_SECRET` as set in opsplan's environment, when the store is
    /// not `env`: compared with the store so that a plan can say when they disagree.
    pub environment_keys: Vec<(String, Secret)>,
}

#[derive(Debug, Clone)]
pub enum KeyStoreConfig {
    File {
        path: PathBuf,
        /// The path as written, which messages repeat.
        display: String,
    },
    /// `HMAC_SECRETS` and `HMAC_SECRET` as they were when the configuration was read.
    Env {
        secrets: Option<Secret>,
        secret: Option<Secret>,
    },
    Vault(VaultConfig),
}

#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// The configuration section that owns these settings (`keyset`, `mail`), for messages.
    pub section: &'static str,
    pub addr: String,
    pub token: Secret,
    /// `<mount>/<path>` as given, without leading or trailing slashes.
    pub kv_path: String,
    pub namespace: Option<String>,
    pub cacert: Option<PathBuf>,
    pub kv_version: KvVersion,
    pub timeout: Duration,
}

/// How long one request to Vault may take, unless `<section>.vault.timeout` says otherwise.
pub const DEFAULT_VAULT_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) fn resolve(
    section: KeysetSection,
    base_dir: &Path,
    lookup: &impl Fn(&str) -> Option<String>,
    at: &impl Fn(&Range<usize>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> KeysetConfig {
    let env = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

    let store_name = match &section.store {
        Some(store) => Some((
            store.get_ref().trim().to_ascii_lowercase(),
            at(&store.span()),
        )),
        None => env("KMS_PROVIDER").map(|provider| (provider.trim().to_ascii_lowercase(), None)),
    };
    let store_name = store_name.unwrap_or_else(|| ("file".to_string(), None));

    let store = match store_name.0.as_str() {
        "file" | "local" => {
            let display = section
                .path
                .as_ref()
                .map(|path| path.get_ref().clone())
                .unwrap_or_else(|| DEFAULT_KEY_FILE.to_string());
            KeyStoreConfig::File {
                path: super::relative_to(base_dir, &display),
                display,
            }
        }
        "env" => KeyStoreConfig::Env {
            secrets: lookup("HMAC_SECRETS").map(Secret::new),
            secret: lookup("HMAC_SECRET").map(Secret::new),
        },
        "vault" => KeyStoreConfig::Vault(resolve_vault(
            &section.vault,
            VaultOwner::KEYSET,
            lookup,
            at,
            problems,
        )),
        other => {
            let origin = if section.store.is_some() {
                format!("keyset.store `{other}`")
            } else {
                format!("KMS_PROVIDER={other}")
            };
            problems.push(located(
                store_name.1.clone(),
                format!("{origin} is not a key store"),
                Some("write store = \"file\", \"env\" or \"vault\""),
            ));
            KeyStoreConfig::File {
                path: base_dir.join(DEFAULT_KEY_FILE),
                display: DEFAULT_KEY_FILE.to_string(),
            }
        }
    };

    let min_key_length = match &section.min_key_length {
        Some(value) if *value.get_ref() < 1 || *value.get_ref() > 4096 => {
            problems.push(located(
                at(&value.span()),
                format!(
                    "keyset.min_key_length {} must be between 1 and 4096 bytes",
                    value.get_ref()
                ),
                Some("32 bytes (the default) suits HMAC-SHA-256"),
            ));
            DEFAULT_MIN_KEY_LENGTH
        }
        Some(value) => *value.get_ref() as usize,
        None => DEFAULT_MIN_KEY_LENGTH,
    };

    let retired_max = match &section.retired_max {
        Some(value) if *value.get_ref() < 0 => {
            problems.push(located(
                at(&value.span()),
                format!("keyset.retired_max {} is negative", value.get_ref()),
                Some("write how many retired keys stay published, e.g. retired_max = 2"),
            ));
            2
        }
        Some(value) => *value.get_ref() as usize,
        None => 2,
    };

    let mut duration = |name: &str, value: &Option<Spanned<String>>, default: &str| {
        let Some(value) = value else {
            return humantime::parse_duration(default).unwrap_or_default();
        };
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(duration) => duration,
            Err(error) => {
                problems.push(located(
                    at(&value.span()),
                    format!(
                        "keyset.{name} `{}` is not a duration: {error}",
                        value.get_ref()
                    ),
                    Some("write a duration such as \"90d\", \"24h\" or \"30s\""),
                ));
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    };
    let rotate_after = duration("rotate_after", &section.rotate_after, "90days");
    let pending_for = duration("pending_for", &section.pending_for, "1day");
    let retired_for = duration("retired_for", &section.retired_for, "30days");

    let environment_keys = match store {
        KeyStoreConfig::Env { .. } => Vec::new(),
        _ => ["HMAC_SECRETS", "HMAC_SECRET"]
            .iter()
            .filter_map(|name| lookup(name).map(|value| (name.to_string(), Secret::new(value))))
            .collect(),
    };

    KeysetConfig {
        store,
        environment_keys,
        min_key_length,
        rotate_after,
        pending_for,
        retired_for,
        retired_max,
        depends_on: section
            .depends_on
            .iter()
            .map(|dep| (dep.get_ref().clone(), at(&dep.span())))
            .collect(),
    }
}

/// Who a `[<section>.vault]` table belongs to: its name in messages, and whether the
/// runbook's `VAULT_KV_PATH` names its secret.
#[derive(Debug, Clone, Copy)]
pub(super) struct VaultOwner {
    pub section: &'static str,
    /// What is stored there, e.g. "key store".
    pub what: &'static str,
    pub kv_path_variable: Option<&'static str>,
    /// An example secret path for messages.
    pub example_path: &'static str,
}

impl VaultOwner {
    pub const KEYSET: VaultOwner = VaultOwner {
        section: "keyset",
        what: "key store",
        kv_path_variable: Some("VAULT_KV_PATH"),
        example_path: "secret/opsplan/hmac",
    };

    /// The mail settings have no runbook variable for their path: `VAULT_KV_PATH` names
    /// the key set's secret, and one document cannot hold both.
    pub const MAIL: VaultOwner = VaultOwner {
        section: "mail",
        what: "settings store",
        kv_path_variable: None,
        example_path: "secret/opsplan/mail",
    };
}

/// A `[<section>.vault]` table with the runbook's fallbacks: `VAULT_ADDR`, `VAULT_NAMESPACE`,
/// `VAULT_CACERT`, the owner's path variable, and the token from `VAULT_TOKEN` only.
pub(super) fn resolve_vault(
    section: &VaultSection,
    owner: VaultOwner,
    lookup: &impl Fn(&str) -> Option<String>,
    at: &impl Fn(&Range<usize>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> VaultConfig {
    let name = owner.section;
    let what = owner.what;
    let env = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let value = |setting: &Option<Spanned<String>>, variable: Option<&str>| {
        setting
            .as_ref()
            .map(|s| s.get_ref().trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| variable.and_then(env).map(|v| v.trim().to_string()))
    };

    let addr = value(&section.addr, Some("VAULT_ADDR")).unwrap_or_default();
    if addr.is_empty() {
        problems.push(located(
            None,
            format!(
                "the vault {what} needs an address: VAULT_ADDR is not set and {name}.vault.addr \
                 is empty"
            ),
            Some(&format!(
                "export VAULT_ADDR=https://vault.example:8200 or set {name}.vault.addr"
            )),
        ));
    } else if !(addr.starts_with("http://") || addr.starts_with("https://")) {
        let span = section.addr.as_ref().map(|s| s.span());
        problems.push(located(
            span.as_ref().and_then(at),
            format!("the Vault address `{addr}` must start with http:// or https://"),
            None,
        ));
    }

    let token = env("VAULT_TOKEN").map(Secret::new).unwrap_or_default();
    if token.is_empty() {
        problems.push(located(
            None,
            format!("the vault {what} needs a token: VAULT_TOKEN is not set"),
            Some("export VAULT_TOKEN with a token whose policy can read and write the secret path"),
        ));
    }

    let kv_path = value(&section.kv_path, owner.kv_path_variable)
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    if kv_path.is_empty() || !kv_path.contains('/') {
        let span = section.kv_path.as_ref().map(|s| s.span());
        let hint = match owner.kv_path_variable {
            Some(variable) => format!("set {variable} or {name}.vault.kv_path"),
            None => format!("set {name}.vault.kv_path"),
        };
        problems.push(located(
            span.as_ref().and_then(at),
            format!(
                "the Vault secret path `{kv_path}` must be <mount>/<path>, e.g. {}",
                owner.example_path
            ),
            Some(&hint),
        ));
    }

    let kv_version = match &section.kv_version {
        None => KvVersion::Auto,
        Some(setting) => match setting.get_ref() {
            KvVersionSetting::Number(1) => KvVersion::V1,
            KvVersionSetting::Number(2) => KvVersion::V2,
            KvVersionSetting::Name(shown) => match shown.trim() {
                "auto" => KvVersion::Auto,
                "1" => KvVersion::V1,
                "2" => KvVersion::V2,
                _ => {
                    problems.push(kv_version_problem(at(&setting.span()), name, shown));
                    KvVersion::Auto
                }
            },
            KvVersionSetting::Number(n) => {
                problems.push(kv_version_problem(
                    at(&setting.span()),
                    name,
                    &n.to_string(),
                ));
                KvVersion::Auto
            }
        },
    };

    let timeout = super::timeout(
        &section.timeout,
        &format!("{name}.vault.timeout"),
        DEFAULT_VAULT_TIMEOUT,
        at,
        problems,
    );

    VaultConfig {
        section: name,
        addr: addr.trim_end_matches('/').to_string(),
        token,
        kv_path,
        namespace: value(&section.namespace, Some("VAULT_NAMESPACE"))
            .map(|ns| ns.trim_matches('/').to_string()),
        cacert: value(&section.cacert, Some("VAULT_CACERT")).map(PathBuf::from),
        kv_version,
        timeout,
    }
}

fn kv_version_problem(
    location: Option<Location>,
    section: &str,
    shown: &str,
) -> crate::diagnostic::Diagnostic {
    located(
        location,
        format!("{section}.vault.kv_version `{shown}` is not \"auto\", 1 or 2"),
        Some("leave it out to detect the mount's version, or write kv_version = 1 or 2"),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Config;
    use crate::diagnostic::SourceFile;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, Diagnostics> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(
            SourceFile::new("ops.toml", text),
            PathBuf::from("/srv/app"),
            move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        )
    }

    #[test]
    fn defaults_are_a_file_beside_the_configuration() {
        let keyset = parse("[keyset]\n", &[]).unwrap().keyset.unwrap();
        match keyset.store {
            KeyStoreConfig::File { path, display } => {
                assert_eq!(path, PathBuf::from("/srv/app/.opsplan/keys.json"));
                assert_eq!(display, ".opsplan/keys.json");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(keyset.min_key_length, 32);
        assert_eq!(keyset.rotate_after, Duration::from_secs(90 * 86_400));
        assert_eq!(keyset.pending_for, Duration::from_secs(86_400));
        assert_eq!(keyset.retired_for, Duration::from_secs(30 * 86_400));
        assert_eq!(keyset.retired_max, 2);
    }

    #[test]
    fn the_runbook_variables_choose_and_configure_vault() {
        let env = [
            ("KMS_PROVIDER", "vault"),
            ("VAULT_ADDR", "https://vault.internal:8200/"),
            ("VAULT_TOKEN", "hvs.TESTTOKEN123"),
            ("VAULT_KV_PATH", "/kv2/opsplan/hmac/"),
            ("VAULT_NAMESPACE", "team-payments"),
        ];
        let keyset = parse("[keyset]\n", &env).unwrap().keyset.unwrap();
        let KeyStoreConfig::Vault(vault) = keyset.store else {
            panic!("not vault")
        };
        assert_eq!(vault.addr, "https://vault.internal:8200");
        assert_eq!(vault.kv_path, "kv2/opsplan/hmac");
        assert_eq!(vault.namespace.as_deref(), Some("team-payments"));
        assert_eq!(vault.kv_version, KvVersion::Auto);
        assert_eq!(vault.token.expose(), "hvs.TESTTOKEN123");
        assert!(!format!("{vault:?}").contains("TESTTOKEN"));

        // The section wins over KMS_PROVIDER.
        let keyset = parse("[keyset]\nstore = \"file\"\n", &env)
            .unwrap()
            .keyset
            .unwrap();
        assert!(matches!(keyset.store, KeyStoreConfig::File { .. }));
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "[keyset]\nstore = \"vault\"\nrotate_after = \"soon\"\nmin_key_length = 0\n\
                    [keyset.vault]\nkv_version = 3\n";
        let error = parse(text, &[]).unwrap_err();
        let text = error.to_string();
        assert_eq!(error.len(), 6, "{text}");
        assert!(text.contains("VAULT_ADDR is not set"), "{text}");
        assert!(text.contains("VAULT_TOKEN is not set"), "{text}");
        assert!(text.contains("must be <mount>/<path>"), "{text}");
        assert!(
            text.contains("ops.toml:3:16: keyset.rotate_after `soon` is not a duration"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:4:18: keyset.min_key_length 0 must be between"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:6:14: keyset.vault.kv_version `3` is not"),
            "{text}"
        );

        let error = parse("[keyset]\n", &[("KMS_PROVIDER", "kms")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("KMS_PROVIDER=kms is not a key store")
        );
        let error = parse("[keyset]\nrotate_aftr = \"1d\"\n", &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ops.toml:2:1: unknown key `keyset.rotate_aftr`")
        );
    }
}
