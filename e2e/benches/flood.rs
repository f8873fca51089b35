//! Controller memory under a handshake flood: a standalone controller (release build, its own
//! process) receives 10,000 half-open QUIC handshakes (real Initial packets whose sender never
//! answers). Prints the controller's resident memory (VmRSS, the whole process, shared pages
//! included) idle and at the flood's peak and after it, and the handshake counters from its
//! metrics; asserts nothing. Target: growth ≤ 64 MiB.
//!
//!     cargo bench -p shopfloor-e2e --bench flood [-- HANDSHAKES]

use std::time::Duration;

use shopfloor_e2e::{
    flood,
    harness::{Scenario, eventually},
};

const PLANT: &str = "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: line-1, namespace: plant-a}\nspec: {site: plant-a/line-1}\n";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

fn main() {
    let n: usize = std::env::args().filter_map(|a| a.parse().ok()).next().unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    std::fs::write(s.path("plant/agent.yaml"), PLANT).expect("plant");
    let endpoint: std::net::SocketAddr = s.controller().parse().expect("endpoint");
    let pid = s.procs.lock().expect("procs").iter().find(|p| p.name == "controller").expect("controller").pid();
    let http = eventually("metrics address in the log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(s.path("controller.log")).ok()?;
        let at = log.find("http=")? + 5;
        Some(log[at..].split_whitespace().next()?.to_owned())
    });
    let scrape = || {
        use std::io::{Read, Write};
        let mut out = String::new();
        if let Ok(mut c) = std::net::TcpStream::connect(&http) {
            let _ = write!(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
            let _ = c.read_to_string(&mut out);
        }
        out
    };
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        for _ in 0..150 {
            peak = peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    });
    let sent = rt.block_on(flood::half_open_handshakes(endpoint, n)).expect("flood");
    let peak = sampler.join().expect("sampler");
    let after = rss_kib(pid);
    let m = scrape();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("half-open handshakes sent: {sent}");
    println!("controller VmRSS idle:     {:>7.1} MiB (baseline)", mib(idle));
    println!(
        "controller VmRSS peak:     {:>7.1} MiB (growth {:+.1} MiB, {:.2}x the baseline; target growth ≤ 64 MiB)",
        mib(peak),
        mib(peak.saturating_sub(idle)),
        peak as f64 / idle.max(1) as f64
    );
    println!("controller VmRSS after:    {:>7.1} MiB (15 s after the flood began)", mib(after));
    println!(
        "handshakes failed {} · refused {} · in progress now {} (from /metrics{})",
        metric(&m, "shopfloor_handshakes_failed_total"),
        metric(&m, "shopfloor_handshakes_refused_total"),
        metric(&m, "shopfloor_handshakes_in_progress"),
        if m.is_empty() { "; metrics unreachable, counters unread" } else { "" }
    );
    let log_lines = std::fs::read_to_string(s.path("controller.log")).unwrap_or_default();
    println!("controller log lines about handshakes: {}", log_lines.matches("handshake").count());
}
