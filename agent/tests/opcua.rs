//! The OPC UA driver against the OPC UA machine simulator over a real socket: the trust flow
//! (an untrusted server refused with the file to move), reads, writes, a method call with its
//! outputs, subscription updates, a server restart, the user sign-in, and the errors a wrong
//! node id, a wrong type or an unoffered security mode cause.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use shopfloor_agent::equipment::drivers::{
    Driver, DriverError, Pushed,
    opcua::{OpcUaDriver, Site},
};
use shopfloor_sim::opcua::{Machine, NAMESPACE, Options};
use shopfloor_wire::proto::{
    MethodArgument, MethodCall, OpcUa, OpcUaDataType, OpcUaNode, OpcUaSecurityMode, OpcUaSecurityPolicy,
    PropertyConfig, Value, ValueType, method_argument::Source, value::Kind,
};

fn node(id: &str) -> String {
    format!("nsu={NAMESPACE};s={id}")
}

fn property(name: &str, ty: ValueType, id: &str, data_type: OpcUaDataType) -> PropertyConfig {
    PropertyConfig {
        name: name.into(),
        r#type: ty as i32,
        writable: true,
        opcua: Some(OpcUaNode {
            node_id: node(id),
            data_type: data_type as i32,
            sampling_interval_ms: 50,
            deadband: 0.0,
        }),
        ..Default::default()
    }
}

fn float(v: f64) -> Value {
    Value { kind: Some(Kind::FloatValue(v)) }
}

fn int(v: i64) -> Value {
    Value { kind: Some(Kind::IntValue(v)) }
}

fn connection(url: &str, policy: OpcUaSecurityPolicy, mode: OpcUaSecurityMode) -> OpcUa {
    OpcUa {
        endpoint_url: url.into(),
        security_policy: policy as i32,
        security_mode: mode as i32,
        timeout_ms: 3000,
        publishing_interval_ms: 100,
    }
}

async fn machine(dir: &Path, allow_none: bool, listen: std::net::SocketAddr) -> Machine {
    Machine::start(Options {
        listen,
        pki_dir: dir.join("server-pki"),
        allow_none,
        user: Some(("operator".into(), "s3cret".into())),
        write_log: None,
    })
    .await
    .expect("simulator")
}

fn site(dir: &Path) -> Arc<Site> {
    Arc::new(Site { pki_dir: dir.join("agent-pki"), users: HashMap::new() })
}

/// Moves every certificate the agent rejected into its trusted folder, as the plant engineer
/// would after checking it.
fn trust_rejected(pki: &Path) -> usize {
    let mut moved = 0;
    for entry in std::fs::read_dir(pki.join("rejected")).expect("rejected folder").flatten() {
        std::fs::rename(entry.path(), pki.join("trusted").join(entry.file_name())).expect("move");
        moved += 1;
    }
    moved
}

