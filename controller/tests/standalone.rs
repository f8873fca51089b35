//! Standalone mode over a temporary folder: the same reconcile steps, driven by file changes.

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use shopfloor_controller::{
    agents::changes::Change, metrics::KindLabel, reconcile::Reconciler, standalone, standalone::store::FolderStore,
    store::ObjectKey,
};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_folder_is_reconciled_and_followed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (plant, state) = (dir.path().join("plant"), dir.path().join("state"));
    std::fs::create_dir(&plant).expect("mkdir");
    for f in ["agents.yaml", "slices.yaml", "line-1.yaml"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant").join(f), plant.join(f))
            .expect("copy");
    }
    std::fs::write(
        plant.join("cmd.yaml"),
        "apiVersion: shopfloor.io/v1alpha1\nkind: ControlCommand\nmetadata: {name: quick-stop, namespace: plant-a}\n\
         spec: {equipmentRef: {name: infeed-conveyor}, action: stop, timeout: 500ms}\n",
    )
    .expect("write");
    let core =
        Reconciler::new(Arc::new(FolderStore::open(&plant, &state).expect("open")), "test", Duration::from_millis(50));
    let task = tokio::spawn(standalone::run(core.clone()));

    let agent_status = state.join("objects/edgeagents/plant-a/line-1.yaml");
    eventually("agent status with a bootstrap token", || {
        read(&agent_status).contains("tokenSecretName: shopfloor-bootstrap-plant-a-line-1")
    })
    .await;
    assert!(state.join("secrets/shopfloor-bootstrap-plant-a-line-1.yaml").exists());
    let eq_status = state.join("objects/equipment/plant-a/infeed-conveyor.yaml");
    eventually("equipment waits for its agent", || read(&eq_status).contains("reason: AgentDisconnected")).await;
    let cmd_status = state.join("objects/controlcommands/plant-a/quick-stop.yaml");
    eventually("a queued command expires at its deadline", || read(&cmd_status).contains("phase: Expired")).await;
    assert!(read(&cmd_status).contains("code: DeadlineExceeded"));

    // A broken manifest is refused; the rest of the plant keeps its status.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/invalid/equipment-min-above-max.yaml"),
        plant.join("broken.yaml"),
    )
    .expect("copy");
    // An edit moves the desired revision of the agent it concerns.
    let before = read(&agent_status);
    let line1 = plant.join("line-1.yaml");
    std::fs::write(&line1, read(&line1).replace("desired: 1.2", "desired: 1.3")).expect("edit");
    eventually("new desired revision", || {
        let now = read(&agent_status);
        let rev = |s: &str| s.lines().find(|l| l.contains("desiredRevision")).map(str::to_owned);
        rev(&now).is_some() && rev(&now) != rev(&before)
    })
    .await;
    assert!(!state.join("objects/equipment/plant-a/bad-equipment.yaml").exists(), "the invalid object never enters");
    task.abort();
}

