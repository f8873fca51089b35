//! Whether the control link can meet the latency contract of the slice an equipment rides on.
//! Pure: the plans and a round-trip time in, verdicts out.
//!
//! The budget is the slice's `qos.packetDelayBudget` (one way, UE to UPF, as in TS 23.501); the
//! link's one-way delay is estimated as half the QUIC connection's smoothed round-trip time. A
//! slice without a packet delay budget has nothing to compare with.

use std::{collections::HashMap, time::Duration};

use shopfloor_api::control_command::ControlCommandSpec;

use crate::{
    planner::{AgentPlan, Plans},
    store::ObjectKey,
};

/// Slice/Service Type of URLLC (TS 23.501 5.15.2.2): commands on it require the budget unless
/// they say otherwise.
pub const SST_URLLC: u8 = 2;

/// The latency contract of one equipment's traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkBudget {
    pub slice: String,
    /// `None`: the slice `spec.networkSliceRef` names does not exist or does not select the
    /// equipment's agent, so its budget is unknown; the gate then fails closed.
    pub budget: Option<Duration>,
    pub urllc: bool,
}

/// The budgets of every planned equipment on a slice with a packet delay budget (or on a slice
/// that is not there), by equipment.
pub fn budgets(plans: &Plans) -> HashMap<ObjectKey, LinkBudget> {
    plans.agents.iter().flat_map(|(agent, plan)| of_plan(agent, plan)).collect()
}

/// The budgets of one agent's planned equipment, by equipment.
pub fn of_plan<'a>(agent: &'a ObjectKey, plan: &'a AgentPlan) -> impl Iterator<Item = (ObjectKey, LinkBudget)> + 'a {
    plan.equipment.iter().filter_map(move |(name, eq)| {
        let slice_name = &eq.network_slice_ref.as_ref()?.name;
        let key = ObjectKey::new(agent.namespace.clone(), name.clone());
        // Deleted, or no longer selecting the agent: a gate that skipped it would fail open.
        let Some(slice) = plan.slices.get(slice_name) else {
            return Some((key, LinkBudget { slice: slice_name.clone(), budget: None, urllc: false }));
        };
        let budget = slice.qos.packet_delay_budget.as_ref()?;
        Some((
            key,
            LinkBudget {
                slice: slice_name.clone(),
                budget: Some((*budget).into()),
                urllc: slice.snssai.sst == SST_URLLC,
            },
        ))
    })
}

/// The estimated one-way delay of a link with round-trip time `rtt`.
pub fn one_way(rtt: Duration) -> Duration {
    rtt / 2
}

/// Whether a link with round-trip time `rtt` meets `budget` (never an unknown one).
pub fn within(budget: &LinkBudget, rtt: Duration) -> bool {
    budget.budget.is_some_and(|b| one_way(rtt) <= b)
}

/// Whether `spec` may only be sent over a link within `budget`: by default on a URLLC slice,
/// and on a slice that is not there (whether it was URLLC is not known: fail closed).
pub fn required(spec: &ControlCommandSpec, budget: &LinkBudget) -> bool {
    spec.require_link_within_budget.unwrap_or(budget.urllc || budget.budget.is_none())
}

/// What the link measures against the budget, in words an operator reads in a condition or a
/// refusal.
pub fn describe(budget: &LinkBudget, rtt: Duration) -> String {
    let Some(b) = budget.budget else {
        return format!(
            "NetworkSlice {} named by spec.networkSliceRef does not exist or does not select this equipment's agent: the link's delay budget is unknown",
            budget.slice
        );
    };
    format!(
        "estimated one-way delay {:.1} ms (half the smoothed round-trip time) {} the {:.1} ms packet delay budget of NetworkSlice {}",
        one_way(rtt).as_secs_f64() * 1000.0,
        if within(budget, rtt) { "is within" } else { "exceeds" },
        b.as_secs_f64() * 1000.0,
        budget.slice
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shopfloor_api::{LocalRef, control_command::WhenOffline};

    fn budget(ms: u64, urllc: bool) -> LinkBudget {
        LinkBudget { slice: "control-urllc".into(), budget: Some(Duration::from_millis(ms)), urllc }
    }

    #[test]
    fn half_the_round_trip_is_compared_with_the_budget() {
        let b = budget(10, true);
        assert!(within(&b, Duration::from_millis(20)));
        assert!(!within(&b, Duration::from_millis(21)));
        assert!(describe(&b, Duration::from_millis(30)).starts_with("estimated one-way delay 15.0 ms"));
        assert!(
            describe(&b, Duration::from_millis(30))
                .contains("exceeds the 10.0 ms packet delay budget of NetworkSlice control-urllc")
        );
    }

    #[test]
    fn urllc_slices_require_the_budget_unless_the_command_says_otherwise() {
        let mut spec = ControlCommandSpec {
            equipment_ref: LocalRef::new("press"),
            action: "write".into(),
            parameters: Default::default(),
            timeout: Duration::from_secs(5).into(),
            when_offline: WhenOffline::Queue,
            preconditions: vec![],
            dry_run: false,
            require_link_within_budget: None,
            ttl_seconds_after_finished: None,
        };
        assert!(required(&spec, &budget(10, true)));
        assert!(!required(&spec, &budget(10, false)));
        spec.require_link_within_budget = Some(false);
        assert!(!required(&spec, &budget(10, true)));
        spec.require_link_within_budget = Some(true);
        assert!(required(&spec, &budget(10, false)));
    }
}
