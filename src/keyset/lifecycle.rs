//! When keys move: pending → primary → retired → removed, at most one state per apply.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{Key, KeyState, LiveKeys, shown_duration, shown_time};
use crate::config::KeysetConfig;
use crate::plan::Attribute;

/// The rotation policy, from `[keyset]`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub min_key_length: usize,
    pub rotate_after: TimeDelta,
    pub pending_for: TimeDelta,
    pub retired_for: TimeDelta,
    pub retired_max: usize,
}

impl Policy {
    pub fn from_config(config: &KeysetConfig) -> Policy {
        let delta = |d: std::time::Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        Policy {
            min_key_length: config.min_key_length,
            rotate_after: delta(config.rotate_after),
            pending_for: delta(config.pending_for),
            retired_for: delta(config.retired_for),
            retired_max: config.retired_max,
        }
    }
}

/// One planned move. Key material is never part of it: a new key is drawn at apply time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Draw a new key and publish it in `state`.
    Generate { state: KeyState },
    /// Pending → primary.
    Promote { id: String },
    /// Primary → retired.
    Retire { id: String },
    /// Retired → no longer published.
    Remove { id: String },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Generate { state } => write!(f, "generate a new {} key", state.name()),
            Step::Promote { id } => write!(f, "promote {id} to primary"),
            Step::Retire { id } => write!(f, "retire {id}"),
            Step::Remove { id } => write!(f, "remove retired key {id}"),
        }
    }
}

/// The steps of one apply, and how the plan shows them.
#[derive(Debug, Default)]
pub struct Planned {
    pub steps: Vec<Step>,
    pub summary: String,
    pub attributes: Vec<Attribute>,
}

fn due(since: Option<DateTime<Utc>>, after: TimeDelta) -> Option<DateTime<Utc>> {
    since.and_then(|since| since.checked_add_signed(after))
}

fn age(key: &Key, now: DateTime<Utc>) -> String {
    match key.created_at {
        Some(created) => format!("age {}", shown_duration(now - created)),
        None => "age unknown".to_string(),
    }
}

fn since_text(key: &Key) -> String {
    match key.since {
        Some(since) => format!("since {}", shown_time(since)),
        None => "since an unknown time".to_string(),
    }
}

