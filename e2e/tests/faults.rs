//! Faults: the controller dies while commands are in flight, behind a network that drops
//! everything (the userspace UDP proxy, since tc netem is not available).

use std::time::Duration;

use shopfloor_e2e::{
    fixtures,
    harness::{Scenario, eventually},
};

fn command(i: u32) -> String {
    format!(
        "apiVersion: shopfloor.io/v1alpha1\nkind: ControlCommand\nmetadata: {{name: set-{i}, namespace: plant-a}}\n\
         spec: {{equipmentRef: {{name: conveyor}}, action: write, parameters: {{property: belt-speed, value: 1.{i:02}}}, timeout: 60s}}\n"
    )
}

#[test]
fn a_controller_killed_with_commands_dispatched_ends_each_with_exactly_one_execution() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    let modbus = s.modbus_sim("sim", &[]);
    let port = modbus.rsplit(':').next().expect("port").to_owned();
    std::fs::write(s.path("plant/plant.yaml"), fixtures::modbus_conveyor(&port, "1s")).expect("plant");
    let endpoint = s.controller();
    // The agent reaches the controller only through the proxy.
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 7);
    eventually("connected", Duration::from_secs(30), || {
        (s.status("edgeagents", "line-1")["phase"] == "Connected").then_some(())
    });

    // Partition, then ask for five commands: the controller dispatches them into the void.
    proxy.partition(true);
    let n = 5;
    for i in 1..=n {
        std::fs::write(s.path(&format!("plant/cmd-{i}.yaml")), command(i)).expect("command");
    }
    eventually("all commands recorded as Dispatched", Duration::from_secs(4), || {
        (1..=n).all(|i| s.status("controlcommands", &format!("set-{i}"))["phase"] == "Dispatched").then_some(())
    });
    s.kill("controller");
    assert!(s.sim_writes("sim", "holding", 0).is_empty(), "nothing reached the equipment yet");

    // Heal and restart: the new controller re-sends each command with its id.
    proxy.partition(false);
    s.controller_on(&endpoint);
    for i in 1..=n {
        let name = format!("set-{i}");
        eventually(&format!("{name} succeeded"), Duration::from_secs(60), || {
            (s.status("controlcommands", &name)["phase"] == "Succeeded").then_some(())
        });
        let st = s.status("controlcommands", &name);
        assert!(st["attempts"].as_i64().unwrap_or(0) >= 2, "{name} was re-sent: {st:?}");
    }
    let writes = s.sim_writes("sim", "holding", 0);
    for i in 1..=n {
        let value = 100 + u16::try_from(i).expect("small");
        assert_eq!(
            writes.iter().filter(|w| w.as_slice() == [value]).count(),
            1,
            "command set-{i} wrote exactly once: {writes:?}"
        );
    }
    drop(proxy);
}

/// Run with `SHOPFLOOR_E2E_KUBECONFIG=<kubeconfig of a disposable cluster> cargo test -p
/// shopfloor-e2e --test faults -- --ignored`.
#[test]
#[ignore = "needs SHOPFLOOR_E2E_KUBECONFIG: a disposable Kubernetes 1.35–1.37 cluster"]
fn against_a_real_cluster_when_configured() {
    let path = std::env::var_os("SHOPFLOOR_E2E_KUBECONFIG")
        .expect("SHOPFLOOR_E2E_KUBECONFIG names the kubeconfig of a disposable cluster to run this flow on");
    cluster::run(std::path::Path::new(&path));
}

mod cluster {
    //! The flow through a real API server: CRDs from `crds/`, a fresh namespace, the chart's RBAC
    //! for that namespace (rendered by Helm's engine) and the controller run locally as the
    //! chart's ServiceAccount with `--namespaces`, the example plant (its Modbus equipment on
    //! simulators), the CRD validation refusing an invalid manifest, an agent enrolled with the
    //! token the plugin prints, statuses, a command run with `kubectl shopfloor exec`, a command
    //! queued while the agent is down and delivered when it is back, the deletion of a connected
    //! agent, and two replicas: the leader killed, the standby taking over and releasing its
    //! Lease on SIGTERM. Everything created is deleted afterwards.

