//! Time as the agent uses it. Deadlines never compare the agent's wall clock with the
//! controller's: a command carries the time it had left when it was sent, and the agent counts
//! that down on its own monotonic clock from receipt, less the link's round-trip time (the
//! transit is unknown, so it assumes the worst). Wall-clock stamps the agent reports (receipt,
//! start, finish, readings) are shifted onto the controller's clock by the offset measured at the
//! session's handshake, as NTP does, so latency breakdowns hold under skew.

use std::time::Duration;

use shopfloor_wire::{proto::Command, time::now_micros};
use tokio::time::Instant;

/// The host's wall clock. Tests skew it to play an agent whose clock is wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallClock {
    skew_micros: i64,
}

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system clock moved by `skew_micros` (positive: ahead).
    pub fn skewed(skew_micros: i64) -> Self {
        Self { skew_micros }
    }

    pub fn now_micros(&self) -> i64 {
        now_micros().saturating_add(self.skew_micros)
    }
}

/// The controller's clock relative to this agent's, measured on a session's handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offset {
    /// Controller minus agent, in microseconds.
    pub micros: i64,
    /// Half the round trip of the measurement: the true offset is within ± this.
    pub uncertainty_micros: i64,
}

impl Offset {
    /// NTP's estimate from the Hello's send time `t1` (agent clock), its receipt `t2` and the
    /// Welcome's send `t3` (controller clock), and the Welcome's receipt `t4` (agent clock).
    /// `None` when the controller did not stamp its Welcome.
    pub fn measure(t1: i64, t2: i64, t3: i64, t4: i64) -> Option<Self> {
        if t2 == 0 || t3 == 0 {
            return None;
        }
        let micros = ((t2 - t1) + (t3 - t4)) / 2;
        let uncertainty_micros = ((t4 - t1) - (t3 - t2)).max(0) / 2;
        // An offset within the measurement's own error cannot be told from none (two processes
        // on one host measure a few hundred µs either way): shifting by it would only add noise.
        let micros = if micros.abs() <= uncertainty_micros { 0 } else { micros };
        Some(Self { micros, uncertainty_micros })
    }

    /// An agent-clock time on the controller's clock.
    pub fn to_controller(&self, agent_micros: i64) -> i64 {
        agent_micros.saturating_add(self.micros)
    }
}

/// When `cmd`, received at `received` (monotonic) and `received_wall` (agent wall clock), must
/// have stopped touching the equipment, on the monotonic clock.
pub fn deadline(
    cmd: &Command,
    received: Instant,
    received_wall: i64,
    offset: Option<Offset>,
    rtt: Duration,
) -> Instant {
    let left = match cmd.budget_micros {
        // Spent before it was sent: a redelivery the journal may answer, never a new execution.
        b if b < 0 => 0,
        0 => match offset {
            // A controller that sends no budget: convert its absolute deadline with the measured
            // offset, giving up the measurement's uncertainty.
            Some(o) => cmd.deadline_unix_micros - o.to_controller(received_wall) - o.uncertainty_micros,
            // Nothing to convert with: refuse rather than guess.
            None => 0,
        },
        b => b - i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX),
    };
    received + Duration::from_micros(left.max(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn the_offset_is_measured_whatever_the_skew() {
        for skew in [-3600 * S, -60 * S, 0, 60 * S, 3600 * S] {
            // Agent clock = controller clock + skew; 10 ms each way, 1 ms in the controller.
            let c = 1_700_000_000 * S;
            let (t1, t2, t3, t4) = (c + skew, c + 10_000, c + 11_000, c + 21_000 + skew);
            let o = Offset::measure(t1, t2, t3, t4).expect("stamped");
            assert_eq!(o.micros, -skew);
            assert_eq!(o.uncertainty_micros, 10_000);
            assert_eq!(o.to_controller(t4), c + 21_000);
        }
        assert_eq!(Offset::measure(1, 0, 0, 2), None);
        // One host, asymmetric processing: within the error bound, no shift.
        let o = Offset::measure(1_000, 1_900, 2_000, 2_700).expect("stamped");
        assert_eq!((o.micros, o.uncertainty_micros), (0, 800));
    }

    #[test]
    fn a_deadline_is_the_budget_less_the_round_trip_on_the_monotonic_clock() {
        let now = Instant::now();
        let rtt = Duration::from_millis(20);
        let cmd =
            |budget, deadline| Command { budget_micros: budget, deadline_unix_micros: deadline, ..Default::default() };
        // The wall clocks do not enter: any received_wall gives the same answer.
        for wall in [0, 1_700_000_000 * S, i64::MAX / 2] {
            assert_eq!(deadline(&cmd(5 * S, 1), now, wall, None, rtt), now + Duration::from_millis(4980));
        }
        assert_eq!(deadline(&cmd(-1, 1), now, 0, None, rtt), now, "spent before it was sent");
        assert_eq!(deadline(&cmd(10_000, 1), now, 0, None, rtt), now, "less budget than the round trip");
        // Without a budget, the absolute deadline through the measured offset, less its uncertainty.
        let o = Offset { micros: -60 * S, uncertainty_micros: 5_000 };
        let wall = 1_000 * S + 60 * S; // the agent is 60 s ahead
        assert_eq!(
            deadline(&cmd(0, 1_002 * S), now, wall, Some(o), rtt),
            now + Duration::from_micros(2 * S as u64 - 5_000)
        );
        assert_eq!(deadline(&cmd(0, 1_002 * S), now, wall, None, rtt), now, "no offset: refuse rather than guess");
    }
}