/// What is due at `now`. `force` (`--replace keyset.hmac`) starts a rotation now, or, when a
/// new key is already pending, promotes it now.
pub fn plan_steps(live: &LiveKeys, policy: &Policy, now: DateTime<Utc>, force: bool) -> Planned {
    let mut planned = Planned::default();
    let keys = &live.keys;

    if keys.is_empty() {
        planned.steps.push(Step::Generate {
            state: KeyState::Primary,
        });
        planned.attributes.push(Attribute::added(
            "key (new)",
            "primary: drawn from the OS random source at apply time",
        ));
        planned.attributes.push(Attribute::changed(
            super::SECRETS_FIELD,
            "absent",
            "1 key (value hidden)",
        ));
        planned.summary = "create the key set with a new primary key".to_string();
        return planned;
    }

    let primary = keys.iter().find(|k| k.state == KeyState::Primary);
    let pending = keys
        .iter()
        .filter(|k| k.state == KeyState::Pending)
        .max_by_key(|k| k.since);
    let mut summary = Vec::new();
    let mut moved: Vec<&str> = Vec::new();
    let mut primary_changes = false;

    match (primary, pending) {
        (Some(primary), Some(pending)) => {
            let promote_at = due(pending.since, policy.pending_for);
            let is_due = promote_at.is_none_or(|at| at <= now);
            if force || is_due {
                let reason = if is_due {
                    match promote_at {
                        Some(at) => format!("due {}", shown_time(at)),
                        None => "time unknown".to_string(),
                    }
                } else {
                    "forced by --replace".to_string()
                };
                planned.steps.push(Step::Promote {
                    id: pending.id.clone(),
                });
                planned.attributes.push(Attribute::changed(
                    &format!("key {}", pending.id),
                    format!(
                        "pending {} ({}; {reason})",
                        since_text(pending),
                        age(pending, now)
                    ),
                    "primary",
                ));
                planned.steps.push(Step::Retire {
                    id: primary.id.clone(),
                });
                planned.attributes.push(Attribute::changed(
                    &format!("key {}", primary.id),
                    format!("primary {} ({})", since_text(primary), age(primary, now)),
                    format!(
                        "retired (verifies until {})",
                        shown_time(now + policy.retired_for)
                    ),
                ));
                summary.push(format!(
                    "promote {} to primary, retire {}",
                    pending.id, primary.id
                ));
                moved.push(&pending.id);
                moved.push(&primary.id);
                primary_changes = true;
            }
        }
        (Some(primary), None) => {
            let rotate_at = due(primary.since, policy.rotate_after);
            let too_short = primary.material.expose().len() < policy.min_key_length;
            let is_due = rotate_at.is_some_and(|at| at <= now);
            if force || is_due || too_short {
                let reason = if force {
                    "forced by --replace".to_string()
                } else if too_short {
                    "primary is shorter than min_key_length".to_string()
                } else {
                    format!(
                        "primary {} ({}), rotation due {}",
                        since_text(primary),
                        age(primary, now),
                        rotate_at.map(shown_time).unwrap_or_default()
                    )
                };
                planned.steps.push(Step::Generate {
                    state: KeyState::Pending,
                });
                planned.attributes.push(Attribute::added(
                    "key (new)",
                    format!(
                        "pending: drawn from the OS random source at apply time, verifies \
                         at once, becomes primary after {} ({reason})",
                        humantime::format_duration(policy.pending_for.to_std().unwrap_or_default())
                    ),
                ));
                summary.push("publish a new pending key".to_string());
            }
        }
        (None, Some(pending)) => {
            planned.steps.push(Step::Promote {
                id: pending.id.clone(),
            });
            planned.attributes.push(Attribute::changed(
                &format!("key {}", pending.id),
                format!("pending {} (no key is primary)", since_text(pending)),
                "primary",
            ));
            summary.push(format!("promote {} to primary", pending.id));
            moved.push(&pending.id);
            primary_changes = true;
        }
        (None, None) => {
            planned.steps.push(Step::Generate {
                state: KeyState::Primary,
            });
            planned.attributes.push(Attribute::added(
                "key (new)",
                "primary: drawn from the OS random source at apply time (no key is primary)",
            ));
            summary.push("publish a new primary key".to_string());
            primary_changes = true;
        }
    }

    // Retired keys: removed when their time is over, or when there are more than allowed,
    // oldest first. A key retired by this very apply is never removed in it.
    let mut retired: Vec<&Key> = keys
        .iter()
        .filter(|k| k.state == KeyState::Retired)
        .collect();
    retired.sort_by_key(|k| std::cmp::Reverse(k.since));
    let newly_retired = usize::from(primary_changes && primary.is_some());
    let mut removed = Vec::new();
    for (rank, key) in retired.iter().enumerate() {
        if moved.contains(&key.id.as_str()) {
            continue;
        }
        let remove_at = due(key.since, policy.retired_for);
        let expired = remove_at.is_some_and(|at| at <= now);
        let over_count = rank + newly_retired >= policy.retired_max;
        if expired || over_count {
            let reason = if expired {
                format!("due {}", remove_at.map(shown_time).unwrap_or_default())
            } else {
                format!("more than retired_max = {}", policy.retired_max)
            };
            planned.steps.push(Step::Remove { id: key.id.clone() });
            planned.attributes.push(Attribute::changed(
                &format!("key {}", key.id),
                format!("retired {} ({}; {reason})", since_text(key), age(key, now)),
                "removed",
            ));
            removed.push(key.id.clone());
        }
    }
    if !removed.is_empty() {
        summary.push(format!("remove retired key(s) {}", removed.join(", ")));
    }

    if planned.steps.is_empty() {
        return planned;
    }
    let before = keys.len();
    let generated = planned
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Generate { .. }))
        .count();
    let after = before + generated - removed.len();
    planned.attributes.push(Attribute::changed(
        super::SECRETS_FIELD,
        format!("{before} key{}", plural(before)),
        format!(
            "{after} key{}, primary {} (values hidden)",
            plural(after),
            if primary_changes {
                "changed"
            } else {
                "unchanged"
            }
        ),
    ));
    planned.summary = summary.join("; ");
    planned
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One line: every key with its state, age and what happens next.
pub fn live_summary(live: &LiveKeys, policy: &Policy, now: DateTime<Utc>) -> String {
    if live.absent || live.keys.is_empty() {
        return "no keys stored".to_string();
    }
    let described: Vec<String> = super::keys::publication_order(&live.keys)
        .iter()
        .map(|key| {
            let next = match key.state {
                KeyState::Primary => due(key.since, policy.rotate_after)
                    .map(|at| format!(", rotation due {}", shown_time(at))),
                KeyState::Pending => due(key.since, policy.pending_for)
                    .map(|at| format!(", primary from {}", shown_time(at))),
                KeyState::Retired => due(key.since, policy.retired_for)
                    .map(|at| format!(", removed from {}", shown_time(at))),
            };
            format!(
                "{} {} ({}{})",
                key.state.name(),
                key.id,
                age(key, now),
                next.unwrap_or_default()
            )
        })
        .collect();
    let mut text = format!(
        "{} key{}: {}",
        live.keys.len(),
        plural(live.keys.len()),
        described.join(", ")
    );
    if !live.has_metadata {
        text.push_str("; no opsplan metadata (ages unknown)");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn policy() -> Policy {
        Policy {
            min_key_length: 8,
            rotate_after: TimeDelta::days(90),
            pending_for: TimeDelta::days(1),
            retired_for: TimeDelta::days(30),
            retired_max: 2,
        }
    }

    fn key(id: &str, state: KeyState, since: DateTime<Utc>) -> Key {
        Key {
            id: id.to_string(),
            material: Secret::new(format!("material-{id}-0123456789")),
            state,
            created_at: Some(since),
            since: Some(since),
        }
    }

    fn live(keys: Vec<Key>) -> LiveKeys {
        LiveKeys {
            keys,
            has_metadata: true,
            ..LiveKeys::default()
        }
    }

    #[test]
    fn each_key_moves_at_most_one_state_and_only_when_due() {
        let now = Utc::now();
        let fresh = live(vec![key("a", KeyState::Primary, now - TimeDelta::days(10))]);
        assert!(plan_steps(&fresh, &policy(), now, false).steps.is_empty());

        let due = live(vec![key("a", KeyState::Primary, now - TimeDelta::days(91))]);
        assert_eq!(
            plan_steps(&due, &policy(), now, false).steps,
            [Step::Generate {
                state: KeyState::Pending
            }]
        );

        // Promotion retires the old primary in the same write, and never removes it there;
        // the oldest retired key goes once more than retired_max would stay.
        let rotating = live(vec![
            key("b", KeyState::Primary, now - TimeDelta::days(91)),
            key("c", KeyState::Pending, now - TimeDelta::hours(25)),
            key("r1", KeyState::Retired, now - TimeDelta::days(5)),
            key("r2", KeyState::Retired, now - TimeDelta::days(6)),
        ]);
        let planned = plan_steps(&rotating, &policy(), now, false);
        assert_eq!(
            planned.steps,
            [
                Step::Promote { id: "c".into() },
                Step::Retire { id: "b".into() },
                Step::Remove { id: "r2".into() },
            ]
        );
        assert_eq!(
            planned.summary,
            "promote c to primary, retire b; remove retired key(s) r2"
        );
    }

    #[test]
    fn force_starts_a_rotation_or_promotes_at_once() {
        let now = Utc::now();
        let calm = live(vec![key("a", KeyState::Primary, now)]);
        assert_eq!(
            plan_steps(&calm, &policy(), now, true).steps,
            [Step::Generate {
                state: KeyState::Pending
            }]
        );
        let pending = live(vec![
            key("a", KeyState::Primary, now),
            key("b", KeyState::Pending, now),
        ]);
        assert!(plan_steps(&pending, &policy(), now, false).steps.is_empty());
        assert_eq!(
            plan_steps(&pending, &policy(), now, true).steps,
            [
                Step::Promote { id: "b".into() },
                Step::Retire { id: "a".into() }
            ]
        );
    }

    #[test]
    fn legacy_keys_without_times_are_not_due_but_a_short_primary_is() {
        let now = Utc::now();
        let mut legacy = live(vec![Key {
            id: "a".into(),
            material: Secret::new("0123456789abcdef"),
            state: KeyState::Primary,
            created_at: None,
            since: None,
        }]);
        legacy.has_metadata = false;
        assert!(plan_steps(&legacy, &policy(), now, false).steps.is_empty());
        let strict = Policy {
            min_key_length: 32,
            ..policy()
        };
        let planned = plan_steps(&legacy, &strict, now, false);
        assert_eq!(
            planned.steps,
            [Step::Generate {
                state: KeyState::Pending
            }]
        );
        assert!(
            planned.attributes[0]
                .after
                .as_deref()
                .unwrap()
                .contains("primary is shorter than min_key_length")
        );
    }
}
