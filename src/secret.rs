//! A value that must never reach a terminal, a log line or a saved plan.

use std::fmt;

use serde::{Serialize, Serializer};

/// Text that redacts itself in `Debug`, `Display` and `Serialize`.
///
/// The clear value is reachable only through [`Secret::expose`], so every place that
/// needs it is easy to find and review.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The clear value. Callers pass it to a driver or a hash, never to output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// A connection URL whose password is a secret.
///
/// `Display` prints the URL with the password replaced, which is what error messages and
/// plans show as "the address used".
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(Secret);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(Secret::new(url))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// The URL with any `user:password@` reduced to `user:***@`.
    pub fn redacted(&self) -> String {
        redact_userinfo(self.0.expose())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

fn redact_userinfo(url: &str) -> String {
    let without_password = match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let user = match rest[..at].split_once(':') {
                        Some((user, _password)) => format!("{user}:***"),
                        None => rest[..at].to_string(),
                    };
                    format!("{}{user}{}", &url[..scheme_end + 3], &rest[at..])
                }
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    };

    // Passwords can also travel as query parameters.
    let Some((head, query)) = without_password.split_once('?') else {
        return without_password;
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{head}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_masked() {
        let url = SecretUrl::new("postgres://app:pa55@db.internal:5432/auth?sslmode=require");
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.internal:5432/auth?sslmode=require"
        );
        let url = SecretUrl::new("mysql://root@127.0.0.1/test?password=x&ssl=1");
        assert_eq!(
            url.to_string(),
            "mysql://root@127.0.0.1/test?password=***&ssl=1"
        );
        let url = SecretUrl::new("sqlite://.opsplan/app.db");
        assert_eq!(url.to_string(), "sqlite://.opsplan/app.db");
    }
}
