//! Drift of the key set: how the store moved away from what opsplan last published.
//!
//! opsplan's record of what it published is `opsplan_metadata`: the ids of the keys in
//! published order, their states, and a digest of that record. From it alone follows what
//! `HMAC_SECRETS` (every id, in order) and `HMAC_SECRET` (the primary) held. A finding is
//! refused when correcting it would change which key signs or bring back a key nobody
//! has any more; otherwise apply corrects it by publishing the keys that are left in
//! opsplan's order again.

use std::collections::BTreeMap;

use super::keys::{
    KeyRecord, KeyState, LiveKeys, METADATA_FIELD, Metadata, SECRET_FIELD, SECRETS_FIELD, key_id,
};
use crate::plan::Attribute;
use crate::store::Document;

/// One way the store moved away from what opsplan published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub message: String,
    /// Apply must not go on from this state by itself; `--replace keyset.hmac` accepts it.
    pub refused: bool,
    /// What a correcting apply shows for it.
    pub correction: Option<Attribute>,
}

impl Finding {
    fn refused(message: String) -> Finding {
        Finding {
            message,
            refused: true,
            correction: None,
        }
    }

    fn corrected(message: String, correction: Attribute) -> Finding {
        Finding {
            message,
            refused: false,
            correction: Some(correction),
        }
    }
}