    use std::{path::Path, process::Command, time::Duration};

    use shopfloor_e2e::harness::{Scenario, bin, eventually};

    fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new("kubectl").env("KUBECONFIG", kubeconfig).args(args).output().expect("kubectl on PATH");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn plugin(kubeconfig: &Path, ns: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new(bin("kubectl-shopfloor"))
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .args(["-n", ns, "--controller-namespace", ns])
            .args(args)
            .output()
            .expect("plugin");
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn jsonpath(kubeconfig: &Path, ns: &str, what: &str, path: &str) -> String {
        let (ok, out) = kubectl(kubeconfig, &["get", what, "-n", ns, "-o", &format!("jsonpath={path}")]);
        if ok { out.trim().to_owned() } else { String::new() }
    }

    pub fn run(kubeconfig: &Path) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let ns = format!("shopfloor-e2e-{}", std::process::id());
        let (ok, out) = kubectl(kubeconfig, &["apply", "--server-side", "-f", &format!("{root}/crds")]);
        assert!(ok, "CRDs rejected by the API server: {out}");
        let (ok, out) = kubectl(kubeconfig, &["create", "namespace", &ns]);
        assert!(ok, "{out}");
        let cleanup = scopeguard(kubeconfig, &ns);
        let s = Scenario::new();
        // The controller runs with exactly the chart's RBAC, scoped to this namespace.
        let rbac = Command::new("python3")
            .args([&format!("{root}/charts/tests/render.py"), "rbac", &ns])
            .output()
            .expect("python3 with helm-python-sdk");
        assert!(rbac.status.success(), "rendering the chart's RBAC: {}", String::from_utf8_lossy(&rbac.stderr));
        std::fs::write(s.path("rbac.yaml"), &rbac.stdout).expect("write");
        let (ok, out) = kubectl(kubeconfig, &["apply", "-f", s.path("rbac.yaml").to_str().expect("utf-8")]);
        assert!(ok, "the chart's RBAC: {out}");
        let sa_kubeconfig = service_account_kubeconfig(kubeconfig, &ns, &s);
        // line-1's Modbus equipment, on simulators at free ports.
        let press = s.modbus_sim("press", &[]);
        let infeed = s.modbus_sim("infeed", &[]);
        let port = |addr: &str| addr.rsplit(':').next().expect("port").to_owned();
        for f in ["agents.yaml", "slices.yaml", "line-1.yaml", "line-2.yaml", "utilities.yaml"] {
            let text = std::fs::read_to_string(format!("{root}/examples/plant/{f}"))
                .expect("example")
                .replace("namespace: plant-a", &format!("namespace: {ns}"))
                .replace("port: 15020", &format!("port: {}", port(&press)))
                .replace("port: 15021", &format!("port: {}", port(&infeed)));
            let tmp = s.path(f);
            std::fs::write(&tmp, text).expect("write");
            let (ok, out) = kubectl(kubeconfig, &["apply", "-f", tmp.to_str().expect("utf-8")]);
            assert!(ok, "{f}: {out}");
        }
        let bad = std::fs::read_to_string(format!("{root}/examples/invalid/equipment-min-above-max.yaml"))
            .expect("fixture")
            .replace("namespace: plant-a", &format!("namespace: {ns}"));
        let tmp = s.path("bad.yaml");
        std::fs::write(&tmp, bad).expect("write");
        let (ok, out) = kubectl(kubeconfig, &["apply", "-f", tmp.to_str().expect("utf-8")]);
        assert!(!ok && out.contains("min must not exceed max"), "the CEL rule refuses it: {out}");

        // The rule that moved to the controller: the API server accepts the object, the
        // controller marks it Valid=False naming the field.
        let moved = std::fs::read_to_string(format!("{root}/examples/invalid/equipment-desired-above-max.yaml"))
            .expect("fixture")
            .replace("namespace: plant-a", &format!("namespace: {ns}"));
        std::fs::write(s.path("moved.yaml"), moved).expect("write");
        let (ok, out) = kubectl(kubeconfig, &["apply", "-f", s.path("moved.yaml").to_str().expect("utf-8")]);
        assert!(ok, "the API server accepts what only the controller can check: {out}");

        let quic = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|u| u.local_addr()).expect("free port");
        let listen = quic.to_string();
        let controller = |name: &str, replica: &str| {
            s.spawn_with_env(
                name,
                "shopfloor-controller",
                &[
                    "--namespace",
                    &ns,
                    "--namespaces",
                    &ns,
                    "--replica",
                    replica,
                    "--listen",
                    &listen,
                    "--http",
                    "127.0.0.1:0",
                ],
                &[("KUBECONFIG", sa_kubeconfig.as_os_str())],
            )
        };
        controller("controller", "e2e-a");
        eventually("EdgeAgent status written by the controller", Duration::from_secs(60), || {
            (jsonpath(kubeconfig, &ns, "edgeagent/line-1", "{.status.phase}") == "Pending").then_some(())
        });

