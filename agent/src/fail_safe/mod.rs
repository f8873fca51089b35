//! The dead-man fail-safe, shared by the link (which hears the controller and engages), the
//! executor (which refuses writes while engaged and runs `resume-fail-safe`) and apply (which
//! holds desired setpoints back while engaged).
//!
//! - `watchdog`: the decisions, pure;
//! - this file: the shell around them: the monotonic clock, the persisted engagements
//!   (`fail-safe.yaml` in the state directory, so an engagement outlives a restart), and the
//!   notifications a change sends (a report to the controller, a re-apply after a resume).

pub mod watchdog;

use std::{
    collections::BTreeMap,
    sync::Mutex as StdMutex,
    time::{Duration, Instant},
};

use shopfloor_wire::proto::{self, ApplyConfig};
use tokio::sync::{Notify, watch};

use crate::state::StateDir;
use watchdog::Watchdog;
pub use watchdog::{Engagement, Policy, Requirement};

const FILE: &str = "fail-safe.yaml";

/// The fail-safes of the equipment this agent drives.
#[derive(Debug)]
pub struct FailSafes {
    state: Option<StateDir>,
    origin: Instant,
    watchdog: StdMutex<Watchdog>,
    /// Set when the persisted engagements could not be read: every armed fail-safe is then held
    /// as engaged (fail closed) at the next arming.
    unreadable: StdMutex<Option<String>>,
    /// Bumped on every change a controller should see.
    changed: watch::Sender<u64>,
    /// One was lifted: the held configuration is to be applied again.
    resumed: Notify,
}

impl Default for FailSafes {
    /// Kept in memory only (tests, simulators).
    fn default() -> Self {
        Self::with_engaged(None, BTreeMap::new())
    }
}

impl FailSafes {
    fn with_engaged(state: Option<StateDir>, engaged: BTreeMap<String, Engagement>) -> Self {
        Self {
            state,
            origin: Instant::now(),
            watchdog: StdMutex::new(Watchdog::new(Duration::ZERO, engaged)),
            unreadable: StdMutex::new(None),
            changed: watch::channel(0).0,
            resumed: Notify::new(),
        }
    }

