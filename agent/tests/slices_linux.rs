//! The Linux slice backend against a real kernel: two network namespaces joined by a veth pair,
//! the agent in one, a Modbus simulator (the "plant") in the other, reachable only through the
//! slice's routing table. Needs root; without it the test says so and passes.
#![cfg(target_os = "linux")]

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use serde_json::Value as Json;
use shopfloor_agent::{
    apply,
    commands::Executor,
    envelope::Envelope,
    journal::Journal,
    slices::{SliceBackend, linux::Netlink},
    state::StateDir,
};
use shopfloor_sim::modbus::{Device, Simulator};
use shopfloor_wire::proto::{
    ApplyConfig, ApplyResult, EquipmentConfig, ModbusMapping, ModbusTable, ModbusTcp, PropertyConfig, RegisterType,
    SliceConfig, ValueType, equipment_config::Protocol,
};
use shopfloor_wire::value;

const PLANT: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 5);
const PORT: u16 = 1502;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Runs `ip`/`tc` in the calling thread's network namespace (a child inherits it).
fn sh(cmd: &str) -> String {
    let mut words = cmd.split_whitespace();
    let program = words.next().unwrap_or_default();
    let out = Command::new(program).args(words).output().unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"));
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(cmd: &str) -> Vec<Json> {
    let text = sh(cmd);
    if text.trim().is_empty() {
        vec![]
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{cmd}: {e}: {text}"))
    }
}

fn unshare_net() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
}

fn thread_id() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()).expect("tid")
}

/// The DSCP of every IPv4 TCP packet to the plant's Modbus port seen in this namespace.
fn capture(stop: &AtomicBool) -> Vec<u8> {
    let socket = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::from(i32::from(0x0800u16.to_be()))),
    )
    .expect("packet socket");
    socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = (&socket).read(&mut buf) else { continue };
        let p = &buf[..n];
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if n < ihl + 4 || p[9] != 6 || p[16..20] != PLANT.octets() {
            continue;
        }
        if u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) == PORT {
            seen.push(p[1] >> 2);
        }
    }
    seen
}

/// The plant: a namespace with the simulator on 10.88.0.5, joined to the agent's by `sf0p`.
fn plant(
    tid_tx: mpsc::Sender<u32>,
    moved: mpsc::Receiver<()>,
    ready: mpsc::Sender<Device>,
    stop: Arc<AtomicBool>,
) -> Vec<u8> {
    unshare_net();
    tid_tx.send(thread_id()).expect("send tid");
    moved.recv().expect("veth moved");
    sh("ip link set lo up");
    sh("ip addr add 10.77.0.2/24 dev sf0p");
    sh("ip addr add 10.88.0.5/32 dev lo");
    sh("ip link set sf0p up");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let sim =
            Simulator::start(SocketAddr::from((PLANT, PORT)), Device::default(), vec![]).await.expect("simulator");
        let capture = tokio::task::spawn_blocking(move || capture(&stop));
        ready.send(sim.device.clone()).expect("ready");
        let seen = capture.await.expect("capture");
        drop(sim);
        seen
    })
}

fn slice(name: &str, interface: &str, table: u32, mark: u32, mbr: u64) -> SliceConfig {
    SliceConfig {
        name: name.into(),
        interface: interface.into(),
        routing_table: table,
        fwmark: mark,
        dscp: Some(46),
        mbr_uplink_bps: mbr,
        ..Default::default()
    }
}

