//! A fleet simulator: many real agents in one process, against a real standalone controller
//! process. Each agent is the agent's own code (`link::connection::Agent`, its executor, journal
//! and state directory), with its own key, certificate and QUIC connection; its equipment is the
//! simulated driver, so a fleet of thousands fits on one machine beside the controller.
//!
//! Where the agents keep their state (journal fsyncs included) is the caller's choice: a tmpfs
//! such as `/dev/shm` for the controller's figures, or the real disk for the agents' own.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use shopfloor_agent::{
    commands::Executor,
    envelope::Envelope,
    journal::Journal,
    link::{connection::Agent, enroll},
    state::StateDir,
};
use shopfloor_controller::{
    endpoint,
    enrollment::{self, BootstrapToken},
    standalone::store::FolderStore,
    store::{ObjectKey, Store},
};
use shopfloor_wire::{identity::AgentId, transport::Timing};
use tokio::{sync::Semaphore, task::JoinHandle};

/// The manifests of a plant of `n` agents named `agent-0000`…, each driving one simulated
/// conveyor, all selected by one slice whose DSCP marking `dscp` sets (change it to change every
/// agent's configuration at once), as one text.
pub fn plant(namespace: &str, n: usize, dscp: u8) -> String {
    format!("{}---\n{}", slice(namespace, dscp), agents(namespace, 0..n, None))
}

/// The slice every agent of a [`plant`] rides.
pub fn slice(namespace: &str, dscp: u8) -> String {
    format!(
        "apiVersion: shopfloor.io/v1alpha1\nkind: NetworkSlice\nmetadata: {{name: fleet, namespace: {namespace}}}\n\
         spec:\n  snssai: {{sst: 1}}\n  dnn: plant\n  qos: {{fiveQi: 9, arp: {{priorityLevel: 8, preemptionCapability: NotPreempt, preemptionVulnerability: Preemptable}}}}\n  \
         agentSelector: {{matchLabels: {{fleet: sim}}}}\n  steering: {{interface: lo, routingTable: 100, fwmark: 100, dscp: {dscp}}}\n"
    )
}

/// Agents `range` of a [`plant`], each with its conveyor, and with `heartbeat` (as `interval/timeout`,
/// e.g. `5s/20s`) when one is given.
pub fn agents(namespace: &str, range: std::ops::Range<usize>, heartbeat: Option<&str>) -> String {
    let heartbeat = heartbeat
        .and_then(|h| h.split_once('/'))
        .map(|(i, t)| format!(", heartbeat: {{interval: {i}, timeout: {t}}}"))
        .unwrap_or_default();
    let mut out = String::new();
    for i in range {
        let name = agent_name(i);
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&format!(
            "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{fleet: sim}}}}\nspec: {{site: {namespace}/{name}{heartbeat}}}\n\
             ---\napiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {{name: {name}-conveyor, namespace: {namespace}}}\n\
             spec:\n  agentRef: {{name: {name}}}\n  networkSliceRef: {{name: fleet}}\n  simulated: {{}}\n  reporting: {{interval: 5s}}\n  \
             properties:\n  - {{name: speed, type: Float, access: ReadWrite, min: 0, max: 2, desired: 0.5}}\n"
        ));
    }
    out
}

/// `manifests` of [`agents`] with a fail-safe on every conveyor: after `after` of silence its
/// speed goes to 0 and stays there until an operator resumes it.
pub fn with_fail_safe(manifests: &str, after: &str) -> String {
    manifests.replace(
        "  properties:\n  - {name: speed",
        &format!("  failSafe: {{after: {after}, values: [{{property: speed, value: 0}}], resume: Manual, allowShorterThanFailover: true}}\n  properties:\n  - {{name: speed"),
    )
}

/// Agents sharing one UDP socket (a QUIC endpoint) in the simulator. Each agent still has its
/// own connection, key and certificate; one socket each and a journal each were 2 open files per
/// agent, and 10,000 agents hit the machine's limit of 20,000 (not raisable without root's
/// CAP_SYS_RESOURCE) at about 9,900.
const AGENTS_PER_SOCKET: usize = 8;