        // Enroll with the command line the plugin prints, over the real enrollment path.
        let printed = eventually("the plugin prints the enrollment command", Duration::from_secs(30), || {
            let (code, out) = plugin(kubeconfig, &ns, &["enroll", "line-1", "--controller", &listen]);
            (code == 0).then_some(out)
        });
        let line = printed.lines().find(|l| l.starts_with("shopfloor-agent enroll")).expect("command line").to_owned();
        let mut args = vec!["--state-dir", "agent-line-1"];
        args.extend(line.split_whitespace().skip(1));
        let out = s.run("shopfloor-agent", &args);
        assert!(out.status.success(), "enrollment: {}", String::from_utf8_lossy(&out.stderr));
        s.agent("line-1");
        eventually("line-1 connected and holding its configuration", Duration::from_secs(60), || {
            let phase = jsonpath(kubeconfig, &ns, "edgeagent/line-1", "{.status.phase}");
            let applied = jsonpath(kubeconfig, &ns, "edgeagent/line-1", "{.status.config.appliedRevision}");
            let desired = jsonpath(kubeconfig, &ns, "edgeagent/line-1", "{.status.config.desiredRevision}");
            (phase == "Connected" && !applied.is_empty() && applied == desired).then_some(())
        });
        let (code, out) = plugin(kubeconfig, &ns, &["agents"]);
        assert!(code == 0 && out.contains("line-1") && out.contains("Connected"), "{out}");

        // A command through the API server: created by the plugin, run by the agent.
        let (code, out) =
            plugin(kubeconfig, &ns, &["exec", "infeed-conveyor", "start", "speed=1.5", "--timeout", "20s"]);
        assert_eq!(code, 0, "exec: {out}");
        assert!(out.contains("Succeeded"), "{out}");
        assert!(
            s.sim_writes("infeed", "holding", 0).contains(&vec![150]),
            "the conveyor's simulator saw belt-speed 1.5 m/s written: {:?}",
            s.sim_writes("infeed", "holding", 0)
        );
        let phase = jsonpath(kubeconfig, &ns, "controlcommands", "{.items[*].status.phase}");
        assert_eq!(phase, "Succeeded", "the ControlCommand's status in the API server");
        let bad = eventually("the controller refuses what CEL cannot see", Duration::from_secs(30), || {
            let v = jsonpath(
                kubeconfig,
                &ns,
                "equipment/bad-equipment",
                "{.status.conditions[?(@.type==\"Valid\")].status}",
            );
            (v == "False").then_some(v)
        });
        assert_eq!(bad, "False");

        // A command created while the agent is down is delivered as soon as it is back.
        s.kill("agent-line-1");
        eventually("line-1 disconnected", Duration::from_secs(30), || {
            (jsonpath(kubeconfig, &ns, "edgeagent/line-1", "{.status.phase}") == "Disconnected").then_some(())
        });
        let (code, out) = plugin(
            kubeconfig,
            &ns,
            &["exec", "infeed-conveyor", "start", "speed=1.2", "--timeout", "90s", "--no-wait"],
        );
        assert_eq!(code, 0, "exec --no-wait: {out}");
        std::thread::sleep(Duration::from_secs(2));
        s.agent("line-1");
        eventually("the queued command ran after the reconnect", Duration::from_secs(30), || {
            s.sim_writes("infeed", "holding", 0).contains(&vec![120]).then_some(())
        });
        let events =
            kubectl(kubeconfig, &["get", "events.events.k8s.io", "-n", &ns, "-o", "jsonpath={.items[*].reason}"]).1;
        for reason in ["Accepted", "Succeeded", "Connected", "Disconnected"] {
            assert!(events.contains(reason), "event {reason} published: {events}");
        }
        // The agents run the noop slice backend, which applies no slice: their configuration is
        // reported failed for the slice, so the Event is ConfigurationFailed, never Applied.
        assert!(events.contains("ConfigurationFailed"), "the configuration's outcome published: {events}");

