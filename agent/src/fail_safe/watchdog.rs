//! The dead-man switch's decisions, pure: no clock, no file, no equipment. Time comes in as a
//! duration since an origin the caller picks (its monotonic clock), as in `quinn-proto`.
//!
//! The link counts as alive while the controller is heard (the shell reports every datagram
//! that arrives, and the agent's keep-alive makes the controller answer at least every
//! [`listen_interval`] of the shortest `after`). An equipment's fail-safe is due once the
//! controller has not been heard for its `after` plus its listening interval: the link may have
//! failed up to an interval after the last answer, so it never engages before the link has been
//! lost for `after`, and at most the interval (750 ms) after that; engaged, it stays engaged until it is resumed: by an operator's command (`Manual`),
//! or by the controller's return (`Automatic`: the first sign of it, in the same session or a
//! new one). An engagement outlives the agent's restarts (the shell
//! persists [`Engagement`]s).

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use shopfloor_wire::proto::{self, NamedValue};

/// The fail-safe in force for one equipment: the configuration's, narrowed by the envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub after: Duration,
    /// Written in this order.
    pub values: Vec<NamedValue>,
    /// The controller's return lifts it; otherwise an operator's `resume-fail-safe`.
    pub automatic: bool,
    /// The envelope required it, or made it stricter than the configuration.
    pub required_by_envelope: bool,
}

/// What the plant's envelope requires of one equipment's fail-safe.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirement {
    pub after: Duration,
    pub values: Vec<NamedValue>,
    pub automatic: bool,
}

/// The fail-safe in force: the configuration's, narrowed by the envelope's requirement. The
/// envelope can only make it stricter: the shorter `after`, its own values over the
/// configuration's for the same property (and added for others), and `Manual` unless both say
/// `Automatic`.
pub fn policy(configured: Option<&proto::FailSafe>, required: Option<&Requirement>) -> Option<Policy> {
    let from_config = configured.map(|c| Policy {
        after: Duration::from_millis(c.after_ms),
        values: c.values.clone(),
        automatic: c.resume_automatic,
        required_by_envelope: false,
    });
    let Some(req) = required else { return from_config };
    let Some(mut p) = from_config else {
        return Some(Policy {
            after: req.after,
            values: req.values.clone(),
            automatic: req.automatic,
            required_by_envelope: true,
        });
    };
    let before = p.clone();
    p.after = p.after.min(req.after);
    for v in &req.values {
        match p.values.iter_mut().find(|w| w.name == v.name) {
            Some(w) => w.value = v.value,
            None => p.values.push(v.clone()),
        }
    }
    p.automatic &= req.automatic;
    p.required_by_envelope = p != before;
    Some(p)
}

/// An engaged fail-safe, as the shell persists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Engagement {
    /// When it engaged, on the controller's clock as last measured (µs since the epoch).
    pub since_unix_micros: i64,
    /// What was written and what was refused, for people.
    pub message: String,
    /// Every safe value was written and read back. Until then the agent keeps writing them.
    /// (A record without it, from an older agent, is written again at start.)
    #[serde(default)]
    pub reached: bool,
}

/// The fail-safes of every equipment, and the last time the controller was heard.
#[derive(Debug, Default)]
pub struct Watchdog {
    policies: BTreeMap<String, Policy>,
    engaged: BTreeMap<String, Engagement>,
    last_heard: Duration,
}

/// How often a link must be heard for a fail-safe of `after`: a quarter of it, between 200 and
/// 750 ms (so that it engages within `after` + 1 s of a failure, counting the shell's polling);
/// for a fail-safe at machine speed (`after` under 800 ms) an eighth of it, at least 10 ms, so
/// that it engages within `after` + a few tens of milliseconds of the link's loss.
pub fn listen_interval(after: Duration) -> Duration {
    if after < Duration::from_millis(800) {
        return (after / 8).max(Duration::from_millis(10));
    }
    (after / 4).clamp(Duration::from_millis(200), Duration::from_millis(750))
}

/// How often the shell checks for silence and for fail-safes due, with the shortest armed
/// `after`: a twentieth of it, between 5 and 100 ms.
pub fn poll_interval(shortest_after: Option<Duration>) -> Duration {
    shortest_after
        .map_or(Duration::from_millis(100), |a| (a / 20).clamp(Duration::from_millis(5), Duration::from_millis(100)))
}

impl Watchdog {
    /// Starting at `now` with `engaged` restored, the controller last heard at `now` (the shell
    /// starts its clock at the silence it measured across the restart).
    pub fn new(now: Duration, engaged: BTreeMap<String, Engagement>) -> Self {
        Self { policies: BTreeMap::new(), engaged, last_heard: now }
    }

