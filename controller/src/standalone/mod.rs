//! Standalone mode: the controller over a folder of manifests, no cluster. The folder is
//! watched; every change (and every agent event) runs the same reconcile steps the Kubernetes
//! controllers run.

use std::{sync::Arc, time::Duration};

use crate::{reconcile::Reconciler, standalone::store::FolderStore, store::StoreError};

/// Quiet time after a change before the folder is re-read: editors write files in bursts.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest time between two passes: deadlines and status freshness do not wait for events.
const TICK: Duration = Duration::from_secs(1);

/// Runs until the task is cancelled.
pub mod store;

pub async fn run(core: Arc<Reconciler<FolderStore>>) -> Result<(), StoreError> {
    let (_watcher, mut changes) = core.store().watch()?;
    let mut agents = core.registry().subscribe();
    let mut version: u64 = 0;
    let mut last_refused: Vec<String> = Vec::new();
    let mut world = core.store().load();
    loop {
        for r in world.refused.iter().filter(|r| !last_refused.contains(r)) {
            tracing::error!("refused: {r}");
        }
        last_refused = world.refused.clone();
        let requeue = core.reconcile_world(version, &world).await;
        let wait = requeue.unwrap_or(TICK).min(TICK);
        let reload = tokio::select! {
            Some(()) = changes.recv() => {
                // Let the burst finish, then read the folder once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                true
            }
            _ = agents.recv() => false,
            () = core.kicked() => false,
            () = tokio::time::sleep(wait) => false,
        };
        if reload {
            world = core.store().load();
            version += 1;
            tracing::info!(
                agents = world.agents.len(),
                equipment = world.equipment.len(),
                slices = world.slices.len(),
                commands = world.commands.len(),
                refused = world.refused.len(),
                "manifests reloaded"
            );
        } else {
            // Statuses written since the last read must be seen by the next pass.
            world = core.store().load();
        }
    }
}
