//! A simulated OPC UA machine (a packaging machine with a job method), served by async-opcua's
//! server over a real socket, so the agent's OPC UA driver is exercised end to end: security
//! handshake, reads, writes, method calls and subscriptions.
//!
//! Every variable is backed by the simulator's own state, not the server's address space: writes
//! are type-checked (a wrong type is `BadTypeMismatch`, as a real server answers), recorded, and
//! can be logged as JSON lines; subscriptions sample that state. The temperature follows the
//! speed with a lag and a small wave, so a subscription has something to report.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use opcua::{
    server::{
        ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken,
        address_space::{MethodBuilder, ObjectBuilder, VariableBuilder},
        diagnostics::NamespaceMetadata,
        node_manager::memory::{SimpleNodeManager, simple_node_manager},
    },
    types::{DataTypeId, DataValue, NodeId, ObjectId, StatusCode, Variant},
};

/// The machine's namespace; node ids are strings in it, e.g. `ns=<index>;s=Machine.Speed`.
pub const NAMESPACE: &str = "urn:shopfloor:sim:machine";

/// The machine's variables: (string id, data type, writable).
pub const VARIABLES: &[(&str, DataTypeId, bool)] = &[
    ("Machine.Running", DataTypeId::Boolean, true),
    ("Machine.Speed", DataTypeId::Double, true),
    ("Machine.Program", DataTypeId::Int32, true),
    ("Machine.Mode", DataTypeId::UInt16, true),
    ("Machine.Temperature", DataTypeId::Double, false),
    ("Machine.JobCount", DataTypeId::UInt32, false),
];

/// `StartJob(program: Int32, speed: Double) -> jobId: UInt32` starts the machine on a program
/// (speed 0–10); `Stop()` stops it.
pub const START_JOB: &str = "Machine.StartJob";
pub const STOP: &str = "Machine.Stop";
pub const OBJECT: &str = "Machine";

/// How the simulator is reached and secured.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    /// The server's own certificate and key (created on first start) and its trust lists.
    pub pki_dir: PathBuf,
    /// Offer the unsecured endpoint (None/None) besides Basic256Sha256 and Aes128Sha256RsaOaep
    /// with Sign and SignAndEncrypt.
    pub allow_none: bool,
    /// A user (name, password) accepted besides anonymous sessions.
    pub user: Option<(String, String)>,
    /// Append every write and call to this file as JSON lines.
    pub write_log: Option<PathBuf>,
}

/// One recorded write or method call.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Record {
    pub at_unix_micros: i64,
    /// `write` or `call`.
    pub kind: &'static str,
    /// The string id of the variable or method.
    pub node: String,
    /// The written value or the call's input arguments, as JSON.
    pub value: serde_json::Value,
}

#[derive(Debug, Default)]
struct State {
    values: BTreeMap<&'static str, Variant>,
    records: Vec<Record>,
    log: Option<std::fs::File>,
}

