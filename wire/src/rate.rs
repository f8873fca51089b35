//! Command rate limits, enforced the same way by the controller (which refuses a command before
//! sending it) and by the agent (which refuses it again before touching the machine, so a
//! misbehaving controller cannot hammer a machine either). Pure: the caller passes the time.
//!
//! A limit is a token bucket: `burst` commands at once, refilled at `per_minute` a minute. A
//! refused command takes no token.
//!
//! Buckets are not persisted: a bucket starts as if it had been filling since the process
//! started (time zero of the caller's clock), from a `head_start` of tokens (the controller's
//! is one command, so a fresh install runs its first command at once; the agent's one more, its
//! slack). Right after a restart a bucket holds its head start, never its burst: a controller or
//! an agent restarted (or crash-looping, or a new leader) must not hand out a fresh burst on top
//! of the one just spent. A bucket first used long after the start is full, as before.

use std::{collections::HashMap, hash::Hash, time::Duration};

/// At most `per_minute` commands a minute, `burst` of them at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} per minute with a burst of {}", self.per_minute, self.burst)
    }
}

/// Why a command was refused: the limit it would cross and when a token is back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exceeded {
    /// Which of the limits passed to [`Limiter::admit`] refused.
    pub which: usize,
    pub limit: RateLimit,
    pub retry_after: Duration,
}

/// One bucket. `at` is the time of the last refill, as a duration since any fixed origin the
/// caller keeps (the agent and the controller each use their process's monotonic clock).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Duration,
}

impl Bucket {
    /// Filled since the process started, from `head_start` tokens.
    fn started(limit: RateLimit, head_start: f64, now: Duration) -> Self {
        let mut b = Self { limit, tokens: head_start, at: Duration::ZERO };
        b.refill(now);
        b
    }

    fn refill(&mut self, now: Duration) {
        let per_second = f64::from(self.limit.per_minute) / 60.0;
        let elapsed = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(self.limit.burst.max(1)));
        self.at = self.at.max(now);
    }

    fn wait(&self) -> Duration {
        let per_second = f64::from(self.limit.per_minute) / 60.0;
        if per_second <= 0.0 {
            return Duration::MAX;
        }
        Duration::from_secs_f64(((1.0 - self.tokens) / per_second).max(0.0))
    }
}

/// Buckets by key (an equipment, or an equipment's action).
#[derive(Debug)]
pub struct Limiter<K> {
    buckets: HashMap<K, Bucket>,
    head_start: f64,
}

impl<K> Default for Limiter<K> {
    /// Buckets start empty at time zero.
    fn default() -> Self {
        Self::with_head_start(0)
    }
}

impl<K> Limiter<K> {
    /// Buckets hold `tokens` at time zero (the agent's one command of slack over the
    /// controller's burst), never more than their burst.
    pub fn with_head_start(tokens: u32) -> Self {
        Self { buckets: HashMap::new(), head_start: f64::from(tokens) }
    }
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// Takes one token from the bucket of every `(key, limit)` pair, or none when any of them is
    /// empty: a command passes every limit that applies to it, or is refused by the first that
    /// it would cross. A key whose limit changed keeps its tokens, up to the new burst.
    pub fn admit(&mut self, limits: &[(K, RateLimit)], now: Duration) -> Result<(), Exceeded> {
        for (which, (key, limit)) in limits.iter().enumerate() {
            let bucket = self.bucket(key, *limit, now);
            if bucket.tokens < 1.0 {
                return Err(Exceeded { which, limit: *limit, retry_after: bucket.wait() });
            }
        }
        for (key, limit) in limits {
            self.bucket(key, *limit, now).tokens -= 1.0;
        }
        Ok(())
    }

    fn bucket(&mut self, key: &K, limit: RateLimit, now: Duration) -> &mut Bucket {
        let head_start = self.head_start;
        let bucket = self.buckets.entry(key.clone()).or_insert_with(|| Bucket::started(limit, head_start, now));
        if bucket.limit != limit {
            bucket.refill(now);
            bucket.limit = limit;
        }
        bucket.refill(now);
        bucket
    }

