//! The command executor against a Modbus simulator over a real socket and a simulated device.

use std::{sync::Arc, time::Duration};

use shopfloor_agent::{
    apply,
    clock::WallClock,
    commands::{Arrival, Executor},
    envelope::Envelope,
    fail_safe::Engagement,
    journal::Journal,
    state::StateDir,
};
use shopfloor_sim::modbus::{Device, Simulator};
use shopfloor_wire::value;
use shopfloor_wire::{
    proto::{
        ActionConfig, ActionWrite, ApplyConfig, ApplyResult, Command, CommandResult, EquipmentConfig, ModbusMapping,
        ModbusTable, ModbusTcp, NamedValue, Operator, Parameter, ParameterConfig, Precondition, PropertyConfig,
        RegisterType, ResultCode, Simulated, ValueType, action_write, equipment_config::Protocol, parameter,
    },
    time::now_micros,
};

fn prop(name: &str, ty: ValueType, writable: bool, table: ModbusTable, address: u32, scale: f64) -> PropertyConfig {
    PropertyConfig {
        name: name.into(),
        r#type: ty as i32,
        writable,
        modbus: Some(ModbusMapping {
            table: table as i32,
            address,
            register_type: RegisterType::U16 as i32,
            scale,
            offset: 0.0,
        }),
        ..Default::default()
    }
}

fn conveyor(addr: std::net::SocketAddr) -> EquipmentConfig {
    let mut speed = prop("belt-speed", ValueType::Float, true, ModbusTable::HoldingRegister, 0, 0.01);
    speed.min = Some(0.0);
    speed.max = Some(2.5);
    speed.desired = Some(value::float_value(1.2));
    EquipmentConfig {
        name: "conveyor".into(),
        protocol: Some(Protocol::ModbusTcp(ModbusTcp {
            host: addr.ip().to_string(),
            port: u32::from(addr.port()),
            unit_id: 1,
            timeout_ms: 500,
        })),
        properties: vec![
            speed,
            prop("running", ValueType::Bool, true, ModbusTable::Coil, 0, 1.0),
            prop("jam", ValueType::Bool, false, ModbusTable::DiscreteInput, 0, 1.0),
            prop("current", ValueType::Float, false, ModbusTable::InputRegister, 0, 0.01),
        ],
        actions: vec![ActionConfig {
            name: "start".into(),
            parameters: vec![ParameterConfig {
                name: "speed".into(),
                r#type: ValueType::Float as i32,
                min: Some(0.1),
                max: Some(3.0),
                required: true,
            }],
            writes: vec![
                ActionWrite {
                    property: "belt-speed".into(),
                    source: Some(action_write::Source::Parameter("speed".into())),
                },
                ActionWrite {
                    property: "running".into(),
                    source: Some(action_write::Source::Value(value::bool_value(true))),
                },
            ],
            timeout_ms: 2000,
            rate_limit: None,
            method: None,
        }],
        reporting_interval_ms: 1000,
        slice: String::new(),
        rate_limit: None,
        fail_safe: None,
    }
}

fn robot() -> EquipmentConfig {
    EquipmentConfig {
        name: "robot".into(),
        protocol: Some(Protocol::Simulated(Simulated::default())),
        properties: vec![PropertyConfig {
            name: "program".into(),
            r#type: ValueType::Int as i32,
            writable: true,
            min: Some(1.0),
            max: Some(32.0),
            ..Default::default()
        }],
        ..Default::default()
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    state: StateDir,
    sim: Simulator,
    exec: Arc<Executor>,
    envelope_path: std::path::PathBuf,
}

async fn rig(envelope: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let state = StateDir::open(dir.path().join("state")).expect("state");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), Device::default(), vec![]).await.expect("sim");
    let envelope_path = dir.path().join("envelope.yaml");
    std::fs::write(&envelope_path, envelope).expect("envelope");
    let exec = executor(&state, &envelope_path);
    exec.equipment().install(&[conveyor(sim.addr), robot()], &Default::default());
    Rig { _dir: dir, state, sim, exec, envelope_path }
}

impl Rig {
    /// A new executor on the same state directory and envelope, equipment installed: the agent
    /// after a restart.
    fn restart(&self) -> Arc<Executor> {
        let exec = executor(&self.state, &self.envelope_path);
        exec.equipment().install(&[conveyor(self.sim.addr), robot()], &Default::default());
        exec
    }
}

fn executor(state: &StateDir, envelope: &std::path::Path) -> Arc<Executor> {
    let journal = Journal::open(state, Duration::from_secs(86400), 1000).expect("journal");
    Arc::new(Executor::new(journal, Envelope::load(envelope).expect("envelope")))
}

fn cmd(id: &str, eq: &str, action: &str, params: &[(&str, parameter::Kind)]) -> Command {
    Command {
        id: id.into(),
        equipment: eq.into(),
        action: action.into(),
        parameters: params.iter().map(|(k, v)| Parameter { name: (*k).into(), kind: Some(v.clone()) }).collect(),
        deadline_unix_micros: now_micros() + 5_000_000,
        ..Default::default()
    }
}