fn speed() -> PropertyConfig {
    property("speed", ValueType::Float, "Machine.Speed", OpcUaDataType::Double)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_is_refused_with_the_file_to_move_then_reads_writes_calls_and_subscriptions_work() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = machine(dir.path(), false, "127.0.0.1:0".parse().expect("addr")).await;
    let site = site(dir.path());
    let driver = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::Basic256Sha256, OpcUaSecurityMode::SignAndEncrypt),
        site.clone(),
    );
    let temperature = property("temperature", ValueType::Float, "Machine.Temperature", OpcUaDataType::Double);

    let refused = driver.read(&temperature).await.expect_err("an unknown server certificate is not trusted");
    let DriverError::Security(message) = &refused else { panic!("{refused:?}") };
    let rejected = site.pki_dir.join("rejected");
    assert!(message.contains(&rejected.display().to_string()), "names the rejected file: {message}");
    assert!(message.contains(&site.pki_dir.join("trusted").display().to_string()), "and where to move it: {message}");
    assert_eq!(trust_rejected(&site.pki_dir), 1, "one certificate was rejected");

    let t = driver.read(&temperature).await.expect("read once trusted");
    assert!(matches!(t.kind, Some(Kind::FloatValue(x)) if (15.0..30.0).contains(&x)), "{t:?}");

    driver.write(&speed(), &float(2.5)).await.expect("write");
    assert_eq!(sim.value("Machine.Speed"), Some(opcua::types::Variant::Double(2.5)));
    assert_eq!(sim.records().last().map(|r| (r.kind, r.node.clone())), Some(("write", "Machine.Speed".to_owned())));

    let start_job = MethodCall {
        object_id: node("Machine"),
        method_id: node("Machine.StartJob"),
        inputs: vec![
            MethodArgument {
                data_type: OpcUaDataType::Int32 as i32,
                source: Some(Source::Parameter("program".into())),
            },
            MethodArgument { data_type: OpcUaDataType::Double as i32, source: Some(Source::Parameter("speed".into())) },
        ],
        outputs: vec!["jobId".into()],
    };
    let outputs = driver.call(&start_job, &[int(7), float(3.0)]).await.expect("call");
    assert_eq!(outputs, vec![int(1000)], "the job id comes back as the call's output");
    assert_eq!(sim.value("Machine.Running"), Some(opcua::types::Variant::Boolean(true)));
    let again = driver.call(&start_job, &[int(8), float(1.0)]).await.expect("second call");
    assert_eq!(again, vec![int(1001)]);
    let out_of_range = driver.call(&start_job, &[int(8), float(99.0)]).await.expect_err("the server refuses");
    assert!(out_of_range.to_string().contains("BadOutOfRange"), "{out_of_range}");

    // Values pushed by the server: the running machine's temperature climbs towards its speed's.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    assert!(driver.subscribe(std::slice::from_ref(&temperature), tx).await.expect("subscribe"));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Pushed { property, value: Ok(v) })) => {
                assert_eq!(property, "temperature");
                seen.push(v);
            }
            other => panic!("three changes within 5 s, got {seen:?} then {other:?}"),
        }
    }
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "each notification is a change: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_node_a_wrong_type_and_a_value_out_of_the_nodes_range_are_errors_that_name_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = machine(dir.path(), true, "127.0.0.1:0".parse().expect("addr")).await;
    let driver = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::None, OpcUaSecurityMode::None),
        site(dir.path()),
    );
    let missing = property("nope", ValueType::Float, "Machine.Nope", OpcUaDataType::Double);
    let e = driver.read(&missing).await.expect_err("no such node");
    assert!(
        matches!(&e, DriverError::Unmapped(m) if m.contains("Machine.Nope") && m.contains("BadNodeIdUnknown")),
        "{e:?}"
    );

    // A bool property mapped onto the Double speed: the server refuses the Boolean.
    let wrong = property("running", ValueType::Bool, "Machine.Speed", OpcUaDataType::Boolean);
    let e = driver.write(&wrong, &Value { kind: Some(Kind::BoolValue(true)) }).await.expect_err("type mismatch");
    assert!(e.to_string().contains("BadTypeMismatch"), "{e}");
    let e = driver.read(&wrong).await.expect_err("a Double is not a bool");
    assert!(e.to_string().contains("Machine.Speed") && e.to_string().contains("bool"), "{e}");

    // 70,000 does not fit the UInt16 mode: refused before anything is sent.
    let writes_before = sim.records().len();
    let mode = property("mode", ValueType::Int, "Machine.Mode", OpcUaDataType::Uint16);
    let e = driver.write(&mode, &int(70_000)).await.expect_err("out of range");
    assert!(matches!(&e, DriverError::Value(m) if m.contains("70000") && m.contains("Uint16")), "{e:?}");
    assert_eq!(sim.records().len(), writes_before, "nothing was written");
    driver.write(&mode, &int(3)).await.expect("in range");
    assert_eq!(sim.value("Machine.Mode"), Some(opcua::types::Variant::UInt16(3)));

    let bad_id = property("x", ValueType::Float, "", OpcUaDataType::Double);
    let bad_id = PropertyConfig {
        opcua: Some(OpcUaNode { node_id: "Machine.Speed".into(), ..bad_id.opcua.expect("node") }),
        ..bad_id
    };
    let e = driver.read(&bad_id).await.expect_err("not a node id");
    assert!(e.to_string().contains("is not an OPC UA node id"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_the_server_does_not_offer_or_that_is_not_given_is_refused_and_users_sign_in() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = machine(dir.path(), false, "127.0.0.1:0".parse().expect("addr")).await;
    let none = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::None, OpcUaSecurityMode::None),
        site(dir.path()),
    );
    let e = none.read(&speed()).await.expect_err("the server offers no unsecured endpoint");
    assert!(matches!(&e, DriverError::Security(m) if m.contains("offers no endpoint")), "{e:?}");

    let unspecified = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::Unspecified, OpcUaSecurityMode::SignAndEncrypt),
        site(dir.path()),
    );
    let e = unspecified.read(&speed()).await.expect_err("never a guessed policy");
    assert!(matches!(&e, DriverError::Security(m) if m.contains("refusing to guess")), "{e:?}");

    let half = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::Basic256Sha256, OpcUaSecurityMode::None),
        site(dir.path()),
    );
    assert!(matches!(half.read(&speed()).await, Err(DriverError::Security(_))));

    // Aes128Sha256RsaOaep with Sign, as the operator user.
    let mut users = HashMap::new();
    users.insert(sim.url.clone(), ("operator".to_owned(), "s3cret".to_owned()));
    let with_user = Arc::new(Site { pki_dir: dir.path().join("agent-pki"), users });
    let signed = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::Aes128Sha256RsaOaep, OpcUaSecurityMode::Sign),
        with_user.clone(),
    );
    let _ = signed.read(&speed()).await.expect_err("untrusted at first");
    trust_rejected(&with_user.pki_dir);
    signed.write(&speed(), &float(1.5)).await.expect("signed write as the operator");

    let mut wrong = HashMap::new();
    wrong.insert(sim.url.clone(), ("operator".to_owned(), "guess".to_owned()));
    let intruder = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::Aes128Sha256RsaOaep, OpcUaSecurityMode::Sign),
        Arc::new(Site { pki_dir: dir.path().join("agent-pki"), users: wrong }),
    );
    let e = intruder.read(&speed()).await.expect_err("a wrong password");
    assert!(matches!(&e, DriverError::Security(m) if m.contains("refused the agent's user")), "{e:?}");
}