/// A fleet connecting at once is reconciled in batches: the slice selecting every agent (whose
/// status counts them all) is recounted once per batch, not once per agent. Before, each
/// connection was a pass of its own, so a fleet of N connecting cost N recounts of N agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_connecting_at_once_recounts_its_slice_per_batch_not_per_agent() {
    const N: usize = 200;
    let dir = tempfile::tempdir().expect("tmp");
    let (plant, state) = (dir.path().join("plant"), dir.path().join("state"));
    std::fs::create_dir(&plant).expect("mkdir");
    let mut yaml = String::from(
        "apiVersion: shopfloor.io/v1alpha1\nkind: NetworkSlice\nmetadata: {name: fleet, namespace: f}\n\
         spec:\n  snssai: {sst: 1}\n  dnn: plant\n  qos: {fiveQi: 9, arp: {priorityLevel: 8, preemptionCapability: NotPreempt, preemptionVulnerability: Preemptable}}\n  \
         agentSelector: {matchLabels: {fleet: sim}}\n  steering: {interface: lo, routingTable: 100, fwmark: 100, dscp: 10}\n",
    );
    for i in 0..N {
        yaml.push_str(&format!(
            "---\napiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {{name: a{i}, namespace: f, labels: {{fleet: sim}}}}\nspec: {{site: f/a{i}}}\n"
        ));
    }
    std::fs::write(plant.join("fleet.yaml"), yaml).expect("write");
    let core =
        Reconciler::new(Arc::new(FolderStore::open(&plant, &state).expect("open")), "test", Duration::from_millis(50));
    let slices = || core.metrics().reconciliations.get_or_create(&KindLabel { kind: "NetworkSlice".into() }).get();
    let task = tokio::spawn(standalone::run(core.clone()));
    eventually("the first pass", || slices() >= 1).await;
    let before = slices();

    // As the endpoint does for each agent whose handshake and Hello succeed.
    for i in 0..N {
        let key = ObjectKey::new("f", format!("a{i}"));
        core.registry().connect(key.clone(), support::connected(Arc::new(support::Silent::default()), i as u64));
        core.changes().mark(&key, Change::Session);
        if i % 20 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let recounts = slices() - before;
    println!("{N} agents connected: the slice was recounted {recounts} times");
    // One per gathered batch, and one full pass if the tick fell in the window.
    assert!(recounts >= 1, "the connections were reconciled");
    assert!(recounts <= 10, "{recounts} recounts of the slice for {N} connections: a pass per agent");
    task.abort();
}

/// The `lastTransitionTime` of every condition of `status_file` (a state file), in order.
fn transition_times(status_file: &Path) -> Vec<String> {
    let object: serde_yaml::Value = serde_yaml::from_str(&read(status_file)).unwrap_or_default();
    object["status"]["conditions"]
        .as_sequence()
        .map(|c| c.iter().filter_map(|c| c["lastTransitionTime"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Reports change an equipment's reported values, not the time its conditions last flipped.
/// The pass after a report used to build the status from the one loaded with the folder: every
/// condition looked new, took the pass's time, and every report rewrote the status file saying
/// its conditions had just changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_leave_the_conditions_transition_times_alone() {
    use shopfloor_controller::agents::observed::Reading;
    let dir = tempfile::tempdir().expect("tmp");
    let (plant, state) = (dir.path().join("plant"), dir.path().join("state"));
    std::fs::create_dir(&plant).expect("mkdir");
    std::fs::write(
        plant.join("plant.yaml"),
        "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {name: a0, namespace: f}\nspec: {site: f/a0}\n\
         ---\napiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {name: conveyor, namespace: f}\n\
         spec:\n  agentRef: {name: a0}\n  simulated: {}\n  reporting: {interval: 1s}\n  \
         properties:\n  - {name: speed, type: Float, access: ReadWrite, min: 0, max: 2, desired: 0.5}\n",
    )
    .expect("write");
    let core =
        Reconciler::new(Arc::new(FolderStore::open(&plant, &state).expect("open")), "test", Duration::from_millis(50));
    let task = tokio::spawn(standalone::run(core.clone()));
    let agent = ObjectKey::new("f", "a0");
    core.registry().connect(agent.clone(), support::connected(Arc::new(support::Silent::default()), 1));
    core.changes().mark(&agent, Change::Session);
    let status = state.join("objects/equipment/f/conveyor.yaml");
    eventually("the equipment's conditions", || !transition_times(&status).is_empty()).await;
    // Past the second the conditions were first written in (times have second precision).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first = transition_times(&status);
    for (i, speed) in [0.6, 0.7, 0.8].into_iter().enumerate() {
        let reading = Reading { value: shopfloor_api::Value::Float(speed), at: jiff::Timestamp::now() };
        core.observed().record_readings(ObjectKey::new("f", "conveyor"), [("speed".to_owned(), reading)]);
        core.changes().mark(&agent, Change::Readings);
        eventually("the reported value in the status", || read(&status).contains(&format!("value: {speed}"))).await;
        assert_eq!(transition_times(&status), first, "report {i} moved the conditions' lastTransitionTime");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    task.abort();
}
