//! Status of EdgeAgents, Equipment and NetworkSlices, computed from what the controller knows
//! now. Pure: every write is the full status (server-side apply drops fields a manager stops
//! sending), and the same facts give byte-identical statuses so unchanged objects are not
//! rewritten.

use jiff::Timestamp;
use shopfloor_api::common::Time;
use shopfloor_api::{
    EdgeAgent, Equipment, NetworkSlice,
    common::condition_type::{APPLIED, CLOCK_SYNCHRONIZED, READY, VALID},
    edge_agent::{AgentPhase, ConfigStatus, ConnectionStatus, EdgeAgentStatus},
    equipment::{ApplyResult, EquipmentStatus, PropertyApplyStatus, ReportedValue},
    network_slice::NetworkSliceStatus,
};

use crate::{
    agents::observed::{AppliedReport, Reading},
    agents::registry::Connected,
    planner::Problem,
    status::conditions::{self, State},
};

/// A clock further than this from the controller's is reported (`ClockSynchronized=False`).
pub const CLOCK_SKEW_LIMIT_MICROS: i64 = 1_000_000;

fn second(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Facts about one agent beyond its object.
#[derive(Debug, Default)]
pub struct AgentFacts<'a> {
    pub connected: Option<&'a Connected>,
    pub desired_revision: Option<&'a str>,
    pub applied: Option<&'a AppliedReport>,
    /// This controller replica's name, shown in `status.connection.replica`.
    pub replica: &'a str,
}

/// The EdgeAgent's status. Enrollment and certificate fields are carried over from `prev`:
/// they are set by the enrollment path, not recomputed.
pub fn edge_agent(agent: &EdgeAgent, facts: &AgentFacts<'_>, now: Timestamp) -> EdgeAgentStatus {
    let prev = agent.status.clone().unwrap_or_default();
    let generation = agent.metadata.generation;
    let enrolled = prev.certificate.as_ref().is_some_and(|c| c.serial.is_some());
    let phase = if agent.spec.suspend {
        AgentPhase::Suspended
    } else if facts.connected.is_some() {
        AgentPhase::Connected
    } else if prev.connection.is_some() {
        AgentPhase::Disconnected
    } else if enrolled {
        AgentPhase::Enrolled
    } else {
        AgentPhase::Pending
    };
    let connection = match facts.connected {
        Some(c) => Some(ConnectionStatus {
            connected_since: Some(second(c.connected_since)),
            last_seen: Some(second(now)),
            rtt_micros: Some(i64::try_from(c.session.rtt().as_micros()).unwrap_or(i64::MAX)),
            remote_address: Some(c.remote.to_string()),
            replica: Some(facts.replica.to_owned()),
            agent_version: Some(c.agent_version.clone()),
            protocol_version: i32::try_from(c.protocol_version).ok(),
            clock_offset_millis: c.clock_offset_micros.map(|us| us / 1000),
            envelope_sha256: c.envelope_sha256.clone(),
        }),
        // Keep when it was last seen; a round-trip time of a closed connection means nothing.
        None => prev.connection.map(|c| ConnectionStatus { last_seen: c.last_seen, ..Default::default() }),
    };
    let applied_revision = facts
        .applied
        .map(|a| a.revision.clone())
        .or_else(|| prev.config.as_ref().and_then(|c| c.applied_revision.clone()));
    let applied_at = facts
        .applied
        .and_then(|a| a.at.map(second))
        .or_else(|| prev.config.as_ref().and_then(|c| c.applied_at.clone()));
    let config = ConfigStatus {
        desired_revision: facts.desired_revision.map(str::to_owned),
        applied_revision: applied_revision.clone(),
        applied_at,
    };
    let in_sync = facts.desired_revision.is_some() && facts.desired_revision == applied_revision.as_deref();
    let mut conds = prev.conditions.clone();
    let (state, reason, message) = match phase {
        AgentPhase::Suspended => (State::False, "Suspended", "spec.suspend is true: the agent is disconnected and refused".to_owned()),
        AgentPhase::Pending => (
            State::False,
            "NotEnrolled",
            "waiting for the agent to enroll: run the command `kubectl shopfloor enroll <agent>` prints on the plant host".to_owned(),
        ),
        AgentPhase::Enrolled => (State::False, "NotConnected", "enrolled; the agent has not connected yet".to_owned()),
        AgentPhase::Disconnected => (State::False, "Disconnected", "the agent's connection is gone; it reconnects with backoff".to_owned()),
        AgentPhase::Connected if facts.connected.and_then(|c| c.envelope_problem.as_ref()).is_some() => (
            State::False,
            "EnvelopeUnusable",
            facts.connected.and_then(|c| c.envelope_problem.clone()).unwrap_or_default(),
        ),
        AgentPhase::Connected if !in_sync => (
            State::False,
            "ConfigPending",
            format!(
                "connected; applying revision {} (holds {})",
                facts.desired_revision.unwrap_or("-"),
                applied_revision.as_deref().unwrap_or("none")
            ),
        ),
        AgentPhase::Connected => (State::True, "Connected", "connected and holding the desired configuration".to_owned()),
    };
    conditions::set(&mut conds, READY, state, reason, message, generation, now);
    if let Some(offset) = facts.connected.and_then(|c| c.clock_offset_micros) {
        let (state, reason) = if offset.abs() > CLOCK_SKEW_LIMIT_MICROS {
            (State::False, "ClockSkewed")
        } else {
            (State::True, "WithinLimit")
        };
        let message = format!(
            "the agent's clock is {} ms {} the controller's (limit ±{} ms); deadlines do not depend on it, log timestamps do: \
             check NTP on the plant host",
            offset.abs() / 1000,
            if offset >= 0 { "ahead of" } else { "behind" },
            CLOCK_SKEW_LIMIT_MICROS / 1000
        );
        conditions::set(&mut conds, CLOCK_SYNCHRONIZED, state, reason, message, generation, now);
    }
    EdgeAgentStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: conds,
        enrollment: prev.enrollment,
        connection,
        certificate: prev.certificate,
        config: Some(config),
    }
}

