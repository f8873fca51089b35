//! The standalone store over a temporary folder.

use std::path::Path;

use shopfloor_api::control_command::{CommandPhase, ControlCommandStatus};
use shopfloor_controller::{
    standalone::store::FolderStore,
    store::{ObjectKey, StatusUpdate, Store},
};

fn copy_plant(to: &Path) {
    let plant = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant");
    for entry in std::fs::read_dir(plant).expect("plant") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

/// The example plant in a temporary folder, with its store: (the folder, the manifests, the store).
fn plant_store() -> (tempfile::TempDir, std::path::PathBuf, FolderStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let (manifests, state) = (dir.path().join("plant"), dir.path().join("state"));
    std::fs::create_dir(&manifests).expect("mkdir");
    copy_plant(&manifests);
    let store = FolderStore::open(&manifests, &state).expect("open");
    (dir, manifests, store)
}

#[tokio::test]
async fn loads_the_plant_with_stable_metadata_and_persisted_status() {
    let (dir, manifests, store) = plant_store();
    let state = dir.path().join("state");
    let world = store.load();
    assert!(world.refused.is_empty(), "{:?}", world.refused);
    assert_eq!(world.agents.len(), 3);
    let cmd = &world.commands[0];
    let uid = cmd.metadata.uid.clone().expect("uid");
    assert_eq!(cmd.metadata.generation, Some(1));
    let key = ObjectKey::of(&cmd.metadata);

    let status = ControlCommandStatus { phase: Some(CommandPhase::Dispatched), attempts: 1, ..Default::default() };
    store.write_status(StatusUpdate::ControlCommand(key.clone(), status.clone())).await.expect("write");

    // A second store on the same folders (a restarted controller) sees the same identity and status.
    let again = FolderStore::open(&manifests, &state).expect("reopen").load();
    let cmd2 = again.commands.iter().find(|c| ObjectKey::of(&c.metadata) == key).expect("same command");
    assert_eq!(cmd2.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(cmd2.status.as_ref(), Some(&status));
    assert_eq!(cmd2.metadata.creation_timestamp, cmd.metadata.creation_timestamp);
}

#[tokio::test]
async fn spec_changes_bump_generation_and_invalid_documents_are_refused_alone() {
    let (_dir, manifests, store) = plant_store();
    store.load();
    let path = manifests.join("line-1.yaml");
    let text = std::fs::read_to_string(&path).expect("read").replace("desired: 1.2", "desired: 1.4");
    std::fs::write(&path, text).expect("write");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/invalid/equipment-desired-above-max.yaml"),
        manifests.join("zz-bad.yaml"),
    )
    .expect("copy");
    let world = store.load();
    let conveyor = world.equipment.iter().find(|e| e.metadata.name.as_deref() == Some("infeed-conveyor")).expect("eq");
    assert_eq!(conveyor.metadata.generation, Some(2));
    assert_eq!(world.refused.len(), 1, "{:?}", world.refused);
    assert!(world.refused[0].contains("zz-bad.yaml") && world.refused[0].contains("spec.properties[0].desired"));
    assert_eq!(world.equipment.len(), 7, "the rest of the plant is unaffected");
}

#[tokio::test]
async fn secrets_are_created_once_even_when_two_writers_race() {
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("plant");
    std::fs::create_dir(&manifests).expect("mkdir");
    let a = FolderStore::open(&manifests, dir.path().join("state")).expect("open");
    let b = FolderStore::open(&manifests, dir.path().join("state")).expect("open");
    let mk = |v: &str| [("ca.crt".to_owned(), v.as_bytes().to_vec())].into_iter().collect();
    let (ra, rb) =
        tokio::join!(a.create_secret_if_absent("ca", mk("first")), b.create_secret_if_absent("ca", mk("second")));
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(ra, rb, "both writers end up with the same CA");
    let stored = a.read_secret("ca").await.expect("read").expect("exists");
    assert_eq!(stored, ra);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("state/secrets/ca.yaml")).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn deleted_commands_stay_deleted_while_their_manifest_remains() {
    let (_dir, _manifests, store) = plant_store();
    let world = store.load();
    let key = ObjectKey::of(&world.commands[0].metadata);
    store.delete_command(&key).await.expect("delete");
    let world = store.load();
    assert!(world.commands.iter().all(|c| ObjectKey::of(&c.metadata) != key));
    assert_eq!(world.commands.len(), 3);
}

#[tokio::test]
async fn corrupt_state_is_moved_aside_not_ignored() {
    let (dir, manifests, store) = plant_store();
    let state = dir.path().join("state");
    store.load();
    let file = state.join("objects/edgeagents/plant-a/line-1.yaml");
    std::fs::write(&file, "uid: [unclosed").expect("corrupt");
    // A running store reads each state file once and keeps it: the corruption is found by the
    // next controller that reads the folder (a restart).
    drop(store);
    let store = FolderStore::open(&manifests, &state).expect("reopen");
    let world = store.load();
    assert_eq!(world.agents.len(), 3);
    let aside: Vec<_> = std::fs::read_dir(file.parent().expect("dir"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept for inspection");
}

/// A single-use token must be redeemed once when two enrollments race, in one controller or
/// two processes on the same state directory: the secret is replaced by compare-and-swap.
#[tokio::test]
async fn a_secret_is_replaced_by_exactly_one_of_two_racing_writers() {
    let dir = tempfile::tempdir().expect("tmp");
    let manifests = dir.path().join("plant");
    std::fs::create_dir(&manifests).expect("mkdir");
    let a = FolderStore::open(&manifests, dir.path().join("state")).expect("open");
    let b = FolderStore::open(&manifests, dir.path().join("state")).expect("open");
    let mk = |v: String| -> std::collections::BTreeMap<String, Vec<u8>> {
        [("token".to_owned(), v.into_bytes())].into_iter().collect()
    };
    for round in 0..20 {
        let name = format!("token-{round}");
        let unused = mk(format!("{round}.unused"));
        a.write_secret(&name, unused.clone()).await.expect("write");
        let (ra, rb) = tokio::join!(
            a.replace_secret_if(&name, &unused, mk(format!("{round}.used-by-a"))),
            b.replace_secret_if(&name, &unused, mk(format!("{round}.used-by-b")))
        );
        let (ra, rb) = (ra.expect("a"), rb.expect("b"));
        assert!(ra ^ rb, "round {round}: exactly one writer wins (a {ra}, b {rb})");
        let stored = a.read_secret(&name).await.expect("read").expect("exists");
        let winner = if ra { "a" } else { "b" };
        assert_eq!(stored, mk(format!("{round}.used-by-{winner}")));
        // A writer holding a stale copy loses too.
        assert!(!b.replace_secret_if(&name, &unused, mk("late".into())).await.expect("stale"));
    }
}

fn host_of(world: &shopfloor_controller::store::World, name: &str) -> Option<String> {
    world
        .equipment
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some(name))
        .map(|e| e.spec.modbus_tcp.as_ref().map(|m| m.host.clone()).unwrap_or_default())
}

/// The reported failure: a second file defining an Equipment with an existing name silently
/// replaced the real one, and the error blamed the legitimate file. Now both definitions are
/// refused, naming both files, and the last good one stays in force.
#[tokio::test]
async fn an_object_defined_twice_is_refused_naming_both_files_and_the_good_one_stays() {
    let (_dir, manifests, store) = plant_store();
    let before = store.load();
    let real = host_of(&before, "infeed-conveyor").expect("the real conveyor");
    // The intruder sorts first, as in the report.
    let line1 = std::fs::read_to_string(manifests.join("line-1.yaml")).expect("read");
    let intruder = line1.replace(&format!("host: {real}"), "host: 10.66.66.66");
    assert_ne!(intruder, line1, "the fixture names the conveyor's host");
    std::fs::write(manifests.join("aa-copy.yaml"), intruder).expect("write");
    let world = store.load();
    assert_eq!(host_of(&world, "infeed-conveyor"), Some(real), "the last good definition stays in force");
    let refusal = world.refused.iter().find(|r| r.contains("infeed-conveyor")).expect("refused");
    assert!(refusal.contains("aa-copy.yaml") && refusal.contains("line-1.yaml"), "names both files: {refusal}");
    assert!(refusal.contains("stays in force"), "{refusal}");
    assert_eq!(world.equipment.len(), before.equipment.len(), "nothing else changes");
    // Removing the copy ends the refusal.
    std::fs::remove_file(manifests.join("aa-copy.yaml")).expect("rm");
    assert!(store.load().refused.is_empty());
}

/// A typo in a file does not unconfigure its equipment: its objects keep their last good
/// definition until the file reads again; an object deleted from a file that reads is gone.
#[tokio::test]
async fn a_broken_file_keeps_its_objects_last_good_definition() {
    let (_dir, manifests, store) = plant_store();
    let before = store.load();
    let path = manifests.join("line-1.yaml");
    let good = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{good}\n  oops: [unclosed\n")).expect("break");
    let world = store.load();
    assert_eq!(world.equipment.len(), before.equipment.len(), "{:?}", world.refused);
    assert!(world.refused.iter().any(|r| r.contains("line-1.yaml") && r.contains("last good definition")));
    // A file of nested brackets is refused at once and stalls nothing.
    std::fs::write(manifests.join("bomb.yaml"), "{a: ".repeat(100_000)).expect("bomb");
    let started = std::time::Instant::now();
    let world = store.load();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "liveness: {:?}", started.elapsed());
    assert!(
        world.refused.iter().any(|r| r.contains("bomb.yaml") && r.contains("nested deeper")),
        "{:?}",
        world.refused
    );
    assert_eq!(world.equipment.len(), before.equipment.len());
    std::fs::remove_file(manifests.join("bomb.yaml")).expect("rm");
    std::fs::write(&path, good).expect("fix");
    assert!(store.load().refused.is_empty());
}

/// A pass over the plant reads no state file: statuses written are kept in memory and laid over
/// the world, and a batch of them is made durable together.
#[tokio::test]
async fn statuses_are_kept_in_memory_and_written_in_batches() {
    use shopfloor_api::edge_agent::EdgeAgentStatus;
    let (dir, manifests, store) = plant_store();
    let state = dir.path().join("state");
    let world = store.load();
    let keys: Vec<ObjectKey> = world.agents.iter().map(|a| ObjectKey::of(&a.metadata)).collect();
    let updates: Vec<StatusUpdate> = keys
        .iter()
        .map(|k| {
            StatusUpdate::EdgeAgent(k.clone(), EdgeAgentStatus { observed_generation: Some(7), ..Default::default() })
        })
        .collect();
    let results = store.write_statuses(updates).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // In memory: the world the next pass sees has them without reading a file.
    let seen = store.current();
    assert!(seen.agents.iter().all(|a| a.status.as_ref().and_then(|s| s.observed_generation) == Some(7)));
    // On disk, for the next controller.
    let reopened = FolderStore::open(&manifests, &state).expect("reopen");
    let again = reopened.load();
    assert!(again.agents.iter().all(|a| a.status.as_ref().and_then(|s| s.observed_generation) == Some(7)));
    // No temporary file is left behind: beside each object's file is only its spare, the
    // version before (reused by the next write instead of a new file per write).
    let leftovers: Vec<_> = std::fs::read_dir(state.join("objects/edgeagents/plant-a"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && !n.ends_with(".yaml.prev"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A reported value comes back from the store exactly as written: from its memory (a reload of
/// the folder) and from its files (a restarted controller). Statuses are kept as JSON text, and
/// serde_json's default float parsing gave back another value for about one float in ten
/// (989.8597941207809 among them): the status then differed from the one written, and was
/// written again.
#[tokio::test]
async fn reported_floats_come_back_exactly_from_memory_and_from_files() {
    use shopfloor_api::{
        Value,
        common::Time,
        equipment::{EquipmentStatus, ReportedValue},
    };
    let (dir, manifests, store) = plant_store();
    let world = store.load();
    let eq = world.equipment.first().expect("equipment");
    let key = ObjectKey::of(&eq.metadata);
    let at = Time(jiff::Timestamp::from_second(1_800_000_000).expect("time"));
    let reported = [989.859_794_120_780_9, 0.1, 1.0 / 3.0, 2.718_281_828_459_045e-7]
        .into_iter()
        .enumerate()
        .map(|(i, v)| ReportedValue { property: format!("p{i}"), value: Value::Float(v), observed_at: at.clone() })
        .collect();
    let status = EquipmentStatus { reported, ..Default::default() };
    let results = store.write_statuses(vec![StatusUpdate::Equipment(key.clone(), status.clone())]).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let from_memory = store.load();
    let eq = from_memory.equipment.iter().find(|e| ObjectKey::of(&e.metadata) == key).expect("equipment");
    assert_eq!(eq.status.as_ref(), Some(&status), "from memory");
    let from_files = FolderStore::open(&manifests, dir.path().join("state")).expect("reopen").load();
    let eq = from_files.equipment.iter().find(|e| ObjectKey::of(&e.metadata) == key).expect("equipment");
    assert_eq!(eq.status.as_ref(), Some(&status), "from the files");
}
