//! Reconnection time after a 20 s partition, over repeats: real processes, the agent behind the
//! userspace UDP proxy. Prints every sample and the percentiles; asserts nothing.
//!
//!     cargo bench -p shopfloor-e2e --bench reconnect [-- REPEATS]

use std::time::{Duration, Instant};

use shopfloor_e2e::harness::{Scenario, eventually};

const PLANT: &str = "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: line-1, namespace: plant-a}\nspec: {site: plant-a/line-1}\n";

fn main() {
    let repeats: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    std::fs::write(s.path("plant/agent.yaml"), PLANT).expect("plant");
    let endpoint = s.controller();
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 3);
    let log = s.path("agent-line-1.log");
    let connects = || std::fs::read_to_string(&log).unwrap_or_default().matches(" connected ").count();
    eventually("connected", Duration::from_secs(30), || (connects() >= 1).then_some(()));
    let mut samples = Vec::new();
    for i in 0..repeats {
        let before = connects();
        proxy.partition(true);
        std::thread::sleep(Duration::from_secs(20));
        let healed = Instant::now();
        proxy.partition(false);
        // The agent logs `connected` when the controller's Welcome arrives on the new connection.
        eventually("reconnected", Duration::from_secs(120), || (connects() > before).then_some(()));
        let t = healed.elapsed();
        println!("repeat {}: reconnected {:.0} ms after the partition healed", i + 1, t.as_secs_f64() * 1e3);
        samples.push(t);
        std::thread::sleep(Duration::from_secs(1));
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).saturating_sub(1).min(samples.len() - 1)];
    println!(
        "{} repeats: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target: p99 ≤ 2000 ms)",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}
