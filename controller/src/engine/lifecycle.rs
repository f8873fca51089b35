//! The ControlCommand state machine: pure, no I/O, no clock of its own.
//!
//! Each event moves a command's status to its next value; the engine persists that value through
//! the store *before* it acts on it (sends the command, arms a timer), so a controller that dies at
//! any point restarts from the last recorded phase. Terminal phases never change again, and no
//! event can produce a second result for a command.

use std::collections::BTreeMap;

use jiff::Timestamp;
use shopfloor_api::common::MicroTime as Time;

use shopfloor_api::{
    control_command::{CommandPhase, CommandResult, ControlCommandSpec, ControlCommandStatus, ResultCode, WhenOffline},
    validate::CommandViolation,
};

use crate::agents::port::Outcome;

/// How long after its deadline the engine waits for the result of a command the agent may have
/// received, before reporting the outcome as unknown. Redelivery after a reconnect returns the
/// agent's journalled result, so this only ends commands whose agent stays away.
pub const RESULT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Something that happened to a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// First sight of the command: fixes its deadline and trace id.
    Admitted { trace_id: String },
    /// It does not fit its equipment (or the equipment is missing); it is never sent.
    Refused { code: ResultCode, violations: Vec<CommandViolation> },
    /// The owning agent is not connected.
    AgentOffline,
    /// Sent on its own stream to `agent` (first delivery or a redelivery with the same id).
    Dispatched { agent: String },
    /// The agent confirmed receipt.
    Acknowledged,
    /// The agent's result; `rtt` is the connection's round-trip time when it arrived.
    Finished { outcome: Outcome, rtt: Option<std::time::Duration> },
    /// Time passed; expires commands past their deadline.
    Tick,
}

/// What the engine must do after persisting the new status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send (or re-send) the command to the agent.
    Send,
    /// Nothing beyond persisting.
    None,
}

/// The command's deadline: creation plus `spec.timeout`.
pub fn deadline(spec: &ControlCommandSpec, created: Timestamp) -> Timestamp {
    let timeout: std::time::Duration = spec.timeout.into();
    created.checked_add(timeout).unwrap_or(Timestamp::MAX)
}

fn micros_between(a: Timestamp, b: Timestamp) -> i64 {
    b.duration_since(a).as_micros().try_into().unwrap_or(i64::MAX).max(0)
}

/// Where latencies count from: acceptance by the controller, or creation for a status written
/// before acceptance was recorded.
fn origin(status: &ControlCommandStatus, created: Timestamp) -> Timestamp {
    status.timestamps.accepted_at.as_ref().map_or(created, |t| t.0)
}

fn finish(
    status: &mut ControlCommandStatus,
    now: Timestamp,
    created: Timestamp,
    phase: CommandPhase,
    result: CommandResult,
) {
    status.phase = Some(phase);
    status.result = Some(result);
    status.timestamps.finished_at.get_or_insert(Time(now));
    status.latency.total_micros = Some(micros_between(origin(status, created), now));
}

/// The phase an agent's result code ends a command in.
pub fn phase_for(code: ResultCode) -> CommandPhase {
    use ResultCode as C;
    match code {
        C::Ok | C::DryRunOk => CommandPhase::Succeeded,
        C::DeadlineExceeded => CommandPhase::Expired,
        C::UnknownEquipment
        | C::UnknownAction
        | C::UnknownProperty
        | C::InvalidParameter
        | C::OutOfLimits
        | C::OutOfEnvelope
        | C::PreconditionFailed
        | C::AgentOffline
        | C::RateLimited
        | C::LinkOverBudget
        | C::FailSafeEngaged => CommandPhase::Rejected,
        C::DeviceError | C::Internal => CommandPhase::Failed,
    }
}

