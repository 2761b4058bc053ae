use super::{Cli, Failure, Outcome, load};

pub async fn run(cli: &Cli) -> Result<Outcome, Failure> {
    let loaded = load(cli)?;
    let resources = loaded.engine.resources();
    println!(
        "{} is valid: {} resource(s) ({}).",
        cli.config.display(),
        resources.len(),
        resources
            .iter()
            .map(|r| r.address().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Outcome::Clean)
}
