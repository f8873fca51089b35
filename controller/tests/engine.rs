//! The command engine over an in-memory store and scripted agent sessions.

mod support;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use shopfloor_api::{
    ControlCommand, Equipment,
    control_command::{CommandPhase, ControlCommandStatus, ParameterValue, ResultCode, WhenOffline},
    manifest::{self, Object},
};
use shopfloor_controller::{
    agents::{
        port::{AgentSession, Dispatch, Outcome, Reply, SessionError},
        registry::Registry,
    },
    engine::Engine,
    metrics::Metrics,
    planner::AgentPlan,
    store::{ObjectKey, StatusUpdate, memory::MemoryStore},
};
use tokio::sync::mpsc;

#[derive(Clone, Copy, PartialEq)]
enum Script {
    Succeed,
    /// Acknowledge, then lose the connection before the result.
    AckThenDrop,
}

struct FakeSession {
    script: Script,
    store: Arc<MemoryStore>,
    seen: Mutex<Vec<(Dispatch, Option<CommandPhase>)>>,
}

impl AgentSession for FakeSession {
    fn rtt(&self) -> Duration {
        Duration::from_micros(600)
    }

    fn push_config(&self, _: Arc<AgentPlan>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }

    fn dispatch(&self, command: Dispatch) -> BoxFuture<'_, Result<mpsc::Receiver<Reply>, SessionError>> {
        // What the store held when the command left: it must already say Dispatched.
        let persisted = self.store.history(&command.key).last().and_then(|u| match u {
            StatusUpdate::ControlCommand(_, s) => s.phase,
            _ => None,
        });
        self.seen.lock().expect("lock").push((command, persisted));
        let script = self.script;
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(Reply::Acknowledged).await;
                if script == Script::Succeed {
                    let now = Timestamp::now();
                    let outcome = Outcome {
                        code: ResultCode::Ok,
                        message: String::new(),
                        outputs: BTreeMap::new(),
                        received_at: Some(now),
                        started_at: Some(now),
                        finished_at: Some(now + Duration::from_millis(3)),
                    };
                    let _ = tx.send(Reply::Finished(outcome)).await;
                }
            });
            Ok(rx)
        })
    }

    fn measure_link(&self, _: Duration) {}

    fn close(&self, _: &str, _: Option<Duration>) {}
}

fn plant() -> (Vec<Equipment>, Vec<ControlCommand>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant");
    let (mut eq, mut cmds) = (vec![], vec![]);
    for l in manifest::load_valid(&dir).expect("plant") {
        match l.expect("valid").1 {
            Object::Equipment(e) => eq.push(e),
            Object::ControlCommand(c) => cmds.push(c),
            _ => {}
        }
    }
    (eq, cmds)
}

fn command(name: &str) -> (ControlCommand, Equipment) {
    let (eq, cmds) = plant();
    let mut c = cmds.into_iter().find(|c| c.metadata.name.as_deref() == Some(name)).expect("command");
    c.metadata.uid = Some(format!("uid-{name}"));
    c.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    let e =
        eq.into_iter().find(|e| e.metadata.name.as_deref() == Some(c.spec.equipment_ref.name.as_str())).expect("eq");
    (c, e)
}

struct Rig {
    store: Arc<MemoryStore>,
    registry: Arc<Registry>,
    engine: Engine<MemoryStore>,
}

fn rig(store: Arc<MemoryStore>) -> Rig {
    let registry = Arc::new(Registry::default());
    let engine = Engine::new(store.clone(), registry.clone(), Arc::new(Metrics::default()));
    Rig { store, registry, engine }
}

fn connect(rig: &Rig, agent: &str, script: Script) -> Arc<FakeSession> {
    let session = Arc::new(FakeSession { script, store: rig.store.clone(), seen: Mutex::default() });
    rig.registry.connect(ObjectKey::new("plant-a", agent), support::connected(session.clone(), 1));
    session
}

fn phases(store: &MemoryStore, key: &ObjectKey) -> Vec<CommandPhase> {
    store
        .history(key)
        .into_iter()
        .filter_map(|u| match u {
            StatusUpdate::ControlCommand(_, s) => s.phase,
            _ => None,
        })
        .collect()
}

fn last_status(store: &MemoryStore, key: &ObjectKey) -> ControlCommandStatus {
    match store.history(key).pop() {
        Some(StatusUpdate::ControlCommand(_, s)) => s,
        _ => panic!("no status for {key}"),
    }
}

