//! The planner: from the current objects, what each EdgeAgent must hold — its Equipment and the
//! NetworkSlices selecting it — with a content hash and a revision derived from it.
//!
//! Pure: no I/O, no clock, no randomness. The same objects always give the same plans, in the
//! same order, so a restarted controller computes the revisions its agents already hold and
//! sends them nothing.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;
use sha2::{Digest, Sha256};
use shopfloor_api::{EdgeAgent, Equipment, EquipmentSpec, NetworkSlice, NetworkSliceSpec, Validate};

use crate::{selector, store::ObjectKey};

/// What one agent must hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentPlan {
    #[serde(skip)]
    pub agent: ObjectKey,
    /// Equipment driven by the agent, by name.
    pub equipment: BTreeMap<String, EquipmentSpec>,
    /// Slices selecting the agent, by name.
    pub slices: BTreeMap<String, NetworkSliceSpec>,
    /// SHA-256 of the plan's canonical JSON, hex.
    #[serde(skip)]
    pub hash: String,
}

impl AgentPlan {
    /// The revision agents and statuses show: the first 16 hex digits of the hash.
    pub fn revision(&self) -> &str {
        &self.hash[..16]
    }
}

/// Why an object is not (fully) part of any plan; becomes a condition on the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// CamelCase reason for the condition.
    pub reason: &'static str,
    pub message: String,
}

/// All plans, and the problems found on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plans {
    pub agents: BTreeMap<ObjectKey, AgentPlan>,
    /// Agents each slice selects.
    pub slice_agents: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    pub problems: Vec<Problem>,
}

impl Plans {
    pub fn problems_of(&self, kind: &str, key: &ObjectKey) -> impl Iterator<Item = &Problem> {
        let key = key.clone();
        let kind = kind.to_owned();
        self.problems.iter().filter(move |p| p.kind == kind && p.key == key)
    }
}

/// How long agents can be without a controller when the leader dies unannounced (SIGKILL, a
/// lost node): the Lease must expire and a standby notice (`lease` + `retry`) and read the
/// plant (`start`), or the agent must notice the dead connection (its heartbeat timeout),
/// whichever is later, and then the agent dials again and is let in (`redial`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    pub lease: Duration,
    pub retry: Duration,
    pub start: Duration,
    pub redial: Duration,
}

impl Failover {
    /// A standby's listing of the plant and its gate, with room to spare.
    pub const START: Duration = Duration::from_secs(1);
    /// An agent's longest delay after silence (0.75 s) and its longest wait for an answer
    /// (1.5 s): `agent::link::reconnect`.
    pub const REDIAL: Duration = Duration::from_millis(2250);

    /// The bound for an agent whose heartbeat timeout is `heartbeat_timeout`.
    pub fn bound(&self, heartbeat_timeout: Duration) -> Duration {
        (self.lease + self.retry + self.start).max(heartbeat_timeout) + self.redial
    }
}

/// Computes every agent's plan.
pub fn plan(agents: &[EdgeAgent], equipment: &[Equipment], slices: &[NetworkSlice]) -> Plans {
    plan_with(agents, equipment, slices, None)
}

