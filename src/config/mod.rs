//! The `ops.toml` model: parsing, environment interpolation and validation with spans.
//!
//! Loading happens in three passes so that one run reports every problem at once:
//! the TOML is parsed with recovery, every string is interpolated in place (each failure
//! keeps its span), and the typed model is deserialized while unknown keys are collected
//! instead of stopping at the first one.

pub mod alerts;
mod env;
mod keyset;
mod mail;

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, Diagnostics, Location, SourceFile};
use crate::secret::SecretUrl;

pub use env::{InterpolationError, interpolate};
pub use keyset::{
    DEFAULT_KEY_FILE, DEFAULT_MIN_KEY_LENGTH, KeyStoreConfig, KeysetConfig, KeysetSection,
    KvVersion, VaultConfig,
};
pub use mail::{
    DEFAULT_MAIL_STORE_PATH, MailConfig, MailProvider, MailStoreConfig, QueueConfig, SmtpConfig,
    SmtpCredentials, TlsMode,
};

/// The file name looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "ops.toml";

/// The database used when neither `schema.url` nor `DATABASE_URL` says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.opsplan/opsplan.db";

/// The history table's default name.
pub const DEFAULT_HISTORY_TABLE: &str = "opsplan_schema_history";

/// The parsed and interpolated desired state, before any concern resolves it further.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct RawConfig {
    pub project: ProjectSection,
    pub apply: ApplySection,
    pub drift: DriftSection,
    pub schema: Option<SchemaSection>,
    pub alerts: Option<alerts::AlertsSection>,
    pub mail: Option<Spanned<mail::MailSection>>,
    pub keyset: Option<KeysetSection>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct DriftSection {
    /// Addresses whose drift `opsplan drift` does not report; a trailing `*` matches a prefix.
    pub ignore: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ProjectSection {
    pub name: Option<Spanned<String>>,
    /// `production` turns on the checks that only matter there.
    pub environment: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ApplySection {
    /// How long `apply` waits for another apply's lock, e.g. `"2m"`.
    pub lock_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct SchemaSection {
    pub url: Spanned<String>,
    pub migrations: Spanned<String>,
    pub target: Spanned<TargetSetting>,
    pub allow_out_of_order: bool,
    pub history_table: Spanned<String>,
    /// Bounds connecting and every bookkeeping query; migrations themselves are not bounded.
    pub timeout: Option<Spanned<String>>,
    pub depends_on: Vec<Spanned<String>>,
}

impl Default for SchemaSection {
    fn default() -> Self {
        SchemaSection {
            url: Spanned::new(0..0, String::new()),
            migrations: Spanned::new(0..0, "db/migrations".to_string()),
            target: Spanned::new(0..0, TargetSetting::Name("latest".to_string())),
            allow_out_of_order: false,
            history_table: Spanned::new(0..0, DEFAULT_HISTORY_TABLE.to_string()),
            timeout: None,
            depends_on: Vec::new(),
        }
    }
}

/// `target = "latest"` or `target = 42` (or `"42"`, which environment values produce).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TargetSetting {
    Number(i64),
    Name(String),
}

/// The schema version that the database should reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetVersion {
    Latest,
    Version(u64),
}

/// The whole configuration, validated.
#[derive(Debug)]
pub struct Config {
    pub source: SourceFile,
    /// Relative paths in the file are resolved against this folder.
    pub base_dir: PathBuf,
    /// SHA-256 of the file's bytes, recorded in plans and apply history.
    pub digest: String,
    pub production: bool,
    pub lock_timeout: Option<Duration>,
    pub drift_ignore: Vec<String>,
    pub schema: Option<SchemaConfig>,
    pub alerts: Option<alerts::AlertsConfig>,
    pub mail: Option<MailConfig>,
    pub keyset: Option<KeysetConfig>,
}

/// The schema concern's desired state.
#[derive(Debug, Clone)]
pub struct SchemaConfig {
    pub url: SecretUrl,
    pub url_location: Option<Location>,
    /// The folder as written in the file, which messages repeat.
    pub migrations_display: String,
    pub migrations_dir: PathBuf,
    pub target: TargetVersion,
    pub allow_out_of_order: bool,
    pub history_table: String,
    /// How long connecting, the lock queries and the reads of the history table may take.
    pub timeout: Duration,
    pub depends_on: Vec<(String, Option<Location>)>,
}

/// How long a database may take to connect or answer a bookkeeping query, unless
/// `schema.timeout` says otherwise.
pub const DEFAULT_SCHEMA_TIMEOUT: Duration = Duration::from_secs(10);

impl Config {
    /// Reads and validates `path`, looking up `${env:…}` in the process environment.
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    pub fn load_with_env(
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::NotFound {
                "run `opsplan init` to write a starting ops.toml, or pass --config FILE"
            } else {
                "check the path and its permissions"
            };
            Diagnostics(vec![
                Diagnostic::new(format!(
                    "cannot read configuration {}: {error}",
                    path.display()
                ))
                .with_help(hint),
            ])
        })?;
        let base_dir = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse(SourceFile::new(path, text), base_dir, lookup)
    }

    pub fn parse(
        source: SourceFile,
        base_dir: PathBuf,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Diagnostics> {
        let mut problems = Diagnostics::default();

        let (mut document, syntax_errors) = DeTable::parse_recoverable(&source.text);
        for error in syntax_errors {
            problems.push(toml_diagnostic(&source, &error));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        document.get_mut().make_owned();
        let pristine = document.clone();

        let before = problems.len();
        interpolate_table(document.get_mut(), &source, &lookup, &mut problems);
        let uninterpolated: Vec<Location> = problems.0[before..]
            .iter()
            .filter_map(|p| p.location.clone())
            .collect();

        let mut unknown = Vec::new();
        let deserializer = toml::de::Deserializer::from(document);
        let raw: Option<RawConfig> = match serde_ignored::deserialize(deserializer, |path| {
            unknown.push(path_segments(&path));
        }) {
            Ok(raw) => Some(raw),
            Err(error) => {
                problems.push(toml_diagnostic(&source, &error));
                None
            }
        };
        for segments in unknown {
            problems.push(unknown_key(&source, pristine.get_ref(), &segments));
        }

        let digest = hex::encode(Sha256::digest(source.text.as_bytes()));
        let Some(raw) = raw else {
            return Err(problems);
        };
        let mut semantic = Diagnostics::default();
        let config = resolve(raw, source, base_dir, digest, &lookup, &mut semantic);
        // A value that failed to interpolate was reported already; checking what is left of
        // it would only repeat the same problem in other words.
        for problem in semantic.0 {
            let repeated = problem
                .location
                .as_ref()
                .is_some_and(|at| uninterpolated.contains(at));
            if !repeated {
                problems.push(problem);
            }
        }
        problems.into_result(config)
    }

    pub fn location(&self, span: &std::ops::Range<usize>) -> Option<Location> {
        (span.end > 0).then(|| self.source.location_of(span))
    }
}

fn resolve(
    raw: RawConfig,
    source: SourceFile,
    base_dir: PathBuf,
    digest: String,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Diagnostics,
) -> Config {
    let at = |span: &std::ops::Range<usize>| (span.end > 0).then(|| source.location_of(span));

    let production = match &raw.project.environment {
        Some(environment) => environment.get_ref().eq_ignore_ascii_case("production"),
        None => false,
    };

    let lock_timeout = raw.apply.lock_timeout.as_ref().and_then(|value| {
        match humantime::parse_duration(value.get_ref()) {
            Ok(duration) => Some(duration),
            Err(error) => {
                problems.push(located(
                    at(&value.span()),
                    format!(
                        "apply.lock_timeout `{}` is not a duration: {error}",
                        value.get_ref()
                    ),
                    Some("write a duration such as \"30s\", \"5m\" or \"1h\""),
                ));
                None
            }
        }
    });

    let schema = raw.schema.map(|section| {
        let url_text = if section.url.get_ref().is_empty() {
            lookup("DATABASE_URL")
                .filter(|url| !url.is_empty())
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string())
        } else {
            section.url.get_ref().clone()
        };
        let url_text = absolutize_sqlite_url(&url_text, &base_dir);
        if !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"]
            .iter()
            .any(|scheme| url_text.starts_with(scheme))
        {
            problems.push(located(
                at(&section.url.span()),
                "schema.url must start with sqlite:, postgres:, postgresql: or mysql:".to_string(),
                Some("for example \"sqlite://.opsplan/app.db\" or \"postgres://user@host/db\""),
            ));
        }

        let target = match section.target.get_ref() {
            TargetSetting::Number(n) if *n >= 0 => TargetVersion::Version(*n as u64),
            TargetSetting::Name(name) if name == "latest" => TargetVersion::Latest,
            TargetSetting::Name(name) if name.parse::<u64>().is_ok() => {
                TargetVersion::Version(name.parse().unwrap_or_default())
            }
            other => {
                let shown = match other {
                    TargetSetting::Number(n) => n.to_string(),
                    TargetSetting::Name(name) => format!("\"{name}\""),
                };
                problems.push(located(
                    at(&section.target.span()),
                    format!("schema.target {shown} is neither \"latest\" nor a version number"),
                    Some("write target = \"latest\" or a migration's version, e.g. target = 7"),
                ));
                TargetVersion::Latest
            }
        };

        let table = section.history_table.get_ref();
        let valid_table = !table.is_empty()
            && table.len() <= 63
            && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !table.starts_with(|c: char| c.is_ascii_digit());
        if !valid_table {
            problems.push(located(
                at(&section.history_table.span()),
                format!("schema.history_table `{table}` is not a plain SQL identifier"),
                Some("use letters, digits and underscores, at most 63 characters"),
            ));
        }

        let timeout = timeout(
            &section.timeout,
            "schema.timeout",
            DEFAULT_SCHEMA_TIMEOUT,
            &at,
            problems,
        );
        let migrations_display = section.migrations.get_ref().clone();
        SchemaConfig {
            url: SecretUrl::new(url_text),
            url_location: at(&section.url.span()),
            migrations_dir: base_dir.join(&migrations_display),
            migrations_display,
            target,
            allow_out_of_order: section.allow_out_of_order,
            history_table: table.clone(),
            timeout,
            depends_on: section
                .depends_on
                .iter()
                .map(|dep| (dep.get_ref().clone(), at(&dep.span())))
                .collect(),
        }
    });

    let drift_ignore = raw
        .drift
        .ignore
        .iter()
        .map(|pattern| pattern.get_ref().clone())
        .collect();
    let alerts = raw
        .alerts
        .map(|section| alerts::resolve(section, &source, &base_dir, problems));
    let mail = raw
        .mail
        .map(|section| mail::resolve(section, production, &base_dir, lookup, &at, problems));
    let keyset = raw
        .keyset
        .map(|section| keyset::resolve(section, &base_dir, lookup, &at, problems));
    if let (Some(mail), Some(keyset)) = (&mail, &keyset)
        && let (MailStoreConfig::Vault(settings), KeyStoreConfig::Vault(keys)) =
            (&mail.store, &keyset.store)
        && (&settings.addr, &settings.namespace, &settings.kv_path)
            == (&keys.addr, &keys.namespace, &keys.kv_path)
    {
        problems.push(located(
            None,
            format!(
                "mail.vault.kv_path `{}` is the key set's secret; each keeps its own \
                 opsplan_metadata, so they need separate secrets",
                settings.kv_path
            ),
            Some("write another path, e.g. kv_path = \"<mount>/opsplan/mail\""),
        ));
    }

    Config {
        source,
        base_dir,
        digest,
        production,
        lock_timeout,
        drift_ignore,
        schema,
        alerts,
        mail,
        keyset,
    }
}