    /// Forgets the buckets whose keys `keep` rejects (equipment removed from the plan).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.buckets.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_the_rate() {
        let limit = RateLimit { per_minute: 6, burst: 3 };
        let mut l = Limiter::default();
        // An hour after the start: the buckets have filled.
        let at = |s: u64| S * 3600 + S * s as u32;
        for _ in 0..3 {
            assert!(l.admit(&[("press", limit)], at(0)).is_ok());
        }
        let refused = l.admit(&[("press", limit)], at(0)).expect_err("the burst is spent");
        assert_eq!(refused.limit, limit);
        assert_eq!(refused.retry_after, Duration::from_secs(10), "one token every 10 s");
        assert!(l.admit(&[("press", limit)], at(9)).is_err());
        assert!(l.admit(&[("press", limit)], at(10)).is_ok());
        assert!(l.admit(&[("press", limit)], at(10)).is_err(), "a refusal took no token, the pass did");
        // Another key has its own bucket.
        assert!(l.admit(&[("oven", limit)], at(10)).is_ok());
    }

    #[test]
    fn every_limit_must_pass_and_a_refusal_takes_from_none() {
        let machine = RateLimit { per_minute: 60, burst: 5 };
        let action = RateLimit { per_minute: 1, burst: 1 };
        let mut l = Limiter::default();
        let t = S * 3600;
        assert!(l.admit(&[("press", machine), ("press/start", action)], t).is_ok());
        let refused = l.admit(&[("press", machine), ("press/start", action)], t).expect_err("action");
        assert_eq!((refused.which, refused.limit), (1, action));
        // The machine's bucket lost only the one token of the command that passed.
        for _ in 0..4 {
            assert!(l.admit(&[("press", machine)], t).is_ok());
        }
        assert!(l.admit(&[("press", machine)], t).is_err());
    }

    #[test]
    fn a_changed_limit_keeps_what_was_spent_and_time_going_backwards_adds_nothing() {
        let mut l = Limiter::default();
        let one = RateLimit { per_minute: 1, burst: 1 };
        assert!(l.admit(&[("press", one)], S * 100).is_ok());
        assert!(l.admit(&[("press", one)], S * 50).is_err());
        // Raising the burst is no way around what was spent.
        let two = RateLimit { per_minute: 1, burst: 2 };
        assert!(l.admit(&[("press", two)], S * 100).is_err());
        assert!(l.admit(&[("press", two)], S * 160).is_ok());
        assert!(l.admit(&[("press", two)], S * 160).is_err());
        l.retain(|k| *k != "press");
        assert!(l.is_empty());
    }

    /// Defect: with `perMinute: 2, burst: 3`, restarting the controller and the agent let 7
    /// writes through in 12 s. A limiter (a process) starts with its head start, filling at the
    /// rate from its start: after a restart, one write in those 12 s, not a fresh burst.
    #[test]
    fn a_restarted_limiter_hands_out_no_fresh_burst() {
        let limit = RateLimit { per_minute: 2, burst: 3 };
        let mut empty = Limiter::default();
        assert!(empty.admit(&[("press", limit)], S).is_err(), "nothing at the start");
        assert!(empty.admit(&[("press", limit)], S * 30).is_ok(), "one token every 30 s");
        assert!(empty.admit(&[("press", limit)], S * 31).is_err());
        let mut controller = Limiter::with_head_start(1);
        let passed = (0..=12).filter(|s| controller.admit(&[("press", limit)], S * *s).is_ok()).count();
        assert_eq!(passed, 1, "one write in the 12 s after a restart, where a fresh burst let 3 through");
        // A head start never exceeds the burst.
        let mut agent = Limiter::with_head_start(2);
        let one = RateLimit { per_minute: 1, burst: 1 };
        assert!(agent.admit(&[("robot", one)], Duration::ZERO).is_ok());
        assert!(agent.admit(&[("robot", one)], Duration::ZERO).is_err());
    }
}