        // Deleting a connected agent closes its connection and the object goes.
        let (ok, out) = kubectl(kubeconfig, &["delete", "edgeagent", "line-1", "-n", &ns, "--wait=false"]);
        assert!(ok, "{out}");
        eventually("the deleted agent is gone", Duration::from_secs(30), || {
            kubectl(kubeconfig, &["get", "edgeagent", "line-1", "-n", &ns]).1.contains("NotFound").then_some(())
        });

        // Two replicas: the leader killed, the standby takes over; on SIGTERM it releases the Lease.
        controller("controller-b", "e2e-b");
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(jsonpath(kubeconfig, &ns, "lease/shopfloor-controller", "{.spec.holderIdentity}"), "e2e-a");
        s.kill("controller");
        eventually("the standby leads", Duration::from_secs(30), || {
            (jsonpath(kubeconfig, &ns, "lease/shopfloor-controller", "{.spec.holderIdentity}") == "e2e-b").then_some(())
        });
        let pid = s.procs.lock().expect("procs").iter().find(|p| p.name == "controller-b").expect("b").pid();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        eventually("the Lease released on SIGTERM", Duration::from_secs(15), || {
            jsonpath(kubeconfig, &ns, "lease/shopfloor-controller", "{.spec.holderIdentity}").is_empty().then_some(())
        });
        drop(cleanup);
    }

    /// A kubeconfig for the chart's ServiceAccount in `ns`, with a short-lived token.
    fn service_account_kubeconfig(kubeconfig: &Path, ns: &str, s: &Scenario) -> std::path::PathBuf {
        let view = |path: &str| {
            kubectl(kubeconfig, &["config", "view", "--minify", "--raw", "-o", &format!("jsonpath={path}")]).1
        };
        let server = view("{.clusters[0].cluster.server}");
        let ca = view("{.clusters[0].cluster.certificate-authority-data}");
        let (ok, token) =
            kubectl(kubeconfig, &["create", "token", "shopfloor-controller", "-n", ns, "--duration", "1h"]);
        assert!(ok, "a token for the chart's ServiceAccount: {token}");
        let trust = if ca.trim().is_empty() {
            "insecure-skip-tls-verify: true".to_owned()
        } else {
            format!("certificate-authority-data: {}", ca.trim())
        };
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: e2e, cluster: {{server: \"{}\", {trust}}}}}]\n\
             users: [{{name: sa, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: sa, context: {{cluster: e2e, user: sa, namespace: {ns}}}}}]\ncurrent-context: sa\n",
            server.trim(),
            token.trim()
        );
        let path = s.path("sa.kubeconfig");
        std::fs::write(&path, config).expect("write");
        path
    }

    struct Cleanup(std::path::PathBuf, String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = kubectl(&self.0, &["delete", "namespace", &self.1, "--wait=false"]);
        }
    }

    fn scopeguard(kubeconfig: &Path, ns: &str) -> Cleanup {
        Cleanup(kubeconfig.to_owned(), ns.to_owned())
    }
}

