//! `shopfloor-agent`: the edge agent daemon.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use shopfloor_agent::{
    commands::Executor,
    envelope::Envelope,
    journal::Journal,
    link::{connection::Agent, credentials, enroll},
    metrics, slices,
    state::StateDir,
};
use shopfloor_wire::{identity::AgentId, transport::Timing};

/// Shopfloor edge agent: keeps this host's equipment at its desired configuration and executes
/// remote-control commands from the controller, safely and exactly once.
///
/// First enroll once with the command `kubectl shopfloor enroll <agent>` prints, then run the
/// agent (normally as the systemd service of the Debian package, packaging/deb/). Every option can also come from
/// a YAML file (--config) or a SHOPFLOOR_* environment variable; flags win over both.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// YAML file with defaults for the options below (keys: stateDir, log, envelope,
    /// telemetryBuffer, sliceBackend, metrics, otlpEndpoint, controller, caSha256, agent), and
    /// the OPC UA trust and users (key opcua; see docs/agent.md).
    #[arg(long, global = true, env = "SHOPFLOOR_CONFIG")]
    config: Option<PathBuf>,
    /// Where the agent keeps its key, certificate, last configuration and command journal.
    #[arg(long, global = true, env = "SHOPFLOOR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `shopfloor_agent=debug`.
    #[arg(long, global = true, env = "SHOPFLOOR_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this host once with a bootstrap token; the key is generated here and never leaves.
    Enroll {
        /// The controller's QUIC address, host:port (or `controller:` in the config file).
        #[arg(long, env = "SHOPFLOOR_CONTROLLER")]
        controller: Option<String>,
        /// The single-use bootstrap token (`<id>.<secret>`).
        #[arg(long, env = "SHOPFLOOR_TOKEN")]
        token: String,
        /// SHA-256 of the plant CA certificate, as printed by `kubectl shopfloor enroll` (or
        /// `caSha256:` in the config file).
        #[arg(long, env = "SHOPFLOOR_CA_SHA256")]
        ca_sha256: Option<String>,
        /// This agent, `<namespace>/<name>` of its EdgeAgent (or `agent:` in the config file).
        #[arg(long, env = "SHOPFLOOR_AGENT")]
        agent: Option<String>,
        /// Name to check the controller's certificate against (default: the controller host).
        #[arg(long, env = "SHOPFLOOR_SERVER_NAME")]
        server_name: Option<String>,
    },
    /// Run the agent.
    Run {
        /// The local safety envelope; limits in it can only narrow the controller's. The file must
        /// exist: a missing or broken one makes the agent refuse every write (fail closed). `none`
        /// runs without an envelope. Default: /etc/shopfloor/envelope.yaml.
        #[arg(long, env = "SHOPFLOOR_ENVELOPE")]
        envelope: Option<PathBuf>,
        /// Readings kept while the controller is unreachable (oldest dropped beyond).
        #[arg(long, env = "SHOPFLOOR_TELEMETRY_BUFFER")]
        telemetry_buffer: Option<usize>,
        /// Commands the journal remembers (each at least 24 h). When all are that young, new
        /// commands are refused rather than forgetting one. Default 100000.
        #[arg(long, env = "SHOPFLOOR_JOURNAL_CAPACITY")]
        journal_capacity: Option<usize>,
        /// How network slices are steered on this host: `linux` (routing table, fwmark rule,
        /// DSCP, shaping; needs CAP_NET_ADMIN) or `noop` (log only). Default: linux on Linux.
        #[arg(long, env = "SHOPFLOOR_SLICE_BACKEND")]
        slice_backend: Option<String>,
        /// Serve Prometheus metrics on this address (`/metrics`, and `/healthz`), e.g.
        /// 127.0.0.1:9464. Off unless given.
        #[arg(long, env = "SHOPFLOOR_METRICS")]
        metrics: Option<std::net::SocketAddr>,
        /// Dial this controller address instead of the one recorded at enrollment (the
        /// controller moved; its certificate must still cover the recorded server name).
        #[arg(long, env = "SHOPFLOOR_CONTROLLER")]
        controller: Option<String>,
        /// Export a span per command over OTLP/HTTP to this collector (base URL, e.g.
        /// http://otel-collector:4318), in the trace the controller started. Off unless given.
        #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
        otlp_endpoint: Option<String>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    log: Option<String>,
    envelope: Option<PathBuf>,
    telemetry_buffer: Option<usize>,
    journal_capacity: Option<usize>,
    slice_backend: Option<String>,
    metrics: Option<std::net::SocketAddr>,
    otlp_endpoint: Option<String>,
    controller: Option<String>,
    ca_sha256: Option<String>,
    agent: Option<String>,
    #[serde(default)]
    opcua: OpcUaConfig,
}

/// How the agent signs in to OPC UA servers; none of it travels in a CRD.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpcUaConfig {
    /// The agent's OPC UA certificate and key (own/, private/, created on first use), the
    /// server certificates it trusts (trusted/) and those it refused (rejected/). Default
    /// <stateDir>/opcua.
    pki_dir: Option<PathBuf>,
    /// Users to sign in as, by endpoint URL; an endpoint not listed is opened anonymously.
    #[serde(default)]
    users: Vec<OpcUaUser>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpcUaUser {
    endpoint: String,
    user: String,
    /// A file holding only the password (mode 0600, owned by the agent's user).
    password_file: PathBuf,
}