    /// The fail-safes of the configuration now held, by equipment, armed at `now`: a fail-safe
    /// newly armed counts the silence from then (a configuration arrives from the controller, or
    /// at the agent's start). An engaged fail-safe stays engaged whatever the new configuration
    /// says: only a resume lifts it.
    pub fn arm(&mut self, policies: BTreeMap<String, Policy>, now: Duration) {
        if self.policies.is_empty() {
            self.last_heard = self.last_heard.max(now);
        }
        self.policies = policies;
    }

    /// The fail-safes of a configuration restored from disk at the agent's start: no sign of
    /// life, so the silence goes on from when the controller was last heard (before the
    /// restart: a crash-looping agent must not restart its countdown with every start).
    pub fn restore(&mut self, policies: BTreeMap<String, Policy>) {
        self.policies = policies;
    }

    /// Nothing armed, nothing engaged: the controller's silence means nothing.
    pub fn idle(&self) -> bool {
        self.policies.is_empty() && self.engaged.is_empty()
    }

    pub fn policy(&self, equipment: &str) -> Option<&Policy> {
        self.policies.get(equipment)
    }

    /// The controller was heard at `now`: the link is back, so the engaged fail-safes whose
    /// `resume` is `Automatic` are lifted; returns their equipment. One without a policy any
    /// more waits for an operator.
    pub fn heard(&mut self, now: Duration) -> Vec<String> {
        self.last_heard = self.last_heard.max(now);
        let automatic: Vec<String> =
            self.engaged.keys().filter(|eq| self.policies.get(*eq).is_some_and(|p| p.automatic)).cloned().collect();
        for eq in &automatic {
            self.engaged.remove(eq);
        }
        automatic
    }

    /// How long the controller has not been heard.
    pub fn silence(&self, now: Duration) -> Duration {
        now.saturating_sub(self.last_heard)
    }

    /// The equipment whose fail-safe is due at `now`: armed, not engaged, silent for its `after`
    /// and its listening interval.
    pub fn due(&self, now: Duration) -> Vec<(String, Policy)> {
        let silence = self.silence(now);
        self.policies
            .iter()
            .filter(|(eq, p)| silence >= p.after + listen_interval(p.after) && !self.engaged.contains_key(*eq))
            .map(|(eq, p)| (eq.clone(), p.clone()))
            .collect()
    }

    pub fn engage(&mut self, equipment: &str, engagement: Engagement) {
        self.engaged.insert(equipment.to_owned(), engagement);
    }

    pub fn engagement(&self, equipment: &str) -> Option<&Engagement> {
        self.engaged.get(equipment)
    }

    pub fn engaged(&self) -> &BTreeMap<String, Engagement> {
        &self.engaged
    }

    /// An operator lifted `equipment`'s fail-safe; what it was, if it was engaged.
    pub fn resume(&mut self, equipment: &str) -> Option<Engagement> {
        self.engaged.remove(equipment)
    }

    /// The agent's keep-alive: the listening interval of the shortest `after`, never less often
    /// than `default`. A connection keeps the keep-alive it was made with: until the next one,
    /// a fail-safe configured during a session may engage up to `default` early.
    pub fn keep_alive(&self, default: Duration) -> Duration {
        let shortest = self.policies.values().map(|p| p.after).min();
        shortest.map_or(default, |a| listen_interval(a).min(default))
    }

    /// See [`poll_interval`].
    pub fn poll_interval(&self) -> Duration {
        poll_interval(self.policies.values().map(|p| p.after).min())
    }

