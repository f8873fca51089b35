//! Where the controller reads objects and writes status and secrets: a Kubernetes API server or,
//! in standalone mode, a folder of manifests plus a state directory. The planner and the command
//! engine never know which.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, OnceLock},
};

use shopfloor_api::{
    ControlCommand, EdgeAgent, Equipment, NetworkSlice, control_command::ControlCommandStatus,
    edge_agent::EdgeAgentStatus, equipment::EquipmentStatus, network_slice::NetworkSliceStatus,
};

pub mod memory;
pub mod status_writer;
pub mod write_budget;

/// Every Shopfloor object the controller can see, with store-provided metadata (uid,
/// generation, creation time) and the last status written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    pub agents: Vec<EdgeAgent>,
    pub equipment: Vec<Equipment>,
    pub slices: Vec<NetworkSlice>,
    pub commands: Vec<ControlCommand>,
    /// Documents that could not be read or failed validation, with the reason. In Kubernetes the
    /// API server refuses these before they exist; in a folder they sit next to valid ones.
    pub refused: Vec<String>,
    /// Where each agent's objects stand in the lists above (built on first use).
    pub index: WorldIndex,
}

impl World {
    /// The EdgeAgent `key`, and the Equipment it drives, by lookup: a pass over the few agents
    /// that reported must not walk every object of the plant.
    pub fn agent_objects(&self, key: &ObjectKey) -> (Option<&EdgeAgent>, impl Iterator<Item = &Equipment>) {
        let index = self.positions();
        let agent = index.agents.get(key).and_then(|&i| self.agents.get(i)).filter(|a| is(&a.metadata, key));
        let equipment = index.equipment.get(key).into_iter().flatten().filter_map(|&i| self.equipment.get(i));
        // Checked like the agent: lists edited after the index was built yield nothing, never
        // another agent's objects.
        let equipment = equipment.filter(move |e| {
            e.spec.agent_ref.name == key.name && e.metadata.namespace.as_deref().unwrap_or_default() == key.namespace
        });
        (agent, equipment)
    }

    /// The Equipment `key`, by lookup.
    pub fn equipment(&self, key: &ObjectKey) -> Option<&Equipment> {
        self.positions().equipment_by_key.get(key).and_then(|&i| self.equipment.get(i)).filter(|e| is(&e.metadata, key))
    }

    fn positions(&self) -> &Positions {
        self.index.0.get_or_init(|| Positions::of(self))
    }
}

fn is(meta: &shopfloor_api::common::ObjectMeta, key: &ObjectKey) -> bool {
    meta.name.as_deref() == Some(key.name.as_str()) && meta.namespace.as_deref().unwrap_or_default() == key.namespace
}

/// Positions in a [`World`] by key and by agent. A clone starts empty, and any two compare equal:
/// the index is derived from the world's lists, never part of what the world says.
#[derive(Default)]
pub struct WorldIndex(OnceLock<Positions>);

struct Positions {
    agents: HashMap<ObjectKey, usize>,
    /// By the agent named in `spec.agentRef`.
    equipment: HashMap<ObjectKey, Vec<usize>>,
    equipment_by_key: HashMap<ObjectKey, usize>,
}

impl Positions {
    fn of(world: &World) -> Self {
        let agents = world.agents.iter().enumerate().map(|(i, a)| (ObjectKey::of(&a.metadata), i)).collect();
        let mut equipment: HashMap<ObjectKey, Vec<usize>> = HashMap::new();
        let mut equipment_by_key = HashMap::new();
        for (i, e) in world.equipment.iter().enumerate() {
            equipment_by_key.insert(ObjectKey::of(&e.metadata), i);
            let agent = ObjectKey::new(e.metadata.namespace.clone().unwrap_or_default(), e.spec.agent_ref.name.clone());
            equipment.entry(agent).or_default().push(i);
        }
        Self { agents, equipment, equipment_by_key }
    }
}

impl Clone for WorldIndex {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for WorldIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for WorldIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "WorldIndex(built)" } else { "WorldIndex" })
    }
}

