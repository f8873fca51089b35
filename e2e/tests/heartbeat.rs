//! The EdgeAgent's `spec.heartbeat` is what the agent's link keeps, with real processes: the
//! packets of an idle link are counted at a UDP proxy between the agent and the controller.

use std::time::Duration;

use shopfloor_e2e::harness::{Scenario, eventually};

const AGENT: &str = "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: line-1, namespace: plant-a}\n\
                     spec: {site: plant-a/line-1, heartbeat: {interval: 4s, timeout: 20s}}\n";

/// An agent asked for a keep-alive every 4 s sends about a quarter of the packets the default
/// (1 s) would over an idle link: it reconnected once to use the terms of its first Welcome.
/// It used to keep the default whatever the EdgeAgent said (12 datagrams in 6 idle seconds).
#[test]
fn an_idle_link_keeps_the_heartbeat_the_edge_agent_asks_for() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    std::fs::write(s.path("plant/agent.yaml"), AGENT).expect("plant");
    let endpoint = s.controller();
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 7);
    eventually("connected", Duration::from_secs(30), || {
        (s.status("edgeagents", "line-1")["phase"] == "Connected").then_some(())
    });
    // Past the reconnection and the first exchanges of the session.
    std::thread::sleep(Duration::from_secs(3));
    let before = proxy.counters.forwarded.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(6));
    let idle = proxy.counters.forwarded.load(std::sync::atomic::Ordering::Relaxed) - before;
    let log = std::fs::read_to_string(s.path("agent-line-1.log")).unwrap_or_default();
    println!("{idle} datagrams in 6 idle seconds with a 4 s heartbeat (a 1 s one makes about 12)");
    assert!(idle <= 6, "{idle} datagrams in 6 idle seconds: the agent did not keep a 4 s heartbeat\n{log}");
    assert_eq!(s.status("edgeagents", "line-1")["phase"], "Connected", "{log}");
}
