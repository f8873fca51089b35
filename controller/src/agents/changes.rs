//! Agents whose connection, reports or certificate changed what their statuses say, outside any
//! store event: marked by the endpoint, taken in one batch by the store's loop, which then
//! reconciles those agents only — the work of a pass follows what changed, not the fleet's size.

use std::{collections::BTreeSet, sync::Mutex};

use tokio::sync::Notify;

use crate::store::ObjectKey;

#[derive(Debug, Default)]
pub struct Changes {
    marked: Mutex<BTreeSet<ObjectKey>>,
    wake: Notify,
}

impl Changes {
    /// Marks `agent` changed and wakes the loop.
    pub fn mark(&self, agent: &ObjectKey) {
        self.marked.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.clone());
        // A permit is kept when nobody waits: a mark between two waits is never lost.
        self.wake.notify_one();
    }

    /// Resolves once something was marked since the last wait.
    pub async fn wait(&self) {
        self.wake.notified().await;
    }

    /// The agents marked since the last take.
    pub fn take(&self) -> BTreeSet<ObjectKey> {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_are_batched_and_never_lost() {
        let c = Changes::default();
        c.mark(&ObjectKey::new("p", "a"));
        c.mark(&ObjectKey::new("p", "b"));
        c.mark(&ObjectKey::new("p", "a"));
        // Marked before anyone waited: the wait still returns.
        tokio::time::timeout(std::time::Duration::from_secs(1), c.wait()).await.expect("woken");
        assert_eq!(c.take().len(), 2);
        assert!(c.take().is_empty());
    }
}