/// Agents per manifest file of a measured plant: 1,000 make about 470 KiB, well under the
/// controller's limit for one file (4 MiB).
const AGENTS_PER_FILE: usize = 1000;

/// The name of agent `i` of a [`plant`].
pub fn agent_name(i: usize) -> String {
    format!("agent-{i:04}")
}

/// Agents running in this process.
pub struct Fleet {
    pub agents: Vec<Arc<Agent>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("agents", &self.agents.len()).finish()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the controller's state: {0}")]
    Store(String),
    #[error("agent {agent}: {message}")]
    Agent { agent: String, message: String },
}

impl Fleet {
    /// Enrolls `names` (in `namespace`) with the tokens the standalone controller whose folders
    /// are `manifests` and `state` created, and runs each as an agent dialling `controller`,
    /// keeping its state under `agents_root`. At most `parallel` enrollments run at once.
    pub async fn start(
        manifests: &Path,
        state: &Path,
        controller: &str,
        namespace: &str,
        names: &[String],
        agents_root: &Path,
        parallel: usize,
    ) -> Result<Self, FleetError> {
        let store = Arc::new(FolderStore::open(manifests, state).map_err(|e| FleetError::Store(e.to_string()))?);
        Self::start_on(store, controller, namespace, names, agents_root, parallel).await
    }

    /// [`Self::start`] with the tokens and the CA read from `store` (a Kubernetes API's, say).
    pub async fn start_on<S: Store>(
        store: Arc<S>,
        controller: &str,
        namespace: &str,
        names: &[String],
        agents_root: &Path,
        parallel: usize,
    ) -> Result<Self, FleetError> {
        let fingerprint =
            endpoint::ensure_ca(&*store).await.map_err(|e| FleetError::Store(e.to_string()))?.fingerprint();
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let addr: std::net::SocketAddr =
            controller.parse().map_err(|e| FleetError::Store(format!("controller address {controller}: {e}")))?;
        let mut starting = Vec::new();
        let mut endpoint = None;
        for (i, name) in names.iter().enumerate() {
            if i % AGENTS_PER_SOCKET == 0 {
                endpoint = Some(
                    shopfloor_wire::transport::client_endpoint(addr).map_err(|e| FleetError::Store(e.to_string()))?,
                );
            }
            let (store, gate, fingerprint, endpoint) =
                (store.clone(), gate.clone(), fingerprint.clone(), endpoint.clone());
            let (controller, namespace, name) = (controller.to_owned(), namespace.to_owned(), name.clone());
            let dir = agents_root.join(&name);
            starting.push(tokio::spawn(async move {
                let _turn = gate.acquire_owned().await;
                start_one(&*store, &controller, &namespace, &name, dir, &fingerprint, endpoint).await
            }));
        }
        let mut fleet = Fleet { agents: Vec::new(), tasks: Vec::new() };
        for s in starting {
            let (agent, tasks) = s.await.map_err(|e| FleetError::Store(e.to_string()))??;
            fleet.agents.push(agent);
            fleet.tasks.extend(tasks);
        }
        Ok(fleet)
    }

    /// How many agents hold a live session.
    pub fn connected(&self) -> usize {
        self.agents.iter().filter(|a| a.metrics.connected.get() == 1).count()
    }

    /// How many agents hold configuration revision `revision`, or (with `None`) any one.
    pub async fn holding(&self, revision: Option<&str>) -> usize {
        let mut n = 0;
        for a in &self.agents {
            let held = a.held_revision().await;
            if held.is_some() && (revision.is_none() || held.as_deref() == revision) {
                n += 1;
            }
        }
        n
    }

    /// Sessions started over the fleet's life (a reconnect counts again).
    pub fn sessions(&self) -> u64 {
        self.agents.iter().map(|a| a.metrics.sessions.get()).sum()
    }

