//! Standard Kubernetes conditions, kept the way `meta.SetStatusCondition` keeps them: one per
//! type, `lastTransitionTime` moving only when the status flips.

use jiff::Timestamp;
use shopfloor_api::common::{Condition, Time};

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    True,
    False,
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::True => "True",
            State::False => "False",
            State::Unknown => "Unknown",
        }
    }
}

/// Sets condition `type_` and reports whether anything changed.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    state: State,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let message = message.into();
    // Second precision, as the API server stores it: keeps repeated reconciles byte-identical.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let flipped = c.status != state.as_str();
            let changed = flipped || c.reason != reason || c.message != message || c.observed_generation != generation;
            if flipped {
                c.last_transition_time = Time(now);
            }
            c.status = state.as_str().to_owned();
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_owned(),
                status: state.as_str().to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// Whether condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut c = vec![];
        assert!(set(&mut c, "Ready", State::False, "Connecting", "waiting", Some(1), t(0)));
        assert!(!set(&mut c, "Ready", State::False, "Connecting", "waiting", Some(1), t(5)), "no-op is reported");
        assert!(set(&mut c, "Ready", State::False, "Offline", "gone", Some(1), t(6)));
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert!(set(&mut c, "Ready", State::True, "Connected", "ok", Some(2), t(9)));
        assert_eq!(c[0].last_transition_time, Time(t(9)));
        assert_eq!(c.len(), 1);
        assert!(is_true(&c, "Ready"));
    }
}
