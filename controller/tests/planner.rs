//! The planner over the example plant.

use std::path::Path;

use shopfloor_api::{
    EdgeAgent, Equipment, NetworkSlice, Value,
    manifest::{self, Object},
};
use shopfloor_controller::{planner, store::ObjectKey};

fn plant() -> (Vec<EdgeAgent>, Vec<Equipment>, Vec<NetworkSlice>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant");
    let (mut a, mut e, mut s) = (vec![], vec![], vec![]);
    for loaded in manifest::load_valid(&dir).expect("plant") {
        match loaded.expect("valid").1 {
            Object::EdgeAgent(o) => a.push(o),
            Object::Equipment(o) => e.push(o),
            Object::NetworkSlice(o) => s.push(o),
            Object::ControlCommand(_) => {}
        }
    }
    (a, e, s)
}

fn key(n: &str) -> ObjectKey {
    ObjectKey::new("plant-a", n)
}

#[test]
fn each_agent_gets_its_equipment_and_the_slices_selecting_it() {
    let (a, e, s) = plant();
    let plans = planner::plan(&a, &e, &s);
    assert!(plans.problems.is_empty(), "{:?}", plans.problems);
    let names = |agent: &str| {
        let p = &plans.agents[&key(agent)];
        (p.equipment.keys().cloned().collect::<Vec<_>>(), p.slices.keys().cloned().collect::<Vec<_>>())
    };
    assert_eq!(names("line-1"), (vec!["infeed-conveyor".into(), "press-plc".into()], vec!["control-urllc".into()]));
    assert_eq!(
        names("line-2"),
        (
            vec!["oven-temperature".into(), "packaging-conveyor".into(), "robot-cell".into()],
            vec!["control-urllc".into(), "video-embb".into()]
        )
    );
    assert_eq!(names("utilities"), (vec!["air-compressor".into(), "chiller".into()], vec!["control-urllc".into()]));
    assert_eq!(plans.slice_agents[&key("video-embb")], vec![key("line-2")]);
}

#[test]
fn plans_are_deterministic_whatever_the_input_order() {
    let (mut a, mut e, mut s) = plant();
    let first = planner::plan(&a, &e, &s);
    a.reverse();
    e.reverse();
    s.reverse();
    let second = planner::plan(&a, &e, &s);
    assert!(first == second, "plans differ with input order");
    assert_eq!(first.agents[&key("line-1")].revision().len(), 16);
}

#[test]
fn a_change_moves_only_the_revision_of_the_agent_it_concerns() {
    let (a, mut e, s) = plant();
    let before = planner::plan(&a, &e, &s);
    let conveyor = e.iter_mut().find(|x| x.metadata.name.as_deref() == Some("infeed-conveyor")).expect("conveyor");
    let speed = conveyor.spec.properties.iter_mut().find(|p| p.name == "belt-speed").expect("belt-speed");
    speed.desired = Some(Value::Float(1.4));
    let after = planner::plan(&a, &e, &s);
    for agent in ["line-1", "line-2", "utilities"] {
        let changed = before.agents[&key(agent)].hash != after.agents[&key(agent)].hash;
        assert_eq!(changed, agent == "line-1", "{agent}");
    }
}

#[test]
fn broken_references_become_problems_and_leave_the_rest_planned() {
    let (a, mut e, s) = plant();
    e[0].spec.agent_ref.name = "line-9".into();
    let orphan = ObjectKey::of(&e[0].metadata);
    let plans = planner::plan(&a, &e, &s);
    let problems: Vec<_> = plans.problems_of("Equipment", &orphan).collect();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "AgentNotFound");
    assert!(problems[0].message.contains("plant-a/line-9"));
    assert_eq!(plans.agents.values().map(|p| p.equipment.len()).sum::<usize>(), e.len() - 1);
}

#[test]
fn equipment_on_a_slice_that_does_not_select_its_agent_is_flagged() {
    let (a, mut e, s) = plant();
    let press = e.iter_mut().find(|x| x.metadata.name.as_deref() == Some("press-plc")).expect("press");
    press.spec.network_slice_ref = Some(shopfloor_api::LocalRef::new("video-embb"));
    let plans = planner::plan(&a, &e, &s);
    let problems: Vec<_> = plans.problems_of("Equipment", &key("press-plc")).collect();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "SliceNotSelected");
    assert!(plans.agents[&key("line-1")].equipment.contains_key("press-plc"), "still planned");
}

/// In Kubernetes mode a crash of the leader leaves agents without a controller for up to the
/// failover bound: a fail-safe shorter than that would engage on every crash, so it is refused
/// (named, with the bound and both ways out) unless its Equipment accepts it.
#[test]
fn a_fail_safe_shorter_than_the_failover_bound_is_refused_unless_accepted() {
    use std::time::Duration;
    let (a, mut e, s) = plant();
    let failover = planner::Failover {
        lease: Duration::from_secs(10),
        retry: Duration::from_secs(2),
        start: planner::Failover::START,
        redial: planner::Failover::REDIAL,
    };
    let conveyor = e.iter().position(|e| e.metadata.name.as_deref() == Some("infeed-conveyor")).expect("conveyor");
    // The example accepts its 3 s.
    assert!(planner::plan_with(&a, &e, &s, Some(failover)).problems.is_empty());
    let f = e[conveyor].spec.fail_safe.as_mut().expect("the example conveyor has a fail-safe");
    f.allow_shorter_than_failover = false;
    let plans = planner::plan_with(&a, &e, &s, Some(failover));
    let problem = plans.problems_of("Equipment", &key("infeed-conveyor")).next().expect("refused");
    assert_eq!(problem.reason, "FailSafeShorterThanFailover");
    for needle in ["spec.failSafe.after: 3s", "15.25 s", "allowShorterThanFailover: true", "at least 16 s"] {
        assert!(problem.message.contains(needle), "{needle}: {}", problem.message);
    }
    assert!(!plans.agents[&key("line-1")].equipment.contains_key("infeed-conveyor"), "not applied");
    // Standalone mode has no failover to hold it to; a long enough fail-safe passes.
    assert!(planner::plan(&a, &e, &s).problems.is_empty());
    e[conveyor].spec.fail_safe.as_mut().expect("fail-safe").after = Duration::from_secs(16).into();
    assert!(planner::plan_with(&a, &e, &s, Some(failover)).problems.is_empty());
}