    /// How many agents hold a fail-safe engaged.
    pub fn fail_safes_engaged(&self) -> usize {
        self.agents.iter().filter(|a| a.executor.fail_safes().states().iter().any(|s| s.engaged)).count()
    }

    /// Attempts to reach the controller over the fleet's life, as each ended.
    pub fn attempts(&self) -> u64 {
        self.agents.iter().map(|a| a.metrics.connect_attempts.get()).sum()
    }
}

async fn start_one<S: Store>(
    store: &S,
    controller: &str,
    namespace: &str,
    name: &str,
    dir: PathBuf,
    fingerprint: &str,
    endpoint: Option<shopfloor_agent::link::connection::Endpoint>,
) -> Result<(Arc<Agent>, Vec<JoinHandle<()>>), FleetError> {
    let fail = |message: String| FleetError::Agent { agent: name.to_owned(), message };
    let key = ObjectKey::new(namespace, name);
    let secret = enrollment::token_secret_name(&key);
    let mut token = None;
    for _ in 0..600 {
        if let Some(t) = store
            .read_secret(&secret)
            .await
            .map_err(|e| fail(e.to_string()))?
            .as_ref()
            .and_then(BootstrapToken::from_secret)
        {
            token = Some(t.token());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = token.ok_or_else(|| fail("no bootstrap token after 60 s".into()))?;
    let state = StateDir::open(&dir).map_err(|e| fail(e.to_string()))?;
    let id = AgentId::new(namespace, name);
    let mut last = String::new();
    let mut identity = None;
    // The controller refuses enrollments beyond its bound on handshakes: retry, as an operator's
    // script would.
    for attempt in 0..50u32 {
        match enroll::enroll(&state, controller, None, &token, fingerprint, &id).await {
            Ok(i) => {
                identity = Some(i);
                break;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)) + 10)).await;
    }
    let identity = identity.ok_or_else(|| fail(format!("enrollment failed: {last}")))?;
    let journal = Journal::open(&state, Duration::from_secs(3600), 10_000).map_err(|e| fail(e.to_string()))?;
    let executor = Arc::new(Executor::new(journal, Envelope::none()));
    let agent = Agent::new(state, identity, executor, 1_000);
    if let Some(e) = endpoint {
        agent.dial_from(e);
    }
    let tasks = vec![tokio::spawn(agent.clone().run(Timing::default())), tokio::spawn(agent.clone().poll_telemetry())];
    Ok((agent, tasks))
}

/// Raises this process's open-file limit for `n` agents (each holds its journal open, every
/// [`AGENTS_PER_SOCKET`] a socket, enrollments more for a moment): past the hard limit too where
/// the process may (CAP_SYS_RESOURCE). Says so loudly when it cannot, since the fleet then fails
/// with "Too many open files" part of the way.
fn make_room_for(n: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = (n + n / AGENTS_PER_SOCKET) as u64 + 2048;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft >= want {
        return;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(want), hard);
    }
    let now = getrlimit(Resource::RLIMIT_NOFILE).map(|(s, _)| s).unwrap_or(soft);
    if now < want {
        eprintln!(
            "WARNING: {n} agents want about {want} open files, and this process may open only {now} (no CAP_SYS_RESOURCE to raise it): the fleet may fail with \"Too many open files\""
        );
    }
}

