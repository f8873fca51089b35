//! Conditions that tell the truth, through the controller's core: a report of an older revision
//! never makes a NetworkSlice Ready.

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use shopfloor_api::manifest::{self, Object};
use shopfloor_controller::{
    agents::observed::AppliedReport,
    reconcile::Reconciler,
    store::{ObjectKey, StatusUpdate, World, memory::MemoryStore},
};

fn plant() -> World {
    let mut w = World::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant");
    for (i, l) in manifest::load_valid(&dir).expect("plant").into_iter().enumerate() {
        match l.expect("valid").1 {
            Object::EdgeAgent(mut a) => {
                a.metadata.generation = Some(1);
                a.metadata.uid = Some(format!("uid-{i}"));
                w.agents.push(a)
            }
            Object::Equipment(e) => w.equipment.push(e),
            Object::NetworkSlice(s) => w.slices.push(s),
            Object::ControlCommand(_) => {}
        }
    }
    w
}

async fn slice_ready(store: &MemoryStore, key: &ObjectKey) -> (String, String) {
    for _ in 0..200 {
        if let Some(StatusUpdate::NetworkSlice(_, s)) = store.history(key).pop()
            && let Some(c) = s.conditions.iter().find(|c| c.type_ == "Ready")
        {
            return (c.status.clone(), c.reason.clone());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no status for {key}");
}

#[tokio::test]
async fn a_slice_is_ready_only_when_its_agents_applied_the_current_revision() {
    let store = Arc::new(MemoryStore::default());
    let core = Reconciler::new(store.clone(), "test", Duration::from_millis(1));
    let world = plant();
    let plans = core.plans(1, &world);
    let slice = world.slices.iter().find(|s| s.metadata.name.as_deref() == Some("control-urllc")).expect("slice");
    let key = ObjectKey::of(&slice.metadata);
    let selected = plans.slice_agents.get(&key).cloned().unwrap_or_default();
    assert!(!selected.is_empty(), "the example slice selects agents");
    let report = |revision: &str| AppliedReport {
        revision: revision.to_owned(),
        slices: [("control-urllc".to_owned(), Ok(()))].into(),
        ..Default::default()
    };
    // Every selected agent steers the slice — as it was in an older revision.
    for a in &selected {
        core.observed().record_applied(a.clone(), report("an-older-revision"));
    }
    core.reconcile_slice(slice, &plans);
    assert_eq!(slice_ready(&store, &key).await, ("False".into(), "Pending".into()));
    for a in &selected {
        core.observed().record_applied(a.clone(), report(plans.agents[a].revision()));
    }
    core.reconcile_slice(slice, &plans);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(slice_ready(&store, &key).await, ("True".into(), "Applied".into()));
}

#[tokio::test]
async fn readings_reconcile_their_agents_equipment_but_leave_the_agent_and_the_slices_alone() {
    use shopfloor_controller::{
        agents::changes::{Change, Changes},
        metrics::KindLabel,
    };
    let core = Reconciler::new(Arc::new(MemoryStore::default()), "test", Duration::from_millis(1));
    let world = plant();
    let agent = ObjectKey::of(&world.agents[0].metadata);
    let count = |kind: &str| core.metrics().reconciliations.get_or_create(&KindLabel { kind: kind.into() }).get();
    let marks = Changes::default();
    let plans = core.plans(1, &world);
    let its_equipment = world.equipment.iter().filter(|e| e.spec.agent_ref.name == agent.name).count();
    assert!(
        its_equipment > 0 && its_equipment < world.equipment.len(),
        "the example plant has other agents' equipment"
    );

    marks.mark(&agent, Change::Readings);
    core.reconcile_changed(&plans, &world, &marks.take()).await;
    assert_eq!(count("EdgeAgent"), 0, "readings show in no EdgeAgent's status");
    assert_eq!(count("Equipment") as usize, its_equipment, "its equipment is reconciled, no other");
    assert_eq!(count("NetworkSlice"), 0, "readings do not change what a slice's status counts");

    marks.mark(&agent, Change::Readings);
    marks.mark(&agent, Change::Session);
    core.reconcile_changed(&plans, &world, &marks.take()).await;
    assert_eq!(count("EdgeAgent"), 1, "a session change is the agent's own");
    assert!(count("NetworkSlice") >= 1, "a session change is recounted in the slices selecting the agent");
}

#[tokio::test]
async fn a_revision_is_pushed_once_per_connection_while_its_answer_is_on_the_way() {
    let core = Reconciler::new(Arc::new(MemoryStore::default()), "test", Duration::from_millis(1));
    let world = plant();
    let plans = core.plans(1, &world);
    let agent = world.agents.iter().find(|a| plans.agents.contains_key(&ObjectKey::of(&a.metadata))).expect("planned");
    let key = ObjectKey::of(&agent.metadata);
    let connect = |id: u64| {
        let session = Arc::new(support::Silent::default());
        core.registry().connect(key.clone(), support::connected(session.clone(), id));
        session
    };
    let first = connect(1);
    // Passes after every report, before the agent's ConfigApplied arrives.
    for _ in 0..5 {
        core.reconcile_agent(agent, &plans).await.expect("reconcile");
    }
    assert_eq!(first.pushes.load(std::sync::atomic::Ordering::SeqCst), 1, "pushed once, not once per pass");
    // A new connection has not received it.
    let second = connect(2);
    core.reconcile_agent(agent, &plans).await.expect("reconcile");
    core.reconcile_agent(agent, &plans).await.expect("reconcile");
    assert_eq!(second.pushes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The series the alerts watch (`ShopfloorAgentDisconnected`, `ShopfloorConfigurationNotApplied`)
/// follow an agent's session and configuration, and a suspended agent, expected to be away, has
/// none.
#[tokio::test]
async fn the_alerts_series_follow_the_agents_session_and_configuration_and_a_suspended_agent_has_none() {
    let core = Reconciler::new(Arc::new(MemoryStore::default()), "test", Duration::from_millis(1));
    let world = plant();
    let plans = core.plans(1, &world);
    let agent = world.agents.iter().find(|a| plans.agents.contains_key(&ObjectKey::of(&a.metadata))).expect("planned");
    let key = ObjectKey::of(&agent.metadata);
    let series = |metric: &str| {
        let text = core.metrics().render();
        let wanted = format!("{metric}{{namespace=\"{}\",agent=\"{}\"}} ", key.namespace, key.name);
        text.lines().find_map(|l| l.strip_prefix(&wanted).map(|v| v.trim().to_owned()))
    };
    core.reconcile_agent(agent, &plans).await.expect("reconcile");
    assert_eq!(series("shopfloor_agent_connected").as_deref(), Some("0"));
    assert_eq!(series("shopfloor_agent_config_drift").as_deref(), Some("1"), "its configuration is not applied");

    core.registry().connect(key.clone(), support::connected(Arc::new(support::Silent::default()), 1));
    core.reconcile_agent(agent, &plans).await.expect("reconcile");
    assert_eq!(series("shopfloor_agent_connected").as_deref(), Some("1"));
    assert_eq!(series("shopfloor_agent_config_drift").as_deref(), Some("1"), "pushed, not yet applied");
    core.observed().record_applied(
        key.clone(),
        AppliedReport { revision: plans.agents[&key].revision().to_owned(), ..Default::default() },
    );
    core.reconcile_agent(agent, &plans).await.expect("reconcile");
    assert_eq!(series("shopfloor_agent_config_drift").as_deref(), Some("0"));

    let mut suspended = agent.clone();
    suspended.spec.suspend = true;
    core.reconcile_agent(&suspended, &plans).await.expect("reconcile");
    assert_eq!(series("shopfloor_agent_connected"), None);
    assert_eq!(series("shopfloor_agent_config_drift"), None);
}
