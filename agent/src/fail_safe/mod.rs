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
/// When the controller was last heard, kept across restarts (`Heard`).
const HEARD_FILE: &str = "heard.yaml";
/// How often, at most, hearing the controller is recorded: the silence measured across a
/// restart is longer than the real one by up to this (a fail-safe engages early, never late).
const HEARD_EVERY: Duration = Duration::from_millis(250);
/// The configuration the controller last sent: when no `heard.yaml` exists (an agent of an
/// older version), storing it was the last time the controller was heard.
const CONFIG_FILE: &str = "config.pb";

/// When the controller was last heard, on two clocks: the kernel's boot clock (monotonic
/// across process restarts, reset by a reboot, which the boot id tells) and the wall clock
/// (used across a reboot only).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Heard {
    boot_id: String,
    uptime_micros: u64,
    unix_micros: i64,
}

/// This boot's id and how long it has been up (CLOCK_BOOTTIME, via /proc), if readable.
fn boot_clock() -> Option<(String, Duration)> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((id, Duration::from_secs_f64(secs)))
}

impl Heard {
    fn now() -> Self {
        let (boot_id, up) = boot_clock().unwrap_or_default();
        Self {
            boot_id,
            uptime_micros: u64::try_from(up.as_micros()).unwrap_or(u64::MAX),
            unix_micros: shopfloor_wire::time::now_micros(),
        }
    }

    /// How long ago this was, by the boot clock within one boot, else by the wall clock (at
    /// least zero: a clock set back does not make the silence negative).
    fn ago(&self, now: &Heard) -> Duration {
        if !self.boot_id.is_empty() && self.boot_id == now.boot_id {
            return Duration::from_micros(now.uptime_micros.saturating_sub(self.uptime_micros));
        }
        Duration::from_micros(u64::try_from(now.unix_micros.saturating_sub(self.unix_micros)).unwrap_or(0))
    }
}

/// How long the controller has been silent at this start, from what `state` recorded: since
/// it was last heard, or (no record of that) since its last configuration was stored; zero for
/// an agent that never had one (nothing is armed then).
fn silence_at_start(state: &StateDir) -> Duration {
    let now = Heard::now();
    match state.read_parsed(HEARD_FILE, |b| serde_yaml::from_slice::<Heard>(b).map_err(|e| e.to_string())) {
        Ok(Some(h)) => h.ago(&now),
        // Unreadable or absent: fail closed, from the configuration's last store.
        _ => std::fs::metadata(state.path(CONFIG_FILE))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default(),
    }
}

/// The fail-safes of the equipment this agent drives.
#[derive(Debug)]
pub struct FailSafes {
    state: Option<StateDir>,
    origin: Instant,
    /// The silence already measured at this start (across the restart).
    silent_at_start: Duration,
    /// When hearing the controller was last recorded.
    recorded: StdMutex<Option<Instant>>,
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
        let silent_at_start = state.as_ref().map(silence_at_start).unwrap_or_default();
        Self {
            state,
            origin: Instant::now(),
            silent_at_start,
            recorded: StdMutex::new(None),
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

    /// The watchdog's clock: zero is when the controller was last heard before this start.
    fn now(&self) -> Duration {
        self.origin.elapsed() + self.silent_at_start
    }

    fn with<T>(&self, f: impl FnOnce(&mut Watchdog) -> T) -> T {
        f(&mut self.watchdog.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Arms the fail-safes of `cfg` as the controller just sent it, narrowed by what the plant's
    /// envelope requires of each equipment (`required`, by equipment name).
    pub fn arm(&self, cfg: &ApplyConfig, required: impl Fn(&str) -> Option<Requirement>) {
        self.arm_with(cfg, required, true);
        self.record_heard();
    }

    /// Arms the fail-safes of `cfg` restored from disk at the agent's start: the silence goes
    /// on from when the controller was last heard, before the restart.
    pub fn restore(&self, cfg: &ApplyConfig, required: impl Fn(&str) -> Option<Requirement>) {
        self.arm_with(cfg, required, false);
    }

    fn arm_with(&self, cfg: &ApplyConfig, required: impl Fn(&str) -> Option<Requirement>, heard: bool) {
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
                            reached: false,
                        },
                    );
                }
            }
            if heard { w.arm(policies, now) } else { w.restore(policies) }
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
        self.record_heard();
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