async fn settle(store: &MemoryStore, key: &ObjectKey, want: CommandPhase) {
    for _ in 0..200 {
        if phases(store, key).last() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{key} never reached {want:?}: {:?}", phases(store, key));
}

#[tokio::test]
async fn a_command_walks_to_succeeded_and_is_persisted_before_it_is_sent() {
    let (cmd, eq) = command("start-infeed");
    let rig = rig(Arc::default());
    let session = connect(&rig, "line-1", Script::Succeed);
    let key = ObjectKey::of(&cmd.metadata);
    rig.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &key, CommandPhase::Succeeded).await;
    assert_eq!(
        phases(&rig.store, &key),
        vec![CommandPhase::Pending, CommandPhase::Dispatched, CommandPhase::Acknowledged, CommandPhase::Succeeded]
    );
    let seen = session.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, Some(CommandPhase::Dispatched), "Dispatched was durable before the send");
    assert_eq!(seen[0].0.id, "uid-start-infeed");
    assert!(seen[0].0.traceparent.starts_with("00-") && seen[0].0.traceparent.len() == 55);
    let s = last_status(&rig.store, &key);
    assert_eq!(s.attempts, 1);
    assert_eq!(s.latency.network_micros, Some(300));
    assert_eq!(s.latency.execution_micros, Some(3000));
    assert!(s.latency.total_micros.is_some() && s.trace_id.is_some());
}

#[tokio::test]
async fn commands_for_an_offline_agent_queue_or_reject_as_asked() {
    let (mut cmd, eq) = command("start-infeed");
    let key = ObjectKey::of(&cmd.metadata);
    let queued = rig(Arc::default());
    let requeue = queued.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    assert_eq!(phases(&queued.store, &key), vec![CommandPhase::Pending]);
    assert!(requeue.is_some_and(|d| d <= Duration::from_secs(10)), "looked at again by the deadline: {requeue:?}");
    // The agent comes back: the queued command goes out.
    let session = connect(&queued, "line-1", Script::Succeed);
    queued.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    settle(&queued.store, &key, CommandPhase::Succeeded).await;
    assert_eq!(session.seen.lock().expect("lock").len(), 1);

    cmd.spec.when_offline = WhenOffline::Reject;
    let rejecting = rig(Arc::default());
    rejecting.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    let s = last_status(&rejecting.store, &key);
    assert_eq!(s.phase, Some(CommandPhase::Rejected));
    assert_eq!(s.result.map(|r| r.code), Some(ResultCode::AgentOffline));
}

#[tokio::test]
async fn a_command_outside_an_interlock_is_rejected_with_the_field_and_never_sent() {
    let (mut cmd, eq) = command("start-infeed");
    cmd.spec.parameters.insert("speed".into(), ParameterValue::Scalar(shopfloor_api::Value::Float(3.0)));
    let rig = rig(Arc::default());
    let session = connect(&rig, "line-1", Script::Succeed);
    rig.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    let s = last_status(&rig.store, &ObjectKey::of(&cmd.metadata));
    assert_eq!(s.phase, Some(CommandPhase::Rejected));
    let result = s.result.expect("result");
    assert_eq!(result.code, ResultCode::InvalidParameter);
    assert!(result.message.contains("spec.parameters.speed"), "{}", result.message);
    assert!(session.seen.lock().expect("lock").is_empty());

    let (mut unknown, _) = command("start-infeed");
    unknown.metadata.uid = Some("uid-2".into());
    rig.engine.reconcile(&unknown, None).await.expect("reconcile");
    let s = last_status(&rig.store, &ObjectKey::of(&unknown.metadata));
    assert_eq!(s.result.map(|r| r.code), Some(ResultCode::UnknownEquipment));
}

#[tokio::test]
async fn after_a_controller_restart_a_dispatched_command_is_resent_with_its_id_and_ends_once() {
    let (cmd, eq) = command("oven-to-185");
    let key = ObjectKey::of(&cmd.metadata);
    let store: Arc<MemoryStore> = Arc::default();
    {
        let first = rig(store.clone());
        connect(&first, "line-2", Script::AckThenDrop);
        first.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
        settle(&store, &key, CommandPhase::Acknowledged).await;
    }
    // A new controller: fresh engine and registry, the command as the store returns it.
    let mut persisted = cmd.clone();
    persisted.status = Some(last_status(&store, &key));
    let second = rig(store.clone());
    let session = connect(&second, "line-2", Script::Succeed);
    second.engine.reconcile(&persisted, Some(&eq)).await.expect("reconcile");
    settle(&store, &key, CommandPhase::Succeeded).await;
    let seen = session.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.id, "uid-oven-to-185", "same id: the agent's journal answers the redelivery");
    let s = last_status(&store, &key);
    assert_eq!(s.attempts, 2);
    let terminal = phases(&store, &key).into_iter().filter(|p| p.is_terminal()).count();
    assert_eq!(terminal, 1, "exactly one result");
}