/// What one run of a plant of simulated agents measured.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub agents: usize,
    /// Controller VmRSS with the manifests loaded and no agent connected (the baseline).
    pub rss_before_kib: u64,
    /// Controller VmRSS with every agent connected and configured.
    pub rss_connected_kib: u64,
    /// Controller CPU (user + system) over an idle window, as a share of one core.
    pub idle_cpu: f64,
    /// This process's (the fleet simulator's: every agent) VmRSS with every agent connected.
    pub fleet_rss_kib: u64,
    /// This process's CPU over the same idle window, as a share of one core.
    pub fleet_idle_cpu: f64,
    /// From starting the fleet (enrollment included) until every agent held a session.
    pub all_connected: Duration,
    /// From the slice edit until every agent applied the new revision.
    pub change_applied: Duration,
    /// From the slice edit until every EdgeAgent's status showed it applied.
    pub change_in_status: Duration,
    /// From a controller restart until every agent held a session again.
    pub reconnected_after_restart: Duration,
    /// The part of it until the first agent was back (the controller's start, its plant read).
    pub first_back_after_restart: Duration,
    /// Sessions the fleet opened to get back after the restart (one each is ideal).
    pub sessions_after_restart: u64,
    /// Attempts the fleet made from the controller's death until all were back (failed ones
    /// included; a reconnect storm shows here).
    pub attempts_after_restart: u64,
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU ticks of `pid` so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

/// The applied revision an EdgeAgent's state file records. Parsed, not searched for: a revision
/// of digits only is quoted in YAML (`'7459010845821241'`), and searching the text for
/// `appliedRevision: <rev>` missed about one agent in 2,000, which read as a status never written
/// (the 1,000-agent runs that "did not finish within 600 s").
pub fn applied_revision(state_file: &str) -> Option<String> {
    let object: serde_yaml::Value = serde_yaml::from_str(state_file).ok()?;
    object["status"]["config"]["appliedRevision"].as_str().map(str::to_owned)
}