/// After a server restart the session comes back, requests work again and the subscription's
/// changes resume: the restarted server keeps no subscriptions, so the driver makes its own
/// again on the new session (async-opcua's re-creation left changes missing for 45 s and more
/// in about half the runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_restarts_the_session_and_its_subscription_come_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let sim = machine(dir.path(), true, "127.0.0.1:0".parse().expect("addr")).await;
    let addr = sim.addr;
    let driver = OpcUaDriver::new(
        "packer",
        &connection(&sim.url, OpcUaSecurityPolicy::None, OpcUaSecurityMode::None),
        site(dir.path()),
    );
    let temperature = property("temperature", ValueType::Float, "Machine.Temperature", OpcUaDataType::Double);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    assert!(driver.subscribe(std::slice::from_ref(&temperature), tx).await.expect("subscribe"));
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a first change").expect("open");

    drop(sim);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = driver.read(&temperature).await.expect_err("the server is gone");
    assert!(matches!(e, DriverError::Unreachable(_) | DriverError::Timeout(_)), "{e:?}");

    let sim = machine(dir.path(), true, addr).await;
    // Running at speed 5 the temperature heads for 60 and stays there: a change above 40 can only
    // come from the restarted server (before the restart it sat near 20).
    sim.set("Machine.Speed", opcua::types::Variant::Double(5.0));
    sim.set("Machine.Running", opcua::types::Variant::Boolean(true));
    sim.set("Machine.Temperature", opcua::types::Variant::Double(55.0));
    // The client's reconnect backoff reaches 10 s while the server is away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let back = loop {
        match driver.read(&temperature).await {
            Ok(v) => break v,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the session did not come back within 45 s: {e}"),
        }
    };
    assert!(matches!(back.kind, Some(Kind::FloatValue(x)) if x > 40.0), "{back:?}");
    // Changes from before the restart may still sit in the channel: wait for one the restarted
    // server made.
    let started = tokio::time::Instant::now();
    loop {
        let remaining = Duration::from_secs(10).saturating_sub(started.elapsed());
        let change = tokio::time::timeout(remaining, rx.recv())
            .await
            .expect("a change by subscription within 10 s of the session coming back")
            .expect("open");
        if matches!(change.value, Ok(Value { kind: Some(Kind::FloatValue(x)) }) if x > 40.0) {
            eprintln!("subscription resumed {:?} after the session came back", started.elapsed());
            break;
        }
    }
}