/// A relative SQLite path is relative to the configuration file, like every other path.
fn absolutize_sqlite_url(url: &str, base_dir: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    if rest.starts_with('/') || rest.starts_with(":memory:") || base_dir == Path::new(".") {
        return url.to_string();
    }
    format!("sqlite://{}", base_dir.join(rest).display())
}

/// A timeout setting (`key` is its full name, e.g. `schema.timeout`): a duration longer
/// than zero, or `default` when it is left out.
pub(super) fn timeout(
    value: &Option<Spanned<String>>,
    key: &str,
    default: Duration,
    at: &impl Fn(&std::ops::Range<usize>) -> Option<Location>,
    problems: &mut Diagnostics,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    let message = match humantime::parse_duration(value.get_ref().trim()) {
        Ok(duration) if !duration.is_zero() => return duration,
        Ok(_) => format!("{key} must be longer than zero"),
        Err(error) => format!("{key} `{}` is not a duration: {error}", value.get_ref()),
    };
    problems.push(located(
        at(&value.span()),
        message,
        Some("write a duration such as \"10s\""),
    ));
    default
}

fn located(location: Option<Location>, message: String, help: Option<&str>) -> Diagnostic {
    let diagnostic = Diagnostic {
        location,
        message,
        help: None,
    };
    match help {
        Some(help) => diagnostic.with_help(help),
        None => diagnostic,
    }
}