/// Polls `f` every 50 ms until it holds, up to `limit`; the time it took, or `None`.
pub fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Runs a plant of `n` simulated agents against a standalone controller process, keeping the
/// agents' state under `agents_root`: connect, configure, sit idle, change the slice every agent
/// rides, restart the controller. Panics naming the step that did not finish within `limit`.
/// The EdgeAgents ask for `heartbeat` (`interval/timeout`), or the default.
pub fn measure(n: usize, agents_root: &Path, limit: Duration, heartbeat: Option<&str>) -> Figures {
    use crate::harness::Scenario;
    make_room_for(n);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    // The slice in a file of its own, so that changing it rewrites one small file.
    std::fs::write(s.path("plant/fleet-slice.yaml"), slice("fleet", 10)).expect("manifests");
    for first in (0..n).step_by(AGENTS_PER_FILE) {
        let file = s.path(&format!("plant/fleet-agents-{:05}.yaml", first));
        std::fs::write(file, agents("fleet", first..n.min(first + AGENTS_PER_FILE), heartbeat)).expect("manifests");
    }
    for loaded in shopfloor_api::manifest::load_valid(&s.path("plant")).expect("manifests") {
        if let Err(e) = loaded {
            panic!("the generated plant does not validate: {e}");
        }
    }
    let endpoint = s.controller();
    let pid = s.pid("controller").expect("controller pid");
    let names: Vec<String> = (0..n).map(agent_name).collect();
    // Every token exists once the controller reconciled its agent.
    let tokens = s.path("state/secrets");
    until(limit, || std::fs::read_dir(&tokens).map(|d| d.count()).unwrap_or(0) > n).expect("bootstrap tokens");
    let mut f = Figures { agents: n, rss_before_kib: proc_status_kib(pid, "VmRSS:"), ..Default::default() };

    let started = std::time::Instant::now();
    let fleet = rt
        .block_on(Fleet::start(&s.path("plant"), &s.path("state"), &endpoint, "fleet", &names, agents_root, 32))
        .expect("fleet");
    eprintln!("fleet of {n}: enrolled; waiting for every session");
    until(limit, || fleet.connected() == n).unwrap_or_else(|| panic!("{} of {n} connected", fleet.connected()));
    f.all_connected = started.elapsed();
    eprintln!("fleet of {n}: all connected in {:.2} s; waiting for every configuration", f.all_connected.as_secs_f64());
    until(limit, || rt.block_on(fleet.holding(None)) == n)
        .unwrap_or_else(|| panic!("{} of {n} agents hold a configuration", rt.block_on(fleet.holding(None))));
    // Each agent's plan holds its own equipment: revisions differ from agent to agent.
    let first: Vec<Option<String>> = fleet.agents.iter().map(|a| rt.block_on(a.held_revision())).collect();

    // Settle first: the statuses of the connections just made are still being written.
    std::thread::sleep(Duration::from_secs(5));
    // A longer window (SHOPFLOOR_FLEET_IDLE_SECS) leaves time to attach a profiler to the pid.
    let idle = std::env::var("SHOPFLOOR_FLEET_IDLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    eprintln!("fleet of {n}: all connected and configured; idle window of {idle} s on controller pid {pid}");
    let me = std::process::id();
    let (t0, c0, m0) = (std::time::Instant::now(), cpu_ticks(pid), cpu_ticks(me));
    std::thread::sleep(Duration::from_secs(idle));
    // Linux reports CPU time in ticks of 1/100 s (USER_HZ).
    let secs = t0.elapsed().as_secs_f64();
    f.idle_cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / secs;
    f.fleet_idle_cpu = (cpu_ticks(me) - m0) as f64 / 100.0 / secs;
    f.rss_connected_kib = proc_status_kib(pid, "VmRSS:");
    f.fleet_rss_kib = proc_status_kib(me, "VmRSS:");

    eprintln!("fleet of {n}: idle CPU {:.1}%; changing the slice", f.idle_cpu * 100.0);
    std::fs::write(s.path("plant/fleet-slice.yaml"), slice("fleet", 20)).expect("manifests");
    let edited = std::time::Instant::now();
    let changed = |rt: &tokio::runtime::Runtime| {
        fleet.agents.iter().zip(&first).filter(|(a, was)| rt.block_on(a.held_revision()) != **was).count()
    };
    if until(limit, || changed(&rt) == n).is_none() {
        let log = std::fs::read_to_string(s.path("controller.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!("the slice change was applied by {} of {n} agents\n{}", changed(&rt), tail.join("\n"));
    }
    f.change_applied = edited.elapsed();
    let second: Vec<String> = fleet.agents.iter().filter_map(|a| rt.block_on(a.held_revision())).collect();
    let in_status = |(name, rev): (&String, &String)| {
        let text =
            std::fs::read_to_string(s.path(&format!("state/objects/edgeagents/fleet/{name}.yaml"))).unwrap_or_default();
        applied_revision(&text).as_deref() == Some(rev.as_str())
    };
    until(limit, || names.iter().zip(&second).all(in_status)).expect("the slice change in every EdgeAgent's status");
    f.change_in_status = edited.elapsed();

    eprintln!(
        "fleet of {n}: the change in every status after {:.2} s; restarting the controller",
        f.change_in_status.as_secs_f64()
    );
    let (sessions, attempts) = (fleet.sessions(), fleet.attempts());
    s.kill("controller");
    until(limit, || fleet.connected() == 0).expect("the fleet saw the controller go");
    let restarted = std::time::Instant::now();
    s.controller_on(&endpoint);
    until(limit, || fleet.connected() > 0).expect("an agent back after the controller restart");
    f.first_back_after_restart = restarted.elapsed();
    until(limit, || fleet.connected() == n)
        .unwrap_or_else(|| panic!("{} of {n} reconnected after a controller restart", fleet.connected()));
    f.reconnected_after_restart = restarted.elapsed();
    f.sessions_after_restart = fleet.sessions() - sessions;
    f.attempts_after_restart = fleet.attempts() - attempts;
    drop(fleet);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_revision_of_digits_only_is_read_as_written() {
        let digits = "status:\n  config:\n    appliedRevision: '7459010845821241'\n";
        assert_eq!(applied_revision(digits).as_deref(), Some("7459010845821241"));
        let hex = "status:\n  config: {appliedRevision: 7459a10845821241}\n";
        assert_eq!(applied_revision(hex).as_deref(), Some("7459a10845821241"));
        assert_eq!(applied_revision("status: {}\n"), None);
    }
}
