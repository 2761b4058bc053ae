use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use opsplan::cli::{Cli, ColorMode};

fn main() -> ExitCode {
    let cli = Cli::parse();

    let choice = match cli.color {
        ColorMode::Auto => anstream::ColorChoice::Auto,
        ColorMode::Always => anstream::ColorChoice::Always,
        ColorMode::Never => anstream::ColorChoice::Never,
    };
    choice.write_global();

    let default_filter = match (cli.quiet, cli.verbose) {
        // The Vault client logs every refused request; opsplan reports them itself.
        (true, _) => "error,rustify=off,vaultrs=off",
        (false, 0) => "warn,rustify=off,vaultrs=off",
        (false, 1) => "warn,opsplan=debug,rustify=off,vaultrs=off",
        (false, _) => "info,opsplan=trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(matches!(cli.color, ColorMode::Always))
        .init();

    opsplan::cli::run(cli)
}
