//! Scale, at a size CI affords: a fleet of simulated agents (the real agent code in one process)
//! against a standalone controller process connects, takes its configuration, takes a change of
//! the slice they all ride, and comes back after a controller restart without a reconnect storm.
//! `cargo bench -p shopfloor-e2e --bench fleet` runs the same at 100–1,000 agents and more.

use std::time::Duration;

use shopfloor_e2e::fleet::measure;

#[test]
fn a_fleet_connects_follows_a_change_and_survives_a_controller_restart() {
    // A few hundred: enough that a pass per connection, or a recount of every agent per report,
    // shows as minutes rather than seconds.
    let n = 300;
    let dir = tempfile::tempdir().expect("agents' state");
    let f = measure(n, dir.path(), Duration::from_secs(120), None);
    println!("{f:?}");
    // Every agent's QUIC endpoint used to take a 3 MiB receive buffer, zeroed (quinn sizes it for
    // GRO), and 10,000 agents could not fit on the machine. Measured here (debug build, the whole
    // process ÷ agents): 966 KiB per agent with GRO, 221 KiB without.
    let per_agent_kib = f.fleet_rss_kib / n as u64;
    println!("fleet simulator: VmRSS {} KiB, {per_agent_kib} KiB per agent (derived)", f.fleet_rss_kib);
    assert!(per_agent_kib < 512, "the fleet simulator holds {per_agent_kib} KiB per agent");
    assert_eq!(f.sessions_after_restart, n as u64, "one new session per agent after the restart");
    // The controller was down for a few seconds: each agent tried a handful of times meanwhile,
    // spaced by its backoff. A storm would be hundreds per agent.
    assert!(
        f.attempts_after_restart <= 20 * n as u64,
        "{} attempts by {n} agents to get back after a controller restart",
        f.attempts_after_restart
    );
}

#[test]
fn the_generated_plant_validates() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("fleet.yaml"), shopfloor_e2e::fleet::plant("fleet", 3, 10)).expect("write");
    let loaded = shopfloor_api::manifest::load_valid(dir.path()).expect("read");
    assert_eq!(loaded.len(), 7);
    for l in loaded {
        l.expect("valid");
    }
}
