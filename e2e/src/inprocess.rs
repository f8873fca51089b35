//! A controller and its agents in one process, talking real QUIC with mutual TLS on loopback: for
//! engine tests and the commands-per-second benchmark without process start-up noise.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use shopfloor_agent::{
    clock::WallClock,
    commands::Executor,
    envelope::Envelope,
    journal::Journal,
    link::{connection::Agent, credentials, enroll},
    state::StateDir,
};
use shopfloor_api::common::Time;
use shopfloor_api::{
    ControlCommand, EdgeAgent, Equipment,
    control_command::{CommandPhase, ControlCommandStatus},
    manifest::{self, Object},
};
use shopfloor_controller::{
    endpoint::{self, Endpoint},
    enrollment::{self, BootstrapToken},
    reconcile::Reconciler,
    store::{ObjectKey, StatusUpdate, World, memory::MemoryStore},
};
use shopfloor_wire::{identity::AgentId, transport::Timing};

/// A running controller with its connected agents.
pub struct Plant {
    pub core: Arc<Reconciler<MemoryStore>>,
    pub world: World,
    /// The first agent, running in this process.
    pub agent: Arc<Agent>,
    /// Every agent of the world, in its order.
    pub agents: Vec<Arc<Agent>>,
    /// The controller's QUIC endpoint and its address.
    pub endpoint: Arc<Endpoint<MemoryStore>>,
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Plant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plant").finish_non_exhaustive()
    }
}

/// Loads manifests from YAML text.
pub fn objects(yaml: &str) -> World {
    let mut w = World::default();
    for o in manifest::parse_valid(std::path::Path::new("inline.yaml"), yaml) {
        match o.expect("valid manifest").1 {
            Object::EdgeAgent(a) => w.agents.push(a),
            Object::Equipment(e) => w.equipment.push(e),
            Object::NetworkSlice(s) => w.slices.push(s),
            Object::ControlCommand(c) => w.commands.push(c),
        }
    }
    for a in &mut w.agents {
        a.metadata.uid = Some("agent-uid".into());
        a.metadata.generation = Some(1);
    }
    w
}

impl Plant {
    /// Starts the controller on `world`, enrolls its agents (`plant-a/line-1`, …) and waits until
    /// each holds its configuration.
    pub async fn start(world: World) -> Self {
        Self::start_with_agent_clock(world, WallClock::system()).await
    }

    /// As [`Plant::start`], with the agent's wall clock at `wall` (skewed to play a host whose
    /// clock is wrong).
    pub async fn start_with_agent_clock(world: World, wall: WallClock) -> Self {
        Self::start_on(world, wall, &std::env::temp_dir()).await
    }

    /// As [`Plant::start`], with the agent's state directory (its journal, fsynced per command)
    /// under `root`: a tmpfs there takes the disk out of the figures.
    pub async fn start_on(mut world: World, wall: WallClock, root: &std::path::Path) -> Self {
        let dir = tempfile::tempdir_in(root).expect("tmp");
        let core = Reconciler::new(Arc::new(MemoryStore::default()), "in-process", Duration::from_millis(200));
        let ca = endpoint::ensure_ca(&**core.store()).await.expect("ca");
        let fingerprint = ca.fingerprint();
        let ep = Endpoint::bind(
            core.endpoint_context(),
            ca,
            "127.0.0.1:0".parse().expect("addr"),
            &["127.0.0.1".into()],
            endpoint::timing(),
        )
        .expect("endpoint");
        let endpoint_addr = ep.local_addr().expect("addr");
        let addr = endpoint_addr.to_string();
        tokio::spawn(ep.clone().run());
        core.reconcile_world(0, &world).await;
        let keys: Vec<ObjectKey> = world.agents.iter().map(|a| ObjectKey::of(&a.metadata)).collect();
        let mut agents = Vec::new();
        let mut recorded = Vec::new();
        for key in &keys {
            let secret = core
                .store()
                .secrets
                .lock()
                .expect("lock")
                .get(&enrollment::token_secret_name(key))
                .cloned()
                .expect("token secret");
            let token = BootstrapToken::from_secret(&secret).expect("token").token();
            let state = StateDir::open(dir.path().join(&key.name)).expect("state");
            enroll::enroll(&state, &addr, None, &token, &fingerprint, &AgentId::new(&key.namespace, &key.name))
                .await
                .expect("enrolled");
            // The controller recorded the certificate; the agent object it reconciles must carry it.
            recorded.push(core.book().agent(key).expect("agent"));
            let identity = credentials::load_identity(&state).expect("identity");
            let journal = Journal::open(&state, Duration::from_secs(86400), 1_000_000).expect("journal");
            let executor = Executor::new(journal, Envelope::none()).with_wall_clock(wall);
            let agent = Agent::new(state, identity, Arc::new(executor), 10_000);
            tokio::spawn(agent.clone().run(Timing::default()));
            agents.push(agent);
        }
        world.agents = recorded;
        let c2 = core.clone();
        let w2 = world.clone();
        tokio::spawn(async move {
            loop {
                c2.reconcile_world(0, &w2).await;
                tokio::select! {
                    () = c2.changes().wait() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        let plans = core.plans(0, &world);
        for _ in 0..400 {
            let holding = keys.iter().all(|key| {
                core.registry().get(key).and_then(|c| c.held_revision).as_deref()
                    == plans.agents.get(key).map(|p| p.revision())
            });
            if holding {
                let agent = agents[0].clone();
                return Self { core, world, agent, agents, endpoint: ep, addr: endpoint_addr, _dir: dir };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not every agent held its configuration within 20 s");
    }

    pub fn equipment(&self, name: &str) -> &Equipment {
        self.world.equipment.iter().find(|e| e.metadata.name.as_deref() == Some(name)).expect("equipment")
    }

    /// A command object as the API server would hand it over.
    pub fn command(template: &ControlCommand, i: usize) -> ControlCommand {
        let mut c = template.clone();
        c.metadata.name = Some(format!("cmd-{i}"));
        c.metadata.uid = Some(format!("uid-{i}"));
        c.metadata.creation_timestamp = Some(Time(Timestamp::now()));
        c
    }

    /// The last status written for command `i`.
    pub fn status(&self, i: usize) -> Option<ControlCommandStatus> {
        let key = ObjectKey::new("plant-a", format!("cmd-{i}"));
        match self.core.store().history(&key).pop()? {
            StatusUpdate::ControlCommand(_, s) => Some(s),
            _ => None,
        }
    }

    pub fn finished(&self, i: usize) -> Option<ControlCommandStatus> {
        self.status(i).filter(|s| s.phase.is_some_and(CommandPhase::is_terminal))
    }

    /// Waits up to `within` for command `i` to finish; panics with its last status otherwise.
    pub async fn wait_finished(&self, i: usize, within: Duration) -> ControlCommandStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.finished(i) {
                return s;
            }
            assert!(start.elapsed() < within, "command {i} did not finish within {within:?}: {:?}", self.status(i));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn agent(&self) -> &EdgeAgent {
        &self.world.agents[0]
    }
}
