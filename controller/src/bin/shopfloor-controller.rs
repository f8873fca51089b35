//! `shopfloor-controller`: the Shopfloor operator, in a cluster or standalone on a folder.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, sync::atomic::Ordering, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use shopfloor_controller::{
    endpoint::{self, Endpoint},
    kube::controllers::{self, Scope},
    kube::leader::{LeaderElector, LeaseTiming},
    kube::store::KubeStore,
    metrics,
    reconcile::Reconciler,
    standalone,
    standalone::store::FolderStore,
    store::{status_writer::Pace, write_budget::WriteRate},
};

/// Reconciles a plant's EdgeAgents, Equipment, NetworkSlices and ControlCommands onto its edge
/// agents over QUIC with mutual TLS.
///
/// In a cluster it watches the shopfloor.io resources through the API server. With
/// `--standalone <dir>` it needs no cluster: it reads the same manifests from a folder, watches
/// it for changes, and keeps status, the CA and tokens in `--state-dir`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Run without Kubernetes on the manifests in this folder.
    #[arg(long, value_name = "DIR")]
    standalone: Option<PathBuf>,
    /// Where standalone mode keeps status, the CA, tokens and certificates.
    #[arg(long, value_name = "DIR", default_value = ".shopfloor", env = "SHOPFLOOR_STATE_DIR")]
    state_dir: PathBuf,
    /// Health (/healthz, /readyz) and Prometheus metrics (/metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", env = "SHOPFLOOR_HTTP_ADDR")]
    http: SocketAddr,
    /// Namespace of the CA and token Secrets and of the leader Lease (cluster mode).
    #[arg(long, env = "POD_NAMESPACE", default_value = "shopfloor-system")]
    namespace: String,
    /// This replica's name, for the Lease and `status.connection.replica`. In a pod (the chart
    /// sets POD_NAME from the downward API) it is the pod's name, and the leader labels that pod
    /// for the agents' Service; without POD_NAME no pod is labelled.
    #[arg(long, env = "POD_NAME")]
    replica: Option<String>,
    /// Watch only these namespaces (comma-separated), with Roles in each instead of a
    /// ClusterRole. Every namespace when absent.
    #[arg(long, value_delimiter = ',', env = "SHOPFLOOR_NAMESPACES")]
    namespaces: Vec<String>,
    /// The QUIC endpoint agents dial.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7443", env = "SHOPFLOOR_LISTEN")]
    listen: SocketAddr,
    /// Names (DNS or IP) agents dial the controller by; its server certificate covers them.
    #[arg(long = "server-name", value_name = "NAME", default_values_t = vec!["localhost".to_owned(), "127.0.0.1".to_owned()])]
    server_names: Vec<String>,
    /// Log filter, e.g. `info` or `shopfloor_controller=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Export each command's spans over OTLP/HTTP to this collector (base URL, e.g.
    /// http://otel-collector:4318). Off unless given.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// How often a status whose only change is freshness (an agent's lastSeen and rttMicros,
    /// the observedAt of a value that did not change) is rewritten, at most; changes of phase,
    /// condition, revision or value are written within a second.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, env = "SHOPFLOOR_STATUS_REFRESH")]
    status_refresh: Duration,
    /// Refresh-only status writes per second over the whole plant, at most.
    #[arg(long, value_name = "N", default_value_t = Pace::DEFAULT_REFRESHES_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    status_refreshes_per_second: u32,
    /// Requests a second to the Kubernetes API server, at most (status writes, events, secrets;
    /// watches are not counted). A ControlCommand's phase waits behind no status write.
    #[arg(long, value_name = "N", default_value_t = WriteRate::DEFAULT.per_second, value_parser = clap::value_parser!(u32).range(1..), env = "SHOPFLOOR_KUBE_WRITES_PER_SECOND")]
    kube_writes_per_second: u32,
    /// Requests to the Kubernetes API server at once before the rate applies.
    #[arg(long, value_name = "N", default_value_t = WriteRate::DEFAULT.burst, value_parser = clap::value_parser!(u32).range(1..), env = "SHOPFLOOR_KUBE_WRITE_BURST")]
    kube_write_burst: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<shopfloor_api::Duration>()
        .map(Into::into)
        .map_err(|e| format!("`{s}` is not a duration like 60s or 5m: {e}"))
}

