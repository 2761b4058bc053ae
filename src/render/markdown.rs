//! The plan as a pull-request comment: summary first, details folded, a Mermaid picture of
//! the changed part of the graph, and never more than GitHub's 65,536 characters.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::plan::file::PlanDocument;

/// GitHub refuses comments longer than this many characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// Room kept for the truncation notice and the closing lines.
const RESERVE: usize = 1_024;

pub fn plan(document: &PlanDocument) -> String {
    render(document, GITHUB_COMMENT_LIMIT)
}

pub fn render(document: &PlanDocument, limit: usize) -> String {
    let mut out = String::new();
    let counts = document.summary;

    let headline = if !document.errors.is_empty() {
        "❌ opsplan plan failed".to_string()
    } else if document.has_changes {
        format!(
            "opsplan plan: {} to add, {} to change, {} to destroy",
            counts.add, counts.change, counts.destroy
        )
    } else {
        "opsplan plan: no changes".to_string()
    };
    let _ = writeln!(out, "### {headline}\n");

    for failure in &document.errors {
        for message in &failure.messages {
            let _ = writeln!(
                out,
                "- **Error** `{}`: {}",
                failure.address,
                escape(message)
            );
        }
    }
    if !document.errors.is_empty() {
        out.push('\n');
    }

    out.push_str("| resource | changes | live state |\n|---|---|---|\n");
    for resource in &document.resources {
        let mut symbols: Vec<String> = Vec::new();
        for action in resource
            .changes
            .iter()
            .map(|c| c.action)
            .collect::<BTreeSet<_>>()
        {
            let count = resource
                .changes
                .iter()
                .filter(|c| c.action == action)
                .count();
            symbols.push(format!("`{}`{count}", action.symbol()));
        }
        let changes = if symbols.is_empty() {
            "none".to_string()
        } else {
            symbols.join(" ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {changes} | {} |",
            resource.address,
            escape(&resource.live_summary)
        );
    }
    out.push('\n');

    for resource in &document.resources {
        for warning in &resource.warnings {
            let _ = writeln!(
                out,
                "> **Warning** `{}`: {}",
                resource.address,
                escape(warning)
            );
        }
    }

    let changed: Vec<&str> = document
        .resources
        .iter()
        .filter(|r| !r.changes.is_empty())
        .map(|r| r.address.as_str())
        .collect();
    if !changed.is_empty() {
        out.push_str(&mermaid(document, &changed));
    }

    let total: usize = document.resources.iter().map(|r| r.changes.len()).sum();
    let mut shown = 0usize;
    let mut truncated = false;
    'resources: for resource in document.resources.iter().filter(|r| !r.changes.is_empty()) {
        let opening = format!(
            "<details><summary>{} change(s) to <code>{}</code></summary>\n\n```diff\n",
            resource.changes.len(),
            resource.address
        );
        let closing = "```\n\n</details>\n\n";
        if out.len() + opening.len() + closing.len() + RESERVE > limit {
            truncated = true;
            break;
        }
        out.push_str(&opening);
        for change in &resource.changes {
            let block = change_block(change);
            if out.len() + block.len() + closing.len() + RESERVE > limit {
                truncated = true;
                out.push_str(closing);
                break 'resources;
            }
            out.push_str(&block);
            shown += 1;
        }
        out.push_str(closing);
    }

    if truncated {
        let _ = writeln!(
            out,
            "**Truncated:** {shown} of {total} change(s) are shown; {} more were cut to stay \
             under GitHub's {GITHUB_COMMENT_LIMIT}-character comment limit. Run `opsplan show \
             <plan file>` for the whole plan.\n",
            total - shown
        );
    }
    out
}

fn change_block(change: &crate::plan::Change) -> String {
    let mut block = format!(
        "{} {}  # {}\n",
        change.action.symbol(),
        change.address,
        change.summary.replace('\n', " ")
    );
    for attribute in &change.attributes {
        let value = match (&attribute.before, &attribute.after) {
            (Some(before), Some(after)) => format!("{before} -> {after}"),
            (None, Some(after)) => after.clone(),
            (Some(before), None) => format!("{before} -> (none)"),
            (None, None) => "(none)".to_string(),
        };
        let _ = writeln!(
            block,
            "    {} = {}",
            attribute.name,
            value.replace("```", "'''")
        );
    }
    block
}

/// The changed resources and their direct neighbours.
fn mermaid(document: &PlanDocument, changed: &[&str]) -> String {
    let id = |address: &str| address.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mut nodes: BTreeSet<&str> = changed.iter().copied().collect();
    let mut edges = Vec::new();
    for resource in &document.resources {
        for dependency in &resource.depends_on {
            if nodes.contains(resource.address.as_str()) || nodes.contains(dependency.as_str()) {
                edges.push((dependency.as_str(), resource.address.as_str()));
            }
        }
    }
    for (a, b) in &edges {
        nodes.insert(a);
        nodes.insert(b);
    }
    let mut out = String::from("```mermaid\nflowchart LR\n");
    for node in &nodes {
        let count = document
            .resources
            .iter()
            .find(|r| r.address == *node)
            .map_or(0, |r| r.changes.len());
        let label = if count > 0 {
            format!("{node} ({count})")
        } else {
            (*node).to_string()
        };
        let _ = writeln!(out, "  {}[\"{}\"]", id(node), label.replace('"', "'"));
        if count > 0 {
            let _ = writeln!(out, "  style {} stroke-width:3px", id(node));
        }
    }
    for (a, b) in edges {
        let _ = writeln!(out, "  {} --> {}", id(a), id(b));
    }
    out.push_str("```\n\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