/// The Equipment's status from the problems the planner found, the revision its agent should
/// hold (`None` when no plan includes it), its agent's last ConfigApplied and the last readings.
/// `Applied` is `True` only when the agent applied exactly the desired revision, every setpoint
/// read back — never for an older revision the agent happens to hold.
pub fn equipment(
    eq: &Equipment,
    problems: &[&Problem],
    agent_connected: bool,
    desired_revision: Option<&str>,
    applied: Option<&AppliedReport>,
    readings: &std::collections::BTreeMap<String, Reading>,
    now: Timestamp,
) -> EquipmentStatus {
    let prev = eq.status.clone().unwrap_or_default();
    let generation = eq.metadata.generation;
    let name = eq.metadata.name.clone().unwrap_or_default();
    let mut conds = prev.conditions.clone();
    let invalid = problems.iter().find(|p| p.reason == "Invalid" || p.reason == "AgentNotFound");
    match invalid {
        Some(p) => conditions::set(&mut conds, VALID, State::False, p.reason, p.message.clone(), generation, now),
        None => conditions::set(&mut conds, VALID, State::True, "Valid", "", generation, now),
    };
    let results: Vec<PropertyApplyStatus> = applied
        .and_then(|a| a.equipment.get(&name))
        .map(|rs| {
            rs.iter()
                .map(|r| PropertyApplyStatus {
                    property: r.property.clone(),
                    desired: r.desired,
                    result: r.result,
                    message: r.message.clone(),
                    read_back: r.read_back,
                })
                .collect()
        })
        .unwrap_or_else(|| prev.applied.clone());
    let failed: Vec<&PropertyApplyStatus> = results.iter().filter(|r| r.result != ApplyResult::Applied).collect();
    let applied_revision =
        applied.filter(|a| a.equipment.contains_key(&name)).map(|a| a.revision.clone()).or(prev.applied_revision);
    let failures = || {
        failed
            .iter()
            .map(|r| {
                format!(
                    "{}: {:?}{}",
                    r.property,
                    r.result,
                    r.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let held = applied_revision.as_deref().unwrap_or("none");
    let in_sync = desired_revision.is_some() && desired_revision == applied_revision.as_deref();
    let (state, reason, message) = match desired_revision {
        None => (
            State::False,
            "NotPlanned",
            "no agent configuration includes this equipment: see the Valid condition".to_owned(),
        ),
        Some(want) if !in_sync && !agent_connected => (
            State::False,
            "AgentOffline",
            format!(
                "revision {want} waits for EdgeAgent {} to connect; the agent holds {held}",
                eq.spec.agent_ref.name
            ),
        ),
        Some(want) if !in_sync => {
            (State::False, "Pending", format!("the agent is applying revision {want}; it holds {held}"))
        }
        Some(_) if !failed.is_empty() => (State::False, "Failed", failures()),
        Some(want) => (State::True, "Applied", format!("revision {want} applied; every desired setpoint read back")),
    };
    conditions::set(&mut conds, APPLIED, state, reason, message, generation, now);
    let slice_problem = problems.iter().find(|p| p.reason == "SliceNotSelected");
    let (state, reason, message) = if let Some(p) = invalid {
        (State::False, p.reason, p.message.clone())
    } else if !agent_connected {
        (
            State::False,
            "AgentDisconnected",
            format!(
                "EdgeAgent {} is not connected; the equipment keeps its last applied setpoints",
                eq.spec.agent_ref.name
            ),
        )
    } else if !in_sync {
        (State::False, "Pending", "waiting for the agent to apply the desired configuration: see Applied".to_owned())
    } else if !failed.is_empty() {
        (State::False, "SetpointsNotApplied", "see the Applied condition".to_owned())
    } else if let Some(p) = slice_problem {
        (State::False, p.reason, p.message.clone())
    } else {
        (State::True, "Ready", "connected, configured, reporting".to_owned())
    };
    conditions::set(&mut conds, READY, state, reason, message, generation, now);
    let mut reported: Vec<ReportedValue> = if readings.is_empty() {
        prev.reported
    } else {
        readings
            .iter()
            .map(|(p, r)| ReportedValue { property: p.clone(), value: r.value, observed_at: second(r.at) })
            .collect()
    };
    reported.retain(|r| eq.spec.properties.iter().any(|p| p.name == r.property));
    EquipmentStatus { observed_generation: generation, conditions: conds, applied_revision, applied: results, reported }
}

/// The NetworkSlice's status: how many agents it selects, and how many applied it. `applied`
/// must return an agent's report only if it is for the revision the agent should hold: a
/// report of an older revision says nothing about this slice as it is now.
pub fn network_slice<'a>(
    slice: &NetworkSlice,
    problems: &[&Problem],
    selected: &[crate::store::ObjectKey],
    applied: impl Fn(&crate::store::ObjectKey) -> Option<&'a AppliedReport>,
    now: Timestamp,
) -> NetworkSliceStatus {
    let prev = slice.status.clone().unwrap_or_default();
    let generation = slice.metadata.generation;
    let name = slice.metadata.name.clone().unwrap_or_default();
    let mut ok = 0;
    let mut failed = Vec::new();
    for agent in selected {
        match applied(agent).and_then(|a| a.slices.get(&name)) {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => failed.push(format!("{}: {e}", agent.name)),
            None => {}
        }
    }
    let mut conds = prev.conditions.clone();
    match problems.first() {
        Some(p) => conditions::set(&mut conds, VALID, State::False, p.reason, p.message.clone(), generation, now),
        None => conditions::set(&mut conds, VALID, State::True, "Valid", "", generation, now),
    };
    let (state, reason, message) = if let Some(p) = problems.first() {
        (State::False, p.reason, p.message.clone())
    } else if !failed.is_empty() {
        (State::False, "SteeringFailed", failed.join("; "))
    } else if ok < selected.len() {
        (State::False, "Pending", format!("{ok} of {} selected agents applied the steering", selected.len()))
    } else {
        (State::True, "Applied", format!("{ok} agents steer this slice's traffic"))
    };
    conditions::set(&mut conds, READY, state, reason, message, generation, now);
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    NetworkSliceStatus {
        observed_generation: generation,
        conditions: conds,
        selected_agents: count(selected.len()),
        applied_agents: count(ok),
        failed_agents: count(failed.len()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn oven(generation: i64, applied_revision: Option<&str>) -> Equipment {
        let mut eq: Equipment = serde_yaml::from_str(
            "apiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {name: oven, namespace: plant-a}\n\
             spec:\n  agentRef: {name: line-2}\n  simulated: {}\n  properties:\n  \
             - {name: setpoint, type: Float, access: ReadWrite, desired: 180}\n",
        )
        .expect("equipment");
        eq.metadata.generation = Some(generation);
        eq.status =
            Some(EquipmentStatus { applied_revision: applied_revision.map(str::to_owned), ..Default::default() });
        eq
    }

    fn applied_condition(s: &EquipmentStatus) -> (String, String, Option<i64>) {
        let c = s.conditions.iter().find(|c| c.type_ == APPLIED).expect("Applied condition");
        (c.status.clone(), c.reason.clone(), c.observed_generation)
    }

    /// The reported lie: an Equipment edited while its agent was offline kept the old
    /// appliedRevision and still read Applied=True for the new generation.
    #[test]
    fn applied_is_true_only_for_the_desired_revision() {
        let now = Timestamp::now();
        let none = BTreeMap::new();
        let edited = oven(2, Some("rev-old"));
        let offline = equipment(&edited, &[], false, Some("rev-new"), None, &none, now);
        assert_eq!(applied_condition(&offline), ("False".into(), "AgentOffline".into(), Some(2)));
        assert_eq!(offline.applied_revision.as_deref(), Some("rev-old"), "what the agent holds, unchanged");
        let ready = offline.conditions.iter().find(|c| c.type_ == READY).expect("Ready");
        assert_eq!(ready.status, "False");

        let connected = equipment(&edited, &[], true, Some("rev-new"), None, &none, now);
        assert_eq!(applied_condition(&connected), ("False".into(), "Pending".into(), Some(2)));

        let report = AppliedReport {
            revision: "rev-new".into(),
            equipment: [("oven".to_owned(), vec![])].into(),
            ..Default::default()
        };
        let done = equipment(&edited, &[], true, Some("rev-new"), Some(&report), &none, now);
        assert_eq!(applied_condition(&done), ("True".into(), "Applied".into(), Some(2)));
        assert_eq!(done.applied_revision.as_deref(), Some("rev-new"));

        let unplanned = equipment(&edited, &[], true, None, None, &none, now);
        assert_eq!(applied_condition(&unplanned).1, "NotPlanned");
    }

    #[derive(Debug)]
    struct Quiet;
    impl crate::agents::port::AgentSession for Quiet {
        fn rtt(&self) -> std::time::Duration {
            std::time::Duration::from_millis(2)
        }
        fn push_config(
            &self,
            _: std::sync::Arc<crate::planner::AgentPlan>,
        ) -> futures::future::BoxFuture<'_, Result<(), crate::agents::port::SessionError>> {
            Box::pin(async { Ok(()) })
        }
        fn dispatch(
            &self,
            _: crate::agents::port::Dispatch,
        ) -> futures::future::BoxFuture<
            '_,
            Result<tokio::sync::mpsc::Receiver<crate::agents::port::Reply>, crate::agents::port::SessionError>,
        > {
            Box::pin(async { Err(crate::agents::port::SessionError::Closed) })
        }
        fn measure_link(&self, _: std::time::Duration) {}

        fn close(&self, _: &str, _: Option<std::time::Duration>) {}
    }

    fn connected(offset: i64, problem: Option<&str>) -> Connected {
        Connected {
            session: std::sync::Arc::new(Quiet),
            connection_id: 1,
            connected_since: Timestamp::now(),
            remote: ([127, 0, 0, 1], 1).into(),
            agent_version: "t".into(),
            protocol_version: 1,
            held_revision: Some("r".into()),
            clock_offset_micros: Some(offset),
            envelope_sha256: problem.is_none().then(|| "ab".repeat(32)),
            envelope_problem: problem.map(str::to_owned),
        }
    }

    fn agent() -> EdgeAgent {
        serde_yaml::from_str(
            "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: line-1, namespace: plant-a, generation: 3}\n\
             spec: {site: plant-a/line-1}\n",
        )
        .expect("agent")
    }

    fn condition<'a>(s: &'a EdgeAgentStatus, t: &str) -> Option<&'a shopfloor_api::common::Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    /// The skew an agent's Hello reveals is on its EdgeAgent, and a condition past a second;
    /// an envelope the agent cannot use makes it not Ready, with the agent's reason.
    #[test]
    fn clock_skew_and_the_envelope_in_force_are_shown_on_the_agent() {
        let now = Timestamp::now();
        let facts = |c| AgentFacts { connected: Some(c), desired_revision: Some("r"), applied: None, replica: "x" };
        let fine = connected(-40_000, None);
        let s = edge_agent(&agent(), &facts(&fine), now);
        let conn = s.connection.as_ref().expect("connection");
        assert_eq!(conn.clock_offset_millis, Some(-40));
        assert_eq!(conn.envelope_sha256.as_deref().map(str::len), Some(64));
        assert_eq!(condition(&s, CLOCK_SYNCHRONIZED).map(|c| c.status.as_str()), Some("True"));
        let skewed = connected(60_000_000, None);
        let s = edge_agent(&agent(), &facts(&skewed), now);
        let c = condition(&s, CLOCK_SYNCHRONIZED).expect("condition");
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "ClockSkewed"));
        assert!(c.message.contains("60000 ms ahead"), "{}", c.message);
        let refusing = connected(0, Some("cannot read the safety envelope /etc/shopfloor/envelope.yaml"));
        let s = edge_agent(&agent(), &facts(&refusing), now);
        let ready = condition(&s, READY).expect("Ready");
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "EnvelopeUnusable"));
        assert!(ready.message.contains("/etc/shopfloor/envelope.yaml"));
    }
}
