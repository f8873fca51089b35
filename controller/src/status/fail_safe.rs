//! The `FailSafe` condition of an Equipment: is its dead-man fail-safe engaged, and what lifts
//! it? Pure. The agent is the authority: it engages on its own while the controller cannot see
//! it, so the condition says what the agent last reported, and what it will do while it is away.

use jiff::Timestamp;
use shopfloor_api::{
    common::{Condition, condition_type::FAIL_SAFE},
    equipment::{FailSafe, Resume},
};

use crate::{
    agents::observed::FailSafeReport,
    status::conditions::{self, State},
};

fn seconds(d: std::time::Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Sets the condition of equipment `name` from its `declared` fail-safe and what its agent
/// `reported` (the last report, kept across a disconnection). Neither: no condition.
pub fn set(
    conds: &mut Vec<Condition>,
    name: &str,
    declared: Option<&FailSafe>,
    reported: Option<&FailSafeReport>,
    agent_connected: bool,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (state, reason, message) = match (reported, declared) {
        (None, None) => {
            conds.retain(|c| c.type_ != FAIL_SAFE);
            return;
        }
        (Some(r), _) if r.engaged && r.unconfirmed => (
            State::True,
            "EngagedSafeStateNotReached",
            format!(
                "engaged, safe state NOT reached: the agent has not read the safe values back from the device and keeps writing them: {}",
                r.message
            ),
        ),
        (Some(r), _) if r.engaged => {
            let lifted_by = if r.automatic {
                "the controller's return: the agent hears it again (resume: Automatic)".to_owned()
            } else {
                format!(
                    "an operator's command once the equipment is checked: kubectl shopfloor exec {name} resume-fail-safe"
                )
            };
            (
                State::True,
                "Engaged",
                format!(
                    "{}; desired setpoints are held back and commands that write are refused until it is lifted by {lifted_by}",
                    r.message
                ),
            )
        }
        (Some(r), _) if agent_connected => (
            State::False,
            "Armed",
            format!(
                "engages after {} without a sign of the controller; resume: {}{}",
                seconds(r.after),
                if r.automatic { "Automatic" } else { "Manual" },
                if r.required_by_envelope { "; required or narrowed by the plant's envelope" } else { "" }
            ),
        ),
        (None, Some(f)) if agent_connected => (
            State::Unknown,
            "NotReported",
            format!(
                "waiting for the agent to report its fail-safe (after {}, resume: {})",
                seconds(f.after.into()),
                if f.resume == Resume::Automatic { "Automatic" } else { "Manual" }
            ),
        ),
        // The agent is away: it may engage on its own.
        (r, f) => {
            let after = r.map(|r| r.after).or_else(|| f.map(|f| f.after.into())).unwrap_or_default();
            (
                State::Unknown,
                "AgentDisconnected",
                format!(
                    "the agent is not connected: it engages its fail-safe on its own {} after it last heard the controller",
                    seconds(after)
                ),
            )
        }
    };
    conditions::set(conds, FAIL_SAFE, state, reason, message, generation, now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_api::{Value, equipment::SafeValue};

    fn declared(resume: Resume) -> FailSafe {
        FailSafe {
            after: std::time::Duration::from_secs(2).into(),
            values: vec![SafeValue { property: "running".into(), value: Value::Bool(false) }],
            resume,
            allow_shorter_than_failover: false,
        }
    }

    fn report(engaged: bool, automatic: bool) -> FailSafeReport {
        FailSafeReport {
            unconfirmed: false,
            engaged,
            after: std::time::Duration::from_secs(2),
            automatic,
            required_by_envelope: false,
            message: if engaged { "engaged at 10:00 after 2.0 s: wrote running=false".into() } else { String::new() },
        }
    }

    fn condition(conds: &[Condition]) -> (String, String, String) {
        let c = conds.iter().find(|c| c.type_ == FAIL_SAFE).expect("condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn the_condition_says_what_the_agent_reported_and_what_lifts_it() {
        let now = Timestamp::now();
        let mut conds = Vec::new();
        let manual = declared(Resume::Manual);
        set(&mut conds, "conveyor", Some(&manual), None, true, Some(1), now);
        assert_eq!(condition(&conds).1, "NotReported");
        set(&mut conds, "conveyor", Some(&manual), Some(&report(false, false)), true, Some(1), now);
        let (status, reason, message) = condition(&conds);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "Armed"));
        assert!(message.contains("2.0 s") && message.contains("Manual"), "{message}");
        // The agent went away: it may engage on its own.
        set(&mut conds, "conveyor", Some(&manual), Some(&report(false, false)), false, Some(1), now);
        assert_eq!(condition(&conds).0, "Unknown");
        // It did, and says so when it is back; an engagement stays shown while it is away again.
        for connected in [true, false] {
            set(&mut conds, "conveyor", Some(&manual), Some(&report(true, false)), connected, Some(1), now);
            let (status, reason, message) = condition(&conds);
            assert_eq!((status.as_str(), reason.as_str()), ("True", "Engaged"));
            assert!(message.contains("wrote running=false"), "{message}");
            assert!(message.contains("kubectl shopfloor exec conveyor resume-fail-safe"), "{message}");
        }
        let automatic = declared(Resume::Automatic);
        set(&mut conds, "conveyor", Some(&automatic), Some(&report(true, true)), true, Some(1), now);
        assert!(condition(&conds).2.contains("resume: Automatic"));
        // Required by the envelope alone: still shown.
        set(&mut conds, "conveyor", None, Some(&report(false, false)), true, Some(1), now);
        assert_eq!(condition(&conds).1, "Armed");
        set(&mut conds, "conveyor", None, None, true, Some(1), now);
        assert!(conds.iter().all(|c| c.type_ != FAIL_SAFE));
    }
}