fn toml_diagnostic(source: &SourceFile, error: &toml::de::Error) -> Diagnostic {
    let message = error.message().trim().to_string();
    match error.span() {
        Some(span) => Diagnostic::at(source.location_of(&span), message),
        None => Diagnostic {
            location: Some(source.location(0)),
            message,
            help: None,
        },
    }
}

fn interpolate_table(
    table: &mut DeTable<'_>,
    source: &SourceFile,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Diagnostics,
) {
    for (_key, value) in table.iter_mut() {
        interpolate_value(value, source, lookup, problems);
    }
}

fn interpolate_value(
    value: &mut Spanned<DeValue<'_>>,
    source: &SourceFile,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Diagnostics,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(text) => match interpolate(text, lookup) {
            Ok(expanded) => *text = Cow::Owned(expanded),
            Err(error) => {
                problems.push(Diagnostic::at(source.location_of(&span), error.to_string()))
            }
        },
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                interpolate_value(item, source, lookup, problems);
            }
        }
        DeValue::Table(table) => interpolate_table(table, source, lookup, problems),
        _ => {}
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut segments = Vec::new();
    let mut current = path;
    loop {
        match current {
            Path::Root => break,
            Path::Seq { parent, index } => {
                segments.push(Segment::Index(*index));
                current = parent;
            }
            Path::Map { parent, key } => {
                segments.push(Segment::Key(key.clone()));
                current = parent;
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => current = parent,
        }
    }
    segments.reverse();
    segments
}

