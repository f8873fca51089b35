//! Agents whose connection, reports or certificate changed what their statuses say, outside any
//! store event: marked by the endpoint, taken in one batch by the store's loop, which then
//! reconciles those agents only — the work of a pass follows what changed, not the fleet's size.
//! Readings touch the agent's equipment only; a session change (connected, disconnected,
//! enrolled, a configuration applied) touches the agent, its equipment and the slices selecting
//! it, whose status counts every selected agent: a pass after readings alone leaves those alone
//! (at 1,000 agents, recounting the slices after every report was half the controller's idle
//! CPU).

use std::{collections::BTreeSet, sync::Mutex};

use tokio::sync::Notify;

use crate::store::ObjectKey;

#[derive(Debug, Default)]
pub struct Changes {
    marked: Mutex<Marked>,
    wake: Notify,
}

/// What changed about an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// New readings of its equipment.
    Readings,
    /// Its session or configuration: connected, disconnected, enrolled, applied.
    Session,
}

/// The agents marked since the last take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marked {
    /// Every agent marked, for any change.
    pub agents: BTreeSet<ObjectKey>,
    /// Those among them whose session or configuration changed.
    pub sessions: BTreeSet<ObjectKey>,
}

impl Marked {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

impl Changes {
    /// Marks `agent` changed and wakes the loop.
    pub fn mark(&self, agent: &ObjectKey, change: Change) {
        let mut marked = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        marked.agents.insert(agent.clone());
        if change == Change::Session {
            marked.sessions.insert(agent.clone());
        }
        drop(marked);
        // A permit is kept when nobody waits: a mark between two waits is never lost.
        self.wake.notify_one();
    }

    /// Resolves once something was marked since the last wait.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The agents marked since the last take.
    pub fn take(&self) -> Marked {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_are_batched_and_never_lost() {
        let c = Changes::default();
        c.mark(&ObjectKey::new("p", "a"), Change::Readings);
        c.mark(&ObjectKey::new("p", "b"), Change::Session);
        c.mark(&ObjectKey::new("p", "a"), Change::Readings);
        // Marked before anyone waited: the wait still returns.
        tokio::time::timeout(std::time::Duration::from_secs(1), c.wait()).await.expect("woken");
        let marked = c.take();
        assert_eq!(marked.agents.len(), 2);
        assert_eq!(marked.sessions, [ObjectKey::new("p", "b")].into());
        assert!(c.take().is_empty());
    }
}
