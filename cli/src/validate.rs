//! `kubectl shopfloor validate`.

use std::{io::Write, path::PathBuf, process::ExitCode};

use shopfloor_api::{manifest, validate};

pub fn run(paths: &[PathBuf], references: bool) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut objects = Vec::new();
    let mut refused = 0usize;
    for path in paths {
        for loaded in manifest::load_valid(path)? {
            match loaded {
                Ok((source, obj)) => {
                    writeln!(out, "ok       {} {} ({source})", obj.kind(), object_id(&obj))?;
                    objects.push(obj);
                }
                Err(e) => {
                    refused += 1;
                    writeln!(out, "refused  {e}")?;
                }
            }
        }
    }
    if references {
        for invalid in validate::references(&objects) {
            refused += 1;
            writeln!(out, "refused  {invalid}")?;
        }
    }
    let accepted = objects.len();
    writeln!(out, "{accepted} object(s) valid, {refused} refused")?;
    Ok(if refused == 0 && accepted > 0 {
        ExitCode::SUCCESS
    } else if refused == 0 {
        writeln!(out, "no shopfloor.io objects found")?;
        ExitCode::FAILURE
    } else {
        ExitCode::FAILURE
    })
}

fn object_id(obj: &manifest::Object) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name()),
        None => obj.name().to_owned(),
    }
}
