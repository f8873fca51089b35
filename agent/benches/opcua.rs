//! OPC UA beside Modbus, in one run, through the agent's drivers over loopback: a Modbus holding
//! register write (the baseline), an OPC UA variable write and method call on a session with
//! None and with Basic256Sha256/SignAndEncrypt, and the subscription's update latency. Prints
//! figures and ratios to the Modbus write; asserts nothing.
//!
//!     cargo bench -p shopfloor-agent --bench opcua
//!
//! Each figure is one request's round trip through the driver, session already open (the
//! handshake is not included), simulator and agent in this one process on this machine. The
//! update latency runs from the simulator changing a variable to the driver delivering the
//! change; it includes the server's sampling (10 ms) and publishing (50 ms) intervals, which
//! bound it from below by design.

use std::{collections::HashMap, sync::Arc, time::Duration};

use shopfloor_agent::equipment::drivers::{
    Driver, Pushed,
    modbus::ModbusDriver,
    opcua::{OpcUaDriver, Site},
};
use shopfloor_sim::{
    modbus::{Device, Simulator},
    opcua::{Machine, NAMESPACE, Options},
};
use shopfloor_wire::proto::{
    MethodArgument, MethodCall, ModbusMapping, ModbusTable, ModbusTcp, OpcUa, OpcUaDataType, OpcUaNode,
    OpcUaSecurityMode, OpcUaSecurityPolicy, PropertyConfig, Value, ValueType, method_argument::Source, value::Kind,
};

const N: usize = 500;

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn node(id: &str, ty: OpcUaDataType, sampling_ms: u64) -> Option<OpcUaNode> {
    Some(OpcUaNode {
        node_id: format!("nsu={NAMESPACE};s={id}"),
        data_type: ty as i32,
        sampling_interval_ms: sampling_ms,
        deadband: 0.0,
    })
}

async fn time<F, Fut>(mut f: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..20 {
        f(i).await;
    }
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let t = std::time::Instant::now();
        f(i).await;
        samples.push(t.elapsed());
    }
    percentiles(samples)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tmp");
    let modbus_sim =
        Simulator::start("127.0.0.1:0".parse().expect("addr"), Device::default(), vec![]).await.expect("modbus sim");
    let modbus = ModbusDriver::new(&ModbusTcp {
        host: "127.0.0.1".into(),
        port: u32::from(modbus_sim.addr.port()),
        unit_id: 1,
        timeout_ms: 2000,
    });
    let register = PropertyConfig {
        name: "speed".into(),
        r#type: ValueType::Float as i32,
        writable: true,
        modbus: Some(ModbusMapping {
            table: ModbusTable::HoldingRegister as i32,
            address: 0,
            scale: 0.01,
            ..Default::default()
        }),
        ..Default::default()
    };
    let float = |x: f64| Value { kind: Some(Kind::FloatValue(x)) };
    let (m50, m99) = time(|i| {
        let (modbus, register) = (&modbus, &register);
        async move { modbus.write(register, &float((i % 100) as f64 / 10.0)).await.expect("modbus write") }
    })
    .await;
    println!("Modbus TCP holding-register write: p50 {:.0} µs, p99 {:.0} µs (baseline)", micros(m50), micros(m99));

    let machine = Machine::start(Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        pki_dir: dir.path().join("server-pki"),
        allow_none: true,
        user: None,
        write_log: None,
    })
    .await
    .expect("opcua sim");
    let speed = PropertyConfig {
        name: "speed".into(),
        r#type: ValueType::Float as i32,
        writable: true,
        opcua: node("Machine.Speed", OpcUaDataType::Double, 10),
        ..Default::default()
    };
    let start_job = MethodCall {
        object_id: format!("nsu={NAMESPACE};s=Machine"),
        method_id: format!("nsu={NAMESPACE};s=Machine.StartJob"),
        inputs: vec![
            MethodArgument { data_type: OpcUaDataType::Int32 as i32, source: Some(Source::Parameter("p".into())) },
            MethodArgument { data_type: OpcUaDataType::Double as i32, source: Some(Source::Parameter("s".into())) },
        ],
        outputs: vec!["jobId".into()],
    };
    let site = Arc::new(Site { pki_dir: dir.path().join("agent-pki"), users: HashMap::new() });
    for (label, policy, mode) in [
        ("None", OpcUaSecurityPolicy::None, OpcUaSecurityMode::None),
        ("Basic256Sha256/SignAndEncrypt", OpcUaSecurityPolicy::Basic256Sha256, OpcUaSecurityMode::SignAndEncrypt),
    ] {
        let cfg = OpcUa {
            endpoint_url: machine.url.clone(),
            security_policy: policy as i32,
            security_mode: mode as i32,
            timeout_ms: 5000,
            publishing_interval_ms: 50,
        };
        let driver = OpcUaDriver::new("bench", &cfg, site.clone());
        if driver.read(&speed).await.is_err() {
            // The first secured session meets an unknown server certificate: trust it, as the
            // plant engineer would.
            for e in std::fs::read_dir(site.pki_dir.join("rejected")).expect("rejected").flatten() {
                std::fs::rename(e.path(), site.pki_dir.join("trusted").join(e.file_name())).expect("trust");
            }
            driver.read(&speed).await.expect("session once trusted");
        }
        let (w50, w99) = time(|i| {
            let (driver, speed) = (&driver, &speed);
            async move { driver.write(speed, &float((i % 100) as f64 / 10.0)).await.expect("opcua write") }
        })
        .await;
        let args = [Value { kind: Some(Kind::IntValue(7)) }, float(1.0)];
        let (c50, c99) = time(|_| {
            let (driver, start_job, args) = (&driver, &start_job, &args);
            async move {
                driver.call(start_job, args).await.expect("opcua call");
            }
        })
        .await;
        println!(
            "OPC UA {label}: variable write p50 {:.0} µs, p99 {:.0} µs (×{:.1} / ×{:.1} the Modbus write); method call p50 {:.0} µs, p99 {:.0} µs (×{:.1} / ×{:.1})",
            micros(w50),
            micros(w99),
            w50.as_secs_f64() / m50.as_secs_f64(),
            w99.as_secs_f64() / m99.as_secs_f64(),
            micros(c50),
            micros(c99),
            c50.as_secs_f64() / m50.as_secs_f64(),
            c99.as_secs_f64() / m99.as_secs_f64(),
        );
        if policy == OpcUaSecurityPolicy::None {
            // The machine's mode, set by the simulator itself: the change starts on the server.
            let mode = PropertyConfig {
                name: "mode".into(),
                r#type: ValueType::Int as i32,
                opcua: node("Machine.Mode", OpcUaDataType::Uint16, 10),
                ..Default::default()
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Pushed>(64);
            driver.subscribe(std::slice::from_ref(&mode), tx).await.expect("subscribe");
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            let mut samples = Vec::new();
            for i in 1..=100u16 {
                let t = std::time::Instant::now();
                machine.set("Machine.Mode", opcua::types::Variant::UInt16(i));
                loop {
                    let p = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                        .await
                        .expect("an update")
                        .expect("open");
                    if p.value.as_ref().ok().and_then(|v| v.kind) == Some(Kind::IntValue(i64::from(i))) {
                        break;
                    }
                }
                samples.push(t.elapsed());
            }
            let (u50, u99) = percentiles(samples);
            println!(
                "OPC UA subscription update (server sampling 10 ms, publishing 50 ms): p50 {:.1} ms, p99 {:.1} ms",
                u50.as_secs_f64() * 1e3,
                u99.as_secs_f64() * 1e3
            );
        }
    }
}