/// Applies `event` at `now` to a command created at `created`. Returns the new status and what
/// to do once it is persisted, or `None` when nothing changes.
pub fn step(
    spec: &ControlCommandSpec,
    created: Timestamp,
    current: &ControlCommandStatus,
    event: Event,
    now: Timestamp,
) -> Option<(ControlCommandStatus, Effect)> {
    let phase = current.phase;
    if phase.is_some_and(CommandPhase::is_terminal) {
        return None;
    }
    let mut s = current.clone();
    let deadline = deadline(spec, created);
    let past_deadline = now >= deadline;
    match event {
        Event::Admitted { trace_id } => {
            if phase.is_some() {
                return None;
            }
            s.phase = Some(CommandPhase::Pending);
            s.timestamps.accepted_at = Some(Time(now));
            s.timestamps.deadline = Some(Time(deadline));
            s.trace_id = Some(trace_id);
            if past_deadline {
                expire(&mut s, now, created, "the deadline passed before the controller saw the command");
            }
            Some((s, Effect::None))
        }
        Event::Refused { code, violations } => {
            if phase != Some(CommandPhase::Pending) {
                return None;
            }
            let message = violations.iter().map(|v| v.violation.to_string()).collect::<Vec<_>>().join("; ");
            finish(
                &mut s,
                now,
                created,
                CommandPhase::Rejected,
                CommandResult { code, message, outputs: BTreeMap::new() },
            );
            Some((s, Effect::None))
        }
        Event::AgentOffline => match (phase, spec.when_offline) {
            (Some(CommandPhase::Pending), WhenOffline::Reject) => {
                let agent = s.agent.clone().unwrap_or_else(|| "the agent".into());
                let result = CommandResult {
                    code: ResultCode::AgentOffline,
                    message: format!("{agent} is not connected and spec.whenOffline is Reject"),
                    outputs: BTreeMap::new(),
                };
                finish(&mut s, now, created, CommandPhase::Rejected, result);
                Some((s, Effect::None))
            }
            _ => None,
        },
        Event::Dispatched { agent } => {
            if !matches!(phase, Some(CommandPhase::Pending | CommandPhase::Dispatched | CommandPhase::Acknowledged)) {
                return None;
            }
            // Never send a command that can no longer run; a redelivery after the deadline is
            // still useful because the agent answers it from its journal, so only first sends
            // are refused here.
            if phase == Some(CommandPhase::Pending) && past_deadline {
                expire(&mut s, now, created, "the deadline passed while the command was queued");
                return Some((s, Effect::None));
            }
            if phase == Some(CommandPhase::Pending) {
                s.phase = Some(CommandPhase::Dispatched);
                s.timestamps.dispatched_at = Some(Time(now));
                s.latency.queue_micros = Some(micros_between(origin(&s, created), now));
            }
            s.agent = Some(agent);
            s.attempts += 1;
            Some((s, Effect::Send))
        }
        Event::Acknowledged => {
            if phase != Some(CommandPhase::Dispatched) {
                return None;
            }
            s.phase = Some(CommandPhase::Acknowledged);
            s.timestamps.acknowledged_at = Some(Time(now));
            Some((s, Effect::None))
        }
        Event::Finished { outcome, rtt } => {
            if !matches!(phase, Some(CommandPhase::Dispatched | CommandPhase::Acknowledged)) {
                return None;
            }
            if s.timestamps.acknowledged_at.is_none() {
                s.timestamps.acknowledged_at = Some(Time(now));
            }
            s.timestamps.started_at = outcome.started_at.map(Time);
            if let (Some(a), Some(b)) = (outcome.started_at, outcome.finished_at) {
                s.latency.execution_micros = Some(micros_between(a, b));
            }
            // One-way network time cannot be measured across two clocks; half the RTT is the
            // estimate the API documents.
            s.latency.network_micros = rtt.map(|r| i64::try_from(r.as_micros() / 2).unwrap_or(i64::MAX));
            let result = CommandResult { code: outcome.code, message: outcome.message, outputs: outcome.outputs };
            finish(&mut s, now, created, phase_for(outcome.code), result);
            Some((s, Effect::None))
        }
        Event::Tick => match phase {
            Some(CommandPhase::Pending) if past_deadline => {
                expire(&mut s, now, created, "the agent did not connect before the deadline");
                Some((s, Effect::None))
            }
            Some(CommandPhase::Dispatched | CommandPhase::Acknowledged)
                if now >= deadline.checked_add(RESULT_GRACE).unwrap_or(Timestamp::MAX) =>
            {
                let result = CommandResult {
                    code: ResultCode::Internal,
                    message: format!(
                        "no result from {} within {}s after the deadline; the outcome is unknown — check the equipment, and the agent's journal once it reconnects",
                        s.agent.as_deref().unwrap_or("the agent"),
                        RESULT_GRACE.as_secs()
                    ),
                    outputs: BTreeMap::new(),
                };
                finish(&mut s, now, created, CommandPhase::Failed, result);
                Some((s, Effect::None))
            }
            _ => None,
        },
    }
}

