//! Coalesced status writes: the latest status of each object wins, each object is written at
//! most once per interval, and a status identical to the last one written is not written again.
//! Telemetry arrives many times a second; the API server sees at most one write per second per
//! object. Command transitions do not go through here: the engine writes them directly, because
//! they must be durable before it acts.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::store::{ObjectKey, StatusUpdate, Store, StoreError};

type Key = (&'static str, ObjectKey);

#[derive(Default)]
struct Slot {
    pending: Option<StatusUpdate>,
    last_written: Option<StatusUpdate>,
    last_write_at: Option<Instant>,
}

/// Every object's slot, and which of them hold a pending update: the writer looks at those
/// only, so a wake costs what is pending, not the size of the plant.
#[derive(Default)]
struct Slots {
    all: HashMap<Key, Slot>,
    pending: HashSet<Key>,
}

/// Hands status updates to a background task that writes them through the store.
pub struct StatusWriter {
    slots: Arc<Mutex<Slots>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusWriter {
    /// Starts the writer; `interval` is the minimum time between two writes of one object.
    pub fn start<S: Store>(store: Arc<S>, interval: Duration) -> Self {
        let slots: Arc<Mutex<Slots>> = Arc::default();
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(store, slots.clone(), wake.clone(), interval));
        Self { slots, wake, task }
    }

    /// Queues `update`, replacing any not yet written for the same object.
    pub fn submit(&self, update: StatusUpdate) {
        let key = (update.kind(), update.key().clone());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.all.entry(key.clone()).or_default();
        if slot.last_written.as_ref() == Some(&update) {
            slot.pending = None;
            slots.pending.remove(&key);
            return;
        }
        slot.pending = Some(update);
        slots.pending.insert(key);
        drop(slots);
        self.wake.notify_one();
    }

    /// Number of objects with a write still pending.
    pub fn pending(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).pending.len()
    }
}

async fn run<S: Store>(store: Arc<S>, slots: Arc<Mutex<Slots>>, wake: Arc<tokio::sync::Notify>, interval: Duration) {
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        {
            let mut guard = slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { all, pending } = &mut *guard;
            pending.retain(|key| {
                let Some(slot) = all.get_mut(key) else { return false };
                let ready_at = slot.last_write_at.map_or(now, |t| t + interval);
                if ready_at > now {
                    next = Some(next.map_or(ready_at, |n: Instant| n.min(ready_at)));
                    return true;
                }
                if let Some(update) = slot.pending.take() {
                    due.push((key.clone(), update));
                }
                false
            });
        }
        // One batch: a store that can sync it at once (the folder store) pays one sync for all.
        let results = store.write_statuses(due.iter().map(|(_, u)| u.clone()).collect()).await;
        for ((key, update), result) in due.into_iter().zip(results) {
            let mut guard = slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { all, pending } = &mut *guard;
            let slot = all.entry(key.clone()).or_default();
            slot.last_write_at = Some(Instant::now());
            match result {
                Ok(()) => slot.last_written = Some(update),
                Err(StoreError::Gone { .. }) => {
                    all.remove(&key);
                    pending.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(kind = key.0, object = %key.1, "status write failed, retrying: {e}");
                    // Keep the newest: a fresher update submitted meanwhile wins over the retry.
                    slot.pending.get_or_insert(update);
                    pending.insert(key);
                }
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SecretData;
    use shopfloor_api::equipment::EquipmentStatus;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Instant, StatusUpdate)>>);

    impl Store for Recorder {
        async fn write_status(&self, update: StatusUpdate) -> Result<(), StoreError> {
            self.0.lock().expect("lock").push((Instant::now(), update));
            Ok(())
        }
        async fn delete_command(&self, _: &ObjectKey) -> Result<(), StoreError> {
            Ok(())
        }
        async fn create_secret_if_absent(&self, _: &str, d: SecretData) -> Result<SecretData, StoreError> {
            Ok(d)
        }
        async fn read_secret(&self, _: &str) -> Result<Option<SecretData>, StoreError> {
            Ok(None)
        }
        async fn replace_secret_if(&self, _: &str, _: &SecretData, _: SecretData) -> Result<bool, StoreError> {
            Ok(true)
        }
        async fn write_secret(&self, _: &str, _: SecretData) -> Result<(), StoreError> {
            Ok(())
        }
        async fn delete_secret(&self, _: &str) -> Result<(), StoreError> {
            Ok(())
        }
        async fn publish_event(&self, _: crate::store::ObjectEvent) {}
    }

    fn update(name: &str, rev: &str) -> StatusUpdate {
        StatusUpdate::Equipment(
            ObjectKey::new("plant-a", name),
            EquipmentStatus { applied_revision: Some(rev.into()), ..Default::default() },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_become_one_write_per_second_per_object_with_the_latest_value() {
        let store = Arc::new(Recorder::default());
        let writer = StatusWriter::start(store.clone(), Duration::from_secs(1));
        let start = Instant::now();
        for i in 0..50 {
            writer.submit(update("press", &format!("r{i}")));
            writer.submit(update("oven", &format!("r{i}")));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes = store.0.lock().expect("lock").clone();
        for name in ["press", "oven"] {
            let mine: Vec<_> = writes.iter().filter(|(_, u)| u.key().name == name).collect();
            // 2.5 s of updates: at most one write per second, plus the first.
            assert!(mine.len() <= 4, "{name}: {} writes", mine.len());
            for pair in mine.windows(2) {
                assert!(pair[1].0 - pair[0].0 >= Duration::from_secs(1));
            }
            assert_eq!(mine.last().map(|(_, u)| u.clone()), Some(update(name, "r49")), "the latest value lands");
        }
        assert!(writes[0].0 - start < Duration::from_millis(10), "the first write is not delayed");
        assert_eq!(writer.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_status_is_not_written_again() {
        let store = Arc::new(Recorder::default());
        let writer = StatusWriter::start(store.clone(), Duration::from_secs(1));
        writer.submit(update("press", "r1"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        writer.submit(update("press", "r1"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.0.lock().expect("lock").len(), 1);
    }
}
