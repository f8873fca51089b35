//! The controller binary in Kubernetes mode, as the chart runs it (a leader and a standby, the
//! leader's pod labelled for the agents' Service), against the mock API server: a new leader
//! lets agents in at once, and a planned handover engages no fail-safe.

use shopfloor_e2e::cluster::handover;

/// Before: the new leader's gate opened 60 s after it led (its wait lost its wakeup to
/// kube-runtime's Controller), and agents noticed a stepped-down leader only at their heartbeat
/// timeout, so every handover engaged the fail-safes shorter than that.
#[test]
fn a_new_leader_lets_agents_in_at_once_and_a_planned_handover_engages_no_fail_safe() {
    let n = 20;
    let h = handover(n);
    eprintln!("{h:?}");
    assert!(
        h.first_admitted < jiff::SignedDuration::from_secs(1),
        "the first agent came {} after leading",
        h.first_admitted
    );
    assert!(
        h.handed_over_line.contains(&format!("agents={n}")),
        "the leader handed its agents over: {}",
        h.handed_over_line
    );
    assert_eq!(h.engaged_by_handover, 0, "a planned handover engaged fail-safes");
    assert_eq!(h.engaged_without_controller, n, "the control: with no controller left every fail-safe engages");
    // Finalizer patches (kube's helper sets no fieldManager) were owned by `unknown`.
    assert!(
        h.managers.keys().all(|m| m == "shopfloor-controller"),
        "every write names the controller as its field manager: {:?}",
        h.managers
    );
}

/// The commands the plugin creates were owned by the field manager `unknown`: its requests
/// carry its User-Agent now, which the API server takes as the manager.
#[test]
fn the_plugin_names_itself_as_the_field_manager_of_what_it_creates() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let api = rt.block_on(shopfloor_e2e::mock_api::MockApi::start()).expect("mock API");
    let s = shopfloor_e2e::harness::Scenario::new();
    std::fs::write(s.path("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
    let out = std::process::Command::new(shopfloor_e2e::harness::bin("kubectl-shopfloor"))
        .env("KUBECONFIG", s.path("kubeconfig"))
        .args(["-n", "plant-a", "exec", "conveyor", "read", "property=belt-speed", "--no-wait"])
        .output()
        .expect("plugin");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_eq!(api.list("controlcommands").len(), 1, "{text}");
    let managers = api.managers();
    assert_eq!(managers.keys().collect::<Vec<_>>(), ["kubectl-shopfloor"], "{managers:?}");
}
