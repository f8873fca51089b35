//! `kubectl shopfloor`: the operator's command line for Shopfloor.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod validate;

/// Operate a Shopfloor plant: check manifests before they reach the plant.
#[derive(Debug, Parser)]
#[command(name = "kubectl-shopfloor", bin_name = "kubectl shopfloor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests the way the API server and the controller would, without a cluster.
    ///
    /// Reads every shopfloor.io document in the given files or folders (*.yaml, *.yml, *.json;
    /// folders are not recursed), checks each object's schema and rules, then checks references
    /// between them (an Equipment's agent and slice, a ControlCommand's equipment, action and
    /// parameters). Exits 1 if anything is refused.
    Validate {
        /// Manifest files or folders.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Skip the cross-object checks (for manifests applied into a namespace that already
        /// holds the objects they refer to).
        #[arg(long)]
        no_references: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { paths, no_references } => validate::run(&paths, !no_references),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