impl Args {
    fn status_pace(&self) -> Pace {
        Pace {
            interval: Duration::from_secs(1),
            refresh: self.status_refresh,
            refreshes_per_second: self.status_refreshes_per_second,
        }
    }
}

/// Points the command engine at the OTLP collector, if one is configured.
fn trace_commands<S: shopfloor_controller::store::Store>(core: &Reconciler<S>, args: &Args) -> anyhow::Result<()> {
    if let Some(endpoint) = &args.otlp_endpoint {
        core.engine().trace_to(shopfloor_trace::Tracer::otlp(endpoint, "shopfloor-controller")?);
        tracing::info!(collector = %endpoint, "exporting command spans over OTLP");
    }
    Ok(())
}

/// Label the leading replica's pod carries; the chart's QUIC Service selects on it.
const LEADER_LABEL: &str = "shopfloor.io/leader";

impl Args {
    fn replica(&self) -> String {
        self.replica.clone().unwrap_or_else(|| "shopfloor-controller".to_owned())
    }
}

/// Resolves on SIGTERM (what Kubernetes sends a pod it stops) or SIGINT.
async fn terminated() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM ({e}); only Ctrl-C stops the controller cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted";
        }
    };
    tokio::select! {
        _ = term.recv() => "terminated (SIGTERM)",
        _ = tokio::signal::ctrl_c() => "interrupted",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).context("--log is not a valid filter")?)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let health = Arc::new(metrics::Health::default());
    match &args.standalone {
        Some(dir) => run_standalone(&args, dir, health).await,
        None => run_cluster(&args, health).await,
    }
}

async fn run_standalone(args: &Args, dir: &PathBuf, health: Arc<metrics::Health>) -> anyhow::Result<()> {
    let store = FolderStore::open(dir, &args.state_dir)
        .with_context(|| format!("cannot use {} with state directory {}", dir.display(), args.state_dir.display()))?;
    let core = Reconciler::new(Arc::new(store), args.replica(), args.status_pace());
    trace_commands(&core, args)?;
    let (addr, _http) = metrics::serve(args.http, core.metrics().clone(), health.clone())
        .await
        .with_context(|| format!("cannot listen on {} for health and metrics", args.http))?;
    let ca = endpoint::ensure_ca(&**core.store()).await.context("cannot load or create the plant CA")?;
    let fingerprint = ca.fingerprint();
    let quic = Endpoint::bind(core.endpoint_context(), ca, args.listen, &args.server_names, endpoint::timing())
        .with_context(|| format!("cannot listen on {} for agents (QUIC/UDP)", args.listen))?;
    let quic_addr = quic.local_addr()?;
    // Where agents should dial, for `kubectl shopfloor enroll`: the first server name and the port.
    let dial = if quic_addr.ip().is_unspecified() {
        format!("{}:{}", args.server_names.first().map(String::as_str).unwrap_or("localhost"), quic_addr.port())
    } else {
        quic_addr.to_string()
    };
    std::fs::write(args.state_dir.join(shopfloor_api::contract::state_dir::ENDPOINT), format!("{dial}\n"))
        .context("cannot record the endpoint address")?;
    tokio::spawn(quic.run());
    tracing::info!(quic = %quic_addr, ca_sha256 = %fingerprint, "agents can connect");
    health.leader.store(true, Ordering::Relaxed);
    core.metrics().leader.set(1);
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(manifests = %dir.display(), state = %args.state_dir.display(), http = %addr, "standalone controller started");
    tokio::select! {
        r = standalone::run(core) => r.context("standalone controller stopped"),
        why = terminated() => {
            tracing::info!("{why}, stopping");
            Ok(())
        }
    }
}

