//! Which agents are connected right now, and how to reach them. The QUIC endpoint registers a
//! session when an agent's handshake and Hello succeed and removes it when the connection ends;
//! the command engine and the configuration pusher look sessions up here.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use jiff::Timestamp;
use tokio::sync::broadcast;

use crate::{agents::port::AgentSession, store::ObjectKey};

/// What the controller knows about a connected agent.
#[derive(Clone)]
pub struct Connected {
    pub session: Arc<dyn AgentSession>,
    /// Distinguishes this connection from an earlier one of the same agent.
    pub connection_id: u64,
    pub connected_since: Timestamp,
    pub remote: SocketAddr,
    pub agent_version: String,
    pub protocol_version: u32,
    /// The configuration revision the agent holds (from Hello, then from each ConfigApplied).
    pub held_revision: Option<String>,
    /// The agent's wall clock minus ours, estimated from its Hello and the round-trip time.
    pub clock_offset_micros: Option<i64>,
    /// SHA-256 of the safety envelope the agent enforces; `None` without one.
    pub envelope_sha256: Option<String>,
    /// Why the agent's configured envelope cannot be used (it refuses every write then).
    pub envelope_problem: Option<String>,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("connection_id", &self.connection_id)
            .field("remote", &self.remote)
            .field("held_revision", &self.held_revision)
            .finish_non_exhaustive()
    }
}

/// A change in who is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Connected(ObjectKey),
    Disconnected(ObjectKey),
}

/// The registry of connected agents.
pub struct Registry {
    agents: RwLock<BTreeMap<ObjectKey, Connected>>,
    changes: broadcast::Sender<Change>,
    /// The revision last pushed on each agent's connection, by connection id: a pass that runs
    /// before the agent's ConfigApplied does not push it again (under load, every report's pass
    /// did, doubling the pushes of a fleet connecting at once).
    pushed: std::sync::Mutex<HashMap<ObjectKey, (u64, String)>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("connected", &self.len()).finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self { agents: RwLock::default(), changes: broadcast::channel(1024).0, pushed: Default::default() }
    }
}

impl Registry {
    /// Registers a session, replacing (and closing) an older connection of the same agent.
    pub fn connect(&self, agent: ObjectKey, connected: Connected) {
        let old = self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(agent.clone(), connected);
        if let Some(old) = old {
            old.session.close("replaced by a newer connection of the same agent", None);
        }
        let _ = self.changes.send(Change::Connected(agent));
    }

    /// Removes the session if it is still connection `connection_id` (a newer one stays).
    pub fn disconnect(&self, agent: &ObjectKey, connection_id: u64) {
        let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
        if agents.get(agent).is_some_and(|c| c.connection_id == connection_id) {
            agents.remove(agent);
            drop(agents);
            let _ = self.changes.send(Change::Disconnected(agent.clone()));
        }
    }

    pub fn get(&self, agent: &ObjectKey) -> Option<Connected> {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()
    }

    pub fn set_held_revision(&self, agent: &ObjectKey, revision: Option<String>) {
        if let Some(c) = self.agents.write().unwrap_or_else(|p| p.into_inner()).get_mut(agent) {
            c.held_revision = revision;
        }
    }

    /// Claims the push of `revision` on connection `connection_id`: false when it was pushed on
    /// that connection already (the agent's ConfigApplied is on its way).
    pub fn claim_push(&self, agent: &ObjectKey, connection_id: u64, revision: &str) -> bool {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if pushed.get(agent).is_some_and(|(id, r)| *id == connection_id && r == revision) {
            return false;
        }
        pushed.insert(agent.clone(), (connection_id, revision.to_owned()));
        true
    }

    /// Gives a claim back after a push that failed, so the next pass tries again.
    pub fn release_push(&self, agent: &ObjectKey, connection_id: u64) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        if pushed.get(agent).is_some_and(|(id, _)| *id == connection_id) {
            pushed.remove(agent);
        }
    }

    /// Closes and removes an agent's session (suspension, deletion, revocation).
    pub fn evict(&self, agent: &ObjectKey, reason: &str) -> bool {
        let removed = self.agents.write().unwrap_or_else(|p| p.into_inner()).remove(agent);
        match removed {
            Some(c) => {
                c.session.close(reason, None);
                let _ = self.changes.send(Change::Disconnected(agent.clone()));
                true
            }
            None => false,
        }
    }

    /// Closes every session asking its agent to dial again after `redial_after` (this replica
    /// steps down, another takes over); returns how many were closed. Their Disconnected events
    /// are not this replica's to publish: the next leader sees them back.
    pub fn hand_over(&self, reason: &str, redial_after: std::time::Duration) -> usize {
        let sessions: Vec<Connected> =
            std::mem::take(&mut *self.agents.write().unwrap_or_else(|p| p.into_inner())).into_values().collect();
        for c in &sessions {
            c.session.close(reason, Some(redial_after));
        }
        sessions.len()
    }

    pub fn len(&self) -> usize {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn connected(&self) -> Vec<ObjectKey> {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
