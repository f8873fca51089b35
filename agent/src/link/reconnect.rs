//! When to dial the controller again, and how long one attempt waits for it. Pure: outcomes in,
//! delays out.
//!
//! A refusal or a failure backs off exponentially with full jitter up to 30 s, so a fleet does
//! not hammer a controller that said no. Silence (a handshake nobody answers, a session that
//! went quiet) is usually the network: the agent retries soon, within 0.75 s, so it is back as
//! soon as the network is. But silence is also what an overloaded controller looks like, and an
//! agent that abandons a half-done handshake to start a new one adds to the load it is waiting
//! on: so after silent attempts in a row an attempt waits longer for its answer (1 s, then
//! 1.5 s), and the delays between them grow (0.25 s to 0.75 s) and spread by full jitter. A
//! session that lasted resets both.

use std::time::Duration;

use shopfloor_wire::backoff::Backoff;

/// A session that lasted this long counts as a success: the next failure starts afresh.
pub const STABLE: Duration = Duration::from_secs(10);
/// The first attempts wait this long for the controller's answer...
pub const FIRST_PATIENCE: Duration = Duration::from_millis(1000);
/// ...and, after [`PATIENT_AFTER`] silent attempts in a row, this long. Longer would let a
/// partition that heals mid-attempt wait for QUIC's next retransmission: the time back after a
/// partition must stay under 2 s.
pub const LONG_PATIENCE: Duration = Duration::from_millis(1500);
pub const PATIENT_AFTER: u32 = 3;
/// The longest delay after silence.
pub const SILENT_CAP: Duration = Duration::from_millis(750);

/// How the last attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A session was established and later ended.
    Ended { lasted: Duration, silent: bool },
    /// Nobody answered the handshake in time.
    NoAnswer,
    /// Refused, or failed some other way.
    Failed,
    /// The controller is starting or handing over and asked for a new dial after this long.
    Redial(Duration),
}

/// The reconnection policy of one agent.
#[derive(Debug, Clone)]
pub struct Reconnect {
    failed: Backoff,
    silent: Backoff,
    silent_in_a_row: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            failed: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            silent: Backoff::new(Duration::from_millis(250), SILENT_CAP),
            silent_in_a_row: 0,
        }
    }
}

impl Reconnect {
    /// How long the next attempt waits for the controller's first answer.
    pub fn patience(&self) -> Duration {
        if self.silent_in_a_row >= PATIENT_AFTER { LONG_PATIENCE } else { FIRST_PATIENCE }
    }

    /// The delay before the next attempt, after `attempt`.
    pub fn after(&mut self, attempt: Attempt) -> Duration {
        match attempt {
            Attempt::Ended { lasted, silent } => {
                if lasted >= STABLE {
                    self.failed.reset();
                    self.silent.reset();
                }
                self.silent_in_a_row = 0;
                if silent { self.silent.next_delay() } else { self.failed.next_delay() }
            }
            Attempt::NoAnswer => {
                self.silent_in_a_row = self.silent_in_a_row.saturating_add(1);
                self.silent.next_delay()
            }
            Attempt::Failed => {
                self.silent_in_a_row = 0;
                self.failed.next_delay()
            }
            // Not a failure: no backoff grows. Up to half again as jitter, so a fleet sent away
            // together does not come back in one burst.
            Attempt::Redial(after) => {
                self.silent_in_a_row = 0;
                after + self.silent.jitter(after / 2)
            }
        }
    }

    /// Silent attempts in a row so far.
    pub fn silent_in_a_row(&self) -> u32 {
        self.silent_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_retried_soon_but_ever_more_patiently() {
        let mut r = Reconnect::default();
        assert_eq!(r.patience(), FIRST_PATIENCE);
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let d = r.after(Attempt::NoAnswer);
            assert!(d <= SILENT_CAP, "attempt {i}: {d:?}");
            worst = worst.max(d);
        }
        assert_eq!(r.patience(), LONG_PATIENCE, "after silent attempts in a row, wait longer for the answer");
        // An agent back after a partition is at most a delay and a patience away from it.
        assert!(worst + r.patience() <= Duration::from_millis(2250));
    }

    #[test]
    fn refusals_back_off_to_30_s_with_jitter_and_a_lasting_session_resets() {
        let mut r = Reconnect::default();
        let delays: Vec<Duration> = (0..30).map(|_| r.after(Attempt::Failed)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(delays[20..].iter().any(|d| *d > Duration::from_secs(2)), "grown: {delays:?}");
        // Full jitter: late delays still spread, so a fleet refused at once does not come back at once.
        let late: std::collections::BTreeSet<u128> = delays[20..].iter().map(|d| d.as_millis() / 100).collect();
        assert!(late.len() > 3, "spread: {delays:?}");
        let d = r.after(Attempt::Ended { lasted: STABLE, silent: false });
        assert!(d <= Duration::from_millis(200), "a session that lasted resets the backoff: {d:?}");
    }

    #[test]
    fn a_redial_waits_what_the_controller_asked_and_grows_no_backoff() {
        let mut r = Reconnect::default();
        for _ in 0..30 {
            let d = r.after(Attempt::Redial(Duration::from_millis(200)));
            assert!((Duration::from_millis(200)..=Duration::from_millis(300)).contains(&d), "{d:?}");
        }
        assert!(r.after(Attempt::Failed) <= Duration::from_millis(200), "the refusal backoff did not grow");
    }

    #[test]
    fn a_fleet_refused_together_spreads_out() {
        // 1,000 agents refused at the same moment: their next attempts do not arrive together.
        let mut per_100ms = std::collections::BTreeMap::<u128, usize>::new();
        for _ in 0..1000 {
            let mut r = Reconnect::default();
            let mut t = Duration::ZERO;
            for _ in 0..6 {
                t += r.after(Attempt::Failed);
            }
            *per_100ms.entry(t.as_millis() / 100).or_default() += 1;
        }
        let busiest = per_100ms.values().copied().max().unwrap_or(0);
        assert!(busiest < 100, "at most a tenth of the fleet in any 100 ms: {busiest}");
    }

    #[test]
    fn a_session_that_went_quiet_is_retried_within_a_second() {
        let mut r = Reconnect::default();
        for _ in 0..10 {
            r.after(Attempt::Failed);
        }
        let d = r.after(Attempt::Ended { lasted: Duration::from_secs(60), silent: true });
        assert!(d <= Duration::from_millis(250), "{d:?}");
        assert_eq!(r.patience(), FIRST_PATIENCE);
    }
}