async fn run_cluster(args: &Args, health: Arc<metrics::Health>) -> anyhow::Result<()> {
    let mut config = kube::Config::infer().await.context(
        "cannot reach a Kubernetes API server (no in-cluster config and no usable kubeconfig); use --standalone <dir> to run without a cluster",
    )?;
    // The API server names a write's field manager after the User-Agent when a request gives
    // none (kube's finalizer helper gives none): `shopfloor-controller`, not `unknown`.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("shopfloor-controller/", env!("CARGO_PKG_VERSION"))),
    ));
    let client = kube::Client::try_from(config).context("cannot build a Kubernetes client")?;
    let store = KubeStore::with_instance(client.clone(), &args.namespace, Some(args.replica()))
        .with_write_rate(WriteRate { per_second: args.kube_writes_per_second, burst: args.kube_write_burst });
    let core = Reconciler::new(Arc::new(store), args.replica(), args.status_pace());
    trace_commands(&core, args)?;
    let (addr, _http) = metrics::serve(args.http, core.metrics().clone(), health.clone()).await?;
    let ca = endpoint::ensure_ca(&**core.store()).await.context("cannot load or create the plant CA Secret")?;
    let scope = if args.namespaces.is_empty() { Scope::Cluster } else { Scope::Namespaces(args.namespaces.clone()) };
    tracing::info!(http = %addr, namespace = %args.namespace, replica = %args.replica(), ?scope, "controller started; electing a leader");
    health.ready.store(true, Ordering::Relaxed);
    let timing = LeaseTiming::default();
    core.hold_fail_safes_to(shopfloor_controller::planner::Failover {
        lease: timing.duration,
        retry: timing.retry_every,
        start: shopfloor_controller::planner::Failover::START,
        redial: shopfloor_controller::planner::Failover::REDIAL,
    });
    let elector = LeaderElector::new(client.clone(), &args.namespace, "shopfloor-controller", &args.replica(), timing);
    // Listening from the start, declining while standing by: when this replica leads and the
    // Service routes agents to it, they find it answering at once (bound only then, the first
    // agents' handshakes went unanswered and they waited a second or more).
    let quic = Endpoint::bind(core.endpoint_context(), ca, args.listen, &args.server_names, endpoint::timing())
        .with_context(|| format!("cannot listen on {} for agents (QUIC/UDP)", args.listen))?;
    quic.stand_by();
    tokio::spawn(quic.clone().run());
    // Standby until we hold the lease; then reconcile until we lose it, and exit so that the
    // replacement pod starts clean as a standby.
    tokio::select! {
        () = elector.acquire() => {}
        why = terminated() => {
            tracing::info!("{why} while standing by");
            return Ok(());
        }
    }
    health.leader.store(true, Ordering::Relaxed);
    core.metrics().leader.set(1);
    tracing::info!("leading");
    // The agents' Service selects the leader's pod by this label, so agents always reach the
    // replica that accepts them. Outside a pod (no POD_NAME) there is no pod to label.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), &args.namespace);
    let set_label = |value: serde_json::Value| {
        let pods = pods.clone();
        // Only a pod has a pod to label: the chart sets POD_NAME from the downward API.
        let pod = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty());
        async move {
            let Some(pod) = pod else { return };
            let label = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
            if let Err(e) = pods.patch(&pod, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label)).await
            {
                tracing::warn!("cannot set label {LEADER_LABEL} on pod {pod} (the agents' Service routes by it): {e}");
            }
        }
    };
    if std::env::var_os("POD_NAME").is_none() {
        tracing::info!("not in a pod (no POD_NAME): no pod to label for the agents' Service");
    }
    // Only the leader accepts agents: a standby holds no sessions to lose at takeover.
    quic.lead();
    set_label(serde_json::json!("true")).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let controllers = tokio::spawn(controllers::run(client, core, scope, stop_rx));
    let released = tokio::select! {
        why = terminated() => {
            tracing::info!("{why}; stepping down");
            true
        }
        why = elector.hold() => {
            tracing::error!("{why}; stopping");
            false
        }
    };
    health.leader.store(false, Ordering::Relaxed);
    // Agents first: each is told to dial again (the Service sends it to the next leader) while
    // its fail-safe countdown has hardly begun; waiting for their heartbeat timeouts engaged
    // every fail-safe shorter than it.
    let handed = quic.hand_over();
    tracing::info!(agents = handed, "agents asked to dial the next leader");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    // Released before unlabelling: the next leader labels its pod as it takes over, so the
    // Service always has a pod to send agents to; agents it still sends here are asked to dial
    // again.
    if released {
        match elector.release().await {
            Ok(true) => tracing::info!("leader lease released: a standby takes over at once"),
            Ok(false) => {}
            Err(e) => tracing::warn!("cannot release the leader lease ({e}); a standby takes over when it expires"),
        }
    }
    set_label(serde_json::Value::Null).await;
    // The Goodbyes and closes are sent by the endpoint's tasks: let them go out before exiting.
    quic.drain(Duration::from_secs(1)).await;
    Ok(())
}
