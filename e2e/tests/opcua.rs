//! OPC UA end to end with real processes: the standalone controller, an enrolled agent, and the
//! OPC UA machine simulator over a signed and encrypted session. The plant engineer's trust
//! step is done as docs/agent.md says (move the rejected server certificate into `trusted/`);
//! then a setpoint reaches a variable, a subscribed value reaches the Equipment's status, and a
//! ControlCommand calls the machine's method and carries its output back.

use std::time::Duration;

use shopfloor_e2e::harness::{Scenario, eventually, wait_for_line};

const AGENT: &str = r#"apiVersion: shopfloor.io/v1alpha1
kind: EdgeAgent
metadata: {name: line-1, namespace: plant-a}
spec:
  site: plant-a/line-1
"#;

fn packer(url: &str) -> String {
    let ns = "nsu=urn:shopfloor:sim:machine;s=Machine";
    format!(
        r#"apiVersion: shopfloor.io/v1alpha1
kind: Equipment
metadata: {{name: packer, namespace: plant-a}}
spec:
  agentRef: {{name: line-1}}
  opcua: {{endpoint: "{url}", securityPolicy: Basic256Sha256, securityMode: SignAndEncrypt, timeout: 5s, publishingInterval: 100ms}}
  reporting: {{interval: 500ms}}
  properties:
    - {{name: speed, type: Float, access: ReadWrite, min: 0, max: 8, desired: 1.5, opcua: {{nodeId: "{ns}.Speed", dataType: Double}}}}
    - {{name: temperature, type: Float, opcua: {{nodeId: "{ns}.Temperature", dataType: Double, samplingInterval: 100ms}}}}
  actions:
    - name: start-job
      parameters:
        - {{name: program, type: Int, min: 1, max: 999, required: true}}
        - {{name: speed, type: Float, min: 0.1, max: 8, required: true}}
      method:
        objectId: "{ns}"
        methodId: "{ns}.StartJob"
        inputs: [{{parameter: program, dataType: Int32}}, {{parameter: speed, dataType: Double}}]
        outputs: [jobId]
"#
    )
}

#[test]
fn an_opcua_machine_is_trusted_configured_observed_by_subscription_and_its_method_called() {
    let s = Scenario::new();
    let log = s.spawn(
        "opcua-sim",
        "shopfloor-opcua-sim",
        &["--listen", "127.0.0.1:0", "--pki-dir", "sim-pki", "--write-log", "opcua-writes.jsonl"],
    );
    let line = wait_for_line(&log, "OPC UA simulator at", Duration::from_secs(60));
    let url = line.split_whitespace().find(|w| w.starts_with("opc.tcp://")).expect("endpoint url").to_owned();
    std::fs::create_dir_all(s.path("plant")).expect("plant");
    std::fs::write(s.path("plant/agent.yaml"), AGENT).expect("agent");
    std::fs::write(s.path("plant/packer.yaml"), packer(&url)).expect("packer");
    std::fs::write(s.path("agent-config.yaml"), "opcua: {pkiDir: agent-opcua}\n").expect("config");
    std::fs::write(s.path("envelope-line-1.yaml"), "equipment: {}\n").expect("envelope");
    s.controller();
    s.enroll("line-1");
    s.spawn(
        "agent-line-1",
        "shopfloor-agent",
        &[
            "--config",
            "agent-config.yaml",
            "--state-dir",
            "agent-line-1",
            "run",
            "--envelope",
            "envelope-line-1.yaml",
            "--slice-backend",
            "noop",
        ],
    );

    // The first session is refused: the server's certificate waits in rejected/ for the
    // engineer, and the agent's log names it.
    let rejected = eventually("the server certificate in rejected/", Duration::from_secs(60), || {
        std::fs::read_dir(s.path("agent-opcua/rejected")).ok()?.flatten().next()
    });
    wait_for_line(&s.path("agent-line-1.log"), "is not trusted", Duration::from_secs(30));
    std::fs::rename(rejected.path(), s.path("agent-opcua/trusted").join(rejected.file_name())).expect("trust it");

    // The desired speed reaches the machine's variable, and the subscribed temperature arrives
    // in the Equipment's status.
    let written = || std::fs::read_to_string(s.path("opcua-writes.jsonl")).unwrap_or_default();
    eventually("speed 1.5 written to Machine.Speed", Duration::from_secs(60), || {
        written().lines().any(|l| l.contains("Machine.Speed") && l.contains("1.5")).then_some(())
    });
    eventually("applied, and the temperature reported", Duration::from_secs(30), || {
        let st = s.status("equipment", "packer");
        let applied = st["conditions"].as_sequence()?.iter().any(|c| c["type"] == "Applied" && c["status"] == "True");
        let reported = st["reported"].as_sequence()?.iter().any(|r| r["property"] == "temperature");
        (applied && reported).then_some(())
    });
    let agent_log = std::fs::read_to_string(s.path("agent-line-1.log")).unwrap_or_default();
    assert!(agent_log.contains("values arrive by subscription"), "the packer is subscribed, not polled:\n{agent_log}");

    // A ControlCommand calls StartJob; its output comes back in the command's result.
    let (code, out) = s.plugin(&["exec", "packer", "start-job", "program=42", "speed=2.0", "--timeout", "15s"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("phase:     Succeeded") && out.contains("jobId=1000"), "{out}");
    assert_eq!(written().lines().filter(|l| l.contains("\"call\"")).count(), 1, "one call reached the machine");

    // Out of the parameter's range: refused before the machine is reached.
    let (code, out) = s.plugin(&["exec", "packer", "start-job", "program=5000", "speed=2.0"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("spec.parameters.program"), "{out}");
    assert_eq!(written().lines().filter(|l| l.contains("\"call\"")).count(), 1, "nothing more was called");
}