/// A `start-job` action that calls the machine's method goes through the executor like any
/// write: its parameters checked against their ranges, the call journaled (a redelivery answers
/// from the journal, the machine sees one call), and the method's output in the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_action_runs_once_through_the_executor_with_its_output_in_the_result() {
    use shopfloor_agent::{
        clock::WallClock,
        commands::{Arrival, Executor},
        envelope::Envelope,
        journal::Journal,
        state::StateDir,
    };
    use shopfloor_wire::{
        proto::{
            ActionConfig, Command, EquipmentConfig, NamedValue, Parameter, ParameterConfig, ResultCode,
            equipment_config::Protocol, parameter,
        },
        time::now_micros,
    };

    let dir = tempfile::tempdir().expect("tmp");
    let sim = machine(dir.path(), true, "127.0.0.1:0".parse().expect("addr")).await;
    let state = StateDir::open(dir.path().join("state")).expect("state");
    let journal = Journal::open(&state, Duration::from_secs(3600), 100).expect("journal");
    let exec = Executor::new(journal, Envelope::none())
        .with_opcua(Site { pki_dir: dir.path().join("agent-pki"), users: HashMap::new() });
    let start_job = ActionConfig {
        name: "start-job".into(),
        parameters: vec![
            ParameterConfig {
                name: "program".into(),
                r#type: ValueType::Int as i32,
                min: Some(1.0),
                max: Some(999.0),
                required: true,
            },
            ParameterConfig {
                name: "speed".into(),
                r#type: ValueType::Float as i32,
                required: true,
                ..Default::default()
            },
        ],
        timeout_ms: 5000,
        method: Some(MethodCall {
            object_id: node("Machine"),
            method_id: node("Machine.StartJob"),
            inputs: vec![
                MethodArgument {
                    data_type: OpcUaDataType::Int32 as i32,
                    source: Some(Source::Parameter("program".into())),
                },
                MethodArgument {
                    data_type: OpcUaDataType::Double as i32,
                    source: Some(Source::Parameter("speed".into())),
                },
            ],
            outputs: vec!["jobId".into()],
        }),
        ..Default::default()
    };
    let packer = EquipmentConfig {
        name: "packer".into(),
        protocol: Some(Protocol::Opcua(connection(&sim.url, OpcUaSecurityPolicy::None, OpcUaSecurityMode::None))),
        properties: vec![speed()],
        actions: vec![start_job],
        reporting_interval_ms: 1000,
        ..Default::default()
    };
    let installed = exec.equipment().install(&[packer], &Default::default());
    assert!(installed.iter().all(|(_, r)| r.is_ok()), "{installed:?}");
    let cmd = |id: &str, program: f64| Command {
        id: id.into(),
        equipment: "packer".into(),
        action: "start-job".into(),
        parameters: vec![
            Parameter { name: "program".into(), kind: Some(parameter::Kind::Value(int(program as i64))) },
            Parameter { name: "speed".into(), kind: Some(parameter::Kind::Value(float(2.0))) },
        ],
        deadline_unix_micros: now_micros() + 10_000_000,
        ..Default::default()
    };
    let arrive = || Arrival::now(WallClock::system(), Duration::from_secs(10));
    // The agent's telemetry opens the session as soon as the equipment is installed; here the
    // first read does (a fresh PKI folder makes the agent's key first, seconds in a debug build).
    let eq = exec.equipment().get("packer").expect("installed");
    eq.driver.read(&speed()).await.expect("the session opens");

    let r = exec.execute(&cmd("job-1", 42.0), arrive()).await;
    assert_eq!(r.code(), ResultCode::Ok, "{}", r.message);
    assert_eq!(r.outputs, vec![NamedValue { name: "jobId".into(), value: Some(int(1000)) }]);
    assert_eq!(sim.value("Machine.Program"), Some(opcua::types::Variant::Int32(42)));

    let again = exec.execute(&cmd("job-1", 42.0), arrive()).await;
    assert!(again.replayed, "a redelivery is answered from the journal: {again:?}");
    assert_eq!(again.outputs, r.outputs);
    assert_eq!(sim.records().iter().filter(|r| r.kind == "call").count(), 1, "the machine saw one call");

    let refused = exec.execute(&cmd("job-2", 5000.0), arrive()).await;
    assert_eq!(refused.code(), ResultCode::InvalidParameter, "{}", refused.message);
    assert!(refused.message.contains("spec.parameters.program"), "{}", refused.message);
    assert_eq!(sim.records().iter().filter(|r| r.kind == "call").count(), 1, "nothing called");
}

/// Defect: a server announcing a 4 GiB message and streaming zeros took the agent from 15 MB
/// to over 1 GB in under a second (the client's codec buffered whatever a header announced).
/// The agent now refuses the chunk at its header; the server gets to send little more than
/// what was in flight.
#[tokio::test]
async fn a_server_announcing_a_huge_message_is_refused_without_buffering_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server = {
        let sent = sent.clone();
        tokio::spawn(async move {
            // Every connection the driver makes: its Hello read, then a giant ACK, streamed.
            while let Ok((mut s, _)) = listener.accept().await {
                let mut hello = [0u8; 8];
                let _ = s.read(&mut hello).await;
                let mut header = b"ACKF".to_vec();
                header.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                if s.write_all(&header).await.is_err() {
                    continue;
                }
                let zeros = vec![0u8; 64 * 1024];
                while s.write_all(&zeros).await.is_ok() {
                    sent.fetch_add(zeros.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = connection(&format!("opc.tcp://{addr}/"), OpcUaSecurityPolicy::None, OpcUaSecurityMode::None);
    let driver = OpcUaDriver::new("hostile", &cfg, site(dir.path()));
    let p = property("temperature", ValueType::Float, "Temperature", OpcUaDataType::Double);
    let err =
        tokio::time::timeout(Duration::from_secs(10), driver.read(&p)).await.expect("answered").expect_err("refused");
    let took = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(took < 16 << 20, "the agent took in {took} bytes of a hostile message ({err})");
    assert!(shopfloor_agent::equipment::drivers::opcua::OPCUA_REFUSED.get() > 0, "the refusal is counted ({err})");
    server.abort();
}