    /// Persisted in `state`, with the engagements found there (an agent restarted while engaged
    /// stays engaged). An unreadable file is moved aside and every armed fail-safe is held as
    /// engaged until an operator resumes it.
    pub fn load(state: StateDir) -> Self {
        let parsed = state.read_parsed(FILE, |b| {
            serde_yaml::from_slice::<BTreeMap<String, Engagement>>(b).map_err(|e| e.to_string())
        });
        let (engaged, problem) = match parsed {
            Ok(e) => (e.unwrap_or_default(), None),
            Err(e) => (BTreeMap::new(), Some(e.to_string())),
        };
        let this = Self::with_engaged(Some(state), engaged);
        *this.unreadable.lock().unwrap_or_else(|p| p.into_inner()) = problem;
        this
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Watchdog) -> T) -> T {
        f(&mut self.watchdog.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Arms the fail-safes of `cfg`, narrowed by what the plant's envelope requires of each
    /// equipment (`required`, by equipment name).
    pub fn arm(&self, cfg: &ApplyConfig, required: impl Fn(&str) -> Option<Requirement>) {
        let policies: BTreeMap<String, Policy> = cfg
            .equipment
            .iter()
            .filter_map(|e| {
                let required = required(&e.name);
                watchdog::policy(e.fail_safe.as_ref(), required.as_ref()).map(|p| (e.name.clone(), p))
            })
            .collect();
        let problem = self.unreadable.lock().unwrap_or_else(|p| p.into_inner()).take();
        let now = self.now();
        self.with(|w| {
            if let Some(problem) = &problem {
                for eq in policies.keys() {
                    w.engage(
                        eq,
                        Engagement {
                            since_unix_micros: shopfloor_wire::time::now_micros(),
                            message: format!(
                                "held as engaged: the agent's record of its fail-safes was unreadable ({problem}); \
                                 check the equipment, then resume it"
                            ),
                        },
                    );
                }
            }
            w.arm(policies, now);
        });
        if problem.is_some() {
            self.persist();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// The controller was heard just now: lifts the `Automatic` fail-safes (the link is back)
    /// and has the held configuration applied again for them.
    pub fn heard(&self) {
        let now = self.now();
        let lifted = self.with(|w| w.heard(now));
        if !lifted.is_empty() {
            tracing::info!(equipment = ?lifted, "fail-safe lifted: the controller is back and resume is Automatic");
            self.persist();
            self.changed.send_modify(|v| *v += 1);
            self.resumed.notify_one();
        }
    }

    /// Nothing armed and nothing engaged: no need to listen or to watch.
    pub fn idle(&self) -> bool {
        self.with(|w| w.idle())
    }

    /// Waits while [`Self::idle`]: for a configuration that arms a fail-safe. An agent without
    /// one (most of a fleet) spends no wake-ups on it.
    pub async fn until_armed(&self) {
        let mut changes = self.changed.subscribe();
        while self.idle() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The fail-safes due now, with how long the controller has been silent.
    pub fn due(&self) -> (Vec<(String, Policy)>, Duration) {
        let now = self.now();
        self.with(|w| (w.due(now), w.silence(now)))
    }

    /// Records `equipment`'s fail-safe as engaged (first with what it is about to write, then
    /// with what it wrote): from now on commands that write are refused and desired setpoints
    /// held back.
    pub fn engage(&self, equipment: &str, engagement: Engagement) {
        self.with(|w| w.engage(equipment, engagement));
        self.persist();
        self.changed.send_modify(|v| *v += 1);
    }

    /// Why writes to `equipment` are held back, if they are.
    pub fn holding(&self, equipment: &str) -> Option<Engagement> {
        self.with(|w| w.engagement(equipment).cloned())
    }

    /// An operator lifted `equipment`'s fail-safe: what it was, if it was engaged.
    pub fn resume(&self, equipment: &str) -> Option<Engagement> {
        let was = self.with(|w| w.resume(equipment));
        if was.is_some() {
            tracing::info!(equipment, "fail-safe resumed by an operator's command");
            self.persist();
            self.changed.send_modify(|v| *v += 1);
            self.resumed.notify_one();
        }
        was
    }

    /// Waits for a fail-safe to be lifted.
    pub async fn resumed(&self) {
        self.resumed.notified().await;
    }

    /// Changes a controller should hear of.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn states(&self) -> Vec<proto::FailSafeState> {
        self.with(|w| w.states())
    }

    /// See [`Watchdog::keep_alive`].
    pub fn keep_alive(&self, default: Duration) -> Duration {
        self.with(|w| w.keep_alive(default))
    }

    fn persist(&self) {
        let Some(state) = &self.state else { return };
        let engaged = self.with(|w| w.engaged().clone());
        let text = serde_yaml::to_string(&engaged).unwrap_or_default();
        if let Err(e) = state.write(FILE, text.as_bytes(), 0o600) {
            // Still engaged in memory; a restart would forget it, so say so loudly.
            tracing::error!("cannot record the fail-safe state: {e}; a restart of the agent would forget it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_wire::proto::{EquipmentConfig, FailSafe, NamedValue, Value, value::Kind};

    fn config() -> ApplyConfig {
        ApplyConfig {
            revision: "1".into(),
            equipment: vec![EquipmentConfig {
                name: "conveyor".into(),
                fail_safe: Some(FailSafe {
                    after_ms: 1000,
                    values: vec![NamedValue {
                        name: "running".into(),
                        value: Some(Value { kind: Some(Kind::BoolValue(false)) }),
                    }],
                    resume_automatic: false,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn an_engagement_outlives_a_restart_and_an_unreadable_record_holds_every_fail_safe() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        f.arm(&config(), |_| None);
        f.engage("conveyor", Engagement { since_unix_micros: 5, message: "wrote running=false".into() });
        let again = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        assert_eq!(again.holding("conveyor").map(|e| e.since_unix_micros), Some(5));
        assert!(again.resume("conveyor").is_some());
        let third = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        assert_eq!(third.holding("conveyor"), None, "the resume was recorded");

        std::fs::write(dir.path().join(FILE), "{{{").expect("corrupt");
        let broken = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        broken.arm(&config(), |_| None);
        let held = broken.holding("conveyor").expect("held as engaged");
        assert!(held.message.contains("unreadable"), "{}", held.message);
    }
}
