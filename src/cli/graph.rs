use clap::{Args, ValueEnum};

use super::{Cli, Failure, Outcome, load};

#[derive(Debug, Args)]
pub struct GraphArgs {
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    pub format: GraphFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
}

pub async fn run(cli: &Cli, args: &GraphArgs) -> Result<Outcome, Failure> {
    let loaded = load(cli)?;
    let graph = loaded.engine.graph();
    let nodes: Vec<&str> = graph.order().collect();
    let edges = graph.edges();
    let text = match args.format {
        GraphFormat::Dot => {
            let mut out = String::from("digraph opsplan {\n  rankdir = LR;\n");
            for node in &nodes {
                out.push_str(&format!("  \"{node}\";\n"));
            }
            for (from, to) in &edges {
                out.push_str(&format!("  \"{from}\" -> \"{to}\";\n"));
            }
            out.push_str("}\n");
            out
        }
        GraphFormat::Mermaid => {
            let id = |address: &str| address.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let mut out = String::from("flowchart LR\n");
            for node in &nodes {
                out.push_str(&format!("  {}[\"{node}\"]\n", id(node)));
            }
            for (from, to) in &edges {
                out.push_str(&format!("  {} --> {}\n", id(from), id(to)));
            }
            out
        }
    };
    print!("{text}");
    Ok(Outcome::Clean)
}
