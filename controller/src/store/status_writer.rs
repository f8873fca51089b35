//! Coalesced status writes: the latest status of each object wins, each object is written at
//! most once per interval, and a status identical to the last one written is not written again.
//! Telemetry arrives many times a second; the API server sees at most one write per second per
//! object. Command transitions do not go through here: the engine writes them directly, because
//! they must be durable before it acts.
//!
//! A status that differs from the last one written only in freshness (`lastSeen`, `rttMicros`,
//! the `observedAt` of unchanged values) is a refresh, not a change: it is written at most once
//! per refresh period per object and, over all objects, at most at a fixed rate. An idle fleet
//! otherwise rewrites two objects per agent per reporting interval: at 500 agents that was
//! two-thirds of the standalone controller's idle CPU (creating the files), and in a cluster it
//! would be thousands of API writes per second at 10,000 agents. Phases, conditions, revisions
//! and changed values are still written within the interval.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::store::{ObjectKey, StatusUpdate, Store, StoreError};

type Key = (&'static str, ObjectKey);

/// How often statuses are written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    /// The least time between two writes of one object.
    pub interval: Duration,
    /// The least time between two writes of one object that only refresh it.
    pub refresh: Duration,
    /// Refresh-only writes per second over all objects.
    pub refreshes_per_second: u32,
}

impl Pace {
    /// Refreshes every minute at most, 50 a second over the whole plant.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);
    pub const DEFAULT_REFRESHES_PER_SECOND: u32 = 50;
}

impl From<Duration> for Pace {
    fn from(interval: Duration) -> Self {
        Pace {
            interval,
            refresh: Self::DEFAULT_REFRESH.max(interval),
            refreshes_per_second: Self::DEFAULT_REFRESHES_PER_SECOND,
        }
    }
}

#[derive(Default)]
struct Slot {
    pending: Option<StatusUpdate>,
    last_written: Option<StatusUpdate>,
    last_write_at: Option<Instant>,
    /// In the refresh queue (at most once).
    queued: bool,
}

/// Every object's slot; which of them hold a pending change (the writer looks at those only, so
/// a wake costs what is pending, not the size of the plant); and the objects waiting for their
/// refresh, earliest first.
#[derive(Default)]
struct Slots {
    all: HashMap<Key, Slot>,
    pending: HashSet<Key>,
    refreshes: BinaryHeap<Reverse<(Instant, Key)>>,
}

/// Hands status updates to a background task that writes them through the store.
pub struct StatusWriter {
    slots: Arc<Mutex<Slots>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    refresh: Duration,
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
    /// Starts the writer at `pace`.
    pub fn start<S: Store>(store: Arc<S>, pace: impl Into<Pace>) -> Self {
        let pace = pace.into();
        let slots: Arc<Mutex<Slots>> = Arc::default();
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(store, slots.clone(), wake.clone(), pace));
        Self { slots, wake, task, refresh: pace.refresh }
    }

    /// Queues `update`, replacing any not yet written for the same object. A change wakes the
    /// writer; a refresh joins the refresh queue once per period and otherwise wakes no one.
    pub fn submit(&self, update: StatusUpdate) {
        let key = (update.kind(), update.key().clone());
        let mut guard = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Slots { all, pending, refreshes } = &mut *guard;
        let slot = all.entry(key.clone()).or_default();
        if slot.last_written.as_ref() == Some(&update) {
            slot.pending = None;
            pending.remove(&key);
            return;
        }
        let refresh_only =
            slot.last_written.as_ref().is_some_and(|w| w.without_freshness() == update.without_freshness());
        slot.pending = Some(update);
        if refresh_only {
            pending.remove(&key);
            if !slot.queued {
                // Once per object per refresh period: the writer learns when to wake next.
                slot.queued = true;
                let at = slot.last_write_at.map_or_else(Instant::now, |t| t + self.refresh);
                refreshes.push(Reverse((at, key)));
                drop(guard);
                self.wake.notify_one();
            }
            return;
        }
        pending.insert(key);
        drop(guard);
        self.wake.notify_one();
    }

    /// Number of objects with a write still pending, refreshes included.
    pub fn pending(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.all.values().filter(|s| s.pending.is_some()).count()
    }
}

