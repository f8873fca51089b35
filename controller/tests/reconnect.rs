//! Commands across agent reconnects, run from one scenario list through every store: the
//! Kubernetes store (kube's mocked API server, whose requests are recorded and checked), the
//! folder store of standalone mode, and the in-memory store. Nothing here calls `reconcile`
//! after the agent comes back: the engine must notice the connection itself, in every mode.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Client, client::Body};
use shopfloor_api::{
    ControlCommand, Equipment,
    control_command::{CommandPhase, ControlCommandStatus, ResultCode},
    manifest::{self, Object},
};
use shopfloor_controller::{
    agents::{
        port::{AgentSession, Dispatch, Outcome, Reply, SessionError},
        registry::Registry,
    },
    engine::Engine,
    kube::store::KubeStore,
    metrics::Metrics,
    planner::AgentPlan,
    standalone::store::FolderStore,
    store::{ObjectKey, Store, memory::MemoryStore},
};
use tokio::sync::mpsc;

/// How an agent's session answers a command.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Succeed,
    /// Acknowledge, then the connection dies before the result.
    AckThenDie,
    /// The agent restarted while executing: its journal says started, not finished.
    OutcomeUnknown,
}

struct Session {
    answer: Answer,
    seen: Mutex<Vec<String>>,
}

impl AgentSession for Session {
    fn rtt(&self) -> Duration {
        Duration::from_micros(500)
    }

    fn push_config(&self, _: Arc<AgentPlan>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }

    fn dispatch(&self, command: Dispatch) -> BoxFuture<'_, Result<mpsc::Receiver<Reply>, SessionError>> {
        self.seen.lock().expect("lock").push(command.id);
        let answer = self.answer;
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Reply::Acknowledged).await;
                let now = Timestamp::now();
                let (code, message) = match answer {
                    Answer::AckThenDie => return,
                    Answer::Succeed => (ResultCode::Ok, String::new()),
                    Answer::OutcomeUnknown => (
                        ResultCode::Internal,
                        "the agent restarted while this command was executing; the outcome is unknown".to_owned(),
                    ),
                };
                let outcome = Outcome {
                    code,
                    message,
                    outputs: BTreeMap::new(),
                    received_at: Some(now),
                    started_at: Some(now),
                    finished_at: Some(now),
                };
                let _ = tx.send(Reply::Finished(outcome)).await;
            });
            Ok(rx)
        })
    }

    fn measure_link(&self, _: Duration) {}

    fn close(&self, _: &str, _: Option<Duration>) {}
}

fn connect(registry: &Registry, agent: &ObjectKey, connection_id: u64, answer: Answer) -> Arc<Session> {
    let session = Arc::new(Session { answer, seen: Mutex::default() });
    registry.connect(agent.clone(), support::connected(session.clone(), connection_id));
    session
}

fn plant_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant")
}

/// The command and its equipment from the example plant.
fn from_plant(name: &str) -> (ControlCommand, Equipment) {
    let (mut eq, mut cmds) = (vec![], vec![]);
    for l in manifest::load_valid(&plant_dir()).expect("plant") {
        match l.expect("valid").1 {
            Object::Equipment(e) => eq.push(e),
            Object::ControlCommand(c) => cmds.push(c),
            _ => {}
        }
    }
    let mut c = cmds.into_iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("command");
    c.metadata.uid = Some(format!("uid-{name}"));
    c.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    let e =
        eq.into_iter().find(|e| e.metadata.name.as_deref() == Some(c.spec.equipment_ref.name.as_str())).expect("eq");
    (c, e)
}

/// One store under test and a way to read back what it recorded for a command.
trait Backend: Send + Sync + 'static {
    type S: Store;
    /// Whether every status written can be read back (the folder keeps only the latest).
    const HISTORY: bool = true;
    fn store(&self) -> Arc<Self::S>;
    /// The command as this store holds it now (metadata filled by the store where it does that).
    fn command(&self, name: &str) -> (ControlCommand, Equipment);
    /// Every status recorded for the command, in order.
    fn statuses(&self, key: &ObjectKey) -> Vec<ControlCommandStatus>;
}

struct Memory(Arc<MemoryStore>);