#[tokio::test]
async fn finished_commands_are_deleted_after_their_ttl() {
    let (mut cmd, eq) = command("start-infeed");
    cmd.spec.ttl_seconds_after_finished = Some(0);
    let rig = rig(Arc::default());
    connect(&rig, "line-1", Script::Succeed);
    let key = ObjectKey::of(&cmd.metadata);
    rig.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &key, CommandPhase::Succeeded).await;
    rig.engine.reconcile(&cmd, Some(&eq)).await.expect("reconcile");
    assert_eq!(rig.store.deleted.lock().expect("lock").clone(), vec![key]);
}

/// The commands `name`, `name-1`, … as distinct objects (own uid and name).
fn copies(cmd: &ControlCommand, n: usize) -> Vec<ControlCommand> {
    (0..n)
        .map(|i| {
            let mut c = cmd.clone();
            c.metadata.name = Some(format!("{}-{i}", cmd.metadata.name.as_deref().unwrap_or("cmd")));
            c.metadata.uid = Some(format!("uid-{i}-{}", cmd.metadata.uid.as_deref().unwrap_or("")));
            c
        })
        .collect()
}

#[tokio::test]
async fn commands_over_a_rate_limit_are_rejected_naming_the_limit_and_never_sent() {
    use shopfloor_api::equipment::RateLimit;
    let (cmd, mut eq) = command("start-infeed");
    eq.spec.rate_limit = Some(RateLimit { per_minute: 6, burst: 2 });
    let action = eq.spec.actions.iter().position(|a| a.name == cmd.spec.action).expect("action");
    let rig = rig(Arc::default());
    let session = connect(&rig, "line-1", Script::Succeed);
    // Just started, the controller has one command to give, not its burst of 2 (a restart
    // hands out no fresh burst).
    let at_start: Vec<_> = copies(&cmd, 2)
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.metadata.name = Some(format!("at-start-{i}"));
            c.metadata.uid = Some(format!("uid-at-start-{i}"));
            c
        })
        .collect();
    for c in &at_start {
        rig.engine.reconcile(c, Some(&eq)).await.expect("reconcile");
    }
    settle(&rig.store, &ObjectKey::of(&at_start[0].metadata), CommandPhase::Succeeded).await;
    let s = last_status(&rig.store, &ObjectKey::of(&at_start[1].metadata));
    assert_eq!(s.phase, Some(CommandPhase::Rejected), "the second refused at the start: {s:?}");
    // Long after the start, the burst is there.
    rig.engine.backdate_rate_limits(Duration::from_secs(3600));
    let cmds = copies(&cmd, 3);
    for c in &cmds {
        rig.engine.reconcile(c, Some(&eq)).await.expect("reconcile");
    }
    for c in &cmds[..2] {
        settle(&rig.store, &ObjectKey::of(&c.metadata), CommandPhase::Succeeded).await;
    }
    let s = last_status(&rig.store, &ObjectKey::of(&cmds[2].metadata));
    assert_eq!(s.phase, Some(CommandPhase::Rejected));
    let result = s.result.expect("result");
    assert_eq!(result.code, ResultCode::RateLimited);
    assert!(
        result
            .message
            .contains("Equipment plant-a/infeed-conveyor spec.rateLimit allows 6 per minute with a burst of 2"),
        "{}",
        result.message
    );
    assert!(result.message.contains("the next command may pass in"), "{}", result.message);
    assert_eq!(session.seen.lock().expect("lock").len(), 3, "the refused commands never left");
    // Reconciled again (a watch event), the admitted commands take no second token, and a
    // read never counts.
    for c in &cmds[..2] {
        rig.engine.reconcile(c, Some(&eq)).await.expect("reconcile");
    }
    let (mut read, _) = command("start-infeed");
    read.spec.action = "read".into();
    read.metadata.name = Some("read-belt".into());
    read.metadata.uid = Some("uid-read-belt".into());
    read.spec.parameters = [("property".to_owned(), ParameterValue::Name("belt-speed".into()))].into();
    for r in copies(&read, 3) {
        rig.engine.reconcile(&r, Some(&eq)).await.expect("reconcile");
        settle(&rig.store, &ObjectKey::of(&r.metadata), CommandPhase::Succeeded).await;
    }

    // An action's own limit, on top of the equipment's, is named by its field.
    let (cmd, mut eq) = command("start-infeed");
    eq.spec.actions[action].rate_limit = Some(RateLimit { per_minute: 1, burst: 1 });
    let rig = self::rig(Arc::default());
    connect(&rig, "line-1", Script::Succeed);
    let cmds = copies(&cmd, 2);
    for c in &cmds {
        rig.engine.reconcile(c, Some(&eq)).await.expect("reconcile");
    }
    let result = last_status(&rig.store, &ObjectKey::of(&cmds[1].metadata)).result.expect("result");
    assert_eq!(result.code, ResultCode::RateLimited);
    assert!(
        result.message.contains(&format!("spec.actions[{action}].rateLimit allows 1 per minute")),
        "{}",
        result.message
    );
}