/// A snapshot shared between the tasks of the controller.
pub type SharedWorld = Arc<World>;

/// A namespaced object name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    pub fn of(meta: &shopfloor_api::common::ObjectMeta) -> Self {
        Self::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A status to record for one object.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusUpdate {
    EdgeAgent(ObjectKey, EdgeAgentStatus),
    Equipment(ObjectKey, EquipmentStatus),
    NetworkSlice(ObjectKey, NetworkSliceStatus),
    ControlCommand(ObjectKey, ControlCommandStatus),
}

impl StatusUpdate {
    pub fn key(&self) -> &ObjectKey {
        match self {
            StatusUpdate::EdgeAgent(k, _)
            | StatusUpdate::Equipment(k, _)
            | StatusUpdate::NetworkSlice(k, _)
            | StatusUpdate::ControlCommand(k, _) => k,
        }
    }

    /// This update as written to the store if time stood still: without the fields that only
    /// say how fresh it is (an agent's `lastSeen` and `rttMicros`, each reported value's
    /// `observedAt`). Two updates that are equal here differ only in freshness.
    pub fn without_freshness(&self) -> StatusUpdate {
        let mut settled = self.clone();
        match &mut settled {
            StatusUpdate::EdgeAgent(_, s) => {
                if let Some(c) = s.connection.as_mut() {
                    c.last_seen = None;
                    c.rtt_micros = None;
                }
            }
            StatusUpdate::Equipment(_, s) => {
                for r in &mut s.reported {
                    r.observed_at = shopfloor_api::common::Time(jiff::Timestamp::UNIX_EPOCH);
                }
            }
            StatusUpdate::NetworkSlice(..) | StatusUpdate::ControlCommand(..) => {}
        }
        settled
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StatusUpdate::EdgeAgent(..) => "EdgeAgent",
            StatusUpdate::Equipment(..) => "Equipment",
            StatusUpdate::NetworkSlice(..) => "NetworkSlice",
            StatusUpdate::ControlCommand(..) => "ControlCommand",
        }
    }
}

/// Something an operator follows, about one object: a Kubernetes Event in a cluster, a log line
/// in standalone mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEvent {
    /// `EdgeAgent`, `Equipment`, `NetworkSlice` or `ControlCommand`.
    pub kind: &'static str,
    pub key: ObjectKey,
    pub uid: Option<String>,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// UpperCamelCase, e.g. `Succeeded`, `Disconnected`.
    pub reason: &'static str,
    pub note: String,
}

/// Secret data: key to bytes, as in a Kubernetes Secret.
pub type SecretData = BTreeMap<String, Vec<u8>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {key} no longer exists")]
    Gone { kind: &'static str, key: ObjectKey },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {message}")]
    Corrupt { what: String, message: String },
    #[error("Kubernetes API: {0}")]
    Api(String),
}

impl StoreError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Io { .. } | StoreError::Api(_))
    }
}