    /// The engaged fail-safes whose safe values are not all read back yet, with their policy.
    pub fn unreached(&self) -> Vec<(String, Engagement, Policy)> {
        self.with(|w| {
            w.engaged()
                .iter()
                .filter(|(_, e)| !e.reached)
                .filter_map(|(eq, e)| w.policy(eq).map(|p| (eq.clone(), e.clone(), p.clone())))
                .collect()
        })
    }

    /// Records the outcome of an attempt to reach `equipment`'s safe state, if it is still
    /// engaged (an operator may have resumed it meanwhile).
    pub fn attempted(&self, equipment: &str, reached: bool, message: String) {
        let changed = self.with(|w| match w.engagement(equipment).cloned() {
            Some(e) if e.reached != reached || e.message != message => {
                w.engage(equipment, Engagement { reached, message, ..e });
                true
            }
            _ => false,
        });
        if changed {
            self.persist();
            self.changed.send_modify(|v| *v += 1);
        }
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

    /// How often to check for silence and for fail-safes due (`watchdog::poll_interval`).
    pub fn poll_interval(&self) -> Duration {
        self.with(|w| w.poll_interval())
    }

    /// See [`Watchdog::keep_alive`].
    pub fn keep_alive(&self, default: Duration) -> Duration {
        self.with(|w| w.keep_alive(default))
    }

    /// Records that the controller was heard now, at most every [`HEARD_EVERY`] and only while
    /// something is armed. Not synced to disk: the page cache outlives a crash of the process,
    /// and after a crash of the host the boot id changes and the older record read then makes
    /// the silence longer, never shorter.
    fn record_heard(&self) {
        let Some(state) = &self.state else { return };
        if self.idle() {
            return;
        }
        {
            let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            if recorded.is_some_and(|t| t.elapsed() < HEARD_EVERY) {
                return;
            }
            *recorded = Some(Instant::now());
        }
        let text = serde_yaml::to_string(&Heard::now()).unwrap_or_default();
        if let Err(e) = state.write_unsynced(HEARD_FILE, text.as_bytes(), 0o600) {
            tracing::warn!(
                "cannot record when the controller was last heard: {e}; after a restart the fail-safes count from the configuration's last store"
            );
        }
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
        f.engage("conveyor", Engagement { since_unix_micros: 5, message: "wrote running=false".into(), reached: true });
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

    #[test]
    fn silence_is_measured_on_the_boot_clock_within_a_boot_and_on_the_wall_clock_across_one() {
        let then = Heard { boot_id: "a".into(), uptime_micros: 10_000_000, unix_micros: 1_000_000_000 };
        // The wall clock set back meanwhile changes nothing within a boot.
        let same_boot = Heard { boot_id: "a".into(), uptime_micros: 13_000_000, unix_micros: 900_000_000 };
        assert_eq!(then.ago(&same_boot), Duration::from_secs(3));
        let rebooted = Heard { boot_id: "b".into(), uptime_micros: 1_000_000, unix_micros: 1_060_000_000 };
        assert_eq!(then.ago(&rebooted), Duration::from_secs(60));
        let set_back = Heard { boot_id: "b".into(), uptime_micros: 0, unix_micros: 0 };
        assert_eq!(then.ago(&set_back), Duration::ZERO);
    }

    /// A restart is no sign of life: an agent that heard the controller 5 s ago and restores
    /// its configuration is 5 s into the silence; one that only ever stored its configuration
    /// (no record of hearing, an older agent) counts from that store.
    #[test]
    fn a_restart_continues_the_silence_it_measured() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        let mut earlier = Heard::now();
        earlier.uptime_micros = earlier.uptime_micros.saturating_sub(5_000_000);
        earlier.unix_micros -= 5_000_000;
        state.write(HEARD_FILE, serde_yaml::to_string(&earlier).expect("yaml").as_bytes(), 0o600).expect("write");
        let f = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        f.restore(&config(), |_| None);
        let (due, silence) = f.due();
        assert!(silence >= Duration::from_secs(5), "{silence:?}");
        assert_eq!(due.len(), 1, "after: 1 s is long past");

        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(CONFIG_FILE), b"").expect("config");
        let f = FailSafes::load(StateDir::open(dir.path()).expect("state"));
        f.restore(&config(), |_| None);
        assert!(f.due().0.is_empty(), "the configuration was stored just now");
        // Armed by the controller: a sign of life, recorded for the next start.
        f.arm(&config(), |_| None);
        assert!(dir.path().join(HEARD_FILE).exists());
    }
}
