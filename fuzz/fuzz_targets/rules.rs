//! Prometheus rule files as opsplan reads them from disk: parsing, locating groups and
//! rules, the offline checks, and the normal form that plans compare. A group that passes
//! the checks survives being written and read back without showing as changed.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use opsplan::alerts::check::{bare_durations, check_groups, parse_expr};
use opsplan::alerts::rules::{
    SourcedGroup, YamlScalar, locate, normalize, parse_file, render_file, render_group,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse_file(text) else {
        return;
    };

    let origin = Path::new("fuzz.rules.yml");
    let places = locate(origin, text, &file);
    assert_eq!(places.len(), file.groups.len());
    let groups: Vec<SourcedGroup> = file
        .groups
        .iter()
        .cloned()
        .zip(places)
        .map(|(group, (location, rule_locations))| {
            assert_eq!(rule_locations.len(), group.rules.len());
            SourcedGroup {
                namespace: "fuzz.rules.yml".to_string(),
                origin: origin.to_path_buf(),
                group,
                location,
                rule_locations,
            }
        })
        .collect();
    let _ = check_groups(&groups).to_string();

    for sourced in &groups {
        for rule in &sourced.group.rules {
            let expr = rule.expr.as_ref().map(YamlScalar::text).unwrap_or_default();
            let _ = bare_durations(&expr);
            let _ = parse_expr(&expr);
        }

        let rendered = render_group(&sourced.group);
        if !check_groups(std::slice::from_ref(sourced)).is_empty() {
            continue;
        }
        // What apply writes, the next plan reads back: it must compare equal.
        let read_back = parse_file(&rendered).unwrap_or_else(|(error, _)| {
            panic!("opsplan cannot read the group it wrote: {error}\n{rendered}")
        });
        assert_eq!(read_back.groups.len(), 1, "{rendered}");
        assert_eq!(
            normalize(&read_back.groups[0]),
            normalize(&sourced.group),
            "a written group reads back as changed:\n{rendered}"
        );
    }
    let _ = render_file(&file.groups);
});
