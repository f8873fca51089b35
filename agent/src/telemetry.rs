//! Telemetry buffering: readings wait here while the controller is unreachable. The buffer is
//! bounded; when full the oldest readings go first, and every drop is counted and reported.

use std::collections::VecDeque;

use shopfloor_wire::proto::Reading;

#[derive(Debug)]
pub struct Buffer {
    queue: VecDeque<Reading>,
    capacity: usize,
    dropped: u64,
    /// Every reading ever dropped (the drop count above resets when reported).
    dropped_total: u64,
}

impl Buffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            dropped: 0,
            dropped_total: 0,
        }
    }

    pub fn push(&mut self, r: Reading) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
            self.dropped_total += 1;
        }
        self.queue.push_back(r);
    }

    /// Takes up to `max` readings, oldest first, and the drop count since the last drain.
    pub fn drain(&mut self, max: usize) -> (Vec<Reading>, u64) {
        let n = max.min(self.queue.len());
        let out = self.queue.drain(..n).collect();
        (out, std::mem::take(&mut self.dropped))
    }

    /// Puts readings back at the front after a failed send, keeping the bound.
    pub fn requeue(&mut self, readings: Vec<Reading>, dropped: u64) {
        self.dropped += dropped;
        for r in readings.into_iter().rev() {
            if self.queue.len() == self.capacity {
                self.dropped += 1;
                self.dropped_total += 1;
                continue;
            }
            self.queue.push_front(r);
        }
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(i: i64) -> Reading {
        Reading { equipment: "e".into(), property: "p".into(), value: None, observed_unix_micros: i }
    }

    #[test]
    fn oldest_readings_are_dropped_and_counted() {
        let mut b = Buffer::new(3);
        for i in 0..5 {
            b.push(r(i));
        }
        let (out, dropped) = b.drain(10);
        assert_eq!(out.iter().map(|x| x.observed_unix_micros).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(dropped, 2);
        assert_eq!(b.drain(10).1, 0, "the count resets once reported");
        assert_eq!(b.dropped_total(), 2, "the total does not (it feeds a Prometheus counter)");
    }

    #[test]
    fn a_failed_send_puts_readings_back_in_order() {
        let mut b = Buffer::new(10);
        for i in 0..4 {
            b.push(r(i));
        }
        let (out, d) = b.drain(2);
        b.requeue(out, d);
        assert_eq!(b.drain(10).0.iter().map(|x| x.observed_unix_micros).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }
}
