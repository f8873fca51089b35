//! Agent benchmark: prints figures, asserts nothing.
//!
//!     cargo bench -p shopfloor-agent --bench agent

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use shopfloor_agent::{
    apply,
    clock::WallClock,
    commands::{Arrival, Executor},
    envelope::Envelope,
    journal::Journal,
    state::StateDir,
};
use shopfloor_wire::value;
use shopfloor_wire::{
    proto::{
        ApplyConfig, Command, EquipmentConfig, Parameter, PropertyConfig, Simulated, ValueType,
        equipment_config::Protocol, parameter,
    },
    time::now_micros,
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn equipment(i: usize) -> EquipmentConfig {
    EquipmentConfig {
        name: format!("eq-{i}"),
        protocol: Some(Protocol::Simulated(Simulated::default())),
        properties: (0..10)
            .map(|j| PropertyConfig {
                name: format!("p{j}"),
                r#type: ValueType::Float as i32,
                writable: true,
                min: Some(0.0),
                max: Some(100.0),
                desired: (j == 0).then(|| value::float_value(42.0)),
                ..Default::default()
            })
            .collect(),
        reporting_interval_ms: 1000,
        ..Default::default()
    }
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(v[v.len() / 2]), us(v[v.len() * 99 / 100]))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = StateDir::open(dir.path()).expect("state");
    let idle = rss_kib();
    let exec = Arc::new(Executor::new(
        Journal::open(&state, Duration::from_secs(86400), 1_000_000).expect("journal"),
        Envelope::default(),
    ));
    let cfg = ApplyConfig { revision: "r".into(), equipment: (0..100).map(equipment).collect(), ..Default::default() };
    apply::apply(exec.equipment(), exec.envelope(), exec.fail_safes(), &cfg).await;
    println!(
        "resident memory: {:.1} MiB at start of the benchmark process, +{:.1} MiB with 100 simulated equipment of 10 properties",
        idle as f64 / 1024.0,
        (rss_kib() - idle) as f64 / 1024.0
    );

    // Baseline in the same run: the bare driver write the command performs.
    let eq = exec.equipment().get("eq-0").expect("eq");
    let p = eq.config.properties[1].clone();
    let mut bare = Vec::new();
    for i in 0..5000 {
        let t = Instant::now();
        eq.driver.write(&p, &value::float_value(f64::from(i % 100))).await.expect("write");
        bare.push(t.elapsed());
    }
    let mut full = Vec::new();
    for i in 0..5000 {
        let c = Command {
            id: format!("bench-{i}"),
            equipment: "eq-0".into(),
            action: "write".into(),
            parameters: vec![
                Parameter { name: "property".into(), kind: Some(parameter::Kind::Text("p1".into())) },
                Parameter {
                    name: "value".into(),
                    kind: Some(parameter::Kind::Value(value::float_value(f64::from(i % 100)))),
                },
            ],
            deadline_unix_micros: now_micros() + 10_000_000,
            ..Default::default()
        };
        let t = Instant::now();
        let r = exec.execute(&c, Arrival::now(WallClock::system(), Duration::from_secs(10))).await;
        full.push(t.elapsed());
        assert_eq!(r.code, 1, "{}", r.message);
    }
    let (b50, b99) = pct(bare);
    let (f50, f99) = pct(full);
    println!(
        "command over the simulated driver: p50 {f50:.1} µs, p99 {f99:.1} µs; bare driver write p50 {b50:.2} µs, p99 {b99:.2} µs"
    );
    println!("  (the command journals a start and a result, each fsynced: the overhead is the disk's sync latency)");

    let mut journal =
        Journal::open(&StateDir::open(dir.path().join("j")).expect("state"), Duration::from_secs(86400), 1_000_000)
            .expect("journal");
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        journal.start(&format!("j-{n}")).expect("append");
        n += 1;
    }
    println!("journal: {:.0} durable (fsynced) appends per second", f64::from(n) / start.elapsed().as_secs_f64());
}
