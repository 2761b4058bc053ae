use super::{Cli, Failure, Outcome};

const EXAMPLE: &str = include_str!("../../ops.toml.example");

pub fn run(cli: &Cli) -> Result<Outcome, Failure> {
    if cli.config.exists() {
        return Err(Failure::Message(format!(
            "{} already exists; opsplan init never overwrites a configuration",
            cli.config.display()
        )));
    }
    std::fs::write(&cli.config, EXAMPLE).map_err(|error| {
        Failure::Message(format!("cannot write {}: {error}", cli.config.display()))
    })?;
    println!(
        "Wrote {}. It runs as it is: SQLite under .opsplan/, migrations from db/migrations.\n\
         Next: opsplan plan",
        cli.config.display()
    );
    Ok(Outcome::Clean)
}
