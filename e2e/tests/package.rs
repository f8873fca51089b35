//! The agent's Debian package (`packaging/deb/build.sh`): built with dpkg-deb around the agent
//! binary, installed with dpkg on this machine, checked (files, conffiles, the system user and
//! its state directory, `systemd-analyze verify` of the unit with no complaint), and purged
//! cleanly. It changes the machine it runs on, so it runs only when `SHOPFLOOR_TEST_DPKG=1` (CI
//! sets it) as root on a Debian-like host; without them it fails under CI=true and elsewhere says
//! what it did not run.

use std::process::Command;

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn skip(why: &str) {
    shopfloor_e2e::harness::unmet(why, "building, installing and checking the agent's Debian package");
}

#[test]
fn the_agent_package_installs_a_hardened_service_with_its_user_and_purges_cleanly() {
    if std::env::var("SHOPFLOOR_TEST_DPKG").as_deref() != Ok("1") {
        return skip("SHOPFLOOR_TEST_DPKG=1 (the test installs a package on this machine)");
    }
    if !run("id", &["-u"]).1.trim().eq("0") {
        return skip("root");
    }
    for tool in ["dpkg-deb", "dpkg", "systemd-analyze"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return skip(tool);
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().expect("tmp");
    let agent = shopfloor_e2e::harness::bin("shopfloor-agent");
    let (ok, deb) = run(
        root.join("packaging/deb/build.sh").to_str().expect("path"),
        &[agent.to_str().expect("path"), out.path().to_str().expect("path")],
    );
    assert!(ok, "build: {deb}");
    let deb = deb.trim().to_owned();

    let (ok, contents) = run("dpkg-deb", &["--contents", &deb]);
    assert!(ok, "{contents}");
    for path in [
        "./usr/bin/shopfloor-agent",
        "./lib/systemd/system/shopfloor-agent.service",
        "./usr/lib/sysusers.d/shopfloor-agent.conf",
        "./etc/shopfloor/agent.yaml",
        "./etc/shopfloor/envelope.yaml",
        "./usr/share/doc/shopfloor-agent/README.Debian",
        "./usr/share/doc/shopfloor-agent/slices.conf",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} is in the package:\n{contents}");
    }
    assert!(!contents.contains("sim"), "no simulator in the production package:\n{contents}");

    // A leftover from an interrupted run would hide what this install does.
    let _ = run("dpkg", &["--purge", "shopfloor-agent"]);
    let (ok, log) = run("dpkg", &["-i", &deb]);
    assert!(ok, "install: {log}");
    let installed = std::panic::catch_unwind(|| {
        let (ok, user) = run("getent", &["passwd", "shopfloor"]);
        assert!(ok && user.contains("/var/lib/shopfloor-agent") && user.contains("nologin"), "the user: {user}");
        let (_, state) = run("stat", &["-c", "%U %a", "/var/lib/shopfloor-agent"]);
        assert_eq!(state.trim(), "shopfloor 700", "the state directory, ready for enrollment");
        let (ok, conffiles) = run("dpkg-query", &["-W", "-f=${Conffiles}", "shopfloor-agent"]);
        assert!(
            ok && conffiles.contains("/etc/shopfloor/agent.yaml") && conffiles.contains("/etc/shopfloor/envelope.yaml"),
            "{conffiles}"
        );
        let (ok, verify) = run("systemd-analyze", &["verify", "/lib/systemd/system/shopfloor-agent.service"]);
        assert!(ok && verify.trim().is_empty(), "systemd-analyze verify has something to say:\n{verify}");
        let unit = std::fs::read_to_string("/lib/systemd/system/shopfloor-agent.service").expect("unit");
        for line in
            ["User=shopfloor", "StateDirectory=shopfloor-agent", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"]
        {
            assert!(unit.contains(line), "the unit has {line:?}");
        }
        assert!(!unit.contains("AmbientCapabilities"), "CAP_NET_ADMIN only through the slices drop-in");
        let (ok, version) = run("/usr/bin/shopfloor-agent", &["--version"]);
        assert!(ok && version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    });
    let (ok, log) = run("dpkg", &["--purge", "shopfloor-agent"]);
    if let Err(panic) = installed {
        std::panic::resume_unwind(panic);
    }
    assert!(ok, "purge: {log}");
    for gone in [
        "/usr/bin/shopfloor-agent",
        "/lib/systemd/system/shopfloor-agent.service",
        "/etc/shopfloor/agent.yaml",
        "/var/lib/shopfloor-agent",
    ] {
        assert!(!std::path::Path::new(gone).exists(), "{gone} is removed by the purge");
    }
}