#[test]
fn loss_and_a_partition_do_not_lose_commands_or_telemetry() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    // Telemetry is followed through `observedAt` of a value that does not change, which the
    // controller otherwise refreshes in the status once a minute.
    s.set_env("SHOPFLOOR_STATUS_REFRESH", "1s");
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    let modbus = s.modbus_sim("sim", &[]);
    let port = modbus.rsplit(':').next().expect("port").to_owned();
    let plant = fixtures::modbus_conveyor(&port, "200ms");
    std::fs::write(s.path("plant/plant.yaml"), plant).expect("plant");
    let endpoint = s.controller();
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 11);
    eventually("connected", Duration::from_secs(30), || {
        (s.status("edgeagents", "line-1")["phase"] == "Connected").then_some(())
    });

    // 10% loss each way, some delay and jitter: every command still succeeds.
    proxy.set(shopfloor_e2e::proxy::Impairment {
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(5),
        loss: 0.10,
        ..Default::default()
    });
    for i in 1..=10 {
        let (code, out) = s.plugin(&[
            "exec",
            "conveyor",
            "write",
            "property=belt-speed",
            &format!("value=1.{i:02}"),
            "--timeout",
            "20s",
        ]);
        assert_eq!(code, 0, "command {i} under 10% loss: {out}");
    }
    assert!(proxy.counters.dropped.load(std::sync::atomic::Ordering::Relaxed) > 0, "the proxy did drop datagrams");

    // A 20 s partition: the agent keeps the equipment and buffers telemetry.
    proxy.set(shopfloor_e2e::proxy::Impairment::default());
    let last_before = eventually("a reported value", Duration::from_secs(10), || {
        s.status("equipment", "conveyor")["reported"][0]["observedAt"].as_str().map(str::to_owned)
    });
    proxy.partition(true);
    std::thread::sleep(Duration::from_secs(20));
    let healed = std::time::Instant::now();
    proxy.partition(false);
    eventually("reconnected after the partition", Duration::from_secs(60), || {
        (s.status("edgeagents", "line-1")["phase"] == "Connected").then_some(())
    });
    println!("reconnected {:?} after the partition healed", healed.elapsed());
    eventually("telemetry from during the partition delivered", Duration::from_secs(20), || {
        let now = s.status("equipment", "conveyor")["reported"][0]["observedAt"].as_str().map(str::to_owned)?;
        (now > last_before).then_some(())
    });
    let writes = s.sim_writes("sim", "holding", 0);
    assert_eq!(writes.len(), 10, "each command wrote once, none during the partition: {writes:?}");
}

/// The conveyor of [`fixtures::modbus_conveyor`] on a URLLC slice with a 20 ms packet delay
/// budget.
fn urllc_slice() -> &'static str {
    "apiVersion: shopfloor.io/v1alpha1\nkind: NetworkSlice\nmetadata: {name: control-urllc, namespace: plant-a}\n\
     spec:\n  snssai: {sst: 2}\n  dnn: plant\n  qos: {fiveQi: 82, packetDelayBudget: 20ms, gbr: {uplink: 1Mbps, downlink: 1Mbps}, arp: {priorityLevel: 1, preemptionCapability: MayPreempt, preemptionVulnerability: NotPreemptable}}\n  \
     agentSelector: {matchLabels: {line: one}}\n  steering: {interface: lo, routingTable: 100, fwmark: 100}\n"
}

fn link_condition(s: &Scenario, plural: &str, name: &str) -> Option<(String, String)> {
    condition(s, plural, name, "LinkWithinBudget").map(|(status, _, message)| (status, message))
}

