//! `kubectl shopfloor validate` as an operator runs it.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-shopfloor"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn example_plant_is_accepted() {
    let (code, out, _) = run(&["validate", "examples/plant"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok       Equipment plant-a/press-plc"), "{out}");
    assert!(out.trim_end().ends_with("0 refused"), "{out}");
}

#[test]
fn every_invalid_manifest_is_refused_in_the_plant_context() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/invalid");
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    for file in files {
        let file = file.to_str().expect("utf-8 path");
        let (code, out, err) = run(&["validate", "examples/plant", file]);
        assert_eq!(code, 1, "{file} should be refused:\n{out}{err}");
        assert!(out.contains("refused"), "{out}");
        assert!(out.contains("1 refused"), "{file}: only the invalid object is refused:\n{out}");
    }
}

#[test]
fn unreadable_path_is_an_error_not_a_pass() {
    let (code, _, err) = run(&["validate", "examples/no-such-folder"]);
    assert_eq!(code, 2);
    assert!(err.contains("examples/no-such-folder"), "{err}");
}

#[test]
fn a_folder_without_shopfloor_objects_fails() {
    let (code, out, _) = run(&["validate", "examples/plant/00-namespace.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no shopfloor.io objects found"), "{out}");
}