impl State {
    fn record(&mut self, kind: &'static str, node: &str, value: serde_json::Value) {
        let at_unix_micros = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let r = Record { at_unix_micros, kind, node: node.to_owned(), value };
        if let Some(f) = &mut self.log
            && let Ok(line) = serde_json::to_string(&r)
        {
            let _ = writeln!(f, "{line}");
        }
        self.records.push(r);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn json(v: &Variant) -> serde_json::Value {
    match v {
        Variant::Boolean(b) => (*b).into(),
        Variant::Double(d) => (*d).into(),
        Variant::Float(f) => f64::from(*f).into(),
        Variant::Int32(i) => (*i).into(),
        Variant::UInt16(u) => (*u).into(),
        Variant::UInt32(u) => (*u).into(),
        other => format!("{other:?}").into(),
    }
}

fn matches_type(v: &Variant, ty: DataTypeId) -> bool {
    matches!(
        (v, ty),
        (Variant::Boolean(_), DataTypeId::Boolean)
            | (Variant::Double(_), DataTypeId::Double)
            | (Variant::Int32(_), DataTypeId::Int32)
            | (Variant::UInt16(_), DataTypeId::UInt16)
            | (Variant::UInt32(_), DataTypeId::UInt32)
    )
}

/// A running simulator; dropping it stops the server.
pub struct Machine {
    pub addr: SocketAddr,
    /// The endpoint URL clients dial.
    pub url: String,
    handle: ServerHandle,
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.handle.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Machine {
    /// Starts the machine, listening on `options.listen` (port 0 picks a free port).
    pub async fn start(options: Options) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut tokens = vec![ANONYMOUS_USER_TOKEN_ID.to_owned()];
        let mut builder = ServerBuilder::new()
            .application_name("Shopfloor OPC UA simulator")
            .application_uri("urn:shopfloor:sim")
            .product_uri("urn:shopfloor:sim")
            .create_sample_keypair(true)
            .pki_dir(options.pki_dir.clone())
            .trust_client_certs(true)
            .host(addr.ip().to_string())
            .port(addr.port())
            .discovery_urls(vec!["/".to_owned()]);
        if let Some((name, password)) = &options.user {
            builder = builder.add_user_token(name, ServerUserToken::user_pass(name, password));
            tokens.push(name.clone());
        }
        if options.allow_none {
            builder = builder.add_endpoint("none", ServerEndpoint::new_none("/", &tokens));
        }
        // Basic256Sha256 with Sign only is deprecated by the standard, yet plants run servers that
        // offer it; the simulator offers it so the agent's choice of mode is tested.
        #[allow(deprecated)]
        let (server, handle) = builder
            .add_endpoint("basic256sha256-sign", ServerEndpoint::new_basic256sha256_sign("/", &tokens))
            .add_endpoint("basic256sha256-encrypt", ServerEndpoint::new_basic256sha256_sign_encrypt("/", &tokens))
            .add_endpoint("aes128-sign", ServerEndpoint::new_aes128_sha256_rsaoaep_sign("/", &tokens))
            .add_endpoint("aes128-encrypt", ServerEndpoint::new_aes128_sha256_rsaoaep_sign_encrypt("/", &tokens))
            .with_node_manager(simple_node_manager(
                NamespaceMetadata { namespace_uri: NAMESPACE.to_owned(), ..Default::default() },
                "machine",
            ))
            .build()
            .map_err(|e| format!("cannot configure the OPC UA server: {e}"))?;
        let nodes = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or("the simulator's node manager is missing")?;
        let ns = handle.get_namespace_index(NAMESPACE).ok_or("the simulator's namespace is missing")?;

        let log = match &options.write_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let state = Arc::new(Mutex::new(State { log, ..Default::default() }));
        {
            let mut s = lock(&state);
            s.values.insert("Machine.Running", Variant::Boolean(false));
            s.values.insert("Machine.Speed", Variant::Double(0.0));
            s.values.insert("Machine.Program", Variant::Int32(0));
            s.values.insert("Machine.Mode", Variant::UInt16(0));
            s.values.insert("Machine.Temperature", Variant::Double(20.0));
            s.values.insert("Machine.JobCount", Variant::UInt32(0));
        }

        let machine = NodeId::new(ns, OBJECT);
        {
            let mut space = nodes.address_space().write();
            ObjectBuilder::new(&machine, OBJECT, OBJECT).organized_by(ObjectId::ObjectsFolder).insert(&mut *space);
            for (id, ty, writable) in VARIABLES {
                let name = id.trim_start_matches("Machine.");
                let mut v = VariableBuilder::new(&NodeId::new(ns, *id), name, name)
                    .data_type(*ty)
                    .component_of(machine.clone());
                if *writable {
                    v = v.writable();
                }
                v.insert(&mut *space);
            }
            MethodBuilder::new(&NodeId::new(ns, START_JOB), "StartJob", "StartJob")
                .component_of(machine.clone())
                .executable(true)
                .user_executable(true)
                .input_args(
                    &mut *space,
                    &NodeId::new(ns, "Machine.StartJob.In"),
                    &[("program", DataTypeId::Int32).into(), ("speed", DataTypeId::Double).into()],
                )
                .output_args(
                    &mut *space,
                    &NodeId::new(ns, "Machine.StartJob.Out"),
                    &[("jobId", DataTypeId::UInt32).into()],
                )
                .insert(&mut *space);
            MethodBuilder::new(&NodeId::new(ns, STOP), "Stop", "Stop")
                .component_of(machine.clone())
                .executable(true)
                .user_executable(true)
                .insert(&mut *space);
        }

        let manager = nodes.inner();
        for (id, ty, writable) in VARIABLES {
            let s = state.clone();
            manager.add_read_callback(NodeId::new(ns, *id), move |_, _, _| {
                let value = lock(&s).values.get(id).cloned().unwrap_or(Variant::Empty);
                Ok(DataValue::new_now(value))
            });
            if *writable {
                let s = state.clone();
                manager.add_write_callback(NodeId::new(ns, *id), move |dv, _| {
                    let Some(value) = dv.value else { return StatusCode::BadTypeMismatch };
                    if !matches_type(&value, *ty) {
                        return StatusCode::BadTypeMismatch;
                    }
                    let mut s = lock(&s);
                    s.record("write", id, json(&value));
                    s.values.insert(id, value);
                    StatusCode::Good
                });
            }
        }
        let jobs = Arc::new(AtomicU32::new(1000));
        let s = state.clone();
        manager.add_method_callback(NodeId::new(ns, START_JOB), move |args| {
            let (Some(Variant::Int32(program)), Some(Variant::Double(speed)), None) =
                (args.first(), args.get(1), args.get(2))
            else {
                return Err(StatusCode::BadInvalidArgument);
            };
            if !(0.0..=10.0).contains(speed) {
                return Err(StatusCode::BadOutOfRange);
            }
            let mut s = lock(&s);
            s.record("call", START_JOB, serde_json::json!([program, speed]));
            s.values.insert("Machine.Program", Variant::Int32(*program));
            s.values.insert("Machine.Speed", Variant::Double(*speed));
            s.values.insert("Machine.Running", Variant::Boolean(true));
            let count = match s.values.get("Machine.JobCount") {
                Some(Variant::UInt32(n)) => n + 1,
                _ => 1,
            };
            s.values.insert("Machine.JobCount", Variant::UInt32(count));
            Ok(vec![Variant::UInt32(jobs.fetch_add(1, Ordering::Relaxed))])
        });
        let s = state.clone();
        manager.add_method_callback(NodeId::new(ns, STOP), move |args| {
            if !args.is_empty() {
                return Err(StatusCode::BadInvalidArgument);
            }
            let mut s = lock(&s);
            s.record("call", STOP, serde_json::json!([]));
            s.values.insert("Machine.Running", Variant::Boolean(false));
            Ok(vec![])
        });

        let process = {
            let s = state.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut phase = 0.0_f64;
                loop {
                    tick.tick().await;
                    phase += 0.1;
                    let mut s = lock(&s);
                    let running = matches!(s.values.get("Machine.Running"), Some(Variant::Boolean(true)));
                    let speed = match s.values.get("Machine.Speed") {
                        Some(Variant::Double(v)) if running => *v,
                        _ => 0.0,
                    };
                    let target = 20.0 + 8.0 * speed;
                    let now = match s.values.get("Machine.Temperature") {
                        Some(Variant::Double(t)) => *t,
                        _ => 20.0,
                    };
                    let next = now + 0.2 * (target - now) + 0.05 * phase.sin();
                    s.values.insert("Machine.Temperature", Variant::Double((next * 100.0).round() / 100.0));
                }
            })
        };
        let serve = tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::error!("OPC UA simulator stopped: {e}");
            }
        });
        let url = format!("opc.tcp://{addr}/");
        Ok(Self { addr, url, handle, state, tasks: vec![process, serve] })
    }

    /// Writes and calls so far.
    pub fn records(&self) -> Vec<Record> {
        lock(&self.state).records.clone()
    }

    /// The current value of a variable (by string id).
    pub fn value(&self, id: &str) -> Option<Variant> {
        lock(&self.state).values.get(id).cloned()
    }

    /// Sets a variable as the machine itself would (not recorded as a write).
    pub fn set(&self, id: &'static str, value: Variant) {
        lock(&self.state).values.insert(id, value);
    }

    /// The namespace index clients must use for [`NAMESPACE`].
    pub fn namespace_index(&self) -> Option<u16> {
        self.handle.get_namespace_index(NAMESPACE)
    }
}