fn expire(s: &mut ControlCommandStatus, now: Timestamp, created: Timestamp, why: &str) {
    let result =
        CommandResult { code: ResultCode::DeadlineExceeded, message: why.to_owned(), outputs: BTreeMap::new() };
    finish(s, now, created, CommandPhase::Expired, result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_api::{LocalRef, validate::Violation};

    fn spec(timeout_s: u64, when_offline: WhenOffline) -> ControlCommandSpec {
        ControlCommandSpec {
            equipment_ref: LocalRef::new("press"),
            action: "start".into(),
            parameters: BTreeMap::new(),
            timeout: std::time::Duration::from_secs(timeout_s).into(),
            when_offline,
            preconditions: vec![],
            dry_run: false,
            require_link_within_budget: None,
            ttl_seconds_after_finished: None,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn run(spec: &ControlCommandSpec, events: &[(i64, Event)]) -> (ControlCommandStatus, Vec<Effect>) {
        let mut status = ControlCommandStatus::default();
        let mut effects = vec![];
        for (at, e) in events {
            if let Some((next, eff)) = step(spec, t(0), &status, e.clone(), t(*at)) {
                status = next;
                effects.push(eff);
            }
        }
        (status, effects)
    }

    fn ok() -> Outcome {
        Outcome {
            code: ResultCode::Ok,
            message: String::new(),
            outputs: BTreeMap::new(),
            received_at: Some(t(1)),
            started_at: Some(t(1)),
            finished_at: Some(t(2)),
        }
    }

    #[test]
    fn happy_path_walks_every_phase_with_latencies() {
        let s = spec(30, WhenOffline::Queue);
        let (st, effects) = run(
            &s,
            &[
                (0, Event::Admitted { trace_id: "abc".into() }),
                (1, Event::Dispatched { agent: "line-1".into() }),
                (1, Event::Acknowledged),
                (3, Event::Finished { outcome: ok(), rtt: Some(std::time::Duration::from_micros(800)) }),
            ],
        );
        assert_eq!(st.phase, Some(CommandPhase::Succeeded));
        assert_eq!(effects, vec![Effect::None, Effect::Send, Effect::None, Effect::None]);
        assert_eq!(st.attempts, 1);
        assert_eq!(st.latency.queue_micros, Some(1_000_000));
        assert_eq!(st.latency.network_micros, Some(400));
        assert_eq!(st.latency.execution_micros, Some(1_000_000));
        assert_eq!(st.latency.total_micros, Some(3_000_000));
        assert_eq!(st.timestamps.deadline, Some(Time(t(30))));
    }

    #[test]
    fn terminal_phases_never_change_and_results_are_never_doubled() {
        let s = spec(30, WhenOffline::Queue);
        let (done, _) = run(
            &s,
            &[
                (0, Event::Admitted { trace_id: "x".into() }),
                (1, Event::Dispatched { agent: "a".into() }),
                (2, Event::Finished { outcome: ok(), rtt: None }),
            ],
        );
        let mut failing = ok();
        failing.code = ResultCode::DeviceError;
        for e in [
            Event::Finished { outcome: failing, rtt: None },
            Event::Dispatched { agent: "a".into() },
            Event::Tick,
            Event::AgentOffline,
            Event::Refused { code: ResultCode::UnknownAction, violations: vec![] },
        ] {
            assert_eq!(step(&s, t(0), &done, e, t(500)), None);
        }
    }

    #[test]
    fn queued_command_expires_at_its_deadline_and_is_never_sent_after() {
        let s = spec(5, WhenOffline::Queue);
        let (st, effects) = run(
            &s,
            &[
                (0, Event::Admitted { trace_id: "x".into() }),
                (1, Event::AgentOffline),
                (4, Event::Tick),
                (6, Event::Dispatched { agent: "a".into() }),
            ],
        );
        assert_eq!(st.phase, Some(CommandPhase::Expired));
        assert_eq!(st.result.as_ref().map(|r| r.code), Some(ResultCode::DeadlineExceeded));
        assert!(!effects.contains(&Effect::Send));
        assert_eq!(st.attempts, 0);
    }

    #[test]
    fn reject_when_offline_ends_at_once() {
        let (st, _) = run(
            &spec(30, WhenOffline::Reject),
            &[(0, Event::Admitted { trace_id: "x".into() }), (0, Event::AgentOffline)],
        );
        assert_eq!(st.phase, Some(CommandPhase::Rejected));
        assert_eq!(st.result.map(|r| r.code), Some(ResultCode::AgentOffline));
    }

    #[test]
    fn redelivery_keeps_the_phase_and_counts_attempts() {
        let s = spec(30, WhenOffline::Queue);
        let (st, effects) = run(
            &s,
            &[
                (0, Event::Admitted { trace_id: "x".into() }),
                (1, Event::Dispatched { agent: "a".into() }),
                (2, Event::Acknowledged),
                (40, Event::Dispatched { agent: "a".into() }),
            ],
        );
        // Past the deadline, a redelivery is still sent: the agent answers from its journal.
        assert_eq!(effects.iter().filter(|e| **e == Effect::Send).count(), 2);
        assert_eq!(st.phase, Some(CommandPhase::Acknowledged));
        assert_eq!(st.attempts, 2);
        assert_eq!(st.timestamps.dispatched_at, Some(Time(t(1))));
    }

    #[test]
    fn dispatched_without_result_fails_as_unknown_after_the_grace() {
        let s = spec(10, WhenOffline::Queue);
        let base = [(0, Event::Admitted { trace_id: "x".into() }), (1, Event::Dispatched { agent: "a".into() })];
        let (st, _) = run(&s, &[base[0].clone(), base[1].clone(), (69, Event::Tick)]);
        assert_eq!(st.phase, Some(CommandPhase::Dispatched), "still waiting inside the grace period");
        let (st, _) = run(&s, &[base[0].clone(), base[1].clone(), (70, Event::Tick)]);
        assert_eq!(st.phase, Some(CommandPhase::Failed));
        assert!(st.result.is_some_and(|r| r.message.contains("outcome is unknown")));
    }

    #[test]
    fn refusal_lists_every_violation() {
        let v = |f: &str| CommandViolation {
            code: ResultCode::InvalidParameter,
            violation: Violation { field: f.into(), message: "bad".into() },
        };
        let (st, _) = run(
            &spec(30, WhenOffline::Queue),
            &[
                (0, Event::Admitted { trace_id: "x".into() }),
                (0, Event::Refused { code: ResultCode::InvalidParameter, violations: vec![v("spec.a"), v("spec.b")] }),
            ],
        );
        assert_eq!(st.phase, Some(CommandPhase::Rejected));
        assert_eq!(st.result.map(|r| r.message), Some("spec.a: bad; spec.b: bad".into()));
    }

    #[test]
    fn agent_result_codes_map_to_phases() {
        assert_eq!(phase_for(ResultCode::OutOfEnvelope), CommandPhase::Rejected);
        assert_eq!(phase_for(ResultCode::PreconditionFailed), CommandPhase::Rejected);
        assert_eq!(phase_for(ResultCode::RateLimited), CommandPhase::Rejected);
        assert_eq!(phase_for(ResultCode::DeadlineExceeded), CommandPhase::Expired);
        assert_eq!(phase_for(ResultCode::DeviceError), CommandPhase::Failed);
        assert_eq!(phase_for(ResultCode::DryRunOk), CommandPhase::Succeeded);
    }
}
