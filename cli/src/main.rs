//! `kubectl shopfloor`: the operator's command line for Shopfloor.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod backend;
mod exec;
mod forbidden;
mod inspect;
mod table;
mod validate;

use backend::Backend;

/// Operate a Shopfloor plant: agents, equipment, remote-control commands, enrollment.
///
/// Talks to the API server of the current kubeconfig context and namespace, like kubectl; with
/// `--standalone <dir>` it works on a standalone controller's manifest folder instead.
#[derive(Debug, Parser)]
#[command(name = "kubectl-shopfloor", bin_name = "kubectl shopfloor", version, about)]
struct Cli {
    /// Namespace (default: the kubeconfig context's; `plant-a` with --standalone).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Work on a standalone controller's manifest folder instead of a cluster.
    #[arg(long, global = true, value_name = "DIR")]
    standalone: Option<PathBuf>,
    /// The standalone controller's state directory.
    #[arg(long, global = true, value_name = "DIR", default_value = ".shopfloor")]
    state_dir: PathBuf,
    /// Namespace of the controller's Secrets (CA, bootstrap tokens) in a cluster.
    #[arg(long, global = true, default_value = "shopfloor-system")]
    controller_namespace: String,
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
    /// Agents: phase, round-trip time, desired and applied configuration, certificate expiry.
    Agents,
    /// Equipment: every property's desired setpoint against the value last reported.
    Equipment,
    /// Run an action on a piece of equipment and wait for its result.
    ///
    /// Creates a ControlCommand; parameters are key=value (true/false, numbers, or names, e.g.
    /// `property=belt-speed value=1.5` for the built-in `write`). Prints the result and where
    /// the time went. Exit code: 0 succeeded, 1 failed, 2 usage, 3 rejected (interlock,
    /// envelope, precondition, validation), 4 expired, 5 no result in time.
    Exec {
        equipment: String,
        action: String,
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Validate everything on the agent, preconditions included, without writing.
        #[arg(long)]
        dry_run: bool,
        /// Deadline: a command reaching the agent later is never executed.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Return as soon as the command is created.
        #[arg(long)]
        no_wait: bool,
        /// Fail at once if the agent is offline instead of waiting until the deadline.
        #[arg(long)]
        reject_offline: bool,
        /// Send it even while the link is over its slice's packet delay budget (a URLLC slice
        /// refuses that by default).
        #[arg(long)]
        allow_slow_link: bool,
    },
    /// Print the command line that enrolls an agent on its plant host.
    Enroll {
        agent: String,
        /// The controller's QUIC address as the plant host reaches it (host:port).
        #[arg(long)]
        controller: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<shopfloor_api::Duration>()
        .map(Into::into)
        .map_err(|e| format!("`{s}` is not a duration like 5s or 500ms: {e}"))
}

async fn backend(cli: &Cli) -> anyhow::Result<Backend> {
    if let Some(plant) = &cli.standalone {
        return Ok(Backend::Folder {
            plant: plant.clone(),
            state: cli.state_dir.clone(),
            namespace: cli.namespace.clone().unwrap_or_else(|| "plant-a".into()),
        });
    }
    let options = kube::config::KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = kube::Config::from_kubeconfig(&options).await.or_else(|_| kube::Config::incluster()).context(
        "no usable kubeconfig context (and not in a cluster); pass --standalone <dir> for a standalone plant",
    )?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let mut config = config;
    // The API server names a write's field manager after the User-Agent when none is given: the
    // commands this plugin creates are then owned by `kubectl-shopfloor`, not `unknown`.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("kubectl-shopfloor/", env!("CARGO_PKG_VERSION"))),
    ));
    let client = kube::Client::try_from(config)?;
    Ok(Backend::Kube { client, namespace, controller_namespace: cli.controller_namespace.clone() })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let now = k8s_openapi::jiff::Timestamp::now();
    match &cli.command {
        Command::Validate { paths, no_references } => validate::run(paths, !no_references),
        Command::Agents => {
            let b = backend(&cli).await?;
            print!("{}", inspect::agents_table(&b.agents().await?, now));
            Ok(ExitCode::SUCCESS)
        }
        Command::Equipment => {
            let b = backend(&cli).await?;
            print!("{}", inspect::equipment_table(&b.equipment().await?, now));
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec { equipment, action, params, dry_run, timeout, no_wait, reject_offline, allow_slow_link } => {
            let b = backend(&cli).await?;
            let args = exec::ExecArgs {
                equipment: equipment.clone(),
                action: action.clone(),
                params: params.clone(),
                dry_run: *dry_run,
                timeout: *timeout,
                wait: !no_wait,
                reject_offline: *reject_offline,
                allow_slow_link: *allow_slow_link,
            };
            exec::run(&b, args).await
        }
        Command::Enroll { agent, controller } => {
            let b = backend(&cli).await?;
            let Some((token, expires, used)) = b.token(agent).await? else {
                anyhow::bail!(
                    "no bootstrap token for EdgeAgent {}/{agent}: does the agent exist, and is the controller running?",
                    b.namespace()
                );
            };
            if used {
                anyhow::bail!(
                    "the bootstrap token of {agent} was already used: the agent is enrolled. To re-enroll, delete and re-create the EdgeAgent"
                );
            }
            let ca =
                b.ca_fingerprint().await?.context("the controller has not created the plant CA yet; is it running?")?;
            let controller = controller
                .clone()
                .or_else(|| b.recorded_endpoint())
                .context("pass --controller <host:port>: the controller's address as the plant host reaches it")?;
            println!("# on the plant host of {agent} (token expires {expires}, single use):");
            println!(
                "shopfloor-agent enroll --controller {controller} --agent {}/{agent} --token {token} --ca-sha256 {ca}",
                b.namespace()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            match e.chain().find_map(|c| c.downcast_ref::<kube::Error>()) {
                Some(kube::Error::Api(s)) if s.code == 403 => eprintln!("error: {}", forbidden::explain(&s.message)),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::from(2)
        }
    }
}
