//! The controller's budget of writes to a store that charges for each request (the Kubernetes
//! API server), with command writes ahead of status writes. Pure: the caller passes the time.
//!
//! A fleet-wide change produces two status writes per agent; at 10,000 agents that is a burst
//! an API server's fairness limits would answer with 429s, and a command's phase written
//! behind it would wait for all of them. The budget is a token bucket (`per_second` writes,
//! `burst` at once) shared by every write, and a status write takes a token only while no
//! command write is waiting for one: a command waits at most one token's time behind statuses.

use std::time::Duration;

/// Which writes go first when the budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A ControlCommand's phase, an enrollment's secrets: someone is waiting on it.
    Command,
    /// Statuses of agents, equipment and slices, and events: they coalesce while they wait.
    Status,
}

/// Writes a second and at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriteRate {
    pub per_second: u32,
    pub burst: u32,
}

impl WriteRate {
    /// kube-controller-manager allows itself 20 a second; a fleet controller writes more, and
    /// well below the API server's default 200 mutating requests in flight.
    pub const DEFAULT: WriteRate = WriteRate { per_second: 50, burst: 100 };
}

#[derive(Debug)]
pub struct WriteBudget {
    rate: WriteRate,
    tokens: f64,
    at: Duration,
    commands_waiting: usize,
}

impl WriteBudget {
    /// A full budget at `now` (a duration since any origin the caller keeps).
    pub fn new(rate: WriteRate, now: Duration) -> Self {
        let rate = WriteRate { per_second: rate.per_second.max(1), burst: rate.burst.max(1) };
        Self { rate, tokens: f64::from(rate.burst), at: now, commands_waiting: 0 }
    }

    /// A command write starts waiting: status writes hold back until [`Self::command_done`].
    pub fn command_waiting(&mut self) {
        self.commands_waiting += 1;
    }

    /// A command write that called [`Self::command_waiting`] got its token or gave up.
    pub fn command_done(&mut self) {
        self.commands_waiting = self.commands_waiting.saturating_sub(1);
    }

    /// Takes a token for a write of `priority`, or says how long to wait before asking again.
    pub fn take(&mut self, priority: Priority, now: Duration) -> Result<(), Duration> {
        let per_second = f64::from(self.rate.per_second);
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(self.rate.burst));
        self.at = self.at.max(now);
        let one_token = Duration::from_secs_f64(1.0 / per_second);
        if priority == Priority::Status && self.commands_waiting > 0 {
            return Err(one_token);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second).max(Duration::from_micros(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: WriteRate = WriteRate { per_second: 10, burst: 5 };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_goes_at_once_then_writes_keep_to_the_rate() {
        let mut b = WriteBudget::new(RATE, ms(0));
        for _ in 0..5 {
            assert_eq!(b.take(Priority::Status, ms(0)), Ok(()));
        }
        let wait = b.take(Priority::Status, ms(0)).expect_err("burst spent");
        assert!((ms(99)..=ms(100)).contains(&wait), "{wait:?}");
        assert_eq!(b.take(Priority::Status, ms(100)), Ok(()));
        assert!(b.take(Priority::Status, ms(150)).is_err());
        // Over ten seconds, ten a second whatever the callers' eagerness.
        let mut granted = 0;
        for t in (200..10_200).step_by(10) {
            granted += usize::from(b.take(Priority::Status, ms(t)).is_ok());
        }
        assert!((99..=101).contains(&granted), "{granted} in 10 s");
    }

    #[test]
    fn a_waiting_command_goes_before_any_status() {
        let mut b = WriteBudget::new(RATE, ms(0));
        for _ in 0..5 {
            b.take(Priority::Status, ms(0)).expect("burst");
        }
        b.command_waiting();
        assert!(b.take(Priority::Command, ms(50)).is_err(), "no token yet");
        // The token that comes back at 100 ms is the command's, though a status asks first.
        assert_eq!(b.take(Priority::Status, ms(100)), Err(ms(100)));
        assert_eq!(b.take(Priority::Command, ms(100)), Ok(()));
        b.command_done();
        assert!(b.take(Priority::Status, ms(150)).is_err(), "the command took that token");
        assert_eq!(b.take(Priority::Status, ms(200)), Ok(()));
    }

    #[test]
    fn a_command_with_tokens_left_does_not_wait_and_a_zero_rate_still_answers_with_a_finite_wait() {
        let mut b = WriteBudget::new(RATE, ms(0));
        assert_eq!(b.take(Priority::Command, ms(0)), Ok(()));
        let mut stalled = WriteBudget::new(WriteRate { per_second: 0, burst: 0 }, ms(0));
        assert_eq!(stalled.take(Priority::Command, ms(0)), Ok(()), "a burst of at least one");
        assert_eq!(stalled.take(Priority::Command, ms(1)), Err(ms(999)));
    }
}