async fn run<S: Store>(store: Arc<S>, slots: Arc<Mutex<Slots>>, wake: Arc<tokio::sync::Notify>, pace: Pace) {
    // Refreshes go out in one batch a second at most, `refreshes_per_second` of them.
    let mut refresh_tick = Instant::now();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let mut later = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        {
            let mut guard = slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { all, pending, refreshes } = &mut *guard;
            pending.retain(|key| {
                let Some(slot) = all.get_mut(key) else { return false };
                let ready_at = slot.last_write_at.map_or(now, |t| t + pace.interval);
                if ready_at > now {
                    later(ready_at);
                    return true;
                }
                if let Some(update) = slot.pending.take() {
                    due.push((key.clone(), update));
                }
                false
            });
            if now >= refresh_tick {
                let mut taken = 0;
                while taken < pace.refreshes_per_second.max(1) {
                    let Some(Reverse((at, _))) = refreshes.peek() else { break };
                    if *at > now {
                        break;
                    }
                    let Some(Reverse((_, key))) = refreshes.pop() else { break };
                    let Some(slot) = all.get_mut(&key) else { continue };
                    slot.queued = false;
                    // Written since it was queued (a change went out): its refresh starts over.
                    let ready_at = slot.last_write_at.map_or(now, |t| t + pace.refresh);
                    if slot.pending.is_some() && ready_at > now {
                        slot.queued = true;
                        refreshes.push(Reverse((ready_at, key)));
                        continue;
                    }
                    if let Some(update) = slot.pending.take() {
                        due.push((key, update));
                        taken += 1;
                    }
                }
                if taken > 0 {
                    refresh_tick = now + Duration::from_secs(1);
                }
            }
            if let Some(Reverse((at, _))) = refreshes.peek() {
                later((*at).max(refresh_tick));
            }
        }
        // One batch: a store that can sync it at once (the folder store) pays one sync for all.
        let results = if due.is_empty() {
            Vec::new()
        } else {
            store.write_statuses(due.iter().map(|(_, u)| u.clone()).collect()).await
        };
        for ((key, update), result) in due.into_iter().zip(results) {
            let mut guard = slots.lock().unwrap_or_else(|p| p.into_inner());
            let Slots { all, pending, .. } = &mut *guard;
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

    fn report(name: &str, value: f64, at_second: i64) -> StatusUpdate {
        use shopfloor_api::{common::Time, equipment::ReportedValue};
        StatusUpdate::Equipment(
            ObjectKey::new("plant-a", name),
            EquipmentStatus {
                applied_revision: Some("r1".into()),
                reported: vec![ReportedValue {
                    property: "speed".into(),
                    value: shopfloor_api::value::Value::Float(value),
                    observed_at: Time(jiff::Timestamp::from_second(at_second).expect("time")),
                }],
                ..Default::default()
            },
        )
    }

    fn writes_of(store: &Recorder, name: &str) -> Vec<(Instant, StatusUpdate)> {
        store.0.lock().expect("lock").iter().filter(|(_, u)| u.key().name == name).cloned().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_that_only_got_fresher_is_rewritten_once_per_refresh_period() {
        let store = Arc::new(Recorder::default());
        let pace =
            Pace { interval: Duration::from_secs(1), refresh: Duration::from_secs(60), refreshes_per_second: 50 };
        let writer = StatusWriter::start(store.clone(), pace);
        // An idle machine reporting the same value every 5 s for two minutes.
        for i in 0..24 {
            writer.submit(report("press", 0.5, i * 5));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let writes = writes_of(&store, "press");
        assert!((2..=3).contains(&writes.len()), "the first write and one refresh a minute: {} writes", writes.len());
        // A changed value is written within the interval, refresh period or not.
        writer.submit(report("press", 0.7, 121));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(writes_of(&store, "press").last().map(|(_, u)| u.clone()), Some(report("press", 0.7, 121)));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_over_the_whole_plant_keep_to_their_rate() {
        let store = Arc::new(Recorder::default());
        let pace = Pace { interval: Duration::from_secs(1), refresh: Duration::from_secs(1), refreshes_per_second: 10 };
        let writer = StatusWriter::start(store.clone(), pace);
        let names: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        for n in &names {
            writer.submit(report(n, 0.5, 0));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(store.0.lock().expect("lock").len(), 100, "first writes are not refreshes");
        let start = Instant::now();
        for n in &names {
            writer.submit(report(n, 0.5, 5));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let refreshed = store.0.lock().expect("lock").iter().filter(|(at, _)| *at > start).count();
        // At most 10 a second plus the bucket's first second: 60 in 5 s, not 100.
        assert!((40..=61).contains(&refreshed), "{refreshed} refreshes in 5 s");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(writer.pending(), 0, "every refresh lands eventually");
    }
}