/// [`plan`], refusing fail-safes shorter than `failover` allows (Kubernetes mode) unless their
/// Equipment accepts that.
pub fn plan_with(
    agents: &[EdgeAgent],
    equipment: &[Equipment],
    slices: &[NetworkSlice],
    failover: Option<Failover>,
) -> Plans {
    let heartbeats: BTreeMap<ObjectKey, Duration> =
        agents.iter().map(|a| (ObjectKey::of(&a.metadata), a.spec.heartbeat.timeout.into())).collect();
    let mut out = Plans::default();
    for a in agents {
        let key = ObjectKey::of(&a.metadata);
        out.agents.insert(
            key.clone(),
            AgentPlan { agent: key, equipment: BTreeMap::new(), slices: BTreeMap::new(), hash: String::new() },
        );
    }

    for s in slices {
        let key = ObjectKey::of(&s.metadata);
        if let Err(invalid) = s.validate() {
            out.problems.push(Problem { kind: "NetworkSlice", key, reason: "Invalid", message: invalid.to_string() });
            continue;
        }
        let mut selected = Vec::new();
        for a in agents {
            let akey = ObjectKey::of(&a.metadata);
            if akey.namespace != key.namespace {
                continue;
            }
            let labels = a.metadata.labels.clone().unwrap_or_default();
            match selector::matches(&s.spec.agent_selector, &labels) {
                Ok(true) => selected.push(akey),
                Ok(false) => {}
                Err(e) => {
                    out.problems.push(Problem {
                        kind: "NetworkSlice",
                        key: key.clone(),
                        reason: "InvalidSelector",
                        message: e.to_string(),
                    });
                    selected.clear();
                    break;
                }
            }
        }
        selected.sort();
        for akey in &selected {
            if let Some(p) = out.agents.get_mut(akey) {
                p.slices.insert(key.name.clone(), s.spec.clone());
            }
        }
        out.slice_agents.insert(key, selected);
    }

    for e in equipment {
        let key = ObjectKey::of(&e.metadata);
        if let Err(invalid) = e.validate() {
            out.problems.push(Problem { kind: "Equipment", key, reason: "Invalid", message: invalid.to_string() });
            continue;
        }
        let akey = ObjectKey::new(key.namespace.clone(), e.spec.agent_ref.name.clone());
        if let (Some(failover), Some(f), Some(hb)) = (failover, &e.spec.fail_safe, heartbeats.get(&akey))
            && !f.allow_shorter_than_failover
            && Duration::from(f.after) < failover.bound(*hb)
        {
            let bound = failover.bound(*hb);
            out.problems.push(Problem {
                kind: "Equipment",
                key,
                reason: "FailSafeShorterThanFailover",
                message: format!(
                    "spec.failSafe.after: {} is shorter than this controller's failover bound of {:.2} s (Lease {} s + retry {} s + start {} s, or EdgeAgent {akey}'s heartbeat timeout {} s if longer, + redial {:.2} s): a controller crash would engage the fail-safe; raise spec.failSafe.after to at least {:.0} s, or set spec.failSafe.allowShorterThanFailover: true to accept that (planned handovers engage none). Not applied until then",
                    f.after,
                    bound.as_secs_f64(),
                    failover.lease.as_secs(),
                    failover.retry.as_secs(),
                    failover.start.as_secs(),
                    hb.as_secs_f64(),
                    failover.redial.as_secs_f64(),
                    bound.as_secs_f64().ceil(),
                ),
            });
            continue;
        }
        let Some(p) = out.agents.get_mut(&akey) else {
            out.problems.push(Problem {
                kind: "Equipment",
                key,
                reason: "AgentNotFound",
                message: format!("spec.agentRef.name: EdgeAgent {akey} does not exist; create it or fix the reference"),
            });
            continue;
        };
        if let Some(slice) = &e.spec.network_slice_ref
            && !p.slices.contains_key(&slice.name)
        {
            out.problems.push(Problem {
                kind: "Equipment",
                key: key.clone(),
                reason: "SliceNotSelected",
                message: format!(
                    "spec.networkSliceRef.name: NetworkSlice {}/{} does not exist or does not select EdgeAgent {}; its traffic is not steered",
                    key.namespace, slice.name, akey.name
                ),
            });
        }
        p.equipment.insert(key.name.clone(), e.spec.clone());
    }

    out.problems.sort_by(|a, b| (a.kind, &a.key, a.reason).cmp(&(b.kind, &b.key, b.reason)));
    for p in out.agents.values_mut() {
        let canonical = serde_json::to_vec(&*p).expect("plans always serialize");
        p.hash = hex::encode(Sha256::digest(canonical));
    }
    out
}
