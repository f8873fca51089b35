//! Commands dispatched per second through the controller's engine to an agent over real QUIC
//! with mutual TLS on loopback (in one process). Prints figures, asserts nothing.
//!
//!     cargo bench -p shopfloor-e2e --bench commands

use std::time::{Duration, Instant};

use shopfloor_e2e::{
    fixtures,
    inprocess::{Plant, objects},
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let world = objects(&fixtures::robot_cell_with_template("60s"));
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    let eq = plant.equipment("robot").clone();
    for batch in [1usize, 100, 1000] {
        let start = Instant::now();
        let base = batch * 10_000;
        let mut handles = Vec::new();
        for i in 0..batch {
            let c = Plant::command(&template, base + i);
            let core = plant.core.clone();
            let eq = eq.clone();
            handles.push(tokio::spawn(async move { core.reconcile_command(&c, Some(&eq)).await }));
        }
        for h in handles {
            h.await.expect("join").expect("reconcile");
        }
        let mut done = 0;
        while done < batch && start.elapsed() < Duration::from_secs(120) {
            done = (0..batch).filter(|i| plant.finished(base + i).is_some()).count();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let dt = start.elapsed().as_secs_f64();
        println!(
            "{batch:>5} commands created at once: all finished in {:.1} ms = {:.0} commands/s ({done} finished)",
            dt * 1e3,
            done as f64 / dt
        );
    }
}