/// Received now, with the time its (same-host) deadline leaves.
fn arrive(c: &Command) -> Arrival {
    let left = Duration::from_micros((c.deadline_unix_micros - now_micros()).max(0).unsigned_abs());
    Arrival::now(WallClock::system(), left)
}

fn num(x: f64) -> parameter::Kind {
    parameter::Kind::Value(value::float_value(x))
}

fn code(r: &CommandResult) -> ResultCode {
    r.code()
}

#[tokio::test]
async fn an_action_writes_over_modbus_in_order_and_the_journal_answers_redeliveries() {
    let r = rig("").await;
    let c = cmd("c1", "conveyor", "start", &[("speed", num(1.5))]);
    let first = r.exec.execute(&c, arrive(&c)).await;
    assert_eq!(code(&first), ResultCode::Ok, "{}", first.message);
    assert_eq!(r.sim.device.writes_to("holding", 0), 1);
    assert_eq!(r.sim.device.writes_to("coil", 0), 1);
    assert_eq!(r.sim.device.regs.lock().expect("lock").holding.get(&0), Some(&150));
    // Redelivered: same result, replayed, no second write.
    let again = r.exec.execute(&c, arrive(&c)).await;
    assert!(again.replayed);
    assert_eq!(code(&again), ResultCode::Ok);
    assert_eq!(r.sim.device.writes_to("holding", 0), 1);
    // Across a restart: a new executor on the same state directory.
    let restarted = r.restart();
    let after = restarted.execute(&c, arrive(&c)).await;
    assert!(after.replayed && code(&after) == ResultCode::Ok);
    assert_eq!(r.sim.device.writes_to("holding", 0), 1, "exactly one write per command, restarts included");
}

/// A command the agent was killed in the middle of (journal: started, not finished) is answered
/// "outcome unknown" at once when it is redelivered — it deadlocked before — and never re-run.
#[tokio::test]
async fn a_command_interrupted_by_a_restart_is_answered_outcome_unknown_at_once() {
    let r = rig("").await;
    {
        let mut j = Journal::open(&r.state, Duration::from_secs(86400), 1000).expect("journal");
        j.start("interrupted").expect("start");
    }
    let restarted = r.restart();
    let c = cmd("interrupted", "conveyor", "start", &[("speed", num(1.5))]);
    let res = tokio::time::timeout(Duration::from_secs(10), restarted.execute(&c, arrive(&c)))
        .await
        .expect("answered, not stuck on the journal's lock");
    assert_eq!(code(&res), ResultCode::Internal);
    assert!(res.message.contains("outcome is unknown") && res.replayed, "{res:?}");
    let again = restarted.execute(&c, arrive(&c)).await;
    assert!(again.replayed && again.message.contains("outcome is unknown"), "the answer is recorded: {again:?}");
    assert_eq!(r.sim.device.writes_to("holding", 0) + r.sim.device.writes_to("coil", 0), 0, "never re-run");
}