    /// Every armed or engaged fail-safe, for the controller.
    pub fn states(&self) -> Vec<proto::FailSafeState> {
        let mut names: Vec<&String> = self.policies.keys().chain(self.engaged.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|eq| {
                let p = self.policies.get(eq);
                let e = self.engaged.get(eq);
                proto::FailSafeState {
                    equipment: eq.clone(),
                    engaged: e.is_some(),
                    engaged_unix_micros: e.map_or(0, |e| e.since_unix_micros),
                    after_ms: p.map_or(0, |p| u64::try_from(p.after.as_millis()).unwrap_or(u64::MAX)),
                    resume_automatic: p.is_some_and(|p| p.automatic),
                    required_by_envelope: p.is_some_and(|p| p.required_by_envelope),
                    safe_state_unconfirmed: e.is_some_and(|e| !e.reached),
                    message: e.map(|e| e.message.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_wire::proto::{Value, value::Kind};

    fn named(name: &str, kind: Kind) -> NamedValue {
        NamedValue { name: name.into(), value: Some(Value { kind: Some(kind) }) }
    }

    fn conveyor(after_ms: u64, automatic: bool) -> proto::FailSafe {
        proto::FailSafe {
            after_ms,
            values: vec![named("running", Kind::BoolValue(false))],
            resume_automatic: automatic,
        }
    }

    fn armed(after_ms: u64, automatic: bool) -> Watchdog {
        let mut w = Watchdog::new(Duration::ZERO, BTreeMap::new());
        let p = policy(Some(&conveyor(after_ms, automatic)), None).expect("policy");
        w.arm(BTreeMap::from([("conveyor".to_owned(), p)]), Duration::ZERO);
        w
    }

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_fail_safe_is_due_after_its_silence_and_one_keep_alive_and_never_while_the_controller_is_heard() {
        let mut w = armed(2000, false);
        for t in (0..10_000).step_by(500) {
            w.heard(S(t));
            assert!(w.due(S(t + 499)).is_empty(), "heard at {t} ms");
        }
        w.heard(S(10_000));
        // The link may have failed just before the next keep-alive's answer was due.
        assert!(w.due(S(12_499)).is_empty());
        let due = w.due(S(12_500));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "conveyor");
        w.engage("conveyor", Engagement { since_unix_micros: 1, message: "wrote running=false".into(), reached: true });
        assert!(w.due(S(60_000)).is_empty(), "engaged once, not again");
        // Heard again in an older instant: time does not go back.
        w.heard(S(5_000));
        assert_eq!(w.silence(S(12_500)), S(2_500));
    }

    #[test]
    fn manual_fail_safes_wait_for_an_operator_and_automatic_ones_for_the_controllers_return() {
        for automatic in [false, true] {
            let mut w = armed(1000, automatic);
            w.engage("conveyor", Engagement { since_unix_micros: 1, message: String::new(), reached: true });
            let lifted = w.heard(S(5_000));
            assert_eq!(lifted.is_empty(), !automatic);
            assert_eq!(w.engagement("conveyor").is_some(), !automatic);
            if !automatic {
                assert!(w.resume("conveyor").is_some());
                assert!(w.resume("conveyor").is_none(), "resuming twice is resuming once");
            }
            assert!(w.due(S(5_500)).is_empty(), "hearing the controller restarted the count");
        }
    }

    #[test]
    fn an_engagement_outlives_a_configuration_without_the_fail_safe() {
        let mut w = armed(1000, true);
        w.engage("conveyor", Engagement { since_unix_micros: 7, message: "m".into(), reached: true });
        w.arm(BTreeMap::new(), S(1));
        assert!(w.heard(S(1)).is_empty(), "no policy says Automatic any more: an operator decides");
        let states = w.states();
        assert_eq!(states.len(), 1);
        assert!(states[0].engaged && states[0].engaged_unix_micros == 7);
    }

    #[test]
    fn the_envelope_only_makes_a_fail_safe_stricter() {
        let configured = proto::FailSafe {
            after_ms: 5000,
            values: vec![named("running", Kind::BoolValue(false)), named("speed", Kind::FloatValue(0.5))],
            resume_automatic: true,
        };
        let req = Requirement { after: S(2000), values: vec![named("speed", Kind::FloatValue(0.0))], automatic: false };
        let p = policy(Some(&configured), Some(&req)).expect("policy");
        assert_eq!(p.after, S(2000));
        assert_eq!(p.values, vec![named("running", Kind::BoolValue(false)), named("speed", Kind::FloatValue(0.0))]);
        assert!(!p.automatic && p.required_by_envelope);
        // Required where the cloud declared none.
        let p = policy(None, Some(&req)).expect("required");
        assert!(p.required_by_envelope && p.after == S(2000));
        // A requirement the configuration already meets changes nothing.
        let weaker = Requirement { after: S(9000), values: vec![], automatic: true };
        let p = policy(Some(&configured), Some(&weaker)).expect("policy");
        assert!(!p.required_by_envelope && p.after == S(5000) && p.automatic);
        assert_eq!(policy(None, None), None);
    }

    #[test]
    fn a_fail_safe_armed_during_a_silence_counts_from_its_arming() {
        let mut w = Watchdog::new(Duration::ZERO, BTreeMap::new());
        assert!(w.idle());
        let p = policy(Some(&conveyor(1000, false)), None).expect("policy");
        // Unarmed, nobody listened for a minute; the configuration that arms it is a sign of life.
        w.arm(BTreeMap::from([("conveyor".to_owned(), p)]), S(60_000));
        assert!(!w.idle());
        assert!(w.due(S(60_500)).is_empty());
        assert_eq!(w.due(S(61_250)).len(), 1);
    }

    #[test]
    fn the_keep_alive_follows_the_shortest_fail_safe() {
        let w = armed(1000, false);
        assert_eq!(w.keep_alive(S(1000)), S(250));
        assert_eq!(armed(400, false).keep_alive(S(1000)), S(50), "machine speed: an eighth");
        assert_eq!(armed(100, false).keep_alive(S(1000)), S(12) + Duration::from_micros(500));
        assert_eq!(armed(100, false).poll_interval(), S(5));
        assert_eq!(armed(2000, false).poll_interval(), S(100));
        assert_eq!(armed(60_000, false).keep_alive(S(1000)), S(750));
        assert_eq!(Watchdog::default().keep_alive(S(1000)), S(1000));
    }
}
