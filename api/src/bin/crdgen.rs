//! Writes the CRDs to `crds/` and to the Helm chart; `--check` only reports drift.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut drifted = Vec::new();
    for dir in ["crds", "charts/shopfloor/crds"] {
        let dir = root.join(dir);
        for (file, crd) in shopfloor_api::crds::all() {
            let path = dir.join(file);
            let want = shopfloor_api::crds::render(&crd);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(want.as_str()) {
                continue;
            }
            if check {
                drifted.push(path);
            } else if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, want)) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if drifted.is_empty() {
        return ExitCode::SUCCESS;
    }
    for p in &drifted {
        eprintln!("crdgen: {} is out of date", p.display());
    }
    eprintln!("run `cargo run -p shopfloor-api --bin crdgen` and commit the result");
    ExitCode::FAILURE
}
