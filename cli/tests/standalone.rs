//! The plugin against a standalone controller's folders, as written by the controller.

use std::{path::Path, process::Command};

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-shopfloor"))
        .args(["--standalone", "plant", "--state-dir", "state"])
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir(dir)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    let plant = dir.path().join("plant");
    std::fs::create_dir_all(plant.clone()).expect("mkdir");
    for f in ["agents.yaml", "line-1.yaml", "slices.yaml"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plant").join(f), plant.join(f))
            .expect("copy");
    }
    let agent_state = dir.path().join("state/objects/edgeagents/plant-a");
    std::fs::create_dir_all(&agent_state).expect("mkdir");
    std::fs::write(
        agent_state.join("line-1.yaml"),
        "uid: u1\ngeneration: 1\nspecSha256: x\nstatus:\n  phase: Connected\n  connection: {rttMicros: 850}\n  config: {desiredRevision: abc, appliedRevision: abc}\n",
    )
    .expect("write");
    let eq_state = dir.path().join("state/objects/equipment/plant-a");
    std::fs::create_dir_all(&eq_state).expect("mkdir");
    std::fs::write(
        eq_state.join("infeed-conveyor.yaml"),
        "uid: u2\ngeneration: 1\nspecSha256: x\nstatus:\n  reported:\n  - {property: belt-speed, value: 1.19, observedAt: '2026-11-24T00:00:00Z'}\n",
    )
    .expect("write");
    dir
}

#[test]
fn agents_show_phase_rtt_and_revisions() {
    let dir = fixture();
    let (code, out, err) = run(dir.path(), &["agents"]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("line-1")).expect("line-1 row");
    for want in ["Connected", "0.85ms", "abc"] {
        assert!(line.contains(want), "{line}");
    }
    assert!(out.lines().any(|l| l.starts_with("line-2") && l.contains("Unknown")), "{out}");
}

#[test]
fn equipment_shows_desired_against_reported() {
    let dir = fixture();
    let (code, out, _) = run(dir.path(), &["equipment"]);
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.contains("belt-speed")).expect("row");
    assert!(line.contains("1.2") && line.contains("1.19") && line.contains("m/s"), "{line}");
}

#[test]
fn exec_without_wait_writes_a_valid_command_manifest() {
    let dir = fixture();
    let (code, out, err) =
        run(dir.path(), &["exec", "infeed-conveyor", "start", "speed=1.5", "--no-wait", "--timeout", "5s"]);
    assert_eq!(code, 0, "{err}");
    let name =
        out.trim().strip_prefix("controlcommand/").and_then(|s| s.strip_suffix(" created")).expect(&out).to_owned();
    let file = dir.path().join(format!("plant/cmd-{name}.yaml"));
    let (code, out, _) = Command::new(env!("CARGO_BIN_EXE_kubectl-shopfloor"))
        .args(["validate", "plant"])
        .current_dir(dir.path())
        .output()
        .map(|o| (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), ()))
        .expect("validate");
    assert!(file.exists());
    assert_eq!(code, 0, "the written command validates against the plant: {out}");
}

#[test]
fn exec_refuses_an_invalid_command_before_writing_anything() {
    let dir = fixture();
    let (code, _, err) = run(dir.path(), &["exec", "infeed-conveyor", "write", "property=belt-speed", "--no-wait"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("spec.parameters.value"), "{err}");
    assert!(
        std::fs::read_dir(dir.path().join("plant")).expect("ls").all(|e| !e
            .expect("e")
            .file_name()
            .to_string_lossy()
            .starts_with("cmd-"))
    );
}

#[test]
fn enroll_without_a_token_says_what_is_missing() {
    let dir = fixture();
    let (code, _, err) = run(dir.path(), &["enroll", "line-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("no bootstrap token for EdgeAgent plant-a/line-1"), "{err}");
}
