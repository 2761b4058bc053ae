//! The plan as a JSON document: what `plan --out` saves, `plan --format json` prints, and
//! `apply FILE` and `show FILE` read back. Its shape is documented in docs/plan-format.md and
//! docs/plan.schema.json.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Plan, ResourceFailure, ResourcePlan};

/// Bumped whenever a reader of an older version could misread the document.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanDocument {
    pub format_version: u32,
    pub opsplan_version: String,
    pub created_at: String,
    pub config: ConfigIdentity,
    pub summary: Counts,
    pub has_changes: bool,
    pub resources: Vec<ResourcePlan>,
    #[serde(default)]
    pub errors: Vec<ResourceFailure>,
}

/// Which configuration the plan was made from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigIdentity {
    pub path: String,
    /// SHA-256 of the configuration file's bytes.
    pub digest: String,
}

/// Totals in the closing line's terms: a replacement counts as one add and one destroy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Counts {
    pub add: usize,
    pub change: usize,
    pub destroy: usize,
}

/// Why a plan file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    #[error("cannot read the plan file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the plan file {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not an opsplan plan file: {reason}")]
    Invalid { path: String, reason: String },

    #[error(
        "{path} has plan format version {found}, and this opsplan ({ours}) reads version \
         {FORMAT_VERSION}; run plan again with this version"
    )]
    Version {
        path: String,
        found: u32,
        ours: String,
    },
}

impl PlanDocument {
    pub fn new(plan: &Plan, config_path: &Path, config_digest: &str) -> PlanDocument {
        let summary = plan.summary();
        PlanDocument {
            format_version: FORMAT_VERSION,
            opsplan_version: env!("CARGO_PKG_VERSION").to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            config: ConfigIdentity {
                path: config_path.display().to_string(),
                digest: config_digest.to_string(),
            },
            summary: Counts {
                add: summary.create + summary.replace,
                change: summary.update,
                destroy: summary.delete + summary.replace,
            },
            has_changes: plan.has_changes(),
            resources: plan.resources.clone(),
            errors: plan.failures.clone(),
        }
    }

    pub fn plan(&self) -> Plan {
        Plan {
            resources: self.resources.clone(),
            failures: self.errors.clone(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes") + "\n"
    }

    /// A digest of the document, recorded in apply history to say which plan was applied.
    pub fn digest(&self) -> String {
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(self.to_json().as_bytes()))
        )
    }

    /// Writes the document with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), PlanFileError> {
        crate::store::write_private_atomically(path, self.to_json().as_bytes()).map_err(|source| {
            PlanFileError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }

    pub fn load(path: &Path) -> Result<PlanDocument, PlanFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| PlanFileError::Invalid {
                path: shown.clone(),
                reason: format!("not JSON ({error})"),
            })?;
        let found = value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| PlanFileError::Invalid {
                path: shown.clone(),
                reason: "it has no format_version".to_string(),
            })?;
        if found != u64::from(FORMAT_VERSION) {
            return Err(PlanFileError::Version {
                path: shown,
                found: found as u32,
                ours: env!("CARGO_PKG_VERSION").to_string(),
            });
        }
        serde_json::from_value(value).map_err(|error| PlanFileError::Invalid {
            path: shown,
            reason: error.to_string(),
        })
    }
}
