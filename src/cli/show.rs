use std::path::PathBuf;

use clap::Args;

use super::{Cli, Failure, Outcome, PlanFormat, print_plan};
use crate::plan::file::PlanDocument;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A plan saved with `opsplan plan --out FILE`.
    pub plan_file: PathBuf,

    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub format: PlanFormat,
}

pub fn run(_cli: &Cli, args: &ShowArgs) -> Result<Outcome, Failure> {
    let document = PlanDocument::load(&args.plan_file)
        .map_err(|error| Failure::Message(crate::engine::error_chain(&error)))?;
    print_plan(&document, args.format);
    Ok(Outcome::Clean)
}