impl Backend for Memory {
    type S = MemoryStore;
    fn store(&self) -> Arc<MemoryStore> {
        self.0.clone()
    }
    fn command(&self, name: &str) -> (ControlCommand, Equipment) {
        from_plant(name)
    }
    fn statuses(&self, key: &ObjectKey) -> Vec<ControlCommandStatus> {
        self.0
            .history(key)
            .into_iter()
            .filter_map(|u| match u {
                shopfloor_controller::store::StatusUpdate::ControlCommand(_, s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

/// The folder store keeps only the latest status; every distinct one read back is recorded.
struct Folder {
    _dir: tempfile::TempDir,
    store: Arc<FolderStore>,
    seen: Mutex<BTreeMap<ObjectKey, Vec<ControlCommandStatus>>>,
}

impl Folder {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let manifests = dir.path().join("plant");
        std::fs::create_dir_all(&manifests).expect("mkdir");
        for entry in std::fs::read_dir(plant_dir()).expect("plant") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, manifests.join(path.file_name().expect("name"))).expect("copy");
        }
        let store = Arc::new(FolderStore::open(manifests, dir.path().join("state")).expect("store"));
        Self { _dir: dir, store, seen: Mutex::default() }
    }
}

impl Backend for Folder {
    type S = FolderStore;
    const HISTORY: bool = false;
    fn store(&self) -> Arc<FolderStore> {
        self.store.clone()
    }
    fn command(&self, name: &str) -> (ControlCommand, Equipment) {
        let world = self.store.load();
        let c = world.commands.into_iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("command");
        let e = world
            .equipment
            .into_iter()
            .find(|e| e.metadata.name.as_deref() == Some(c.spec.equipment_ref.name.as_str()))
            .expect("eq");
        (c, e)
    }
    fn statuses(&self, key: &ObjectKey) -> Vec<ControlCommandStatus> {
        let (c, _) = self.command(&key.name);
        let mut seen = self.seen.lock().expect("lock");
        let list = seen.entry(key.clone()).or_default();
        if let Some(s) = c.status
            && list.last() != Some(&s)
        {
            list.push(s);
        }
        list.clone()
    }
}

/// An Event the fake API server received: (path, regarding name, reason, type).
type PostedEvent = (String, String, String, String);

/// The Kubernetes store over kube's mocked service: a fake API server answers every request and
/// records it, so each scenario also checks the exact requests made.
struct Kube {
    store: Arc<KubeStore>,
    requests: Arc<Mutex<Vec<(http::Method, String, ControlCommandStatus)>>>,
    /// Events posted: (path, regarding name, reason, type).
    events: Arc<Mutex<Vec<PostedEvent>>>,
    /// Objects deleted from the fake API server: their status writes answer 404.
    deleted: Arc<Mutex<Vec<String>>>,
}

impl Kube {
    fn new() -> Self {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let requests: Arc<Mutex<Vec<(http::Method, String, ControlCommandStatus)>>> = Arc::default();
        let events: Arc<Mutex<Vec<PostedEvent>>> = Arc::default();
        let log = requests.clone();
        let event_log = events.clone();
        let deleted: Arc<Mutex<Vec<String>>> = Arc::default();
        let gone = deleted.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (method, path) = (req.method().clone(), req.uri().path().to_owned());
                let body: serde_json::Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
                if path.starts_with("/apis/events.k8s.io/v1/") {
                    assert_eq!(method, http::Method::POST, "{path}");
                    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                    event_log.lock().expect("lock").push((
                        path,
                        text(&body["regarding"]["name"]),
                        text(&body["reason"]),
                        text(&body["type"]),
                    ));
                    send.send_response(
                        Response::builder()
                            .status(StatusCode::CREATED)
                            .body(Body::from(serde_json::to_vec(&body).expect("json")))
                            .expect("response"),
                    );
                    continue;
                }
                let status: ControlCommandStatus =
                    serde_json::from_value(body["status"].clone()).expect("a command status");
                log.lock().expect("lock").push((method, path.clone(), status));
                let name = path.trim_end_matches("/status").rsplit('/').next().unwrap_or_default().to_owned();
                if gone.lock().expect("lock").contains(&name) {
                    let not_found = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": format!("controlcommands \"{name}\" not found")});
                    send.send_response(
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Body::from(serde_json::to_vec(&not_found).expect("json")))
                            .expect("response"),
                    );
                    continue;
                }
                let (object, _) = from_plant(&name);
                let mut reply = serde_json::to_value(&object).expect("json");
                reply["status"] = body["status"].clone();
                send.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                        .expect("response"),
                );
            }
        });
        let client = Client::new(service, "shopfloor-system");
        Self { store: Arc::new(KubeStore::new(client, "shopfloor-system")), requests, events, deleted }
    }
}

