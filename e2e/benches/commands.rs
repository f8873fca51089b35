//! Commands dispatched per second through the controller's engine to an agent over real QUIC
//! with mutual TLS on loopback (in one process), first without tracing (the baseline), then with
//! both sides exporting their spans over OTLP/HTTP to a local receiver, then (when /dev/shm
//! exists) with the agent's journal on tmpfs, where an fsync costs next to nothing: the ratio to
//! the baseline is the share of the time the disk takes; then with the commands spread over many
//! agents (one simulated robot each, each agent its own journal), on the disk and on tmpfs, as
//! ratios to one agent in the same run. Prints figures, asserts nothing.
//!
//!     cargo bench -p shopfloor-e2e --bench commands

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use shopfloor_api::{ControlCommand, Equipment};
use shopfloor_controller::metrics::PhaseLabel;
use shopfloor_e2e::{
    fixtures,
    inprocess::{Plant, objects},
};
use shopfloor_trace::Tracer;

/// Commands the engine has finished so far in `phases`.
fn finished_in(plant: &Plant, phases: &[&str]) -> u64 {
    phases
        .iter()
        .map(|p| plant.core.metrics().commands_finished.get_or_create(&PhaseLabel { phase: (*p).into() }).get())
        .sum()
}

/// Commands the engine has finished so far (succeeded or not).
fn finished(plant: &Plant) -> u64 {
    finished_in(plant, &["Succeeded", "Failed", "Rejected", "Expired"])
}

/// Runs `batch` commands created at once, spread round-robin over `equipment`; returns the time
/// until all finished. Completion is read from the engine's counter, not by scanning the store,
/// so watching costs the engine nothing.
async fn run(plant: &Plant, template: &ControlCommand, batch: usize, base: usize, equipment: &[Equipment]) -> Duration {
    let before = finished(plant);
    let succeeded_before = finished_in(plant, &["Succeeded"]);
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..batch {
        let mut c = Plant::command(template, base + i);
        let eq = equipment[i % equipment.len()].clone();
        c.spec.equipment_ref.name = eq.metadata.name.clone().unwrap_or_default();
        let core = plant.core.clone();
        handles.push(tokio::spawn(async move { core.reconcile_command(&c, Some(&eq)).await }));
    }
    for h in handles {
        h.await.expect("join").expect("reconcile");
    }
    let want = before + batch as u64;
    while finished(plant) < want && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(finished(plant), want, "not every command finished");
    let elapsed = start.elapsed();
    // From the engine's counters: finding each command's status in the in-memory store's history
    // would cost more than the batch itself.
    assert_eq!(finished_in(plant, &["Succeeded"]), succeeded_before + batch as u64, "every command succeeded");
    elapsed
}

/// An OTLP/HTTP receiver that counts export requests and discards them.
async fn collector() -> (String, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(n): State<Arc<AtomicUsize>>, _body: Bytes| async move {
                n.fetch_add(1, Ordering::Relaxed);
                Vec::<u8>::new()
            }),
        )
        .with_state(requests.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, requests)
}

/// Runs the batches on a fresh plant (the store's history grows with every command, so each
/// configuration starts from the same state), exporting spans to `collector` if given.
async fn measure(collector: Option<&str>, journal_root: &std::path::Path) -> Vec<f64> {
    let world = objects(&fixtures::robot_cell_with_template("60s"));
    let template = world.commands[0].clone();
    let plant = Plant::start_on(world, shopfloor_agent::clock::WallClock::system(), journal_root).await;
    if let Some(url) = collector {
        plant.core.engine().trace_to(Tracer::otlp(url, "shopfloor-controller").expect("controller tracer"));
        plant.agent.trace_to(Tracer::otlp(url, "shopfloor-agent").expect("agent tracer"));
    }
    let mut out = Vec::new();
    for (n, batch) in BATCHES.into_iter().enumerate() {
        out.push(run(&plant, &template, batch, n * 10_000, &plant.world.equipment).await.as_secs_f64());
    }
    out
}

/// Commands in one batch spread over the agents.
const SPREAD_BATCH: usize = 5000;
/// Agents (one robot each) the spread batch goes to.
const SPREAD_AGENTS: [usize; 3] = [1, 10, 50];

/// [`SPREAD_BATCH`] commands spread over `agents` agents on a fresh plant, journals under
/// `journal_root`: the time until all finished, seconds.
async fn measure_spread(agents: usize, journal_root: &std::path::Path) -> f64 {
    let world = objects(&fixtures::robot_cells(agents, "60s"));
    let template = world.commands[0].clone();
    let plant = Plant::start_on(world, shopfloor_agent::clock::WallClock::system(), journal_root).await;
    // One small batch first: every connection and bucket warmed up alike.
    run(&plant, &template, agents, 0, &plant.world.equipment).await;
    run(&plant, &template, SPREAD_BATCH, 10_000, &plant.world.equipment).await.as_secs_f64()
}

async fn spread(journal_root: &std::path::Path, what: &str) {
    println!(
        "{SPREAD_BATCH} commands created at once, spread over N agents (one simulated robot and one journal each), journals {what}:"
    );
    let mut one = None;
    for n in SPREAD_AGENTS {
        let dt = measure_spread(n, journal_root).await;
        let base = *one.get_or_insert(dt);
        println!(
            "  {n:>3} agents: all finished in {:.0} ms = {:.0} commands/s ({:.2}x the time with 1 agent)",
            dt * 1e3,
            SPREAD_BATCH as f64 / dt,
            dt / base
        );
    }
}

const BATCHES: [usize; 3] = [1, 100, 1000];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let disk = std::env::temp_dir();
    let baseline = measure(None, &disk).await;
    println!("without tracing, the agent's journal in {} (baseline):", disk.display());
    for (batch, dt) in BATCHES.iter().zip(&baseline) {
        println!(
            "{batch:>5} commands created at once: all finished in {:.1} ms = {:.0} commands/s",
            dt * 1e3,
            *batch as f64 / dt
        );
    }
    let (url, requests) = collector().await;
    let traced = measure(Some(&url), &disk).await;
    println!("with both sides exporting spans over OTLP/HTTP to a local receiver:");
    for ((batch, dt), base) in BATCHES.iter().zip(&traced).zip(&baseline) {
        println!(
            "{batch:>5} commands created at once: all finished in {:.1} ms = {:.0} commands/s ({:.2}x the baseline's time)",
            dt * 1e3,
            *batch as f64 / dt,
            dt / base
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("export requests received: {}", requests.load(Ordering::Relaxed));
    spread(&disk, &format!("in {} (fsync per command)", disk.display())).await;
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("NOT MEASURED: no /dev/shm here, so the journal's fsync cost cannot be separated");
        return;
    }
    spread(shm, "on tmpfs /dev/shm (fsync next to free)").await;
    let tmpfs = measure(None, shm).await;
    println!("without tracing, the agent's journal on tmpfs /dev/shm (fsync next to free):");
    for ((batch, dt), base) in BATCHES.iter().zip(&tmpfs).zip(&baseline) {
        println!(
            "{batch:>5} commands created at once: all finished in {:.1} ms = {:.0} commands/s ({:.2}x the baseline's time; the disk's share, derived: {:.0}%)",
            dt * 1e3,
            *batch as f64 / dt,
            dt / base,
            (1.0 - dt / base) * 100.0
        );
    }
}
