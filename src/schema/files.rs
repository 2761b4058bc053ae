//! Migration files on disk: naming, ordering, checksums and directives.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::Dialect;
use super::split::{Statement, split};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};

/// The name every migration file must have.
pub const EXPECTED_PATTERN: &str = "<digits>_<description>.sql";

/// The checksum algorithm recorded in the history table.
pub const CHECKSUM_ALGORITHM: &str = "sha256-crlf-to-lf";

/// The first-line directive for files that must run outside a transaction.
pub const NO_TRANSACTION_DIRECTIVE: &str = "-- opsplan:no-transaction";

/// One `<version>_<description>.sql` file.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub version: u64,
    /// The digits as written, e.g. `0007`, which messages repeat.
    pub prefix: String,
    pub description: String,
    pub file_name: String,
    pub path: PathBuf,
    pub sql: String,
    pub checksum: String,
    pub no_transaction: bool,
    /// The statements, split once for the dialect first asked: validation, the plan and
    /// the apply each need them.
    split: OnceLock<(Dialect, Vec<Statement>)>,
}

impl MigrationFile {
    /// The file name without `.sql`, used in addresses.
    pub fn stem(&self) -> &str {
        self.file_name.trim_end_matches(".sql")
    }

    pub fn statements(&self, dialect: Dialect) -> Cow<'_, [Statement]> {
        let (split_for, statements) = self
            .split
            .get_or_init(|| (dialect, split(&self.sql, dialect)));
        if *split_for == dialect {
            Cow::Borrowed(statements)
        } else {
            Cow::Owned(split(&self.sql, dialect))
        }
    }
}

/// SHA-256 of the content after every `\r\n` became `\n`. A lone `\r` still counts, so
/// only a line-ending conversion is invisible.
pub fn checksum(sql: &str) -> String {
    let normalized = sql.replace("\r\n", "\n");
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

/// Splits `0007_touch_updated_at.sql` into its version digits and description.
pub fn parse_file_name(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".sql")?;
    let (digits, description) = stem.split_once('_')?;
    let valid =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !description.is_empty();
    valid.then_some((digits, description))
}

/// Reads every migration in `dir`, sorted by version as integers. Files not ending in
/// `.sql` (and hidden files) are ignored; every badly named or duplicate file is reported.
pub fn load_migrations(dir: &Path, shown_dir: &str) -> Result<Vec<MigrationFile>, Diagnostics> {
    let entries = std::fs::read_dir(dir).map_err(|error| {
        Diagnostics(vec![
            Diagnostic::new(format!(
                "cannot read the migrations folder {}: {error}",
                dir.display()
            ))
            .with_help("create it, or point schema.migrations at the folder that holds them"),
        ])
    })?;

    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".sql") && !name.starts_with('.'))
        .collect();
    names.sort();

    let mut problems = Diagnostics::default();
    let bad_names: Vec<&String> = names
        .iter()
        .filter(|n| parse_file_name(n).is_none())
        .collect();
    if !bad_names.is_empty() {
        let listed = bad_names
            .iter()
            .map(|name| format!("  {shown_dir}/{name}"))
            .collect::<Vec<_>>()
            .join("\n");
        problems.push(
            Diagnostic::new(format!(
                "{} migration file name(s) in {shown_dir} do not match {EXPECTED_PATTERN}:\n{listed}",
                bad_names.len()
            ))
            .with_help(
                "rename each file to a numeric version, an underscore and a description, \
                 e.g. 0003_add_notes.sql; files not ending in .sql are ignored",
            ),
        );
    }

    let mut by_version: BTreeMap<u64, Vec<MigrationFile>> = BTreeMap::new();
    for name in names.iter().filter(|n| parse_file_name(n).is_some()) {
        let (digits, description) = parse_file_name(name).unwrap_or_default();
        let Ok(version) = digits.parse::<u64>() else {
            problems.push(Diagnostic::new(format!(
                "{shown_dir}/{name}: version {digits} is larger than {}",
                u64::MAX
            )));
            continue;
        };
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) => {
                problems.push(Diagnostic::new(format!(
                    "cannot read {shown_dir}/{name}: {error}"
                )));
                continue;
            }
        };
        let Ok(sql) = String::from_utf8(bytes) else {
            problems.push(Diagnostic::new(format!(
                "{shown_dir}/{name} is not valid UTF-8"
            )));
            continue;
        };
        let no_transaction = match directive(&sql) {
            Ok(no_transaction) => no_transaction,
            Err(message) => {
                let location = Location {
                    file: PathBuf::from(format!("{shown_dir}/{name}")),
                    line: 1,
                    column: 1,
                };
                problems.push(Diagnostic::at(location, message).with_help(format!(
                    "the only directive is `{NO_TRANSACTION_DIRECTIVE}` on the first line"
                )));
                false
            }
        };
        by_version.entry(version).or_default().push(MigrationFile {
            version,
            prefix: digits.to_string(),
            description: description.to_string(),
            file_name: name.clone(),
            checksum: checksum(&sql),
            path,
            sql,
            no_transaction,
            split: OnceLock::new(),
        });
    }

    for (version, files) in &by_version {
        if files.len() > 1 {
            let listed = files
                .iter()
                .map(|f| format!("{shown_dir}/{}", f.file_name))
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(
                Diagnostic::new(format!("duplicate migration version {version}: {listed}"))
                    .with_help("give each file its own version number; none of them was run"),
            );
        }
    }

    problems.into_result(by_version.into_values().flatten().collect())
}

/// Reads the first-line directive: `Ok(true)` for no-transaction.
pub fn directive(sql: &str) -> Result<bool, String> {
    let first = sql.lines().next().unwrap_or_default().trim();
    let Some(rest) = first.strip_prefix("--") else {
        return Ok(false);
    };
    let rest = rest.trim();
    match rest.strip_prefix("opsplan:") {
        Some("no-transaction") => Ok(true),
        Some(other) => Err(format!("unknown directive `opsplan:{other}`")),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(parse_file_name("0007_touch.sql"), Some(("0007", "touch")));
        assert_eq!(
            parse_file_name("10_email_idx.sql"),
            Some(("10", "email_idx"))
        );
        assert_eq!(parse_file_name("schema.sql"), None);
        assert_eq!(parse_file_name("V2__add_orders.sql"), None);
        assert_eq!(parse_file_name("0003-add_notes.sql"), None);
        assert_eq!(parse_file_name("0003_.sql"), None);
    }

    #[test]
    fn checksum_ignores_only_crlf() {
        let lf = "CREATE TABLE a (\n  id INT\n);\n";
        assert_eq!(checksum(lf), checksum(&lf.replace('\n', "\r\n")));
        assert_ne!(checksum(lf), checksum(&lf.replace('\n', "\r")));
    }

    #[test]
    fn directives() {
        assert_eq!(
            directive("-- opsplan:no-transaction\nCREATE INDEX"),
            Ok(true)
        );
        assert_eq!(directive("--opsplan:no-transaction\r\n"), Ok(true));
        assert_eq!(directive("-- a comment\n"), Ok(false));
        assert!(directive("-- opsplan:no-transactions\n").is_err());
    }
}
