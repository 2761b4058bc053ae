use std::time::Duration;

use crate::store::StoreError;

/// What an operator needs to know when the TLS mode and the port disagree.
pub const PORT_HINT: &str = "port 465 expects implicit TLS (mail.tls = \"implicit\") and port \
                             587 expects STARTTLS (mail.tls = \"starttls\"); check that mail.tls \
                             matches what the server on this port speaks";

/// Errors of the mail concern. Each names the server or store and the address it used;
/// none ever carries the password. A driver's error is part of the message (before the
/// hint that follows it), so no variant also marks it as a `#[source]`.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP server {address}: cannot connect: {cause}; check mail.host and mail.port")]
    Connect {
        address: String,
        cause: std::io::Error,
    },

    #[error(
        "SMTP server {address}: no TCP connection within {}; check mail.host, mail.port and \
         the firewall",
        humantime::format_duration(*after)
    )]
    ConnectTimeout { address: String, after: Duration },

    #[error(
        "SMTP server {address}: timed out waiting for the server greeting/TLS handshake after \
         {} (tried {tried}). {PORT_HINT}",
        humantime::format_duration(*after)
    )]
    GreetingTimeout {
        address: String,
        tried: &'static str,
        after: Duration,
    },

    #[error("SMTP server {address}: {step} failed (tried {tried}): {cause}. {PORT_HINT}")]
    Handshake {
        address: String,
        step: &'static str,
        tried: &'static str,
        cause: lettre::transport::smtp::Error,
    },

    #[error(
        "SMTP server {address} does not offer STARTTLS, so the connection would stay \
         unencrypted{}. Use port 465 with mail.tls = \"implicit\" or port 587 with \
         mail.tls = \"starttls\"{}",
        if *credentials { "; credentials will not be sent over an unencrypted connection" } else { "" },
        if *credentials { "" } else { ", or set mail.tls = \"none\" for a relay that needs no encryption" }
    )]
    NoStartTls { address: String, credentials: bool },

    #[error(
        "SMTP server {address}: credentials will not be sent over an unencrypted connection. \
         Use port 465 with mail.tls = \"implicit\" or port 587 with mail.tls = \"starttls\""
    )]
    Unencrypted { address: String },

    #[error(
        "SMTP server {address} offers no authentication mechanism that opsplan speaks \
         (PLAIN, LOGIN); it offers: {offered}"
    )]
    NoAuthMechanism { address: String, offered: String },

    #[error(
        "SMTP server {address} rejected the credentials of user `{user}`: {cause}; check \
         mail.user and the password (SMTP_USER, SMTP_PASS)"
    )]
    AuthRejected {
        address: String,
        user: String,
        cause: lettre::transport::smtp::Error,
    },

    #[error(
        "SMTP server {address}: no answer to {step} within {}",
        humantime::format_duration(*after)
    )]
    StepTimeout {
        address: String,
        step: &'static str,
        after: Duration,
    },

    #[error("SMTP server {address}: {step} failed: {cause}")]
    Step {
        address: String,
        step: &'static str,
        cause: lettre::transport::smtp::Error,
    },

    #[error("cannot use mail.tls_ca {path}: {reason}")]
    TlsCa { path: String, reason: String },

    #[error("cannot build the verification message: {0}")]
    Message(String),

    #[error(
        "{store} changed since the plan was read (planned against {expected}, now {found}); \
         run plan again"
    )]
    StoreChanged {
        store: String,
        expected: String,
        found: String,
    },

    #[error(
        "another opsplan apply holds the mail settings lock {path}: {holder}; waited {}. Wait \
         for it to finish, or raise --lock-timeout",
        humantime::format_duration(*waited)
    )]
    LockBusy {
        path: String,
        holder: String,
        waited: Duration,
    },

    #[error("cannot use the lock file {path}: {cause}")]
    LockFile { path: String, cause: std::io::Error },

    #[error("{store}: the opsplan_metadata field is not valid JSON; restore it or remove it")]
    Metadata { store: String },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("Redis {url}: cannot connect: {cause}")]
    QueueConnect {
        url: String,
        cause: redis::RedisError,
    },

    #[error("Redis {url}: {command} {key} failed: {cause}")]
    QueueCommand {
        url: String,
        command: &'static str,
        key: String,
        cause: redis::RedisError,
    },

    #[error(
        "Redis {url}: no answer to {step} within {}",
        humantime::format_duration(*after)
    )]
    QueueTimeout {
        url: String,
        step: &'static str,
        after: Duration,
    },

    #[error(
        "Redis {url}: key `{key}` is a {found}, not a list, so the mail worker cannot consume \
         it. opsplan never deletes or overwrites it: choose another mail.queue.key \
         (MAIL_QUEUE_KEY), or move the key aside by hand"
    )]
    QueueWrongType {
        url: String,
        key: String,
        found: String,
    },

    #[error("{0}")]
    Refused(String),
}
