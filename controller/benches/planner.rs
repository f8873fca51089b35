//! Planner throughput and the memory cost of cached Equipment. Prints figures; asserts nothing.
//!
//!     cargo bench -p shopfloor-controller --bench planner

use std::{path::Path, time::Instant};

use shopfloor_api::{
    EdgeAgent, Equipment, NetworkSlice,
    manifest::{self, Object},
};
use shopfloor_controller::planner;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant");
    let (mut agent, mut eq, mut slices) = (None, vec![], vec![]);
    for loaded in manifest::load_valid(&dir).expect("plant") {
        match loaded.expect("valid").1 {
            Object::EdgeAgent(a) => agent = agent.or(Some(a)),
            Object::Equipment(e) if e.spec.modbus_tcp.is_some() => eq.push(e),
            Object::NetworkSlice(s) => slices.push(s),
            _ => {}
        }
    }
    let (agent, template): (EdgeAgent, Equipment) = (agent.expect("agent"), eq.remove(0));
    let slices: Vec<NetworkSlice> = slices;

    let agents_n = 10_000;
    let per_agent = 10;
    let rss_before = rss_kib();
    let mut agents = Vec::with_capacity(agents_n);
    let mut equipment = Vec::with_capacity(agents_n * per_agent);
    for i in 0..agents_n {
        let mut a = agent.clone();
        a.metadata.name = Some(format!("agent-{i}"));
        for j in 0..per_agent {
            let mut e = template.clone();
            e.metadata.name = Some(format!("eq-{i}-{j}"));
            e.spec.agent_ref.name = format!("agent-{i}");
            equipment.push(e);
        }
        agents.push(a);
    }
    let rss_after = rss_kib();
    println!(
        "cache: {} agents + {} equipment: {:.1} MiB resident ({:.2} KiB per equipment)",
        agents.len(),
        equipment.len(),
        (rss_after - rss_before) as f64 / 1024.0,
        (rss_after - rss_before) as f64 / equipment.len() as f64
    );

    // Baseline in the same run: serialising the same objects once, the floor of any planner
    // that hashes its output.
    let t = Instant::now();
    let bytes: usize = equipment.iter().map(|e| serde_json::to_vec(&e.spec).map(|v| v.len()).unwrap_or(0)).sum();
    let baseline = t.elapsed();

    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let plans = planner::plan(&agents, &equipment, &slices);
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(plans.agents.len(), agents_n);
        best = best.min(dt);
    }
    println!(
        "planner: {agents_n} agents x {per_agent} equipment in {:.0} ms (best of 3) = {:.0} agents/s; \
         serialising the specs alone: {:.0} ms ({} KiB); ratio {:.2}",
        best * 1e3,
        agents_n as f64 / best,
        baseline.as_secs_f64() * 1e3,
        bytes / 1024,
        best / baseline.as_secs_f64()
    );
}
