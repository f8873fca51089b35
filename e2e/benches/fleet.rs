//! A fleet of simulated agents (one process, the real agent code, one simulated equipment and
//! one QUIC connection each) against a standalone controller process, at growing sizes. Agents
//! keep their state (journal fsyncs included) on /dev/shm when it exists, so the figures are the
//! controller's. Prints figures and their ratios to the smallest fleet of the same run; asserts
//! nothing.
//!
//!     cargo bench -p shopfloor-e2e --bench fleet [-- 100 500 1000]
//!
//! `SHOPFLOOR_FLEET_HEARTBEAT=5s/20s` gives every EdgeAgent that `spec.heartbeat` (interval /
//! timeout; the default is 1s/5s).

use std::{path::PathBuf, time::Duration};

use shopfloor_e2e::fleet::{Figures, measure};

fn main() {
    let mut sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![100, 500, 1000];
    }
    let shm = PathBuf::from("/dev/shm");
    let (root, on) = if shm.is_dir() { (shm, "tmpfs /dev/shm") } else { (std::env::temp_dir(), "the temp dir") };
    let heartbeat = std::env::var("SHOPFLOOR_FLEET_HEARTBEAT").ok();
    println!(
        "agents' state on {on}; heartbeat {} (interval/timeout); controller figures from /proc (VmRSS: resident, shared pages included)",
        heartbeat.as_deref().unwrap_or("1s/5s, the default")
    );
    let mut runs: Vec<Figures> = Vec::new();
    for n in sizes {
        let dir = tempfile::tempdir_in(&root).expect("agents' state");
        let f = measure(n, dir.path(), Duration::from_secs(600), heartbeat.as_deref());
        let per_agent = f.rss_connected_kib.saturating_sub(f.rss_before_kib) as f64 / n as f64;
        println!(
            "{n:>6} agents: RSS {:.1} MiB before, {:.1} MiB connected ({per_agent:.1} KiB per agent, derived) | idle CPU {:.1}% of a core | \
             all connected {:.2} s | slice change applied by all {:.2} s, in every status {:.2} s | after a controller restart all back in {:.2} s (the first after {:.2} s) with {} sessions, {} attempts | \
             the fleet simulator (all {n} agents): VmRSS {:.1} MiB ({:.1} KiB per agent, derived), idle CPU {:.1}% of a core",
            f.rss_before_kib as f64 / 1024.0,
            f.rss_connected_kib as f64 / 1024.0,
            f.idle_cpu * 100.0,
            f.all_connected.as_secs_f64(),
            f.change_applied.as_secs_f64(),
            f.change_in_status.as_secs_f64(),
            f.reconnected_after_restart.as_secs_f64(),
            f.first_back_after_restart.as_secs_f64(),
            f.sessions_after_restart,
            f.attempts_after_restart,
            f.fleet_rss_kib as f64 / 1024.0,
            f.fleet_rss_kib as f64 / n as f64,
            f.fleet_idle_cpu * 100.0,
        );
        runs.push(f);
    }
    if let Some(base) = runs.first() {
        println!("ratios to the {}-agent run (agents ×k → figure ×r; r = k is linear):", base.agents);
        for f in &runs[1..] {
            let r = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            println!(
                "  ×{:.0} agents: connected-RSS growth ×{:.2}, idle CPU ×{:.2}, all connected ×{:.2}, change applied ×{:.2}, in status ×{:.2}, back after restart ×{:.2}",
                f.agents as f64 / base.agents as f64,
                r(
                    f.rss_connected_kib.saturating_sub(f.rss_before_kib) as f64,
                    base.rss_connected_kib.saturating_sub(base.rss_before_kib) as f64
                ),
                r(f.idle_cpu, base.idle_cpu),
                r(f.all_connected.as_secs_f64(), base.all_connected.as_secs_f64()),
                r(f.change_applied.as_secs_f64(), base.change_applied.as_secs_f64()),
                r(f.change_in_status.as_secs_f64(), base.change_in_status.as_secs_f64()),
                r(f.reconnected_after_restart.as_secs_f64(), base.reconnected_after_restart.as_secs_f64()),
            );
        }
    }
}
