//! The interface every concern implements, and the planner that drives it.
//!
//! The engine knows addresses, fingerprints and changes. It knows nothing about SQL, key
//! stores, SMTP or PromQL: each concern reads its own live state, compares it with its own
//! desired state and applies its own changes.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;

use crate::diagnostic::Diagnostics;
use crate::graph::{Dependency, Graph};
use crate::plan::{Change, Check, Fingerprint, Plan, ResourceFailure, ResourcePlan};

/// An error from a concern; its message names the back end and the address it used.
pub type ResourceError = Box<dyn std::error::Error + Send + Sync>;

/// Whatever a concern read from its live system. Only that concern looks inside.
pub type LiveState = Box<dyn Any + Send + Sync>;

/// The result of comparing desired with live state.
#[derive(Debug, Default)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
    pub checks: Vec<Check>,
    /// Reasons to refuse the plan outright; each names its file or record.
    pub refusals: Vec<String>,
    /// Out-of-band changes to what opsplan applied, for `opsplan drift`, which reports them
    /// apart from pending work. Drift does not stop a plan by itself: a concern whose drift
    /// must not be overwritten (an edited migration) also lists it in `refusals`; one whose
    /// drift apply corrects (settings edited by hand) shows the correcting change instead.
    pub drift: Vec<DriftItem>,
    pub live_summary: String,
}

/// Live state that moved away from what opsplan applied, found out of band.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DriftItem {
    /// The most precise address, e.g. `schema.migration["0001_create_users"]`.
    pub address: String,
    pub message: String,
}

/// One resource's live state, read and compared.
#[derive(Debug)]
pub struct Observation {
    pub address: String,
    pub kind: String,
    pub live_source: String,
    pub depends_on: Vec<String>,
    pub outcome: Result<(Fingerprint, Diff), String>,
}

/// Builds the plan from observations: refusals turn a resource into a failure.
pub fn plan_from(observations: Vec<Observation>) -> Plan {
    let mut plan = Plan::default();
    for observation in observations {
        match observation.outcome {
            Ok((fingerprint, diff)) if diff.refusals.is_empty() => {
                plan.resources.push(ResourcePlan {
                    address: observation.address,
                    kind: observation.kind,
                    live_source: observation.live_source,
                    live_summary: diff.live_summary,
                    fingerprint,
                    depends_on: observation.depends_on,
                    changes: diff.changes,
                    warnings: diff.warnings,
                    checks: diff.checks,
                });
            }
            Ok((_, diff)) => plan.failures.push(ResourceFailure {
                address: observation.address,
                messages: diff.refusals,
            }),
            Err(message) => plan.failures.push(ResourceFailure {
                address: observation.address,
                messages: vec![message],
            }),
        }
    }
    plan
}

/// Told about waits, so that the user sees who holds a lock.
pub trait LockObserver: Send + Sync {
    fn waiting(&self, address: &str, holder: &str);
}

/// One node of the dependency graph.
#[async_trait]
pub trait Resource: Send + Sync {
    /// A stable address such as `schema` or `keyset.hmac`.
    fn address(&self) -> &str;

    fn kind(&self) -> &'static str;

    /// Where live state is read, with credentials removed.
    fn live_source(&self) -> String;

    /// Edges to other resources, explicit (`depends_on`) and implicit.
    fn dependencies(&self) -> Vec<Dependency>;

    /// Checks that need no live system.
    fn validate(&self) -> Diagnostics;