impl Backend for Kube {
    type S = KubeStore;
    fn store(&self) -> Arc<KubeStore> {
        self.store.clone()
    }
    fn command(&self, name: &str) -> (ControlCommand, Equipment) {
        from_plant(name)
    }
    fn statuses(&self, key: &ObjectKey) -> Vec<ControlCommandStatus> {
        let path =
            format!("/apis/shopfloor.io/v1alpha1/namespaces/{}/controlcommands/{}/status", key.namespace, key.name);
        let requests = self.requests.lock().expect("lock");
        for (method, p, _) in requests.iter() {
            // Status is only ever written by server-side apply on the status subresource.
            assert_eq!(method, http::Method::PATCH, "{p}");
            assert!(p.ends_with("/status"), "only the status subresource is written: {p}");
        }
        requests.iter().filter(|(_, p, _)| *p == path).map(|(_, _, s)| s.clone()).collect()
    }
}

/// What one scenario does once the command has been seen while its agent is away or dying.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// Created while the agent is offline; the agent connects.
    QueuedWhileOffline,
    /// Sent into a session that dies after the ack; the agent reconnects.
    SessionDiedAfterAck,
    /// Sent; the agent restarts mid-execution and answers the redelivery from its journal.
    AgentRestartedMidExecution,
}

const SCENARIOS: [Scenario; 3] =
    [Scenario::QueuedWhileOffline, Scenario::SessionDiedAfterAck, Scenario::AgentRestartedMidExecution];

fn phases(statuses: &[ControlCommandStatus]) -> Vec<CommandPhase> {
    let mut out: Vec<CommandPhase> = statuses.iter().filter_map(|s| s.phase).collect();
    out.dedup();
    out
}