fn plc() -> EquipmentConfig {
    EquipmentConfig {
        name: "plc".into(),
        slice: "control".into(),
        protocol: Some(Protocol::ModbusTcp(ModbusTcp {
            host: PLANT.to_string(),
            port: u32::from(PORT),
            unit_id: 1,
            timeout_ms: 1000,
        })),
        properties: vec![PropertyConfig {
            name: "setpoint".into(),
            r#type: ValueType::Int as i32,
            writable: true,
            desired: Some(value::int_value(1234)),
            modbus: Some(ModbusMapping {
                table: ModbusTable::HoldingRegister as i32,
                address: 7,
                register_type: RegisterType::U16 as i32,
                scale: 1.0,
                offset: 0.0,
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn rules_with_mark(mark: &str) -> Vec<Json> {
    json("ip -j rule show").into_iter().filter(|r| r["fwmark"] == mark).collect()
}

fn root_qdisc(dev: &str) -> Json {
    json(&format!("tc -s -j qdisc show dev {dev} root")).into_iter().next().unwrap_or(Json::Null)
}

#[test]
fn linux_backend_steers_marks_shapes_and_removes_exactly_what_it_created() {
    if !is_root() {
        // CI runs as root: a pass there must mean the backend was exercised.
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run this test as root (network namespaces)");
        eprintln!("NOT RUN (needs root to create network namespaces): the Linux slice backend test");
        return;
    }
    let (tid_tx, tid_rx) = mpsc::channel();
    let (moved_tx, moved_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let plant = std::thread::spawn({
        let stop = stop.clone();
        move || plant(tid_tx, moved_rx, ready_tx, stop)
    });

    // The agent's namespace, with what an operator already set up and the agent must not touch:
    // a rule of its own, a route in the slice's table, and a shaped interface.
    unshare_net();
    sh("ip link set lo up");
    sh("ip link add sf0 type veth peer name sf0p");
    sh(&format!("ip link set sf0p netns {}", tid_rx.recv().expect("plant tid")));
    sh("ip addr add 10.77.0.1/24 dev sf0");
    sh("ip link set sf0 up");
    sh("ip link add busy0 type veth peer name busy0p");
    sh("ip link set busy0 up");
    sh("tc qdisc add dev busy0 root handle 1: tbf rate 1mbit burst 32kbit latency 400ms");
    sh("ip rule add fwmark 0x99 lookup 99 priority 500");
    sh("ip route add 192.0.2.0/24 dev sf0 table 100");
    moved_tx.send(()).expect("moved");
    let device = ready_rx.recv().expect("plant ready");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::open(dir.path()).expect("state");
    let journal = Journal::open(&state, Duration::from_secs(3600), 1000).expect("journal");
    let executor = Executor::new(journal, Envelope::default()).with_slice_backend(Arc::new(Netlink::default()));

    let cfg = ApplyConfig {
        revision: "r1".into(),
        equipment: vec![plc()],
        slices: vec![
            slice("control", "sf0", 100, 0x64, 8_000_000),
            slice("busy", "busy0", 101, 0x65, 1_000_000),
            slice("ghost", "nope0", 102, 0x66, 0),
        ],
        ..Default::default()
    };

    // Before any slice, the plant is unreachable: the main table has no route to it.
    let unsteered = ApplyConfig { slices: vec![], ..cfg.clone() };
    let applied =
        rt.block_on(apply::apply(executor.equipment(), executor.envelope(), executor.fail_safes(), &unsteered));
    let r = &applied.equipment[0].properties[0];
    assert_eq!(r.result, ApplyResult::Failed as i32, "the plant must be unreachable unsteered: {r:?}");

    let applied = rt.block_on(apply::apply(executor.equipment(), executor.envelope(), executor.fail_safes(), &cfg));
    let by_name = |n: &str| applied.slices.iter().find(|s| s.slice == n).cloned().expect(n);
    assert!(by_name("control").ok, "{:?}", by_name("control"));
    let busy = by_name("busy");
    assert!(!busy.ok && busy.message.contains("busy0") && busy.message.contains("did not create"), "{busy:?}");
    let ghost = by_name("ghost");
    assert!(!ghost.ok && ghost.message.contains("nope0 does not exist"), "{ghost:?}");
    // The setpoint reached the plant through the slice: marked, routed by table 100.
    let r = &applied.equipment[0].properties[0];
    assert_eq!(r.result, ApplyResult::Applied as i32, "{r:?}");
    assert_eq!(device.regs.lock().unwrap().holding.get(&7), Some(&1234));

    let rule = rules_with_mark("0x64");
    assert_eq!(rule.len(), 1, "{rule:?}");
    assert_eq!(rule[0]["table"], "100");
    assert_eq!(rule[0]["priority"], 10_000);
    let routes = json("ip -j route show table 100");
    assert!(routes.iter().any(|r| r["dst"] == "default" && r["dev"] == "sf0"), "{routes:?}");
    let v6 = json("ip -j -6 route show table 100");
    assert!(v6.iter().any(|r| r["dst"] == "default" && r["dev"] == "sf0"), "{v6:?}");
    let shaper = root_qdisc("sf0");
    assert_eq!(shaper["kind"], "tbf", "{shaper}");
    assert_eq!(shaper["handle"], "5346:", "{shaper}");
    assert_eq!(shaper["options"]["rate"], 1_000_000, "8 Mbit/s in bytes per second: {shaper}");
    assert!(shaper["bytes"].as_u64().unwrap_or(0) > 0, "the slice's traffic went through the shaper: {shaper}");

    // Applying the same configuration again changes nothing.
    let again = rt.block_on(apply::apply(executor.equipment(), executor.envelope(), executor.fail_safes(), &cfg));
    assert!(again.slices.iter().find(|s| s.slice == "control").is_some_and(|s| s.ok));
    assert_eq!(rules_with_mark("0x64").len(), 1, "no duplicate rule");
    assert_eq!(json("ip -j route show table 100").len(), 2, "default + the operator's route");

    stop.store(true, Ordering::Relaxed);
    let dscp = plant.join().expect("plant thread");
    assert!(!dscp.is_empty(), "no packet to the plant was captured");
    assert!(dscp.iter().all(|&d| d == 46), "every packet to the plant carries DSCP 46: {dscp:?}");

    // A fresh backend (as after an agent restart) given no slices removes exactly what the agent
    // created, from its tags alone.
    let results = rt.block_on(Netlink::default().apply(&[], &[]));
    assert!(results.is_empty());
    assert!(rules_with_mark("0x64").is_empty() && rules_with_mark("0x65").is_empty(), "slice rules removed");
    assert_eq!(rules_with_mark("0x99").len(), 1, "the operator's rule is untouched");
    let left = json("ip -j route show table 100");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["dst"], "192.0.2.0/24", "the operator's route in the slice's table is untouched");
    assert!(json("ip -j route show table 101").is_empty());
    assert!(json("ip -j -6 route show table 100").is_empty());
    assert_ne!(root_qdisc("sf0")["handle"], "5346:", "the shaper is removed");
    assert_eq!(root_qdisc("busy0")["handle"], "1:", "the operator's qdisc is untouched");
}
