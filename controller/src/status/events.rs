//! Which condition changes of an Equipment deserve an Event: a fail-safe engaged or lifted, a
//! spec that became invalid. Pure: the conditions before and after a status build in, events
//! out. Compared with the status as last written, so a restarted controller or a new leader,
//! which reads that status back, publishes nothing for a state it did not see change.

use shopfloor_api::common::{
    Condition,
    condition_type::{FAIL_SAFE, VALID},
};

/// An Event to publish on the object whose conditions changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// The Events that `before` → `after` calls for.
pub fn equipment(before: &[Condition], after: &[Condition]) -> Vec<Notice> {
    let mut out = Vec::new();
    let engaged = |c: Option<&Condition>| c.is_some_and(|c| c.reason.starts_with("Engaged"));
    let (was, is) = (find(before, FAIL_SAFE), find(after, FAIL_SAFE));
    if engaged(is) && !engaged(was) {
        let note = is.map(|c| c.message.clone()).unwrap_or_default();
        out.push(Notice { warning: true, reason: "FailSafeEngaged", note });
    }
    // Lifted only when the agent says so (Armed); a disconnection says nothing either way.
    if engaged(was) && is.is_some_and(|c| c.reason == "Armed") {
        out.push(Notice {
            warning: false,
            reason: "FailSafeLifted",
            note: "the agent reports its fail-safe lifted".into(),
        });
    }
    let invalid = |conds: &[Condition]| find(conds, VALID).filter(|c| c.status == "False").cloned();
    if let Some(now) = invalid(after) {
        let then = invalid(before);
        if then.is_none_or(|t| t.reason != now.reason || t.message != now.message) {
            out.push(Notice { warning: true, reason: "InvalidSpec", note: format!("{}: {}", now.reason, now.message) });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: shopfloor_api::common::Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    #[test]
    fn a_fail_safe_engaging_and_lifting_and_an_invalid_spec_are_told_once() {
        let armed = [c(FAIL_SAFE, "False", "Armed")];
        let engaged = [c(FAIL_SAFE, "True", "Engaged")];
        let away = [c(FAIL_SAFE, "Unknown", "AgentDisconnected")];
        let reasons = |b: &[Condition], a: &[Condition]| -> Vec<&'static str> {
            equipment(b, a).into_iter().map(|n| n.reason).collect()
        };
        assert_eq!(reasons(&armed, &engaged), ["FailSafeEngaged"]);
        assert_eq!(reasons(&away, &engaged), ["FailSafeEngaged"], "engaged while the agent was away");
        assert_eq!(reasons(&engaged, &engaged), Vec::<&str>::new(), "no news: a new leader reading it back");
        assert_eq!(reasons(&engaged, &away), Vec::<&str>::new(), "a disconnection lifts nothing");
        assert_eq!(reasons(&engaged, &armed), ["FailSafeLifted"]);
        let invalid = [c(VALID, "False", "FailSafeShorterThanFailover")];
        assert_eq!(reasons(&[c(VALID, "True", "Valid")], &invalid), ["InvalidSpec"]);
        assert_eq!(reasons(&invalid, &invalid), Vec::<&str>::new());
        assert_eq!(reasons(&invalid, &[c(VALID, "False", "AgentNotFound")]), ["InvalidSpec"], "a new problem");
    }
}