#[tokio::test]
async fn a_command_that_requires_the_slice_budget_is_refused_over_a_slow_link() {
    use shopfloor_controller::link_budget::LinkBudget;
    let (cmd, eq) = command("start-infeed");
    let rig = rig(Arc::default());
    // The fake link's round trip is 600 µs: 0.3 ms one way.
    let session = connect(&rig, "line-1", Script::Succeed);
    let budget = |micros: u64, urllc: bool| {
        [(
            ObjectKey::of(&eq.metadata),
            LinkBudget { slice: "control-urllc".into(), budget: Some(Duration::from_micros(micros)), urllc },
        )]
        .into()
    };
    rig.engine.set_link_budgets(budget(200, true));
    let cmds = copies(&cmd, 4);
    rig.engine.reconcile(&cmds[0], Some(&eq)).await.expect("reconcile");
    let s = last_status(&rig.store, &ObjectKey::of(&cmds[0].metadata));
    assert_eq!(s.phase, Some(CommandPhase::Rejected));
    let result = s.result.expect("result");
    assert_eq!(result.code, ResultCode::LinkOverBudget);
    assert!(
        result.message.contains("estimated one-way delay 0.3 ms")
            && result.message.contains("exceeds the 0.2 ms packet delay budget of NetworkSlice control-urllc"),
        "{}",
        result.message
    );
    assert!(session.seen.lock().expect("lock").is_empty(), "never sent");

    // The command may waive it; a slice that is not URLLC does not require it; a link within
    // the budget passes.
    let mut waived = cmds[1].clone();
    waived.spec.require_link_within_budget = Some(false);
    rig.engine.reconcile(&waived, Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &ObjectKey::of(&waived.metadata), CommandPhase::Succeeded).await;
    rig.engine.set_link_budgets(budget(200, false));
    rig.engine.reconcile(&cmds[2], Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &ObjectKey::of(&cmds[2].metadata), CommandPhase::Succeeded).await;
    rig.engine.set_link_budgets(budget(1000, true));
    rig.engine.reconcile(&cmds[3], Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &ObjectKey::of(&cmds[3].metadata), CommandPhase::Succeeded).await;
}

/// Defect: once the NetworkSlice an Equipment names was deleted, its budget vanished with it and
/// the gate let every command through (fail open), over any link. From the plans, as the
/// reconciler computes the budgets: the equipment's budget is unknown and its commands are
/// refused unless they waive the budget.
#[tokio::test]
async fn a_command_on_an_equipment_whose_slice_is_gone_is_refused() {
    let (cmd, eq) = command("start-infeed");
    let rig = rig(Arc::default());
    let session = connect(&rig, "line-1", Script::Succeed);
    let agent: shopfloor_api::EdgeAgent = serde_yaml::from_str(
        "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: line-1, namespace: plant-a}\nspec: {site: plant-a/line-1}\n",
    )
    .expect("agent");
    let mut on_slice = eq.clone();
    on_slice.spec.network_slice_ref = Some(shopfloor_api::LocalRef { name: "control-urllc".into() });
    // No NetworkSlice at all: it was deleted.
    let plans = shopfloor_controller::planner::plan(&[agent], &[on_slice], &[]);
    rig.engine.set_link_budgets(shopfloor_controller::link_budget::budgets(&plans));
    let cmds = copies(&cmd, 2);
    rig.engine.reconcile(&cmds[0], Some(&eq)).await.expect("reconcile");
    let s = last_status(&rig.store, &ObjectKey::of(&cmds[0].metadata));
    assert_eq!(s.phase, Some(CommandPhase::Rejected));
    let result = s.result.expect("result");
    assert_eq!(result.code, ResultCode::LinkOverBudget);
    assert!(
        result.message.contains("NetworkSlice control-urllc named by spec.networkSliceRef does not exist"),
        "{}",
        result.message
    );
    assert!(session.seen.lock().expect("lock").is_empty(), "never sent");
    let mut waived = cmds[1].clone();
    waived.spec.require_link_within_budget = Some(false);
    rig.engine.reconcile(&waived, Some(&eq)).await.expect("reconcile");
    settle(&rig.store, &ObjectKey::of(&waived.metadata), CommandPhase::Succeeded).await;
}
