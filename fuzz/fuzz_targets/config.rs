//! `ops.toml` text of any shape: parsing, interpolation and validation report problems as
//! diagnostics and never panic.

#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use opsplan::config::Config;
use opsplan::diagnostic::SourceFile;

/// The environment every input sees: the variables opsplan reads on its own, one set but
/// empty, and the rest unset.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "DATABASE_URL",
        "postgres://app:secret@db.internal:5432/auth",
    ),
    ("MAIL_PROVIDER", "smtp"),
    ("SMTP_HOST", "smtp.internal"),
    ("SMTP_PORT", "587"),
    ("SMTP_USER", "mailer"),
    ("SMTP_PASS", "mail-secret"),
    ("SMTP_FROM", "Auth <auth@example.com>"),
    ("HMAC_SECRET", "0123456789abcdef0123456789abcdef"),
    ("OPSPLAN_ENVIRONMENT", "production"),
    ("EMPTY", ""),
];

fn lookup(name: &str) -> Option<String> {
    ENVIRONMENT
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = SourceFile::new("ops.toml", text);
    match Config::parse(source, PathBuf::from("/srv/authsvc"), lookup) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "an error without a problem");
            let _ = problems.to_string();
        }
    }
});
