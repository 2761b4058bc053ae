use std::path::PathBuf;

/// Errors of the alert-rule concern. Each names the file or the Prometheus address it used.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("cannot read the rule file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the rule file {}; check the folder's permissions", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the live rule file {} is not a valid rule file ({detail}); fix or remove it by hand, \
         then plan again",
        path.display()
    )]
    LiveFile { path: PathBuf, detail: String },

    #[error(
        "the record of what opsplan wrote, {}, cannot be read ({detail}); remove it, and \
         opsplan records again on its next write",
        path.display()
    )]
    State { path: PathBuf, detail: String },

    #[error("Prometheus at {address} did not answer")]
    Http {
        address: String,
        #[source]
        source: Box<ureq::Error>,
    },

    #[error(
        "Prometheus at {address} did not answer within {}; check that it is up and \
         answering there, or raise alerts.timeout",
        humantime::format_duration(*after)
    )]
    TimedOut {
        address: String,
        after: std::time::Duration,
    },

    #[error("Prometheus at {address} refused the reload (HTTP {status}): {body}")]
    Reload {
        address: String,
        status: u16,
        body: String,
    },

    #[error("Prometheus at {address} gave an unexpected answer: {detail}")]
    Answer { address: String, detail: String },

    /// Verification failed after a reload; the message says what was restored.
    #[error("{0}")]
    Verify(String),

    #[error("{0}")]
    Refused(String),
}