impl OpcUaConfig {
    fn site(self, state_dir: &std::path::Path) -> anyhow::Result<shopfloor_agent::equipment::drivers::opcua::Site> {
        let mut users = std::collections::HashMap::new();
        for (i, u) in self.users.into_iter().enumerate() {
            let password = std::fs::read_to_string(&u.password_file).with_context(|| {
                format!(
                    "opcua.users[{i}].passwordFile: cannot read {} (the password for {} at {})",
                    u.password_file.display(),
                    u.user,
                    u.endpoint
                )
            })?;
            users.insert(u.endpoint, (u.user, password.trim_end_matches(['\n', '\r']).to_owned()));
        }
        Ok(shopfloor_agent::equipment::drivers::opcua::Site {
            pki_dir: self.pki_dir.unwrap_or_else(|| state_dir.join("opcua")),
            users,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let file: FileConfig = match &cli.config {
        Some(p) => {
            serde_yaml::from_str(&std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?)
                .with_context(|| format!("{} is not a valid agent configuration", p.display()))?
        }
        None => FileConfig::default(),
    };
    let log = cli.log.clone().or(file.log.clone()).unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&log).context("--log is not a valid filter")?)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let state_dir =
        cli.state_dir.clone().or(file.state_dir.clone()).unwrap_or_else(|| PathBuf::from("/var/lib/shopfloor-agent"));
    let state = StateDir::open(&state_dir)
        .with_context(|| format!("cannot use the state directory {}", state_dir.display()))?;
    match cli.command {
        Command::Enroll { controller, token, ca_sha256, agent, server_name } => {
            let controller =
                controller.or(file.controller).context("--controller is required (or `controller:` in --config)")?;
            let ca_sha256 =
                ca_sha256.or(file.ca_sha256).context("--ca-sha256 is required (or `caSha256:` in --config)")?;
            let agent = agent.or(file.agent).context("--agent is required (or `agent:` in --config)")?;
            let (ns, name) = agent.split_once('/').context("--agent must be <namespace>/<name>")?;
            let id = enroll::enroll(
                &state,
                &controller,
                server_name.as_deref(),
                &token,
                &ca_sha256,
                &AgentId::new(ns, name),
            )
            .await?;
            println!("enrolled as {}/{}; start the agent with `shopfloor-agent run`", id.namespace, id.name);
            Ok(())
        }
        Command::Run {
            envelope,
            telemetry_buffer,
            journal_capacity,
            slice_backend,
            metrics,
            controller,
            otlp_endpoint,
        } => {
            let mut identity = credentials::load_identity(&state)?;
            if let Some(c) = controller.or(file.controller) {
                identity.controller = c;
            }
            let envelope_path =
                envelope.or(file.envelope).unwrap_or_else(|| PathBuf::from("/etc/shopfloor/envelope.yaml"));
            let envelope = if envelope_path.as_os_str() == "none" {
                tracing::info!("no safety envelope (--envelope none): the controller's limits apply");
                Envelope::none()
            } else {
                Envelope::load_or_refuse(&envelope_path)
            };
            if let Some(sha) = &envelope.sha256 {
                tracing::info!(file = %envelope_path.display(), sha256 = %sha, "safety envelope in force");
            }
            let capacity = journal_capacity.or(file.journal_capacity).unwrap_or(100_000);
            let journal = Journal::open(&state, Duration::from_secs(24 * 3600), capacity)?;
            let slice_backend =
                slice_backend.or(file.slice_backend).unwrap_or_else(|| slices::DEFAULT_BACKEND.to_string());
            let backend = slices::backend(&slice_backend).map_err(|e| anyhow::anyhow!("--slice-backend: {e}"))?;
            let fail_safes = Arc::new(shopfloor_agent::fail_safe::FailSafes::load(state.clone()));
            let opcua = file.opcua.site(&state_dir)?;
            let executor = Arc::new(
                Executor::new(journal, envelope)
                    .with_slice_backend(backend)
                    .with_opcua(opcua)
                    .with_fail_safes(fail_safes),
            );
            let agent =
                Agent::new(state, identity, executor, telemetry_buffer.or(file.telemetry_buffer).unwrap_or(10_000));
            tracing::info!(agent = %format!("{}/{}", agent.identity.namespace, agent.identity.name), controller = %agent.identity.controller, "starting");
            if let Some(addr) = metrics.or(file.metrics) {
                let a = agent.clone();
                let bound = metrics::serve(addr, agent.metrics.clone(), Arc::new(move || a.refresh_metrics()))
                    .await
                    .with_context(|| format!("cannot serve metrics on {addr}"))?;
                tracing::info!("metrics on http://{bound}/metrics");
            }
            if let Some(endpoint) = otlp_endpoint.or(file.otlp_endpoint) {
                agent.trace_to(shopfloor_trace::Tracer::otlp(&endpoint, "shopfloor-agent")?);
                tracing::info!(collector = %endpoint, "exporting command spans over OTLP");
            }
            agent.restore().await;
            tokio::spawn(agent.clone().poll_telemetry());
            tokio::select! {
                () = agent.clone().run(Timing::default()) => Ok(()),
                r = tokio::signal::ctrl_c() => {
                    r?;
                    tracing::info!("interrupted; equipment keeps its last setpoints");
                    Ok(())
                }
            }
        }
    }
}