async fn until_terminal<B: Backend>(backend: &B, key: &ObjectKey, within: Duration) -> ControlCommandStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = backend.statuses(key).last().filter(|s| s.phase.is_some_and(CommandPhase::is_terminal)) {
            return s.clone();
        }
        assert!(
            start.elapsed() < within,
            "{key}: not finished within {within:?}: {:?}",
            phases(&backend.statuses(key))
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run<B: Backend>(backend: B, scenario: Scenario) {
    let registry = Arc::new(Registry::default());
    let engine = Engine::new(backend.store(), registry.clone(), Arc::new(Metrics::default()));
    let _follow = engine.follow_connections();
    let (cmd, eq) = backend.command("start-infeed");
    let key = ObjectKey::of(&cmd.metadata);
    let uid = cmd.metadata.uid.clone().expect("uid");
    let agent = ObjectKey::new(key.namespace.clone(), eq.spec.agent_ref.name.clone());

    let first = match scenario {
        Scenario::QueuedWhileOffline => None,
        _ => Some(connect(&registry, &agent, 1, Answer::AckThenDie)),
    };
    engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    let want = if first.is_some() { CommandPhase::Acknowledged } else { CommandPhase::Pending };
    let start = Instant::now();
    while phases(&backend.statuses(&key)).last() != Some(&want) {
        assert!(start.elapsed() < Duration::from_secs(2), "{scenario:?}: {:?}", phases(&backend.statuses(&key)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if first.is_some() {
        registry.disconnect(&agent, 1);
    }

    let answer = match scenario {
        Scenario::AgentRestartedMidExecution => Answer::OutcomeUnknown,
        _ => Answer::Succeed,
    };
    let back = connect(&registry, &agent, 2, answer);
    let s = until_terminal(&backend, &key, Duration::from_secs(1)).await;
    assert_eq!(back.seen.lock().expect("lock").clone(), vec![uid.clone()], "{scenario:?}: re-sent once, same id");
    match scenario {
        Scenario::QueuedWhileOffline => {
            assert_eq!(s.phase, Some(CommandPhase::Succeeded));
            assert_eq!(s.attempts, 1);
            if B::HISTORY {
                assert_eq!(
                    phases(&backend.statuses(&key)),
                    vec![
                        CommandPhase::Pending,
                        CommandPhase::Dispatched,
                        CommandPhase::Acknowledged,
                        CommandPhase::Succeeded
                    ]
                );
            }
        }
        Scenario::SessionDiedAfterAck => {
            assert_eq!(s.phase, Some(CommandPhase::Succeeded));
            assert_eq!(s.attempts, 2, "delivered twice, answered once");
        }
        Scenario::AgentRestartedMidExecution => {
            assert_eq!(s.phase, Some(CommandPhase::Failed), "the outcome, as soon as the agent is back");
            assert!(s.result.as_ref().is_some_and(|r| r.message.contains("outcome is unknown")), "{s:?}");
        }
    }
    if let Some(first) = first {
        assert_eq!(first.seen.lock().expect("lock").clone(), vec![uid]);
    }
    let terminal = backend.statuses(&key).iter().filter(|s| s.phase.is_some_and(CommandPhase::is_terminal)).count();
    assert_eq!(terminal, 1, "{scenario:?}: exactly one result recorded");
}

#[tokio::test]
async fn kubernetes_store_reconnect_scenarios() {
    for scenario in SCENARIOS {
        let kube = Kube::new();
        let events = kube.events.clone();
        run(kube, scenario).await;
        // The lifecycle an operator follows, as Events on the command in its namespace.
        let want = match scenario {
            Scenario::AgentRestartedMidExecution => ("Failed", "Warning"),
            _ => ("Succeeded", "Normal"),
        };
        let start = Instant::now();
        loop {
            let got: Vec<(String, String)> = events
                .lock()
                .expect("lock")
                .iter()
                .map(|(_, _, reason, kind)| (reason.clone(), kind.clone()))
                .collect();
            if got.contains(&("Accepted".into(), "Normal".into())) && got.contains(&(want.0.into(), want.1.into())) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "{scenario:?}: events {got:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (path, name, _, _) in events.lock().expect("lock").iter() {
            assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/plant-a/events");
            assert_eq!(name, "start-infeed");
        }
    }
}

#[tokio::test]
async fn folder_store_reconnect_scenarios() {
    for scenario in SCENARIOS {
        run(Folder::new(), scenario).await;
    }
}

#[tokio::test]
async fn memory_store_reconnect_scenarios() {
    for scenario in SCENARIOS {
        run(Memory(Arc::default()), scenario).await;
    }
}

/// A command deleted while its agent is away is cancelled: the agent's return does not send it.
#[tokio::test]
async fn a_command_deleted_while_its_agent_is_away_is_never_sent() {
    let folder = Folder::new();
    let core = shopfloor_controller::reconcile::Reconciler::new(folder.store.clone(), "test", Duration::from_millis(5));
    core.reconcile_world(0, &folder.store.load()).await;
    let key = ObjectKey::new("plant-a", "start-infeed");
    assert_eq!(folder.statuses(&key).last().and_then(|s| s.phase), Some(CommandPhase::Pending));
    std::fs::remove_file(folder._dir.path().join("plant/commands.yaml")).expect("delete the commands");
    core.reconcile_world(1, &folder.store.load()).await;
    let session = connect(core.registry(), &ObjectKey::new("plant-a", "line-1"), 1, Answer::Succeed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(session.seen.lock().expect("lock").is_empty(), "a deleted command was sent");
}

/// The same through the Kubernetes store: a command deleted from the API server while its agent
/// is away (its status write answers 404) is forgotten, not sent when the agent is back.
#[tokio::test]
async fn a_command_deleted_from_the_api_server_is_never_sent() {
    let kube = Kube::new();
    let registry = Arc::new(Registry::default());
    let engine = Engine::new(kube.store(), registry.clone(), Arc::new(Metrics::default()));
    let _follow = engine.follow_connections();
    let (cmd, eq) = kube.command("start-infeed");
    engine.reconcile(&cmd, Some(&eq)).await.expect("queued");
    let key = ObjectKey::of(&cmd.metadata);
    assert_eq!(kube.statuses(&key).last().and_then(|s| s.phase), Some(CommandPhase::Pending));
    kube.deleted.lock().expect("lock").push("start-infeed".into());
    let agent = ObjectKey::new("plant-a", eq.spec.agent_ref.name.clone());
    let first = connect(&registry, &agent, 1, Answer::Succeed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    registry.disconnect(&agent, 1);
    let second = connect(&registry, &agent, 2, Answer::Succeed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.seen.lock().expect("lock").is_empty() && second.seen.lock().expect("lock").is_empty(), "sent");
    let writes = kube.requests.lock().expect("lock").len();
    assert_eq!(writes, 2, "Pending, then the one refused write that found it gone; nothing after: {writes}");
}
