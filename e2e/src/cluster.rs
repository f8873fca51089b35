//! The controller in Kubernetes mode, as processes, against the mock API server: replicas that
//! elect a leader through the Lease and label the leader's pod, and a "Service" in front of
//! them (a UDP forwarder) that sends agents to whichever pod carries the leader label, as the
//! chart's Service does.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde_json::json;

use crate::{fleet::until, harness::Scenario, mock_api::MockApi, proxy::UdpProxy};

/// Where the controller keeps its CA, tokens and Lease (the chart's release namespace).
pub const SYSTEM_NAMESPACE: &str = "shopfloor-system";
const LEADER_LABEL: &str = "shopfloor.io/leader";
const QUIC_ANNOTATION: &str = "e2e.shopfloor.io/quic";

/// A mock cluster with its Service; replicas are processes of the scenario.
#[derive(Debug)]
pub struct Cluster {
    pub api: MockApi,
    pub service: Arc<UdpProxy>,
    pub kubeconfig: PathBuf,
    follow: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

impl Cluster {
    /// Starts the API server and the Service (on the current runtime), and points every process
    /// `s` starts from now on at the API server.
    pub async fn start(s: &Scenario) -> Self {
        let api = MockApi::start().await.expect("mock API server");
        let kubeconfig = s.path("kubeconfig");
        std::fs::write(&kubeconfig, api.kubeconfig()).expect("kubeconfig");
        s.set_env("KUBECONFIG", &kubeconfig.to_string_lossy());
        // Nowhere to send agents before a leader exists: a port nobody listens on.
        let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let service = Arc::new(UdpProxy::start("127.0.0.1:0".parse().expect("addr"), nowhere, 1).await.expect("proxy"));
        let follow = {
            let (api, service) = (api.clone(), service.clone());
            tokio::spawn(async move {
                let mut changes = api.changes();
                loop {
                    let leader = api.list("pods").into_iter().find(|p| p["metadata"]["labels"][LEADER_LABEL] == "true");
                    let addr =
                        leader.and_then(|p| p["metadata"]["annotations"][QUIC_ANNOTATION].as_str()?.parse().ok());
                    service.set_upstream(addr.unwrap_or(nowhere));
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        Self { api, service, kubeconfig, follow }
    }

    /// The address agents dial: the Service.
    pub fn endpoint(&self) -> String {
        self.service.addr.to_string()
    }

    /// Starts controller replica `name` (its pod, then its process) and returns its own QUIC
    /// address. It stands by until it holds the Lease.
    pub fn replica(&self, s: &Scenario, name: &str) -> SocketAddr {
        let quic = free_udp_port();
        self.api.apply_yaml(
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE, "annotations": {QUIC_ANNOTATION: quic.to_string()}},
            })
            .to_string(),
        );
        let listen = quic.to_string();
        s.spawn_with_env(
            name,
            "shopfloor-controller",
            &[
                "--listen",
                &listen,
                "--http",
                "127.0.0.1:0",
                "--server-name",
                "127.0.0.1",
                "--namespace",
                SYSTEM_NAMESPACE,
            ],
            &[("POD_NAME", std::ffi::OsStr::new(name))],
        );
        quic
    }

    /// The replica that holds the Lease, if any.
    pub fn leader(&self) -> Option<String> {
        let lease = self.api.get("apis/coordination.k8s.io/v1", "leases", SYSTEM_NAMESPACE, "shopfloor-controller")?;
        lease["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty()).map(str::to_owned)
    }
}

/// A UDP port on loopback nobody uses right now.
fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    s.local_addr().expect("addr")
}

/// SIGTERM to `pid`, as Kubernetes stops a pod.
pub fn terminate(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// The time of the first line of `log` that contains `needle` (the tracing timestamp it starts
/// with), waiting up to `limit` for it.
pub fn logged_at(log: &std::path::Path, needle: &str, limit: Duration) -> jiff::Timestamp {
    let line = crate::harness::wait_for_line(log, needle, limit);
    line.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp on the line: {line}"))
}

/// What one planned handover measured.
#[derive(Debug, Clone)]
pub struct Handover {
    pub agents: usize,
    /// From SIGTERM of the leader to every agent in a session with the new one.
    pub all_back: Duration,
    /// From the new leader's `leading` to its first agent's session (both from its log).
    pub first_admitted: jiff::SignedDuration,
    /// Agents whose `after: 3s` fail-safe engaged within 4.5 s of the SIGTERM.
    pub engaged_by_handover: usize,
    /// The old leader's log line saying how many agents it sent on.
    pub handed_over_line: String,
    /// The field managers of every write to the API server, with their counts.
    pub managers: std::collections::BTreeMap<String, usize>,
    /// Agents whose fail-safe engaged once no controller was left (the control: all of them).
    pub engaged_without_controller: usize,
}

/// A fleet of `n` in-process agents (each conveyor with a 3 s, manual-resume fail-safe) under a
/// leader and a standby in Kubernetes mode; SIGTERM to the leader, as a rolling update does.
/// Then the standby, now leading, is killed with no replica left, which must engage every
/// fail-safe (proving the fail-safes were live during the handover).
pub fn handover(n: usize) -> Handover {
    use crate::{
        fleet::{self, Fleet},
        harness::eventually,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let _in_runtime = rt.enter();
    let s = Scenario::new();
    let cluster = rt.block_on(Cluster::start(&s));
    cluster.api.apply_yaml(&fleet::with_fail_safe(&fleet::plant("plant-a", n, 10), "3s"));
    cluster.replica(&s, "ctl-a");
    logged_at(&s.path("ctl-a.log"), "leading", Duration::from_secs(60));
    cluster.replica(&s, "ctl-b");
    let names: Vec<String> = (0..n).map(fleet::agent_name).collect();
    let store = Arc::new(shopfloor_controller::kube::store::KubeStore::new(cluster.api.client(), SYSTEM_NAMESPACE));
    let fleet = rt
        .block_on(Fleet::start_on(store, &cluster.endpoint(), "plant-a", &names, &s.path("agents"), 8))
        .unwrap_or_else(|e| panic!("the fleet did not enroll through the leader: {e}\n{}", tail(&s, "ctl-a")));
    eventually("every agent connected", Duration::from_secs(120), || (fleet.connected() == n).then_some(()));
    eventually("every agent configured", Duration::from_secs(60), || {
        (rt.block_on(fleet.holding(None)) == n).then_some(())
    });
    assert_eq!(cluster.leader().as_deref(), Some("ctl-a"));

    let sessions = fleet.sessions();
    let stopped = std::time::Instant::now();
    terminate(s.pid("ctl-a").expect("ctl-a"));
    let all_back = eventually("every agent back, on the new leader", Duration::from_secs(60), || {
        (fleet.sessions() >= sessions + n as u64 && fleet.connected() == n).then(|| stopped.elapsed())
    });
    assert_eq!(cluster.leader().as_deref(), Some("ctl-b"), "the standby leads");
    let leading = logged_at(&s.path("ctl-b.log"), "leading", Duration::from_secs(1));
    let first = logged_at(&s.path("ctl-b.log"), "agent connected", Duration::from_secs(1));
    let log_a = std::fs::read_to_string(s.path("ctl-a.log")).unwrap_or_default();
    let handed_over_line =
        log_a.lines().find(|l| l.contains("agents asked to dial the next leader")).unwrap_or_default().to_owned();
    // A fail-safe after 3 s engages at 3.75 s of silence at the latest.
    eventually("past a fail-safe's reaction after the SIGTERM", Duration::from_secs(10), || {
        (stopped.elapsed() > Duration::from_millis(4500)).then_some(())
    });
    let engaged_by_handover = fleet.fail_safes_engaged();
    s.kill("ctl-b");
    let engaged_without_controller = until(Duration::from_secs(30), || fleet.fail_safes_engaged() == n)
        .map(|_| n)
        .unwrap_or_else(|| fleet.fail_safes_engaged());
    Handover {
        agents: n,
        all_back,
        first_admitted: leading.duration_until(first),
        engaged_by_handover,
        handed_over_line,
        engaged_without_controller,
        managers: cluster.api.managers(),
    }
}

/// The end of process `name`'s log, for a failure's message.
fn tail(s: &Scenario, name: &str) -> String {
    let log = std::fs::read_to_string(s.path(&format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
