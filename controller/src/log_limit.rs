//! Log lines that a peer can cause at will (failed handshakes, refused enrollments) go through
//! a budget, so a flood cannot fill the log or spend the controller's CPU on formatting: a few
//! lines per window are written, the rest counted and summed up in one line when the window ends.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct LogLimit {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimit {
    pub fn new(per_window: u32, window: Duration) -> Self {
        Self { per_window, window, state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Whether this occurrence may be logged. When a window closes with occurrences suppressed,
    /// returns their count as well, to be logged once.
    pub fn admit(&self, now: Instant) -> (bool, Option<u64>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut summary = None;
        if now.duration_since(s.0) >= self.window {
            if s.2 > 0 {
                summary = Some(s.2);
            }
            *s = (now, 0, 0);
        }
        if s.1 < self.per_window {
            s.1 += 1;
            (true, summary)
        } else {
            s.2 += 1;
            (false, summary)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_and_one_summary_per_window() {
        let limit = LogLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted = (0..10_000).filter(|_| limit.admit(t0).0).count();
        assert_eq!(admitted, 3);
        assert_eq!(limit.admit(t0 + Duration::from_secs(11)), (true, Some(9_997)));
        assert_eq!(limit.admit(t0 + Duration::from_secs(12)), (true, None));
    }
}
