//! The Helm chart, rendered and linted by Helm's own engine (`charts/tests/render.py`, on the
//! helm-python-sdk package from PyPI): default values install cluster-wide RBAC, and
//! `watchNamespaces` installs Roles in those namespaces only and tells the controller; every
//! optional feature renders; the values schema refuses wrong values; every object passes the
//! Kubernetes schemas of the supported versions; the alerts pass `promtool check rules` and
//! their unit tests (`charts/tests/alerts.test.yaml`).

use std::process::Command;

#[test]
fn the_chart_lints_and_renders_cluster_wide_and_namespaced() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tests/render.py");
    let out = match Command::new("python3").arg(&script).output() {
        Ok(o) => o,
        Err(e) => return shopfloor_e2e::harness::unmet(&format!("python3 ({e})"), "the Helm chart check"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => println!("{text}"),
        Some(3) => shopfloor_e2e::harness::unmet("helm-python-sdk", &format!("the Helm chart check ({})", text.trim())),
        Some(4) => {
            shopfloor_e2e::harness::unmet("promtool", &format!("part of the Helm chart check ({})", text.trim()))
        }
        _ => panic!("the chart is broken:\n{text}"),
    }
}

/// The metric names a PromQL text uses, as their families are declared (`# TYPE` lines name a
/// counter without `_total` and a histogram without `_bucket`, `_sum`, `_count`).
fn families_used(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shopfloor_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum", "_total"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The dashboard and the alerts query metrics by name; a renamed or missing metric would leave a
/// panel empty and an alert silent, so each name must be in the controller's `/metrics`.
#[test]
fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    use std::io::{Read, Write};
    let charts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/shopfloor");
    let dashboard = std::fs::read_to_string(charts.join("files/dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its queries: {}", exprs.len());
    let rules = std::fs::read_to_string(charts.join("templates/prometheusrule.yaml")).expect("rules");
    let exprs_in_rules: String =
        rules.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let mut used = families_used(&exprs.join("\n"));
    used.extend(families_used(&exprs_in_rules));
    assert!(used.len() >= 12, "{used:?}");

    // A plant that makes every per-object series exist: an enrolled agent (certificate expiry),
    // a conveyor with a fail-safe on a slice with a delay budget, and one finished command.
    let s = shopfloor_e2e::harness::Scenario::new();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    let modbus = s.modbus_sim("sim", &[]);
    let port = modbus.rsplit(':').next().expect("port").to_owned();
    let plant = shopfloor_e2e::fixtures::modbus_conveyor(&port, "500ms")
        .replace(
            "metadata: {name: line-1, namespace: plant-a}",
            "metadata: {name: line-1, namespace: plant-a, labels: {line: one}}",
        )
        .replace(
            "  agentRef: {name: line-1}\n",
            "  agentRef: {name: line-1}\n  networkSliceRef: {name: control}\n  \
             failSafe: {after: 5s, values: [{property: running, value: false}]}\n",
        );
    let slice = "apiVersion: shopfloor.io/v1alpha1\nkind: NetworkSlice\nmetadata: {name: control, namespace: plant-a}\n\
                 spec:\n  snssai: {sst: 1}\n  dnn: plant\n  qos: {fiveQi: 9, packetDelayBudget: 300ms, arp: {priorityLevel: 8, preemptionCapability: NotPreempt, preemptionVulnerability: Preemptable}}\n  \
                 agentSelector: {matchLabels: {line: one}}\n  steering: {interface: lo, routingTable: 100, fwmark: 100}\n";
    std::fs::write(s.path("plant/plant.yaml"), format!("{plant}---\n{slice}")).expect("plant");
    s.controller();
    s.enroll("line-1");
    s.agent("line-1");
    let (code, out) = s.plugin(&["exec", "conveyor", "write", "property=belt-speed", "value=1.0", "--timeout", "20s"]);
    assert_eq!(code, 0, "{out}");
    shopfloor_e2e::harness::eventually("the fail-safe reported", std::time::Duration::from_secs(20), || {
        let conds = s.status("equipment", "conveyor")["conditions"].as_sequence()?.clone();
        conds.iter().any(|c| c["type"] == "FailSafe" && c["reason"] == "Armed").then_some(())
    });
    let line = shopfloor_e2e::harness::wait_for_line(
        &s.path("controller.log"),
        "standalone controller started",
        std::time::Duration::from_secs(20),
    );
    let addr = line.split("http=").nth(1).and_then(|r| r.split_whitespace().next()).expect("http address").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    let declared: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).collect();
    let missing: Vec<&String> = used.iter().filter(|n| !declared.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "used by the dashboard or the alerts but not exported: {missing:?}\n{text}");
}
