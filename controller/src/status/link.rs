//! The `LinkWithinBudget` condition of an EdgeAgent or an Equipment: does the control link meet
//! the packet delay budget of the slices its equipment rides on? Pure.
//!
//! The message carries the delay measured when the condition last changed state and is kept
//! while the state holds: the round-trip time moves all the time, and a message that followed it
//! would rewrite the status with every report.

use std::time::Duration;

use jiff::Timestamp;
use shopfloor_api::common::{Condition, condition_type::LINK_WITHIN_BUDGET};

use crate::{
    link_budget::{self, LinkBudget},
    status::conditions::{self, State},
};

/// Sets the condition for `budgets` (the equipment's, or every equipment's of an agent) over a
/// link of round-trip time `rtt` (`None`: not connected). Without a budget there is no
/// condition.
pub fn set(
    conds: &mut Vec<Condition>,
    budgets: &[LinkBudget],
    rtt: Option<Duration>,
    generation: Option<i64>,
    now: Timestamp,
) {
    // The tightest budget decides: when it is met, every other one is.
    let Some(tightest) = budgets.iter().min_by_key(|b| b.budget) else {
        conds.retain(|c| c.type_ != LINK_WITHIN_BUDGET);
        return;
    };
    let (state, reason, message) = match rtt {
        None => (State::Unknown, "NotConnected", "the agent is not connected; nothing to measure".to_owned()),
        Some(rtt) if tightest.budget.is_none() => (State::False, "SliceUnknown", link_budget::describe(tightest, rtt)),
        Some(rtt) if link_budget::within(tightest, rtt) => {
            (State::True, "WithinBudget", link_budget::describe(tightest, rtt))
        }
        Some(rtt) => (State::False, "OverBudget", link_budget::describe(tightest, rtt)),
    };
    let kept = conds
        .iter()
        .find(|c| c.type_ == LINK_WITHIN_BUDGET && c.reason == reason && c.message.ends_with(&tightest.slice))
        .map(|c| c.message.clone());
    conditions::set(conds, LINK_WITHIN_BUDGET, state, reason, kept.unwrap_or(message), generation, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ms: u64) -> LinkBudget {
        LinkBudget { slice: "control-urllc".into(), budget: Some(Duration::from_millis(ms)), urllc: true }
    }

    fn condition(conds: &[Condition]) -> (String, String, String) {
        let c = conds.iter().find(|c| c.type_ == LINK_WITHIN_BUDGET).expect("condition");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn the_condition_follows_the_tightest_budget_and_keeps_its_message_while_the_state_holds() {
        let now = Timestamp::now();
        let mut conds = Vec::new();
        let budgets = [budget(50), budget(10)];
        set(&mut conds, &budgets, Some(Duration::from_millis(4)), Some(1), now);
        let (status, reason, message) = condition(&conds);
        assert_eq!((status.as_str(), reason.as_str()), ("True", "WithinBudget"));
        assert!(message.contains("2.0 ms") && message.contains("10.0 ms"), "{message}");
        // The link moved but stayed within: the same message, nothing to write.
        let before = conds.clone();
        set(&mut conds, &budgets, Some(Duration::from_millis(6)), Some(1), now);
        assert_eq!(conds, before);
        // Over the tightest budget: False, with the delay measured then.
        set(&mut conds, &budgets, Some(Duration::from_millis(30)), Some(1), now);
        let (status, reason, message) = condition(&conds);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "OverBudget"));
        assert!(message.contains("15.0 ms") && message.contains("exceeds"), "{message}");
        set(&mut conds, &budgets, None, Some(1), now);
        assert_eq!(condition(&conds).0, "Unknown");
        set(&mut conds, &[], Some(Duration::from_millis(30)), Some(1), now);
        assert!(conds.is_empty(), "no budget, no condition");
    }
}
