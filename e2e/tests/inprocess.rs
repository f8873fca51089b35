//! The command engine over real QUIC with mutual TLS to an in-process agent.

use std::time::Duration;

use shopfloor_api::control_command::{CommandPhase, ResultCode};
use shopfloor_e2e::inprocess::{Plant, objects};

const PLANT: &str = r#"
apiVersion: shopfloor.io/v1alpha1
kind: EdgeAgent
metadata: {name: line-1, namespace: plant-a}
spec: {site: plant-a/line-1}
---
apiVersion: shopfloor.io/v1alpha1
kind: Equipment
metadata: {name: robot, namespace: plant-a}
spec:
  agentRef: {name: line-1}
  simulated: {}
  properties:
    - {name: program, type: Int, access: ReadWrite, min: 1, max: 32}
---
apiVersion: shopfloor.io/v1alpha1
kind: ControlCommand
metadata: {name: template, namespace: plant-a}
spec: {equipmentRef: {name: robot}, action: write, parameters: {property: program, value: 7}, timeout: 30s}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_each_end_once_with_timestamps_and_latencies() {
    let world = objects(PLANT);
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    let eq = plant.equipment("robot").clone();
    let n = 50;
    for i in 0..n {
        plant.core.reconcile_command(&Plant::command(&template, i), Some(&eq)).await.expect("reconcile");
    }
    for i in 0..n {
        let mut status = None;
        for _ in 0..400 {
            status = plant.finished(i);
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = status.unwrap_or_else(|| panic!("command {i} never finished: {:?}", plant.status(i)));
        assert_eq!(s.phase, Some(CommandPhase::Succeeded), "{s:?}");
        assert_eq!(s.result.as_ref().map(|r| r.code), Some(ResultCode::Ok));
        assert_eq!(s.attempts, 1);
        for (what, v) in [
            ("queue", s.latency.queue_micros),
            ("network", s.latency.network_micros),
            ("execution", s.latency.execution_micros),
            ("total", s.latency.total_micros),
        ] {
            assert!(v.is_some_and(|v| v >= 0), "{what} latency of command {i}: {v:?}");
        }
        assert!(s.timestamps.acknowledged_at.is_some() && s.timestamps.started_at.is_some() && s.trace_id.is_some());
    }
    assert!(
        plant.agent().status.as_ref().and_then(|s| s.certificate.as_ref()).is_some(),
        "the enrolled certificate is recorded"
    );
}