/// A device that answers after the driver's timeout has applied the write all the same: that
/// was reported "timed out … (nothing was written)", and a retry then ran the action twice. It
/// is now outcome unknown, naming the write in flight, and recorded so: a redelivery is
/// answered from the journal, never executed again.
#[tokio::test]
async fn a_write_answered_too_late_is_outcome_unknown_not_nothing_written() {
    let r = rig("").await;
    // The conveyor's Modbus timeout is 500 ms.
    r.sim.device.regs.lock().expect("registers").response_delay = Duration::from_millis(800);
    let c = cmd("late", "conveyor", "start", &[("speed", num(1.5))]);
    let res = r.exec.execute(&c, arrive(&c)).await;
    assert_eq!(code(&res), ResultCode::Internal, "{res:?}");
    for needle in ["writing belt-speed=1.5", "outcome is unknown", "0 of 2 writes done before it"] {
        assert!(res.message.contains(needle), "{needle}: {}", res.message);
    }
    assert!(!res.message.contains("nothing was written"), "{}", res.message);
    let again = r.exec.execute(&c, arrive(&c)).await;
    assert!(again.replayed && again.message == res.message, "answered from the journal: {again:?}");
    // And the device did write it, late.
    let mut applied = 0;
    for _ in 0..40 {
        applied = r.sim.device.writes_to("holding", 0);
        if applied > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(applied, 1, "the device applied the write the agent gave up on, once");
}

/// The reported failure: a kill -9 tore the journal's last line, the next record was appended
/// onto it, the following restart threw the journal away and a redelivered command ran twice.
#[tokio::test]
async fn a_torn_journal_never_lets_a_redelivered_command_run_twice() {
    let r = rig("").await;
    let a = cmd("a", "conveyor", "start", &[("speed", num(1.5))]);
    assert_eq!(code(&r.exec.execute(&a, arrive(&a)).await), ResultCode::Ok);
    // A crash in the middle of appending the next record.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(r.state.path("journal.log"))
        .expect("journal")
        .write_all(b"{\"id\":\"x\",\"at\":17")
        .expect("tear");
    let restarted = r.restart();
    let b = cmd("b", "conveyor", "start", &[("speed", num(2.0))]);
    assert_eq!(code(&restarted.execute(&b, arrive(&b)).await), ResultCode::Ok);
    let again = r.restart();
    for c in [&a, &b] {
        let res = again.execute(c, arrive(c)).await;
        assert!(res.replayed && code(&res) == ResultCode::Ok, "{}: {res:?}", c.id);
    }
    assert_eq!(r.sim.device.writes_to("holding", 0), 2, "one write per command, across two restarts");
    let damaged = std::fs::read_dir(r.state.root())
        .expect("ls")
        .filter(|e| e.as_ref().expect("entry").file_name().to_string_lossy().contains("journal.log."))
        .count();
    assert_eq!(damaged, 0, "a torn tail is repaired, not quarantined");
}

/// The reported failure: after the envelope file was deleted, a restart ran without it and a
/// value the envelope refused was written. A configured envelope that is missing now refuses
/// every write, commands and setpoints alike, and says which file.
#[tokio::test]
async fn a_deleted_envelope_fails_closed() {
    let r = rig("equipment:\n  conveyor:\n    properties:\n      belt-speed: {max: 2.0}\n").await;
    std::fs::remove_file(&r.envelope_path).expect("delete the envelope");
    let journal = Journal::open(&r.state, Duration::from_secs(86400), 1000).expect("journal");
    let restarted = Arc::new(Executor::new(journal, Envelope::load_or_refuse(&r.envelope_path)));
    restarted.equipment().install(&[conveyor(r.sim.addr), robot()], &Default::default());
    let c = cmd("after-delete", "conveyor", "start", &[("speed", num(2.2))]);
    let res = restarted.execute(&c, arrive(&c)).await;
    assert_eq!(code(&res), ResultCode::OutOfEnvelope, "{}", res.message);
    assert!(res.message.contains("envelope.yaml"), "{}", res.message);
    let bool_write = cmd(
        "bool",
        "conveyor",
        "write",
        &[
            ("property", parameter::Kind::Text("running".into())),
            ("value", parameter::Kind::Value(value::bool_value(true))),
        ],
    );
    assert_eq!(code(&restarted.execute(&bool_write, arrive(&bool_write)).await), ResultCode::OutOfEnvelope);
    let read = cmd("read", "conveyor", "read", &[("property", parameter::Kind::Text("belt-speed".into()))]);
    assert_eq!(code(&restarted.execute(&read, arrive(&read)).await), ResultCode::Ok, "reads stay possible");
    let applied = apply::apply(
        restarted.equipment(),
        restarted.envelope(),
        restarted.fail_safes(),
        &ApplyConfig { revision: "r1".into(), equipment: vec![conveyor(r.sim.addr)], ..Default::default() },
    )
    .await;
    let speed = &applied.equipment[0].properties[0];
    assert_eq!(speed.result, ApplyResult::Rejected as i32, "{speed:?}");
    assert_eq!(r.sim.device.writes_to("holding", 0) + r.sim.device.writes_to("coil", 0), 0, "nothing written");
}

#[tokio::test]
async fn a_late_command_never_touches_the_equipment() {
    let r = rig("").await;
    let mut c = cmd("late", "conveyor", "start", &[("speed", num(1.0))]);
    c.deadline_unix_micros = now_micros() - 1_000;
    let res = r.exec.execute(&c, arrive(&c)).await;
    assert_eq!(code(&res), ResultCode::DeadlineExceeded);
    assert_eq!(r.sim.device.writes_to("holding", 0) + r.sim.device.writes_to("coil", 0), 0);
}

/// A command whose deadline passes part-way through an action stops there and says which writes
/// happened; one whose deadline passes during its precondition reads writes nothing.
#[tokio::test]
async fn the_deadline_is_checked_after_preconditions_and_before_every_write() {
    let r = rig("").await;
    r.sim.device.regs.lock().expect("lock").response_delay = Duration::from_millis(300);
    let c = cmd("slow", "conveyor", "start", &[("speed", num(1.5))]);
    let res = r.exec.execute(&c, Arrival::now(WallClock::system(), Duration::from_millis(150))).await;
    assert_eq!(code(&res), ResultCode::DeadlineExceeded, "{}", res.message);
    assert!(res.message.contains("after 1 of 2 writes (belt-speed=1.5)"), "{}", res.message);
    assert!(res.message.contains("running and later were not written"), "{}", res.message);
    assert_eq!(res.outputs.len(), 1, "the write that happened is reported");
    assert_eq!(r.sim.device.writes_to("holding", 0), 1);
    assert_eq!(r.sim.device.writes_to("coil", 0), 0, "nothing written after the deadline");

    let mut pre = cmd("pre", "conveyor", "start", &[("speed", num(1.0))]);
    pre.preconditions = vec![Precondition {
        property: "jam".into(),
        operator: Operator::Equal as i32,
        value: Some(value::bool_value(false)),
    }];
    let res = r.exec.execute(&pre, Arrival::now(WallClock::system(), Duration::from_millis(150))).await;
    assert_eq!(code(&res), ResultCode::DeadlineExceeded, "{}", res.message);
    assert!(res.message.contains("preconditions; nothing was written"), "{}", res.message);
    assert_eq!(r.sim.device.writes_to("holding", 0), 1);
}

/// The agent's wall clock plays no part in the deadline: whatever its skew, a command with time
/// left runs, and one whose budget ran out while it waited for the equipment never does.
#[tokio::test]
async fn deadlines_hold_whatever_the_agent_wall_clock_says() {
    const HOUR: i64 = 3_600_000_000;
    for skew in [-HOUR, -60_000_000, 60_000_000, HOUR] {
        let r = rig("").await;
        let exec = Arc::new(
            Executor::new(
                Journal::open(&r.state, Duration::from_secs(86400), 1000).expect("journal"),
                Envelope::default(),
            )
            .with_wall_clock(WallClock::skewed(skew)),
        );
        exec.equipment().install(&[conveyor(r.sim.addr), robot()], &Default::default());
        // As the controller sends it: a budget, and an absolute deadline on the controller's clock.
        let mut on_time = cmd(&format!("ok{skew}"), "conveyor", "start", &[("speed", num(1.1))]);
        on_time.budget_micros = 2_000_000;
        let received = tokio::time::Instant::now();
        let deadline =
            shopfloor_agent::clock::deadline(&on_time, received, exec.wall_clock().now_micros(), None, Duration::ZERO);
        let arrival = Arrival { received_unix_micros: 0, deadline, offset: Default::default() };
        let res = exec.execute(&on_time, arrival).await;
        assert_eq!(code(&res), ResultCode::Ok, "skew {skew} µs: {}", res.message);

        // A slow device holds the equipment past a 200 ms budget: never executed late.
        r.sim.device.regs.lock().expect("lock").response_delay = Duration::from_millis(400);
        let first = cmd(&format!("busy{skew}"), "conveyor", "start", &[("speed", num(1.2))]);
        let busy = {
            let e = exec.clone();
            tokio::spawn(
                async move { e.execute(&first, Arrival::now(WallClock::system(), Duration::from_secs(5))).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut late = cmd(&format!("late{skew}"), "conveyor", "start", &[("speed", num(1.3))]);
        late.budget_micros = 200_000;
        let deadline = shopfloor_agent::clock::deadline(
            &late,
            tokio::time::Instant::now(),
            exec.wall_clock().now_micros(),
            None,
            Duration::ZERO,
        );
        let res = exec.execute(&late, Arrival { received_unix_micros: 0, deadline, offset: Default::default() }).await;
        assert_eq!(code(&res), ResultCode::DeadlineExceeded, "skew {skew} µs: {}", res.message);
        busy.await.expect("busy");
        let holding: Vec<u16> = r
            .sim
            .device
            .regs
            .lock()
            .expect("lock")
            .writes
            .iter()
            .filter(|w| w.table == "holding")
            .map(|w| w.values[0])
            .collect();
        assert!(!holding.contains(&130), "skew {skew} µs: the late command wrote {holding:?}");
    }
}

#[tokio::test]
async fn limits_envelope_types_and_unknowns_are_refused_with_the_field() {
    let r = rig("equipment:\n  conveyor:\n    properties:\n      belt-speed: {max: 2.0}\n").await;
    let cases: Vec<(Command, ResultCode, &str)> = vec![
        (cmd("a", "conveyor", "start", &[("speed", num(2.8))]), ResultCode::OutOfLimits, "spec.parameters.speed"),
        (cmd("b", "conveyor", "start", &[("speed", num(2.2))]), ResultCode::OutOfEnvelope, "envelope.yaml"),
        (cmd("c", "conveyor", "start", &[("speed", num(3.5))]), ResultCode::InvalidParameter, "declared range"),
        (
            cmd("d", "conveyor", "start", &[("speed", parameter::Kind::Value(value::bool_value(true)))]),
            ResultCode::InvalidParameter,
            "spec.parameters.speed",
        ),
        (cmd("e", "conveyor", "start", &[]), ResultCode::InvalidParameter, "required"),
        (cmd("f", "conveyor", "reverse", &[]), ResultCode::UnknownAction, "spec.action"),
        (cmd("g", "welder", "start", &[]), ResultCode::UnknownEquipment, "welder"),
        (
            cmd(
                "h",
                "conveyor",
                "write",
                &[
                    ("property", parameter::Kind::Text("jam".into())),
                    ("value", parameter::Kind::Value(value::bool_value(true))),
                ],
            ),
            ResultCode::InvalidParameter,
            "read-only",
        ),
        (
            cmd("i", "robot", "write", &[("property", parameter::Kind::Text("program".into())), ("value", num(40.0))]),
            ResultCode::InvalidParameter,
            "Int",
        ),
        (
            cmd(
                "j",
                "robot",
                "write",
                &[
                    ("property", parameter::Kind::Text("program".into())),
                    ("value", parameter::Kind::Value(value::int_value(40))),
                ],
            ),
            ResultCode::OutOfLimits,
            "[1, 32]",
        ),
    ];
    for (c, want, needle) in cases {
        let res = r.exec.execute(&c, arrive(&c)).await;
        assert_eq!(code(&res), want, "{}: {}", c.id, res.message);
        assert!(res.message.contains(needle), "{}: `{}` lacks `{needle}`", c.id, res.message);
    }
    assert_eq!(
        r.sim.device.writes_to("holding", 0) + r.sim.device.writes_to("coil", 0),
        0,
        "nothing refused was written"
    );
}

#[tokio::test]
async fn preconditions_read_fresh_and_dry_runs_write_nothing() {
    let r = rig("").await;
    r.sim.device.regs.lock().expect("lock").discrete.insert(0, true);
    let mut c = cmd("p1", "conveyor", "start", &[("speed", num(1.0))]);
    c.preconditions = vec![Precondition {
        property: "jam".into(),
        operator: Operator::Equal as i32,
        value: Some(value::bool_value(false)),
    }];
    let res = r.exec.execute(&c, arrive(&c)).await;
    assert_eq!(code(&res), ResultCode::PreconditionFailed);
    assert!(res.message.contains("jam read true"), "{}", res.message);
    r.sim.device.regs.lock().expect("lock").discrete.insert(0, false);
    let mut dry = c.clone();
    dry.id = "p2".into();
    dry.dry_run = true;
    let res = r.exec.execute(&dry, arrive(&dry)).await;
    assert_eq!(code(&res), ResultCode::DryRunOk, "{}", res.message);
    assert!(res.message.contains("would write belt-speed=1"), "{}", res.message);
    assert_eq!(r.sim.device.writes_to("holding", 0), 0);
}

#[tokio::test]
async fn commands_to_one_equipment_run_in_arrival_order_and_others_concurrently() {
    let r = rig("").await;
    let mut handles = vec![];
    for i in 0..10 {
        let exec = r.exec.clone();
        let c = cmd(
            &format!("o{i}"),
            "conveyor",
            "write",
            &[("property", parameter::Kind::Text("belt-speed".into())), ("value", num(1.0 + f64::from(i) / 10.0))],
        );
        handles.push(tokio::spawn(async move { exec.execute(&c, arrive(&c)).await }));
        tokio::task::yield_now().await;
    }
    for h in handles {
        assert_eq!(code(&h.await.expect("join")), ResultCode::Ok);
    }
    let writes: Vec<u16> = r
        .sim
        .device
        .regs
        .lock()
        .expect("lock")
        .writes
        .iter()
        .filter(|w| w.table == "holding")
        .map(|w| w.values[0])
        .collect();
    assert_eq!(writes, (0..10).map(|i| 100 + i * 10).collect::<Vec<u16>>(), "serialised in arrival order");
}

#[tokio::test]
async fn apply_is_idempotent_and_reads_back() {
    let r = rig("").await;
    let cfg =
        ApplyConfig { revision: "r1".into(), equipment: vec![conveyor(r.sim.addr), robot()], ..Default::default() };
    let first = apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    let results: Vec<i32> = first.equipment.iter().flat_map(|e| &e.properties).map(|p| p.result).collect();
    assert_eq!(results, vec![ApplyResult::Applied as i32]);
    assert_eq!(r.sim.device.writes_to("holding", 0), 1);
    let second = apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    assert!(!apply::has_failures(&second));
    assert_eq!(r.sim.device.writes_to("holding", 0), 1, "a setpoint already in place is not rewritten");
}

#[tokio::test]
async fn an_unreachable_device_fails_its_setpoints_without_stopping_the_others() {
    let r = rig("").await;
    let dead: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut other = conveyor(dead);
    other.name = "dead-conveyor".into();
    let cfg = ApplyConfig { revision: "r1".into(), equipment: vec![other, conveyor(r.sim.addr)], ..Default::default() };
    let applied = apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    let by: std::collections::HashMap<_, _> =
        applied.equipment.iter().map(|e| (e.equipment.as_str(), e.properties[0].result)).collect();
    assert_eq!(by["dead-conveyor"], ApplyResult::Failed as i32);
    assert_eq!(by["conveyor"], ApplyResult::Applied as i32);
}

/// The agent's buckets start, as the process does, with two commands (the controller's head
/// start and the agent's one of slack) and fill at the rate from there: a restarted (or
/// crash-looping) agent hands out no fresh burst (with `perMinute: 2, burst: 3`, restarts let 7
/// writes through in 12 s).
#[tokio::test]
async fn the_agent_enforces_rate_limits_itself_with_one_command_of_slack() {
    use shopfloor_wire::proto::RateLimit;
    let r = rig("").await;
    let mut conveyor = conveyor(r.sim.addr);
    conveyor.rate_limit = Some(RateLimit { per_minute: 6, burst: 2 });
    let mut robot = robot();
    robot.actions = vec![ActionConfig {
        name: "run".into(),
        writes: vec![ActionWrite {
            property: "program".into(),
            source: Some(action_write::Source::Value(value::int_value(7))),
        }],
        timeout_ms: 1000,
        rate_limit: Some(RateLimit { per_minute: 1, burst: 1 }),
        ..Default::default()
    }];
    let installed = [conveyor, robot];
    r.exec.equipment().install(&installed, &Default::default());

    // Just started: the controller's head start and the agent's one of slack, not the burst and
    // the slack; the third write is refused.
    let writes: Vec<Command> = (0..4)
        .map(|i| cmd(&format!("w{i}"), "conveyor", "write", &[("property", text("belt-speed")), ("value", num(1.0))]))
        .collect();
    let mut codes = Vec::new();
    for c in &writes {
        codes.push(code(&r.exec.execute(c, arrive(c)).await));
    }
    assert_eq!(codes, [ResultCode::Ok, ResultCode::Ok, ResultCode::RateLimited, ResultCode::RateLimited]);
    assert_eq!(r.sim.device.writes_to("holding", 0), 2, "the refused commands never reached the machine");
    // Restarted: still no fresh burst.
    let restarted = r.restart();
    restarted.equipment().install(&installed, &Default::default());
    let after: Vec<Command> = (0..3)
        .map(|i| {
            cmd(&format!("after-{i}"), "conveyor", "write", &[("property", text("belt-speed")), ("value", num(1.0))])
        })
        .collect();
    let mut codes = Vec::new();
    for c in &after {
        codes.push(code(&restarted.execute(c, arrive(c)).await));
    }
    assert_eq!(codes, [ResultCode::Ok, ResultCode::Ok, ResultCode::RateLimited], "a restart hands out no burst");
    let refused = r.exec.execute(&writes[3], arrive(&writes[3])).await;
    assert!(refused.replayed, "a refusal is journalled like any result: a redelivery is not a new command");
    assert!(
        refused.message.contains("conveyor spec.rateLimit allows 6 per minute with a burst of 2"),
        "{}",
        refused.message
    );
    // Reads and dry runs never touch a setpoint and pass.
    let read = cmd("read", "conveyor", "read", &[("property", text("belt-speed"))]);
    assert_eq!(code(&r.exec.execute(&read, arrive(&read)).await), ResultCode::Ok);
    let mut dry = cmd("dry", "conveyor", "write", &[("property", text("belt-speed")), ("value", num(1.0))]);
    dry.dry_run = true;
    assert_eq!(code(&r.exec.execute(&dry, arrive(&dry)).await), ResultCode::DryRunOk);

    // An action's own limit (burst 1): 1 + 1 of slack, then refused naming the action's field.
    let runs: Vec<Command> = (0..3).map(|i| cmd(&format!("run{i}"), "robot", "run", &[])).collect();
    let mut results = Vec::new();
    for c in &runs {
        results.push(r.exec.execute(c, arrive(c)).await);
    }
    assert_eq!(results.iter().map(code).collect::<Vec<_>>(), [ResultCode::Ok, ResultCode::Ok, ResultCode::RateLimited]);
    assert!(
        results[2].message.contains("robot spec.actions[0].rateLimit allows 1 per minute"),
        "{}",
        results[2].message
    );
}

fn text(s: &str) -> parameter::Kind {
    parameter::Kind::Text(s.into())
}

fn boolean(b: bool) -> parameter::Kind {
    parameter::Kind::Value(value::bool_value(b))
}

/// The conveyor with a fail-safe: after 1 s of silence, `running` false, then `belt-speed` 0.
fn conveyor_with_fail_safe(addr: std::net::SocketAddr) -> ApplyConfig {
    let mut eq = conveyor(addr);
    eq.fail_safe = Some(shopfloor_wire::proto::FailSafe {
        after_ms: 1000,
        values: vec![
            NamedValue { name: "running".into(), value: Some(value::bool_value(false)) },
            NamedValue { name: "belt-speed".into(), value: Some(value::float_value(0.0)) },
        ],
        resume_automatic: false,
    });
    ApplyConfig { revision: "r1".into(), equipment: vec![eq], ..Default::default() }
}

fn engage(exec: &Executor) {
    exec.fail_safes().engage(
        "conveyor",
        Engagement { since_unix_micros: now_micros(), message: "test engagement".into(), reached: true },
    );
}

#[tokio::test]
async fn an_engaged_fail_safe_writes_its_values_refuses_writes_and_holds_setpoints_back_until_resumed() {
    let r = rig("").await;
    let cfg = conveyor_with_fail_safe(r.sim.addr);
    r.exec.fail_safes().arm(&cfg, |eq| r.exec.envelope().fail_safe(eq));
    apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    let start = cmd("start", "conveyor", "start", &[("speed", num(1.5))]);
    assert_eq!(code(&r.exec.execute(&start, arrive(&start)).await), ResultCode::Ok);
    assert_eq!(r.sim.device.regs.lock().expect("lock").coils.get(&0), Some(&true));

    engage(&r.exec);
    let values = &cfg.equipment[0].fail_safe.as_ref().expect("fail-safe").values;
    let safe = r.exec.write_safe_values("conveyor", values, "fail-safe/conveyor/1").await;
    assert_eq!(code(&safe), ResultCode::Ok, "{}", safe.message);
    assert_eq!(safe.message, "wrote running=false, belt-speed=0");
    {
        let regs = r.sim.device.regs.lock().expect("lock");
        assert_eq!((regs.coils.get(&0), regs.holding.get(&0)), (Some(&false), Some(&0)));
    }
    // Writes are refused, reads are not.
    let write = cmd("w1", "conveyor", "write", &[("property", text("running")), ("value", boolean(true))]);
    let refused = r.exec.execute(&write, arrive(&write)).await;
    assert_eq!(code(&refused), ResultCode::FailSafeEngaged, "{}", refused.message);
    assert!(refused.message.contains("resume-fail-safe"), "{}", refused.message);
    let read = cmd("r1", "conveyor", "read", &[("property", text("running"))]);
    assert_eq!(code(&r.exec.execute(&read, arrive(&read)).await), ResultCode::Ok);
    // A new configuration does not undo it: its setpoint waits.
    let applied = apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    let speed = &applied.equipment[0].properties[0];
    assert_eq!(speed.result(), ApplyResult::Pending);
    assert!(speed.message.contains("held back"), "{}", speed.message);
    assert_eq!(r.sim.device.regs.lock().expect("lock").holding.get(&0), Some(&0));

    let resume = cmd("resume", "conveyor", "resume-fail-safe", &[]);
    let resumed = r.exec.execute(&resume, arrive(&resume)).await;
    assert_eq!(code(&resumed), ResultCode::Ok, "{}", resumed.message);
    assert!(resumed.message.contains("lifted"), "{}", resumed.message);
    let again = cmd("resume-2", "conveyor", "resume-fail-safe", &[]);
    let nothing = r.exec.execute(&again, arrive(&again)).await;
    assert!(code(&nothing) == ResultCode::Ok && nothing.message.contains("not engaged"), "{}", nothing.message);
    let applied = apply::apply(r.exec.equipment(), r.exec.envelope(), r.exec.fail_safes(), &cfg).await;
    assert_eq!(applied.equipment[0].properties[0].result(), ApplyResult::Applied);
    assert_eq!(r.sim.device.regs.lock().expect("lock").holding.get(&0), Some(&120));
    let write = cmd("w2", "conveyor", "write", &[("property", text("running")), ("value", boolean(true))]);
    assert_eq!(code(&r.exec.execute(&write, arrive(&write)).await), ResultCode::Ok);
}

#[tokio::test]
async fn safe_values_are_checked_by_the_envelope_never_rate_limited_and_one_refusal_does_not_stop_the_others() {
    let r = rig("equipment:\n  conveyor:\n    properties:\n      belt-speed: {min: 0.5}\n").await;
    let mut cfg = conveyor_with_fail_safe(r.sim.addr);
    cfg.equipment[0].rate_limit = Some(shopfloor_wire::proto::RateLimit { per_minute: 1, burst: 1 });
    r.exec.equipment().install(&cfg.equipment, &Default::default());
    r.exec.fail_safes().arm(&cfg, |eq| r.exec.envelope().fail_safe(eq));
    // Spend the rate limit (all a just-started agent has: a command and its one of slack).
    for i in 0..2 {
        let c = cmd(&format!("w{i}"), "conveyor", "write", &[("property", text("running")), ("value", boolean(true))]);
        assert_eq!(code(&r.exec.execute(&c, arrive(&c)).await), ResultCode::Ok);
    }
    engage(&r.exec);
    let values = &cfg.equipment[0].fail_safe.as_ref().expect("fail-safe").values;
    let safe = r.exec.write_safe_values("conveyor", values, "fail-safe/conveyor/2").await;
    assert_eq!(code(&safe), ResultCode::DeviceError);
    assert!(safe.message.starts_with("wrote running=false; belt-speed not written"), "{}", safe.message);
    assert!(safe.message.contains("safety envelope"), "{}", safe.message);
    assert_eq!(r.sim.device.regs.lock().expect("lock").coils.get(&0), Some(&false));
    assert_eq!(r.sim.device.writes_to("holding", 0), 0);
}

#[tokio::test]
async fn the_plants_envelope_requires_a_fail_safe_the_configuration_lacks() {
    let r = rig(
        "equipment:\n  conveyor:\n    failSafe:\n      after: 1s\n      values: [{property: running, value: false}]\n",
    )
    .await;
    let cfg = ApplyConfig { revision: "r1".into(), equipment: vec![conveyor(r.sim.addr)], ..Default::default() };
    r.exec.fail_safes().arm(&cfg, |eq| r.exec.envelope().fail_safe(eq));
    let states = r.exec.fail_safes().states();
    assert_eq!(states.len(), 1);
    assert!(states[0].required_by_envelope && states[0].after_ms == 1000 && !states[0].engaged);
    let (due, _) = r.exec.fail_safes().due();
    assert!(due.is_empty(), "not before its second of silence");
    // Its second and the 250 ms in which a live link would have been heard.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (due, silence) = r.exec.fail_safes().due();
    assert_eq!(due.iter().map(|(eq, _)| eq.as_str()).collect::<Vec<_>>(), ["conveyor"]);
    assert!(silence >= Duration::from_millis(1250));
    assert!(due[0].1.required_by_envelope);
}

/// Defect: configuration apply walked the equipment one after another, so an OPC UA server
/// that accepts connections and answers nothing held a Modbus setpoint back for 16–29 s. Each
/// equipment now applies on its own: the Modbus setpoint reaches its device while the silent
/// server's apply is still waiting.
#[tokio::test]
async fn a_silent_opcua_server_does_not_hold_back_another_equipments_setpoint() {
    let r = rig("").await;
    let (packer, _server) = silent_opcua_packer(true).await;
    let mut conveyor = conveyor(r.sim.addr);
    conveyor.properties[0].desired = Some(value::float_value(1.2));
    // The silent server first, as it was in the configuration that showed the defect.
    let cfg = ApplyConfig { revision: "r1".into(), equipment: vec![packer, conveyor], ..Default::default() };
    let exec = with_opcua(&r);
    let started = std::time::Instant::now();
    let applying =
        tokio::spawn(async move { apply::apply(exec.equipment(), exec.envelope(), exec.fail_safes(), &cfg).await });
    let mut reached = None;
    for _ in 0..100 {
        if r.sim.device.regs.lock().expect("lock").holding.get(&0) == Some(&120) {
            reached = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached = reached.expect("the Modbus setpoint reached its device within 2 s");
    assert!(!applying.is_finished(), "the silent server's apply was still waiting: this measured isolation");
    println!("the Modbus setpoint reached its device after {reached:?} beside a silent OPC UA server");
    let applied = applying.await.expect("apply");
    assert_eq!(applied.equipment.iter().map(|e| e.equipment.as_str()).collect::<Vec<_>>(), ["packer", "conveyor"]);
}

/// The same defect in telemetry: polling walked the equipment one after another, so a silent
/// OPC UA server held every other equipment's readings back (a Modbus equipment read 1–2 times
/// in 20 s instead of 20). Each equipment is now polled in a task of its own.
#[tokio::test]
async fn a_silent_opcua_server_does_not_hold_back_another_equipments_readings() {
    use shopfloor_agent::link::{connection::Agent, credentials::Identity};
    let r = rig("").await;
    let (packer, _server) = silent_opcua_packer(false).await;
    let mut conveyor = conveyor(r.sim.addr);
    conveyor.reporting_interval_ms = 100;
    let exec = with_opcua(&r);
    exec.equipment().install(&[packer, conveyor], &Default::default());
    let identity = Identity {
        namespace: "plant-a".into(),
        name: "line-1".into(),
        controller: "127.0.0.1:9".into(),
        server_name: "127.0.0.1".into(),
    };
    let agent = Agent::new(r.state.clone(), identity, exec, 10_000);
    let polling = tokio::spawn(agent.clone().poll_telemetry());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let readings = agent.telemetry.lock().expect("buffer").len();
    polling.abort();
    // Two properties every 100 ms for 1.5 s: about 30; none before the fix.
    assert!(readings >= 10, "the Modbus conveyor's readings while the OPC UA server is silent: {readings}");
}

/// An OPC UA server that accepts connections, reads, and never answers, and a packer on it
/// (its speed with a desired setpoint when `desired`, read every 100 ms); the server runs as
/// long as the test's runtime.
async fn silent_opcua_packer(desired: bool) -> (EquipmentConfig, tokio::task::JoinHandle<()>) {
    use shopfloor_wire::proto::{OpcUa, OpcUaDataType, OpcUaNode, OpcUaSecurityMode, OpcUaSecurityPolicy};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
    let addr = silent.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let packer = EquipmentConfig {
        name: "packer".into(),
        protocol: Some(Protocol::Opcua(OpcUa {
            endpoint_url: format!("opc.tcp://{addr}/"),
            security_policy: OpcUaSecurityPolicy::None as i32,
            security_mode: OpcUaSecurityMode::None as i32,
            timeout_ms: 5000,
            publishing_interval_ms: 100,
        })),
        reporting_interval_ms: 100,
        properties: vec![PropertyConfig {
            name: "speed".into(),
            r#type: ValueType::Float as i32,
            writable: desired,
            desired: desired.then(|| value::float_value(2.0)),
            opcua: Some(OpcUaNode {
                node_id: "ns=2;s=Speed".into(),
                data_type: OpcUaDataType::Double as i32,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    (packer, server)
}

/// An executor on the rig's state directory that can drive OPC UA equipment (its PKI folder
/// under the rig's), without an envelope.
fn with_opcua(r: &Rig) -> Arc<Executor> {
    let journal = Journal::open(&r.state, Duration::from_secs(86400), 1000).expect("journal");
    Arc::new(Executor::new(journal, Envelope::none()).with_opcua(shopfloor_agent::equipment::drivers::opcua::Site {
        pki_dir: r._dir.path().join("pki"),
        users: Default::default(),
    }))
}
