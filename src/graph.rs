//! Resources and the edges between them: dependency order and cycle detection.

use std::collections::HashMap;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diagnostic::{Diagnostic, Diagnostics, Location};

/// One declared edge: `from` needs `to` to be applied first.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub from: String,
    pub to: String,
    /// Where the edge was written; `None` for implicit edges.
    pub declared_at: Option<Location>,
}

impl Dependency {
    /// The edges a section's `depends_on` list declares for the resource at `from`.
    pub fn declared(from: &str, depends_on: &[(String, Option<Location>)]) -> Vec<Dependency> {
        depends_on
            .iter()
            .map(|(to, at)| Dependency {
                from: from.to_string(),
                to: to.clone(),
                declared_at: at.clone(),
            })
            .collect()
    }
}

/// The dependency graph over resource addresses. Edges point from a dependency to the
/// resources that need it, so a topological order is an apply order.
#[derive(Debug, Clone)]
pub struct Graph {
    graph: DiGraph<String, ()>,
    order: Vec<NodeIndex>,
}

impl Graph {
    pub fn build(addresses: &[String], dependencies: &[Dependency]) -> Result<Graph, Diagnostics> {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for address in addresses {
            index.insert(address.clone(), graph.add_node(address.clone()));
        }

        let mut problems = Diagnostics::default();
        for dependency in dependencies {
            let Some(&to) = index.get(&dependency.to) else {
                let mut known: Vec<&str> = addresses.iter().map(String::as_str).collect();
                known.sort_unstable();
                problems.push(Diagnostic {
                    location: dependency.declared_at.clone(),
                    message: format!(
                        "{} depends on `{}`, which is not a resource in this configuration",
                        dependency.from, dependency.to
                    ),
                    help: Some(format!("known resources: {}", known.join(", "))),
                });
                continue;
            };
            let from = index[&dependency.from];
            graph.update_edge(to, from, ());
        }
        if !problems.is_empty() {
            return Err(problems);
        }

        match toposort(&graph, None) {
            Ok(order) => Ok(Graph { graph, order }),
            Err(_) => {
                let cycle = find_cycle(&graph);
                let path = cycle
                    .iter()
                    .map(|node| graph[*node].as_str())
                    .collect::<Vec<_>>()
                    .join(" -> ");
                let declared_at = dependencies
                    .iter()
                    .find(|d| cycle.iter().any(|node| graph[*node] == d.from))
                    .and_then(|d| d.declared_at.clone());
                Err(Diagnostics(vec![Diagnostic {
                    location: declared_at,
                    message: format!("dependency cycle: {path}"),
                    help: Some("remove one of these depends_on entries".to_string()),
                }]))
            }
        }
    }

    /// Addresses in an order where every resource comes after what it depends on.
    pub fn order(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|node| self.graph[*node].as_str())
    }

    /// The resources that `address` depends on directly.
    pub fn dependencies_of(&self, address: &str) -> Vec<String> {
        let Some(node) = self.node(address) else {
            return Vec::new();
        };
        let mut found: Vec<String> = self
            .graph
            .neighbors_directed(node, petgraph::Direction::Incoming)
            .map(|n| self.graph[n].clone())
            .collect();
        found.sort();
        found
    }

    /// Every edge as (dependency, dependent), for drawing.
    pub fn edges(&self) -> Vec<(String, String)> {
        let mut edges: Vec<_> = self
            .graph
            .edge_indices()
            .filter_map(|edge| self.graph.edge_endpoints(edge))
            .map(|(a, b)| (self.graph[a].clone(), self.graph[b].clone()))
            .collect();
        edges.sort();
        edges
    }

    fn node(&self, address: &str) -> Option<NodeIndex> {
        self.graph
            .node_indices()
            .find(|node| self.graph[*node] == address)
    }
}

/// A closed path through one strongly connected component, printed in dependency
/// direction (`a -> b` means a needs b) and ending where it started.
fn find_cycle(graph: &DiGraph<String, ()>) -> Vec<NodeIndex> {
    for component in tarjan_scc(graph) {
        let start = component[0];
        let is_cycle = component.len() > 1 || graph.contains_edge(start, start);
        if !is_cycle {
            continue;
        }
        // Walk backwards along edges (dependent -> dependency) inside the component.
        let mut path = vec![start];
        let mut current = start;
        loop {
            let next = graph
                .neighbors_directed(current, petgraph::Direction::Incoming)
                .find(|n| component.contains(n) && (!path.contains(n) || *n == start))
                .unwrap_or(start);
            path.push(next);
            if next == start {
                return path;
            }
            current = next;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(from: &str, to: &str) -> Dependency {
        Dependency {
            from: from.into(),
            to: to.into(),
            declared_at: None,
        }
    }

    #[test]
    fn orders_dependencies_first() {
        let addresses = vec!["alerts".to_string(), "schema".into(), "keyset".into()];
        let graph = Graph::build(&addresses, &[dep("alerts", "schema")]).unwrap();
        let order: Vec<_> = graph.order().collect();
        let position = |a: &str| order.iter().position(|x| *x == a).unwrap();
        assert!(position("schema") < position("alerts"));
        assert_eq!(graph.dependencies_of("alerts"), ["schema"]);
    }

    #[test]
    fn a_cycle_is_printed_as_a_path() {
        let addresses = vec!["a".to_string(), "b".into(), "c".into()];
        let error = Graph::build(&addresses, &[dep("a", "b"), dep("b", "c"), dep("c", "a")])
            .unwrap_err()
            .to_string();
        assert!(
            ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]
                .iter()
                .any(|path| error.contains(path)),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_dependency_names_the_known_ones() {
        let addresses = vec!["schema".to_string()];
        let error = Graph::build(&addresses, &[dep("schema", "keyset.hmac")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`keyset.hmac`, which is not a resource"),
            "{error}"
        );
        assert!(error.contains("known resources: schema"), "{error}");
    }
}