    /// Takes the back end's writer lock, waiting at most `timeout`. Reads need no lock.
    async fn lock(
        &self,
        _timeout: Duration,
        _observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    async fn unlock(&self) {}

    async fn read(&self) -> Result<LiveState, ResourceError>;

    fn fingerprint(&self, live: &LiveState) -> Fingerprint;

    fn diff(&self, live: &LiveState) -> Result<Diff, ResourceError>;

    /// Carries out one change of this resource's plan and says what happened.
    async fn apply(&self, change: &Change) -> Result<String, ResourceError>;
}

/// The resources of one configuration and the graph over them.
pub struct Engine {
    resources: Vec<Arc<dyn Resource>>,
    graph: Graph,
}

impl Engine {
    pub fn new(resources: Vec<Arc<dyn Resource>>) -> Result<Engine, Diagnostics> {
        let addresses: Vec<String> = resources.iter().map(|r| r.address().to_string()).collect();
        let dependencies: Vec<Dependency> =
            resources.iter().flat_map(|r| r.dependencies()).collect();
        let graph = Graph::build(&addresses, &dependencies)?;
        Ok(Engine { resources, graph })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Resources in dependency order.
    pub fn resources(&self) -> Vec<Arc<dyn Resource>> {
        self.graph
            .order()
            .filter_map(|address| self.resource(address))
            .collect()
    }

    pub fn resource(&self, address: &str) -> Option<Arc<dyn Resource>> {
        self.resources
            .iter()
            .find(|r| r.address() == address)
            .cloned()
    }

    /// Every resource's offline checks, each concern on a thread of its own (splitting
    /// every migration and parsing every PromQL expression are independent), reported in
    /// resource order.
    pub fn validate(&self) -> Diagnostics {
        let found: Vec<Diagnostics> = std::thread::scope(|scope| {
            let checks: Vec<_> = self
                .resources()
                .into_iter()
                .map(|resource| scope.spawn(move || resource.validate()))
                .collect();
            checks
                .into_iter()
                .map(|check| {
                    check
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut problems = Diagnostics::default();
        for diagnostics in found {
            problems.extend(diagnostics);
        }
        problems
    }

    /// Reads every resource's live state concurrently, then diffs each one.
    pub async fn observe(&self) -> Vec<Observation> {
        self.observe_only(None).await
    }

    /// The resources that `targets` name (a resource's address, or an address inside it
    /// such as `schema.migration["0003_x"]`), with everything they depend on.
    pub fn targeted(&self, targets: &[String]) -> Result<BTreeSet<String>, String> {
        let mut selected = BTreeSet::new();
        for target in targets {
            let Some(resource) = self.resources.iter().find(|r| {
                let address = r.address();
                target == address
                    || target.starts_with(&format!("{address}."))
                    || target.starts_with(&format!("{address}["))
            }) else {
                let mut known: Vec<&str> = self.resources.iter().map(|r| r.address()).collect();
                known.sort_unstable();
                return Err(format!(
                    "--target {target} matches no resource; the configuration has {}",
                    known.join(", ")
                ));
            };
            let mut pending = vec![resource.address().to_string()];
            while let Some(address) = pending.pop() {
                if selected.insert(address.clone()) {
                    pending.extend(self.graph.dependencies_of(&address));
                }
            }
        }
        Ok(selected)
    }

    /// Like [`Engine::observe`], limited to `only` when given.
    pub async fn observe_only(&self, only: Option<&BTreeSet<String>>) -> Vec<Observation> {
        let ordered: Vec<Arc<dyn Resource>> = self
            .resources()
            .into_iter()
            .filter(|r| only.is_none_or(|only| only.contains(r.address())))
            .collect();
        // Each resource reads and diffs in a task of its own, so that one parsing files or
        // diffing many rules on a worker does not hold up another waiting on its server.
        let tasks = ordered.iter().map(|resource| {
            let resource = Arc::clone(resource);
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let live = resource.read().await;
                tracing::debug!(
                    address = resource.address(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    ok = live.is_ok(),
                    "read live state"
                );
                live.and_then(|live| {
                    let fingerprint = resource.fingerprint(&live);
                    resource.diff(&live).map(|diff| (fingerprint, diff))
                })
            })
        });
        let outcomes = join_all(tasks).await;

        ordered
            .iter()
            .zip(outcomes)
            .map(|(resource, outcome)| {
                let outcome = match outcome {
                    Ok(outcome) => outcome,
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    Err(error) => panic!("reading {} stopped: {error}", resource.address()),
                };
                Observation {
                    address: resource.address().to_string(),
                    kind: resource.kind().to_string(),
                    live_source: resource.live_source(),
                    depends_on: self.graph.dependencies_of(resource.address()),
                    outcome: outcome.map_err(|error| error_chain(error.as_ref())),
                }
            })
            .collect()
    }

    /// The plan: every resource's changes, or why it cannot be planned.
    pub async fn plan(&self) -> Plan {
        plan_from(self.observe().await)
    }

    /// Takes every resource's lock in address order, so two applies cannot deadlock.
    pub async fn lock_all(
        &self,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        self.lock_only(None, timeout, observer).await
    }

    /// Like [`Engine::lock_all`], limited to `only` when given (a saved plan locks what it
    /// will touch).
    pub async fn lock_only(
        &self,
        only: Option<&BTreeSet<String>>,
        timeout: Duration,
        observer: &dyn LockObserver,
    ) -> Result<(), ResourceError> {
        let mut by_address: Vec<Arc<dyn Resource>> = self
            .resources
            .iter()
            .filter(|r| only.is_none_or(|only| only.contains(r.address())))
            .cloned()
            .collect();
        by_address.sort_by(|a, b| a.address().cmp(b.address()));
        for (taken, resource) in by_address.iter().enumerate() {
            if let Err(error) = resource.lock(timeout, observer).await {
                for held in &by_address[..taken] {
                    held.unlock().await;
                }
                return Err(error);
            }
        }
        Ok(())
    }

    pub async fn unlock_all(&self) {
        for resource in &self.resources {
            resource.unlock().await;
        }
    }
}

/// An error and its sources on one line, each cause once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
