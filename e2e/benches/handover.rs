//! A planned handover at fleet size: a leader and a standby in Kubernetes mode (the mock API
//! server), `SHOPFLOOR_HANDOVER_AGENTS` in-process agents (100 by default), SIGTERM to the leader.
//! Prints the time from SIGTERM to every agent in a session with the new leader (issue 27's
//! target: at most 2 s for 100 agents), the new leader's time from leading to its first agent,
//! and how many 3 s fail-safes engaged (target: none).
//!
//! `cargo bench -p shopfloor-e2e --bench handover`

fn main() {
    let n = std::env::var("SHOPFLOOR_HANDOVER_AGENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let h = shopfloor_e2e::cluster::handover(n);
    println!("planned handover (SIGTERM of the leader), {} agents, debug or release as built:", h.agents);
    println!("  SIGTERM -> every agent on the new leader: {:.2} s (target <= 2 s)", h.all_back.as_secs_f64());
    println!("  new leader: leading -> first agent admitted: {:.3} s", h.first_admitted.as_secs_f64());
    println!("  fail-safes (after: 3s) engaged by the handover: {} of {} (target 0)", h.engaged_by_handover, h.agents);
    println!("  control: engaged once no controller was left: {} of {}", h.engaged_without_controller, h.agents);
}