#[test]
fn a_link_over_the_slice_budget_is_shown_and_refuses_commands_that_require_it() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    let modbus = s.modbus_sim("sim", &[]);
    let port = modbus.rsplit(':').next().expect("port").to_owned();
    let plant = fixtures::modbus_conveyor(&port, "200ms")
        .replace(
            "metadata: {name: line-1, namespace: plant-a}",
            "metadata: {name: line-1, namespace: plant-a, labels: {line: one}}",
        )
        .replace(
            "  agentRef: {name: line-1}\n",
            "  agentRef: {name: line-1}\n  networkSliceRef: {name: control-urllc}\n",
        );
    std::fs::write(s.path("plant/plant.yaml"), format!("{plant}---\n{}", urllc_slice())).expect("plant");
    let endpoint = s.controller();
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 13);
    let s = &s;
    let within = |want: &'static str| {
        move || {
            let (status, message) = link_condition(s, "equipment", "conveyor")?;
            (status == want && link_condition(s, "edgeagents", "line-1")?.0 == want).then_some(message)
        }
    };
    let message = eventually("the link within the budget on loopback", Duration::from_secs(30), within("True"));
    assert!(message.contains("20.0 ms packet delay budget of NetworkSlice control-urllc"), "{message}");
    let write = |value: &str| {
        s.plugin(&["exec", "conveyor", "write", "property=belt-speed", &format!("value={value}"), "--timeout", "10s"])
    };
    let (code, out) = write("1.10");
    assert_eq!(code, 0, "{out}");

    // 40 ms each way: 40 ms one way against a 20 ms budget.
    proxy.set(shopfloor_e2e::proxy::Impairment { delay: Duration::from_millis(40), ..Default::default() });
    let message = eventually("the link over the budget", Duration::from_secs(60), within("False"));
    assert!(message.contains("exceeds the 20.0 ms packet delay budget"), "{message}");
    let (code, out) = write("1.20");
    assert_ne!(code, 0, "refused: {out}");
    assert!(out.contains("LinkOverBudget") || out.contains("exceeds the 20.0 ms"), "{out}");
    // An operator may send one anyway.
    let (code, out) = s.plugin(&[
        "exec",
        "conveyor",
        "write",
        "property=belt-speed",
        "value=1.25",
        "--timeout",
        "10s",
        "--allow-slow-link",
    ]);
    assert_eq!(code, 0, "{out}");

    proxy.set(shopfloor_e2e::proxy::Impairment::default());
    eventually("the link back within the budget", Duration::from_secs(60), within("True"));
    let (code, out) = write("1.30");
    assert_eq!(code, 0, "{out}");
    let writes = s.sim_writes("sim", "holding", 0);
    assert_eq!(writes.len(), 3, "the refused command never reached the machine: {writes:?}");
}

