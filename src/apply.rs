//! The one apply loop: walks the plan in dependency order and reports every step.
//!
//! The CLI and the tests both drive this loop through a [`Reporter`], so printing,
//! progress and JSON events never re-implement it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::{Engine, error_chain};
use crate::plan::{Change, Plan};

/// What happened to one planned change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepStatus {
    Applied {
        detail: String,
    },
    Failed {
        error: String,
    },
    /// Not attempted, because `blocked_by` failed or was itself skipped.
    Skipped {
        blocked_by: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub address: String,
    pub resource: String,
    #[serde(flatten)]
    pub status: StepStatus,
    pub duration_ms: u64,
}

/// Receives step events as they happen.
pub trait Reporter: Send + Sync {
    fn step_started(&self, _change: &Change) {}
    fn step_finished(&self, _change: &Change, _result: &StepResult) {}
}

/// A reporter that says nothing.
pub struct Silent;

impl Reporter for Silent {}

/// Every step's outcome, in the order they were walked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub steps: Vec<StepResult>,
}

impl ApplyReport {
    pub fn count(&self, wanted: fn(&StepStatus) -> bool) -> usize {
        self.steps.iter().filter(|s| wanted(&s.status)).count()
    }

    pub fn applied(&self) -> usize {
        self.count(|s| matches!(s, StepStatus::Applied { .. }))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, StepStatus::Failed { .. }))
    }

    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, StepStatus::Skipped { .. }))
    }

    pub fn succeeded(&self) -> bool {
        self.failed() == 0 && self.skipped() == 0
    }
}

/// Applies `plan`'s changes. A failed step stops the rest of its resource and everything
/// that depends on it; independent resources still run to the end.
pub async fn apply(engine: &Engine, plan: &Plan, reporter: &dyn Reporter) -> ApplyReport {
    let mut report = ApplyReport::default();
    // Resources that failed or were skipped, with the address that caused it.
    let mut broken: Vec<(String, String)> = Vec::new();

    for resource_plan in &plan.resources {
        let address = resource_plan.address.as_str();
        let blocked_by = engine
            .graph()
            .dependencies_of(address)
            .into_iter()
            .find_map(|dependency| {
                broken
                    .iter()
                    .find(|(resource, _)| *resource == dependency)
                    .map(|(_, cause)| cause.clone())
            });
        let Some(resource) = engine.resource(address) else {
            continue;
        };

        let mut failed_at: Option<String> = blocked_by;
        for change in &resource_plan.changes {
            if let Some(cause) = &failed_at {
                let result = StepResult {
                    address: change.address.clone(),
                    resource: address.to_string(),
                    status: StepStatus::Skipped {
                        blocked_by: cause.clone(),
                    },
                    duration_ms: 0,
                };
                reporter.step_finished(change, &result);
                report.steps.push(result);
                continue;
            }

            reporter.step_started(change);
            let started = Instant::now();
            let outcome = resource.apply(change).await;
            let status = match outcome {
                Ok(detail) => StepStatus::Applied { detail },
                Err(error) => {
                    failed_at = Some(change.address.clone());
                    StepStatus::Failed {
                        error: error_chain(error.as_ref()),
                    }
                }
            };
            let result = StepResult {
                address: change.address.clone(),
                resource: address.to_string(),
                status,
                duration_ms: duration_ms(started.elapsed()),
            };
            reporter.step_finished(change, &result);
            report.steps.push(result);
        }
        if let Some(cause) = failed_at {
            broken.push((address.to_string(), cause));
        }
    }

    let touched: BTreeSet<&str> = report.steps.iter().map(|s| s.resource.as_str()).collect();
    tracing::debug!(resources = touched.len(), "apply walked the plan");
    report
}

fn duration_ms(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