fn unknown_key(source: &SourceFile, root: &DeTable<'_>, segments: &[Segment]) -> Diagnostic {
    let dotted = segments
        .iter()
        .map(|segment| match segment {
            Segment::Key(key) => key.clone(),
            Segment::Index(index) => format!("[{index}]"),
        })
        .collect::<Vec<_>>()
        .join(".");
    let message = format!("unknown key `{dotted}`");
    let help = "check the spelling against docs/configuration.md; unknown keys are rejected \
                so that a typo never passes silently";
    match key_span(root, segments) {
        Some(span) => Diagnostic::at(source.location_of(&span), message).with_help(help),
        None => Diagnostic::new(message).with_help(help),
    }
}

fn key_span(root: &DeTable<'_>, segments: &[Segment]) -> Option<std::ops::Range<usize>> {
    let mut table = root;
    let mut span = None;
    let mut iter = segments.iter().peekable();
    while let Some(segment) = iter.next() {
        let Segment::Key(key) = segment else {
            return span;
        };
        let (found_key, value) = table.get_key_value(key.as_str())?;
        span = Some(found_key.span());
        let mut value = value.get_ref();
        while let Some(Segment::Index(index)) = iter.peek() {
            iter.next();
            let DeValue::Array(items) = value else {
                return span;
            };
            let item = items.get(*index)?;
            span = Some(item.span());
            value = item.get_ref();
        }
        match value {
            DeValue::Table(inner) => table = inner,
            _ => return span,
        }
    }
    span
}