fn condition(s: &Scenario, plural: &str, name: &str, type_: &str) -> Option<(String, String, String)> {
    let conds = s.status(plural, name)["conditions"].as_sequence()?.clone();
    let c = conds.iter().find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// The reported issue: an agent held its last setpoints forever when the controller was gone,
/// right for a temperature loop and wrong for a conveyor nobody can see.
#[test]
fn a_partition_engages_fail_safes_within_their_delay_and_the_controllers_return_or_an_operator_lifts_them() {
    const AFTER: Duration = Duration::from_secs(2);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let s = Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    let modbus = s.modbus_sim("sim", &[]);
    let port = modbus.rsplit(':').next().expect("port").to_owned();
    let plant = fixtures::modbus_conveyor(&port, "500ms")
        .replace("min: 0, max: 2.5}", "min: 0, max: 2.5, desired: 1.2}")
        .replace(
            "  actions:\n",
            "  failSafe:\n    after: 2s\n    values: [{property: running, value: false}, {property: belt-speed, value: 0}]\n  actions:\n",
        );
    // A fan on the same device whose fail-safe lifts itself when the controller is back.
    let fan = format!(
        "apiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {{name: fan, namespace: plant-a}}\nspec:\n  \
         agentRef: {{name: line-1}}\n  modbusTcp: {{host: \"127.0.0.1\", port: {port}, timeout: 5s}}\n  \
         properties:\n    - {{name: running, type: Bool, access: ReadWrite, modbus: {{table: Coil, address: 1}}, desired: true}}\n  \
         failSafe: {{after: 2s, values: [{{property: running, value: false}}], resume: Automatic}}\n"
    );
    std::fs::write(s.path("plant/plant.yaml"), format!("{plant}---\n{fan}")).expect("plant");
    let endpoint = s.controller();
    let proxy = s.agent_behind_proxy(&rt, "line-1", &endpoint, 17);
    let s = &s;
    let fail_safe = || condition(s, "equipment", "conveyor", "FailSafe");
    let (_, _, armed) = eventually("the fail-safe armed", Duration::from_secs(30), || {
        fail_safe().filter(|(status, reason, _)| status == "False" && reason == "Armed")
    });
    assert!(armed.contains("engages after 2.0 s") && armed.contains("Manual"), "{armed}");
    // A connection keeps the keep-alive it was made with: restarted, the agent connects with the
    // one its fail-safe needs (a quarter of `after`).
    s.kill("agent-line-1");
    s.agent("line-1");
    eventually("the restarted agent connected", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(s.path("agent-line-1.log")).ok()?;
        let restarted = log.rfind("restoring the last configuration from disk")?;
        log[restarted..].contains(": connected ").then_some(())
    });
    let speed_writes = || s.sim_writes("sim", "holding", 0);
    eventually("the desired belt speed written", Duration::from_secs(20), || {
        (speed_writes().last() == Some(&vec![120])).then_some(())
    });
    let (code, out) = s.plugin(&["exec", "conveyor", "start", "speed=1.5", "--timeout", "10s"]);
    assert_eq!(code, 0, "{out}");

    // Three times `after` with the link up: the fail-safe never writes.
    std::thread::sleep(AFTER * 3);
    let running_writes = || s.sim_writes("sim", "coil", 0);
    assert_eq!(running_writes(), vec![vec![1]], "only the start command wrote `running` while the link was up");
    let fan_writes = || s.sim_writes("sim", "coil", 1);
    assert_eq!(fan_writes(), vec![vec![1]], "only the fan's desired state was written while the link was up");

    proxy.partition(true);
    let cut = std::time::Instant::now();
    let engaged_after = eventually("the safe values written", AFTER * 5, || {
        (running_writes().last() == Some(&vec![0]) && speed_writes().last() == Some(&vec![0])).then(|| cut.elapsed())
    });
    println!("safe values written {engaged_after:?} after the partition began (failSafe.after 2 s)");
    assert!(engaged_after <= AFTER + Duration::from_secs(1), "within after + 1 s: {engaged_after:?}");
    // Never before the link has been lost for `after` (the 100 ms is the polling of this test).
    assert!(engaged_after + Duration::from_millis(100) >= AFTER, "not before after: {engaged_after:?}");
    assert_eq!(fan_writes().last(), Some(&vec![0]), "the fan's fail-safe engaged too");
    std::thread::sleep(Duration::from_secs(2));
    proxy.partition(false);
    // resume: Automatic — the fan runs again as soon as the controller is heard; the conveyor
    // (Manual) stays stopped.
    eventually("the fan back at its desired state", Duration::from_secs(30), || {
        (fan_writes().last() == Some(&vec![1])).then_some(())
    });
    eventually("the fan's fail-safe armed again", Duration::from_secs(30), || {
        condition(s, "equipment", "fan", "FailSafe")
            .filter(|(status, reason, _)| status == "False" && reason == "Armed")
    });

    let (_, _, message) = eventually("the controller shows the fail-safe engaged", Duration::from_secs(60), || {
        fail_safe().filter(|(status, reason, _)| status == "True" && reason == "Engaged")
    });
    assert!(message.contains("wrote running=false, belt-speed=0"), "{message}");
    assert!(message.contains("kubectl shopfloor exec conveyor resume-fail-safe"), "{message}");
    // Back in session, nothing undoes it: the desired 1.2 m/s waits, writes are refused.
    let (code, out) = s.plugin(&["exec", "conveyor", "write", "property=running", "value=true", "--timeout", "10s"]);
    assert_ne!(code, 0, "refused while engaged: {out}");
    assert!(out.contains("FailSafeEngaged"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(speed_writes().last(), Some(&vec![0]), "the desired setpoint is held back");
    assert_eq!(running_writes().last(), Some(&vec![0]));

    let (code, out) = s.plugin(&["exec", "conveyor", "resume-fail-safe", "--timeout", "10s"]);
    assert_eq!(code, 0, "{out}");
    eventually("the desired belt speed back after the resume", Duration::from_secs(20), || {
        (speed_writes().last() == Some(&vec![120])).then_some(())
    });
    eventually("the fail-safe armed again", Duration::from_secs(30), || {
        fail_safe().filter(|(status, reason, _)| status == "False" && reason == "Armed")
    });
    let (code, out) = s.plugin(&["exec", "conveyor", "write", "property=running", "value=true", "--timeout", "10s"]);
    assert_eq!(code, 0, "{out}");
}