/// Writes the controller makes. Implementations persist before they return: the command engine
/// relies on a recorded phase surviving a crash.
pub trait Store: Send + Sync + 'static {
    fn write_status(&self, update: StatusUpdate) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records several statuses, with one result each in order. By default one by one; a store
    /// that can make a batch durable at once (one sync for all) does so.
    fn write_statuses(&self, updates: Vec<StatusUpdate>) -> impl Future<Output = Vec<Result<(), StoreError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(updates.len());
            for u in updates {
                out.push(self.write_status(u).await);
            }
            out
        }
    }

    /// Deletes a finished ControlCommand (its `ttlSecondsAfterFinished` elapsed).
    fn delete_command(&self, key: &ObjectKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the secret if no secret of that name exists, and returns what is stored — the
    /// given data if it won, the existing data if another writer (or an earlier run) was first.
    /// Two controllers starting together must end up with the same CA.
    fn create_secret_if_absent(
        &self,
        name: &str,
        data: SecretData,
    ) -> impl Future<Output = Result<SecretData, StoreError>> + Send;

    fn read_secret(&self, name: &str) -> impl Future<Output = Result<Option<SecretData>, StoreError>> + Send;

    /// Replaces a secret only if it still holds `expected` — a compare-and-swap. `Ok(false)` when
    /// another writer changed or removed it first. Single-use bootstrap tokens rest on this: two
    /// enrollments racing for one token must not both redeem it, on one replica or two.
    fn replace_secret_if(
        &self,
        name: &str,
        expected: &SecretData,
        data: SecretData,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Replaces (or creates) a secret.
    fn write_secret(&self, name: &str, data: SecretData) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn delete_secret(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records an event. Best effort: a failure is logged at warn by the store, never returned,
    /// and never holds up the caller's work for long.
    fn publish_event(&self, event: ObjectEvent) -> impl Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_api::{
        common::Time,
        edge_agent::{AgentPhase, ConnectionStatus},
    };

    fn objects(yaml: &str) -> Vec<serde_json::Value> {
        serde_yaml::Deserializer::from_str(yaml).map(|d| serde::Deserialize::deserialize(d).expect("yaml")).collect()
    }

    #[test]
    fn lookups_find_an_agents_objects_and_never_another_objects_after_an_edit() {
        let docs = objects(
            "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: a1, namespace: p}\nspec: {site: p/a1}\n\
             ---\napiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: a2, namespace: p}\nspec: {site: p/a2}\n\
             ---\napiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {name: fan, namespace: p}\n\
             spec: {agentRef: {name: a2}, simulated: {}, properties: [{name: on, type: Bool, access: ReadWrite}]}\n",
        );
        let mut world = World {
            agents: vec![
                serde_json::from_value(docs[0].clone()).expect("a1"),
                serde_json::from_value(docs[1].clone()).expect("a2"),
            ],
            equipment: vec![serde_json::from_value(docs[2].clone()).expect("fan")],
            ..Default::default()
        };
        let a2 = ObjectKey::new("p", "a2");
        let (agent, equipment) = world.agent_objects(&a2);
        assert_eq!(agent.and_then(|a| a.metadata.name.as_deref()), Some("a2"));
        assert_eq!(equipment.count(), 1);
        assert!(world.equipment(&ObjectKey::new("p", "fan")).is_some());
        assert!(world.agent_objects(&ObjectKey::new("p", "gone")).0.is_none());

        // An index built before the lists were edited must not hand out a1 as a2.
        world.agents.swap(0, 1);
        assert!(world.agent_objects(&a2).0.is_none_or(|a| a.metadata.name.as_deref() == Some("a2")));
        assert!(world.clone().agent_objects(&a2).0.is_some(), "a copy builds its index afresh");
    }

    fn agent(phase: AgentPhase, seen: i64, rtt: i64) -> StatusUpdate {
        let at = |s| Some(Time(jiff::Timestamp::from_second(s).expect("time")));
        StatusUpdate::EdgeAgent(
            ObjectKey::new("plant-a", "line-1"),
            EdgeAgentStatus {
                phase: Some(phase),
                connection: Some(ConnectionStatus {
                    connected_since: at(0),
                    last_seen: at(seen),
                    rtt_micros: Some(rtt),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn freshness_is_last_seen_and_rtt_but_not_the_phase_or_the_session() {
        let a = agent(AgentPhase::Connected, 10, 800);
        assert_eq!(a.without_freshness(), agent(AgentPhase::Connected, 70, 950).without_freshness());
        assert_ne!(a.without_freshness(), agent(AgentPhase::Disconnected, 10, 800).without_freshness());
        let StatusUpdate::EdgeAgent(k, mut reconnected) = a.clone() else { unreachable!() };
        reconnected.connection.as_mut().expect("connection").connected_since =
            Some(Time(jiff::Timestamp::from_second(60).expect("time")));
        assert_ne!(a.without_freshness(), StatusUpdate::EdgeAgent(k, reconnected).without_freshness());
    }
}