/// Every key this version understands, for `docs/configuration.md` and its test.
pub fn known_sections() -> BTreeSet<&'static str> {
    [
        "project", "apply", "drift", "schema", "keyset", "alerts", "mail",
    ]
    .into_iter()
    .collect()
}

/// `path` as read from a configuration in `base_dir`; a relative path such as
/// `.opsplan/keys.json` stays as written when the configuration is in the current folder.
pub(crate) fn relative_to(base_dir: &Path, path: &str) -> PathBuf {
    if base_dir == Path::new(".") {
        PathBuf::from(path)
    } else {
        base_dir.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Diagnostics> {
        Config::parse(
            SourceFile::new("ops.toml", text),
            PathBuf::from("."),
            |name| (name == "DB").then(|| "postgres://app@db/auth".to_string()),
        )
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_place() {
        let error = parse("[schema]\nurll = 'x'\ntargett = 3\n[sceham]\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:2:1: unknown key `schema.urll`"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:3:1: unknown key `schema.targett`"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:4:2: unknown key `sceham`"),
            "{text}"
        );
    }

    #[test]
    fn interpolation_errors_and_semantic_errors_come_together() {
        let text = "[apply]\nlock_timeout = 'soon'\n[schema]\nurl = '${env:NOPE}'\ntarget = 'x'\n";
        let error = parse(text).unwrap_err();
        // The unset variable is reported once, not again as a bad URL.
        assert_eq!(error.len(), 3, "{error}");
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:4:7: environment variable NOPE is not set"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:2:16: apply.lock_timeout `soon`"),
            "{text}"
        );
    }

    #[test]
    fn every_back_end_timeout_is_checked_with_its_place() {
        let text = "[schema]\ntimeout = '0s'\n[keyset]\nstore = 'vault'\n[keyset.vault]\n\
                    timeout = 'later'\n[alerts]\ntimeout = '5'\n";
        let error = parse(text).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ops.toml:2:11: schema.timeout must be longer than zero"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:6:11: keyset.vault.timeout `later` is not a duration"),
            "{text}"
        );
        assert!(
            text.contains("ops.toml:8:11: alerts.timeout `5` is not a duration"),
            "{text}"
        );

        let config = parse(
            "[schema]\ntimeout = '3s'\n[alerts]\ntarget = 'prometheus'\n\
             prometheus_url = 'http://127.0.0.1:9090'\ntimeout = '1m'\n",
        )
        .unwrap();
        assert_eq!(config.schema.unwrap().timeout, Duration::from_secs(3));
        let alerts::AlertsTarget::Prometheus { timeout, .. } = config.alerts.unwrap().target else {
            panic!("expected the prometheus target");
        };
        assert_eq!(timeout, Duration::from_secs(60));
        let defaults = parse("[schema]\n").unwrap();
        assert_eq!(defaults.schema.unwrap().timeout, DEFAULT_SCHEMA_TIMEOUT);
    }

    #[test]
    fn values_come_from_the_environment() {
        let config = parse("[schema]\nurl = '${env:DB}'\ntarget = 7\n").unwrap();
        let schema = config.schema.unwrap();
        assert_eq!(schema.url.expose(), "postgres://app@db/auth");
        assert_eq!(schema.target, TargetVersion::Version(7));
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let error = parse("[schema]\nurl = \n").unwrap_err();
        assert!(error.to_string().starts_with("ops.toml:2:"), "{error}");
    }
}
