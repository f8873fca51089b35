//! Standalone mode: the controller over a folder of manifests, no cluster. The folder is
//! watched; a change of it runs every reconcile step the Kubernetes controllers run, over the
//! whole plant. Between changes, a pass reconciles only the agents something happened to (a
//! connection, a report) — from the store's memory, reading no file — and a full pass comes
//! when a deadline is due or every [`TICK`].

mod files;
pub mod store;

use std::{sync::Arc, time::Duration};

use crate::{agents::changes::Marked, reconcile::Reconciler, store::StoreError};
use store::FolderStore;

/// Quiet time after a change before the folder is re-read: editors write files in bursts.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest time between two full passes: statuses that depend on time alone (an idle connected
/// agent's `lastSeen`) do not wait longer. Deadlines are not waited for here (a pass asks for
/// the soonest), and what agents do is reconciled as it happens, so a full pass of a large fleet
/// costs much and finds little the status writer would show sooner than its once-a-minute
/// refresh. The Kubernetes controllers requeue every 30 s too.
pub const TICK: Duration = Duration::from_secs(30);
/// After the first agent's change, how long to gather others into the same pass: a fleet
/// reporting all the time then costs a pass per batch, not a pass per report.
const GATHER: Duration = Duration::from_millis(100);

/// What the next pass covers.
enum Pass {
    /// The folder changed: read it again, reconcile everything.
    Reload,
    /// A deadline or the tick: reconcile everything, from memory.
    Full,
    /// Only these agents.
    Changed(Marked),
}

/// Runs until the task is cancelled. Between passes the loop holds no copy of the plant: the
/// store keeps the one world, and each pass takes what it needs from it (the whole plant, or the
/// marked agents' objects with the slices), so the plant is not kept twice.
pub async fn run(core: Arc<Reconciler<FolderStore>>) -> Result<(), StoreError> {
    let (_watcher, mut changes) = core.store().watch()?;
    let mut version: u64 = 0;
    let mut last_refused: Vec<String> = Vec::new();
    // The first pass reads the folder like any change of it.
    let mut pass = Pass::Reload;
    let mut wait = TICK;
    loop {
        match pass {
            Pass::Reload | Pass::Full => {
                let world = if matches!(pass, Pass::Reload) {
                    let world = core.store().load();
                    version += 1;
                    tracing::info!(
                        agents = world.agents.len(),
                        equipment = world.equipment.len(),
                        slices = world.slices.len(),
                        commands = world.commands.len(),
                        refused = world.refused.len(),
                        "manifests read"
                    );
                    world
                } else {
                    // Statuses written since the last pass, from the store's memory.
                    core.store().current()
                };
                for r in world.refused.iter().filter(|r| !last_refused.contains(r)) {
                    tracing::error!("refused: {r}");
                }
                last_refused = world.refused.clone();
                wait = core.reconcile_world(version, &world).await.unwrap_or(TICK).min(TICK);
            }
            Pass::Changed(marked) => {
                // The marked agents' objects with the statuses written since: what the pass
                // builds their statuses on (conditions keep their transition times only so).
                let world = core.store().objects_of(&marked.agents);
                let plans = core.plans_from(version, || core.store().current());
                core.reconcile_changed(&plans, &world, &marked).await
            }
        }
        let started = tokio::time::Instant::now();
        pass = tokio::select! {
            Some(()) = changes.recv() => {
                // Let the burst finish, then read the folder once.
                tokio::time::sleep(DEBOUNCE).await;
                while changes.try_recv().is_ok() {}
                Pass::Reload
            }
            // Connections, disconnections and applied configurations are marked by the endpoint
            // like reports, so a fleet connecting at once costs a pass per batch, not per agent
            // (each pass recounts the slices selecting them).
            () = core.changes().wait() => {
                tokio::time::sleep(GATHER).await;
                Pass::Changed(core.changes().take())
            }
            () = tokio::time::sleep(wait) => Pass::Full,
        };
        // The time waited counts against the next full pass's deadline.
        wait = wait.saturating_sub(started.elapsed());
    }
}
