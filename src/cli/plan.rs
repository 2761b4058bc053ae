use clap::Args;

use super::{Cli, Failure, Outcome, load_replacing};
use crate::render;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Force the replacement of an address now; `keyset.hmac` starts a key rotation now,
    /// or promotes a pending key now.
    #[arg(long, value_name = "ADDRESS")]
    pub replace: Vec<String>,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

pub async fn run(cli: &Cli, args: &PlanArgs) -> Result<Outcome, Failure> {
    let loaded = load_replacing(cli, &args.replace)?;
    let plan = loaded.engine.plan().await;
    loaded.close().await;

    anstream::print!("{}", render::human::plan(&plan));
    if !plan.is_ok() {
        return Err(Failure::Message(
            "the plan was refused; see the errors above".to_string(),
        ));
    }
    Ok(if plan.has_changes() && args.detailed_exitcode {
        Outcome::Changes
    } else {
        Outcome::Clean
    })
}