/// Every finding for the stored `document`, whose keys were read into `live`.
pub fn findings(document: Option<&Document>, live: &LiveKeys) -> Vec<Finding> {
    let Some(document) = document else {
        return Vec::new();
    };
    if document.fields.is_empty()
        && let Some(version) = document.version
    {
        return vec![Finding::refused(format!(
            "the secret was deleted outside opsplan: its latest version ({version}) has no \
             data, so the application has no key"
        ))];
    }
    let Some(metadata) = document
        .get(METADATA_FIELD)
        .and_then(|text| serde_json::from_str::<Metadata>(text.expose()).ok())
    else {
        // Keys opsplan never published (or whose record is unreadable) are adopted.
        return Vec::new();
    };

    let mut found = Vec::new();
    if metadata.intact() == Some(false) {
        found.push(Finding::refused(format!(
            "{METADATA_FIELD} was edited outside opsplan: its digest no longer matches the \
             key states and times it holds"
        )));
    }

    let records: BTreeMap<&str, &KeyRecord> =
        metadata.keys.iter().map(|r| (r.id.as_str(), r)).collect();
    let live_ids: Vec<&str> = live.keys.iter().map(|k| k.id.as_str()).collect();
    let recorded_primary = metadata
        .keys
        .iter()
        .find(|r| r.state == KeyState::Primary)
        .map(|r| r.id.as_str());

    for record in &metadata.keys {
        if live_ids.contains(&record.id.as_str()) {
            continue;
        }
        let message = format!(
            "{} key {} was removed from {SECRETS_FIELD} outside opsplan",
            record.state.name(),
            record.id
        );
        if record.state == KeyState::Primary {
            found.push(Finding::refused(format!(
                "{message}; the application {}",
                match live_ids.first() {
                    Some(first) =>
                        format!("now signs with {first}, which opsplan did not make primary"),
                    None => "has no key left to sign with".to_string(),
                }
            )));
        } else {
            found.push(Finding::corrected(
                message,
                Attribute::changed(
                    &format!("key {}", record.id),
                    format!("{} (removed outside opsplan)", record.state.name()),
                    "forgotten",
                ),
            ));
        }
    }

    for (index, id) in live_ids.iter().enumerate() {
        if records.contains_key(id) || index == 0 {
            continue;
        }
        found.push(Finding::corrected(
            format!(
                "key {id} was added to {SECRETS_FIELD} outside opsplan (position {})",
                index + 1
            ),
            Attribute::changed(
                &format!("key {id}"),
                "added outside opsplan",
                "retired (verifies; age unknown)",
            ),
        ));
    }

    // Who signs: the first key of the list, which must be the primary opsplan published.
    let first = live_ids.first().copied();
    if let (Some(first), Some(primary)) = (first, recorded_primary)
        && first != primary
        && live_ids.contains(&primary)
    {
        found.push(Finding::refused(format!(
            "{SECRETS_FIELD} was edited outside opsplan: {first} is first, so the application \
             signs with it, but opsplan published {primary} as primary"
        )));
    }
    if let Some(first) = first
        && !records.contains_key(first)
        && recorded_primary.is_some_and(|primary| !live_ids.contains(&primary))
    {
        found.push(Finding::refused(format!(
            "key {first} was added to {SECRETS_FIELD} outside opsplan as its first key, so \
             the application signs with it"
        )));
    }

    // The order of the keys that only verify: harmless, and put back by apply.
    let recorded_order: Vec<&str> = metadata
        .keys
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| live_ids.contains(id))
        .collect();
    let live_order: Vec<&str> = live_ids
        .iter()
        .copied()
        .filter(|id| records.contains_key(id))
        .collect();
    if recorded_order != live_order && recorded_order.first() == live_order.first() {
        found.push(Finding::corrected(
            format!("{SECRETS_FIELD} was reordered outside opsplan"),
            Attribute::changed(
                SECRETS_FIELD,
                "order edited",
                "primary, pending, retired order (values hidden)",
            ),
        ));
    }

    if document.get(SECRETS_FIELD).is_none() && !metadata.keys.is_empty() {
        found.push(Finding::corrected(
            format!("{SECRETS_FIELD} was removed outside opsplan"),
            Attribute::changed(SECRETS_FIELD, "absent", "published again (values hidden)"),
        ));
    }

    // HMAC_SECRET is the primary; opsplan always publishes it beside the list.
    let single = document
        .get(SECRET_FIELD)
        .map(|s| key_id(s.expose().trim()));
    match (single, first) {
        (None, Some(first)) if recorded_primary.is_some() => found.push(Finding::corrected(
            format!("{SECRET_FIELD} was removed outside opsplan"),
            Attribute::changed(
                SECRET_FIELD,
                "absent",
                format!("key {first} (value hidden)"),
            ),
        )),
        (Some(single), Some(first)) if single != first => found.push(Finding::corrected(
            format!(
                "{SECRET_FIELD} was edited outside opsplan: it holds key {single}, not the \
                 first key of {SECRETS_FIELD}, {first}"
            ),
            Attribute::changed(
                SECRET_FIELD,
                format!("key {single}"),
                format!("key {first} (value hidden)"),
            ),
        )),
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyset::parse_document;
    use crate::secret::Secret;
    use chrono::Utc;

    const A: &str = "key-a-0123456789abcdef0123456789";
    const B: &str = "key-b-0123456789abcdef0123456789";
    const C: &str = "key-c-0123456789abcdef0123456789";

    /// What opsplan publishes for `keys` (primary first), as a document.
    fn published(keys: &[(&str, KeyState)]) -> Document {
        let keys: Vec<super::super::keys::Key> = keys
            .iter()
            .map(|(material, state)| super::super::keys::Key {
                id: key_id(material),
                material: Secret::new(*material),
                state: *state,
                created_at: Some(Utc::now()),
                since: Some(Utc::now()),
            })
            .collect();
        Document {
            fields: LiveKeys::fields_for(&keys, &BTreeMap::new()),
            version: None,
        }
    }

    fn edited(mut document: Document, field: &str, value: &str) -> Document {
        document
            .fields
            .insert(field.to_string(), Secret::new(value));
        document
    }

    fn found(document: &Document) -> Vec<(String, bool)> {
        let live = parse_document(Some(document), false).unwrap();
        findings(Some(document), &live)
            .into_iter()
            .map(|f| (f.message, f.refused))
            .collect()
    }

    #[test]
    fn what_opsplan_published_is_no_drift() {
        let document = published(&[(A, KeyState::Primary), (B, KeyState::Retired)]);
        assert!(found(&document).is_empty());
    }

    #[test]
    fn keys_added_after_the_first_are_corrected_before_it_refused() {
        let document = published(&[(A, KeyState::Primary), (B, KeyState::Retired)]);
        let added = edited(document.clone(), SECRETS_FIELD, &format!("{A},{B},{C}"));
        assert_eq!(
            found(&added),
            [(
                format!(
                    "key {} was added to HMAC_SECRETS outside opsplan (position 3)",
                    key_id(C)
                ),
                false
            )]
        );
        let first = edited(document, SECRETS_FIELD, &format!("{C},{A},{B}"));
        let first = edited(first, SECRET_FIELD, C);
        assert_eq!(
            found(&first),
            [(
                format!(
                    "HMAC_SECRETS was edited outside opsplan: {} is first, so the application \
                     signs with it, but opsplan published {} as primary",
                    key_id(C),
                    key_id(A)
                ),
                true
            )]
        );
    }

    #[test]
    fn verify_only_keys_reordered_are_corrected() {
        let document = published(&[
            (A, KeyState::Primary),
            (B, KeyState::Pending),
            (C, KeyState::Retired),
        ]);
        let reordered = edited(document, SECRETS_FIELD, &format!("{A},{C},{B}"));
        assert_eq!(
            found(&reordered),
            [(
                "HMAC_SECRETS was reordered outside opsplan".to_string(),
                false
            )]
        );
    }
}
