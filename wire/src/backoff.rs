//! Reconnection backoff: exponential with full jitter (AWS architecture blog, "Exponential
//! Backoff And Jitter"), capped. Full jitter spreads a fleet of agents that lost the controller
//! at the same moment, so they do not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    state: u64,
}

impl Backoff {
    /// `base` is the first ceiling, doubled per attempt up to `cap` (default 30 s).
    pub fn new(base: Duration, cap: Duration) -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self { base, cap, attempt: 0, state: u64::from_le_bytes(seed) | 1 }
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay: uniformly random in `[0, ceiling]`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(ceiling)
    }

    /// Uniformly random in `[0, span]`, without counting an attempt.
    pub fn jitter(&mut self, span: Duration) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let unit = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        span.mul_f64(unit)
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut seen_small = false;
        for i in 0..50 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {i}: {d:?} > {ceiling:?}");
            assert!(ceiling <= Duration::from_secs(2));
            if i > 10 && d < Duration::from_secs(1) {
                seen_small = true;
            }
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
        assert!(seen_small, "full jitter: late delays still spread down to zero");
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
