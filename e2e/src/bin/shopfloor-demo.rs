//! The one-command demo: a whole plant controlled end to end on this machine, no cluster.
//!
//!     cargo run -q -p shopfloor-e2e --bin shopfloor-demo [-- --keep-running]

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    sync::Arc,
    time::{Duration, Instant},
};

use shopfloor_e2e::harness::{Scenario, eventually};

struct Ui {
    colour: bool,
}

impl Ui {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_owned() }
    }
    fn step(&self, s: &str) {
        println!("\n{} {}", self.paint("1;36", "▶"), self.paint("1", s));
    }
    fn ok(&self, s: &str) {
        println!("  {} {s}", self.paint("32", "✔"));
    }
    fn bad(&self, s: &str) {
        println!("  {} {s}", self.paint("31", "✘"));
    }
    fn show(&self, text: &str) {
        for line in text.lines() {
            println!("    {line}");
        }
    }
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("-")
}

fn demo(s: &Scenario, ui: &Ui, keep_running: bool) -> Result<(), String> {
    let started = Instant::now();
    let mut summary: Vec<(String, bool)> = Vec::new();
    ui.step("Building the binaries (first run takes a few minutes)");
    let _ = shopfloor_e2e::harness::bin_dir();
    ui.ok("controller, agent, Modbus and OPC UA simulators and kubectl plugin are built");

    ui.step("Starting a simulator for every machine: Modbus TCP, and OPC UA for the packer");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/plant");
    std::fs::create_dir_all(s.path("plant")).map_err(|e| e.to_string())?;
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(examples).map_err(|e| e.to_string())? {
        let p = entry.map_err(|e| e.to_string())?.path();
        files.insert(
            p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned(),
            std::fs::read_to_string(&p).map_err(|e| e.to_string())?,
        );
    }
    // name, port in the example, simulator options (process values following setpoints)
    let sims: [(&str, u16, &[&str]); 4] = [
        ("press-plc", 15020, &["--set", "input:0=1850", "--set", "discrete:0=1"]),
        ("infeed-conveyor", 15021, &["--set", "input:0=420"]),
        ("oven-temperature", 15022, &["--mirror", "0:0:2", "--set", "input:2=640"]),
        ("air-compressor", 15023, &["--mirror", "100:100", "--set", "discrete:0=1"]),
    ];
    for (name, port, opts) in sims {
        let addr = s.modbus_sim(name, opts);
        let real_port = addr.rsplit(':').next().unwrap_or_default().to_owned();
        for text in files.values_mut() {
            *text = text.replace(&format!("port: {port}"), &format!("port: {real_port}"));
        }
        ui.ok(&format!("{name}: Modbus TCP on {addr}"));
    }

    // The packer on line-1 speaks OPC UA: its simulator's machine has variables, a temperature
    // that follows the speed, and the StartJob method.
    let log = s.spawn(
        "opcua-sim",
        "shopfloor-opcua-sim",
        &["--listen", "127.0.0.1:0", "--pki-dir", "opcua-sim-pki", "--write-log", "opcua-writes.jsonl"],
    );
    let line = shopfloor_e2e::harness::wait_for_line(&log, "OPC UA simulator at", Duration::from_secs(60));
    let url = line.split_whitespace().find(|w| w.starts_with("opc.tcp://")).ok_or("no OPC UA endpoint")?.to_owned();
    let packer = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/opcua/packer.yaml");
    let packer = std::fs::read_to_string(packer).map_err(|e| e.to_string())?;
    files.insert("packer.yaml".into(), packer.replace("opc.tcp://127.0.0.1:4840/", &url));
    ui.ok(&format!("packer: OPC UA on {url} (Basic256Sha256, SignAndEncrypt)"));
    for (name, text) in &files {
        std::fs::write(s.path(&format!("plant/{name}")), text).map_err(|e| e.to_string())?;
    }

    ui.step("Starting the controller in standalone mode on examples/plant/");
    let endpoint = s.controller();
    ui.ok(&format!("QUIC endpoint with mutual TLS on {endpoint}; state in {}", s.path("state").display()));

    ui.step("Enrolling one agent per EdgeAgent with its single-use bootstrap token");
    // line-1 reaches the controller through a userspace UDP proxy, so that the demo can delay
    // and cut its link.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut line1_link = None;
    for agent in ["line-1", "line-2", "utilities"] {
        std::fs::write(
            s.path(&format!("envelope-{agent}.yaml")),
            "equipment:\n  infeed-conveyor:\n    properties:\n      belt-speed: {max: 2.0}\n",
        )
        .map_err(|e| e.to_string())?;
        if agent == "line-1" {
            line1_link = Some(s.agent_behind_proxy(&rt, agent, &endpoint, 1));
        } else {
            s.enroll(agent);
            s.agent(agent);
        }
        ui.ok(&format!("{agent}: key generated on the host, certificate issued, agent running"));
    }
    let line1_link = line1_link.ok_or("line-1 has no link")?;

    ui.step("Waiting for every agent to connect and apply its configuration");
    let all_in_sync = || {
        ["line-1", "line-2", "utilities"].iter().all(|a| {
            let st = s.status("edgeagents", a);
            let d = st["config"]["desiredRevision"].as_str().map(str::to_owned);
            st["phase"] == "Connected" && d.is_some() && d.as_deref() == st["config"]["appliedRevision"].as_str()
        })
    };
    eventually("all agents connected and configured", Duration::from_secs(60), || all_in_sync().then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    ui.show(&s.plugin(&["agents"]).1);
    summary.push(("3 agents enrolled, connected over QUIC/mTLS, configuration applied".into(), true));

    ui.step("Trusting the packer's OPC UA server, as its plant engineer does once (docs/agent.md)");
    // The agent refuses a server it does not trust and saves its certificate in rejected/; the
    // engineer checks it and moves it into trusted/ with its name unchanged.
    let pki = s.path("agent-line-1/opcua");
    let rejected = eventually("the packer's certificate in rejected/", Duration::from_secs(120), || {
        std::fs::read_dir(pki.join("rejected")).ok()?.flatten().next()
    });
    let refused =
        shopfloor_e2e::harness::wait_for_line(&s.path("agent-line-1.log"), "is not trusted", Duration::from_secs(30));
    let reason = refused.find("the OPC UA server").map_or(refused.as_str(), |i| &refused[i..]);
    ui.ok(&format!("first session refused, the agent's log says: {}", reason.trim()));
    std::fs::rename(rejected.path(), pki.join("trusted").join(rejected.file_name())).map_err(|e| e.to_string())?;
    ui.ok(&format!("moved {} into trusted/", rejected.file_name().to_string_lossy()));
    let temperature = eventually("the packer's temperature reported", Duration::from_secs(60), || {
        s.status("equipment", "packer")["reported"]
            .as_sequence()?
            .iter()
            .find(|r| r["property"] == "temperature")
            .and_then(|r| r["value"].as_f64())
    });
    let subscribed = std::fs::read_to_string(s.path("agent-line-1.log"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("packer") && l.contains("values arrive by subscription"));
    ui.ok(&format!(
        "session open; temperature {temperature} °C reported{}",
        if subscribed { ", its changes pushed by an OPC UA subscription" } else { "" }
    ));
    summary.push(("packer's OPC UA server trusted; its values arrive by subscription".into(), subscribed));

    ui.step("Equipment: desired setpoints against the values read back from the machines");
    ui.show(&s.plugin(&["equipment"]).1);

    ui.step("Changing a setpoint by editing a manifest: infeed-conveyor belt-speed 1.2 → 1.8 m/s");
    let line1 = s.path("plant/line-1.yaml");
    let text = std::fs::read_to_string(&line1).map_err(|e| e.to_string())?;
    std::fs::write(&line1, text.replacen("desired: 1.2", "desired: 1.8", 1)).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let reconciled = eventually("the new setpoint applied and reported", Duration::from_secs(30), || {
        let st = s.status("equipment", "infeed-conveyor");
        st["reported"]
            .as_sequence()?
            .iter()
            .any(|r| r["property"] == "belt-speed" && r["value"].as_f64() == Some(1.8))
            .then_some(t.elapsed())
    });
    ui.ok(&format!(
        "reconciled and read back in {:.0} ms: new revision pushed to line-1 only",
        reconciled.as_secs_f64() * 1e3
    ));
    summary.push((format!("setpoint change reconciled in {:.0} ms", reconciled.as_secs_f64() * 1e3), true));

    ui.step("Running ControlCommands through `kubectl shopfloor exec`");
    let commands: [(&str, &[&str], &str); 5] = [
        ("press-plc: set the cycle time to 15 s", &["exec", "press-plc", "set-cycle-time", "seconds=15"], "Succeeded"),
        (
            "robot-cell: run program 7 at 150 mm/s",
            &["exec", "robot-cell", "run-program", "program=7", "speed=150"],
            "Succeeded",
        ),
        ("oven-temperature: 190 °C", &["exec", "oven-temperature", "set-temperature", "celsius=190"], "Succeeded"),
        (
            "air-compressor: read the discharge pressure",
            &["exec", "air-compressor", "read", "property=discharge-pressure"],
            "Succeeded",
        ),
        (
            "packer: start job 42 at 2.0 m/s (OPC UA method StartJob)",
            &["exec", "packer", "start-job", "program=42", "speed=2.0"],
            "Succeeded",
        ),
    ];
    for (what, args, want) in commands {
        let (_, out) = s.plugin(args);
        let phase = field(&out, "phase:");
        let outputs = field(&out, "outputs:");
        let outputs = if outputs == "-" { String::new() } else { format!(" — outputs: {outputs}") };
        let line = format!("{what}: {phase}{outputs} — {}", field(&out, "latency:"));
        if phase == want {
            ui.ok(&line)
        } else {
            ui.bad(&format!("{line}\n{out}"))
        }
        summary.push((format!("{what}: {phase}"), phase == want));
    }

    ui.step("The packer after StartJob: its new values arrive by subscription, not by polling");
    let reported = |name: &str| {
        s.status("equipment", "packer")["reported"]
            .as_sequence()
            .and_then(|r| r.iter().find(|r| r["property"] == name).map(|r| r["value"].clone()))
    };
    let started_job = Instant::now();
    eventually("the packer running after StartJob", Duration::from_secs(30), || {
        (reported("running")?.as_bool()? && reported("jobs")?.as_i64()? >= 1).then_some(())
    });
    let speed = reported("speed").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let jobs = reported("jobs").and_then(|v| v.as_i64()).unwrap_or(0);
    ui.ok(&format!(
        "running=true, speed {speed} m/s, jobs {jobs}: in the Equipment's status {:.1} s after the command finished",
        started_job.elapsed().as_secs_f64()
    ));
    summary.push(("packer's job started by an OPC UA method, its values pushed back".into(), jobs >= 1));

    ui.step("A command outside an interlock is refused before it reaches the equipment");
    let (_, out) = s.plugin(&["exec", "infeed-conveyor", "write", "property=belt-speed", "value=2.2"]);
    let phase = field(&out, "phase:");
    ui.ok(&format!("{phase}: {}", field(&out, "result:")));
    summary.push(("belt-speed 2.2 m/s refused by the plant's safety envelope (max 2.0)".into(), phase == "Rejected"));

    ui.step("Commands over an action's rate limit are refused (press-plc set-cycle-time: 6 a minute, burst 1)");
    // The bucket refills one command every 10 s: if the steps since the first change took that
    // long, one more passes before the refusal.
    let mut out = String::new();
    for seconds in ["16", "17"] {
        out = s.plugin(&["exec", "press-plc", "set-cycle-time", &format!("seconds={seconds}")]).1;
        if field(&out, "phase:") == "Rejected" {
            break;
        }
    }
    let phase = field(&out, "phase:");
    ui.ok(&format!("{phase}: {}", field(&out, "result:")));
    summary.push((
        "a second cycle-time change within 10 s refused by the action's rate limit".into(),
        phase == "Rejected",
    ));

    ui.step("A link over its slice's delay budget refuses commands that need it (40 ms each way, 10 ms budget)");
    line1_link.set(shopfloor_e2e::proxy::Impairment { delay: Duration::from_millis(40), ..Default::default() });
    eventually("line-1's link over its budget", Duration::from_secs(60), || {
        let conds = s.status("equipment", "infeed-conveyor")["conditions"].as_sequence()?.clone();
        conds.iter().any(|c| c["type"] == "LinkWithinBudget" && c["status"] == "False").then_some(())
    });
    let (_, out) = s.plugin(&["exec", "infeed-conveyor", "write", "property=belt-speed", "value=1.5"]);
    let phase = field(&out, "phase:");
    ui.ok(&format!("{phase}: {}", field(&out, "result:")));
    summary.push(("a command over a link outside the URLLC slice's 10 ms budget refused".into(), phase == "Rejected"));
    line1_link.set(shopfloor_e2e::proxy::Impairment::default());
    eventually("line-1's link within its budget again", Duration::from_secs(60), || {
        let conds = s.status("equipment", "infeed-conveyor")["conditions"].as_sequence()?.clone();
        conds.iter().any(|c| c["type"] == "LinkWithinBudget" && c["status"] == "True").then_some(())
    });
    ui.ok("delay removed: the link is within its budget again");

    ui.step("Cutting line-1's link: the infeed conveyor's fail-safe stops it after 3 s, on the agent alone");
    let running = || {
        s.status("equipment", "infeed-conveyor")["reported"]
            .as_sequence()
            .and_then(|r| r.iter().find(|v| v["property"] == "running").and_then(|v| v["value"].as_bool()))
    };
    let stops_before = s.sim_writes("infeed-conveyor", "coil", 0).len();
    line1_link.partition(true);
    let cut = Instant::now();
    let stopped = eventually("the conveyor stopped by its fail-safe", Duration::from_secs(15), || {
        let writes = s.sim_writes("infeed-conveyor", "coil", 0);
        (writes.len() > stops_before && writes.last() == Some(&vec![0])).then(|| cut.elapsed())
    });
    ui.ok(&format!(
        "running=false written to the conveyor's PLC {:.1} s after the link was cut",
        stopped.as_secs_f64()
    ));
    line1_link.partition(false);
    let engaged = eventually("the FailSafe condition", Duration::from_secs(60), || {
        let conds = s.status("equipment", "infeed-conveyor")["conditions"].as_sequence()?.clone();
        let c = conds.iter().find(|c| c["type"] == "FailSafe" && c["status"] == "True")?;
        c["message"].as_str().map(str::to_owned)
    });
    ui.ok(&format!("link back; FailSafe=True: {engaged}"));
    let (_, out) = s.plugin(&["exec", "infeed-conveyor", "start", "speed=1.0"]);
    let refused = field(&out, "result:").starts_with("FailSafeEngaged");
    ui.ok(&format!("start while engaged: {}: {}", field(&out, "phase:"), field(&out, "result:")));
    let (_, out) = s.plugin(&["exec", "infeed-conveyor", "resume-fail-safe"]);
    let resumed = field(&out, "phase:") == "Succeeded";
    ui.ok(&format!("an operator resumes it: {}: {}", field(&out, "phase:"), field(&out, "result:")));
    let back = eventually("the conveyor running again", Duration::from_secs(30), || running().filter(|r| *r));
    ui.ok(&format!("desired setpoints applied again: running={back}"));
    summary.push((
        format!(
            "fail-safe stopped the conveyor {:.1} s after the link was cut; held until resumed",
            stopped.as_secs_f64()
        ),
        stopped <= Duration::from_secs(4) && refused && resumed,
    ));

    ui.step("A command to an offline agent waits for its deadline, then expires");
    s.kill("agent-utilities");
    eventually("utilities disconnected", Duration::from_secs(15), || {
        (s.status("edgeagents", "utilities")["phase"] == "Disconnected").then_some(())
    });
    let (_, out) = s.plugin(&["exec", "chiller", "write", "property=supply-setpoint", "value=9", "--timeout", "2s"]);
    let phase = field(&out, "phase:");
    ui.ok(&format!("{phase}: {}", field(&out, "result:")));
    summary.push(("command to the offline utilities agent expired at its 2 s deadline".into(), phase == "Expired"));
    s.agent("utilities");
    eventually("utilities back", Duration::from_secs(60), || all_in_sync().then_some(()));
    ui.ok("utilities restarted on its last configuration and reconnected");

    ui.step("Summary");
    let failed = summary.iter().filter(|(_, ok)| !ok).count();
    for (line, ok) in &summary {
        if *ok { ui.ok(line) } else { ui.bad(line) }
    }
    println!(
        "\n  {} in {:.1} s",
        if failed == 0 {
            ui.paint("1;32", "plant controlled end to end")
        } else {
            ui.paint("1;31", &format!("{failed} step(s) failed"))
        },
        started.elapsed().as_secs_f64()
    );
    if keep_running {
        println!(
            "\n  Still running (Ctrl-C stops everything). Try:\n    {} --standalone {} --state-dir {} agents",
            shopfloor_e2e::harness::bin("kubectl-shopfloor").display(),
            s.path("plant").display(),
            s.path("state").display()
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if failed == 0 { Ok(()) } else { Err(format!("{failed} step(s) failed")) }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let keep_running = std::env::args().any(|a| a == "--keep-running");
    let ui = Ui { colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() };
    let scenario = Arc::new(Scenario::new());
    let s = scenario.clone();
    let run = tokio::task::spawn_blocking(move || demo(&s, &ui, keep_running));
    let code = tokio::select! {
        r = run => match r {
            Ok(Ok(())) => std::process::ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("demo failed: {e}");
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("demo failed: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping every process the demo started");
            std::process::ExitCode::from(130)
        }
    };
    scenario.kill_all();
    code
}
