//! Enrollment, the connection to the controller and the protocol loop, and autonomy: with or
//! without a controller, the agent holds its equipment at the last configuration it received.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use prost::Message;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use shopfloor_wire::{
    PROTOCOL_VERSIONS,
    backoff::Backoff,
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    identity::{self, AgentId, DEFAULT_TRUST_DOMAIN},
    pki,
    proto::{
        self, AgentMessage, ApplyConfig, CommandReply, ControllerMessage, agent_message, command_reply,
        controller_message,
    },
    tls,
    transport::{self, Timing},
};
use tokio::sync::Mutex;

use shopfloor_trace::{Kind, Span, TraceContext, Tracer};

use crate::{
    apply,
    clock::{self, Offset},
    commands::{Arrival, Executor},
    metrics::{CodeLabel, Metrics, OutcomeLabel},
    state::StateDir,
    telemetry::Buffer,
};

const CREDENTIALS: &str = "agent.pem";
const CA: &str = "ca.crt";
const IDENTITY: &str = "identity.yaml";
const CONFIG: &str = "config.pb";
/// How long a connection attempt waits for the controller's first answer.
const HANDSHAKE_PATIENCE: Duration = Duration::from_millis(1000);
/// A clock this far from the controller's is worth a warning in the log.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(1);

/// What `enroll` records besides the credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub controller: String,
    /// The name the controller's certificate is checked against.
    pub server_name: String,
}

/// How an established session ended.
#[derive(Debug)]
pub struct Ended {
    pub reason: String,
    /// The controller stopped answering (idle timeout), as opposed to closing or refusing.
    pub silent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot reach the controller at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("no answer from the controller at {0} within {1:?}")]
    NoAnswer(String, Duration),
    #[error("enrollment refused by the controller: {0}")]
    EnrollmentRefused(String),
    #[error("{0}")]
    Protocol(String),
    #[error(
        "this agent is not enrolled (no {0} in the state directory): run `shopfloor-agent enroll` with the command `kubectl shopfloor enroll <agent>` prints"
    )]
    NotEnrolled(String),
    #[error(
        "this agent's certificate expired at {0} (it was offline past its lifetime): re-enroll with a new token — `kubectl shopfloor enroll <agent> --renew` prints the command"
    )]
    Expired(String),
    #[error("{0}")]
    Tls(String),
}

/// `secs` (Unix time) as "N hours ago", for messages about a past expiry.
fn unix_to_string(secs: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let ago = (now - secs).max(0);
    format!("unix time {secs}, {} h {} min ago", ago / 3600, (ago % 3600) / 60)
}

async fn resolve(controller: &str) -> Result<SocketAddr, SessionError> {
    tokio::net::lookup_host(controller)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| SessionError::Connect { addr: controller.into(), message: "cannot resolve the address".into() })
}

/// The host part of `host:port`, the default server name.
pub fn host_of(controller: &str) -> String {
    match controller.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => controller.to_owned(),
    }
}

/// Enrolls: generates a key here (it never leaves the host), sends a CSR with the bootstrap
/// token over a connection that trusts only the pinned CA, and stores the certificate. The
/// state directory is untouched unless enrollment succeeds.
pub async fn enroll(
    state: &StateDir,
    controller: &str,
    server_name: Option<&str>,
    token: &str,
    ca_sha256: &str,
    agent: &AgentId,
) -> Result<Identity, SessionError> {
    let key = pki::generate_key().map_err(|e| SessionError::Tls(e.to_string()))?;
    let csr = pki::csr(&key).map_err(|e| SessionError::Tls(e.to_string()))?;
    let addr = resolve(controller).await?;
    let server_name = server_name.map(str::to_owned).unwrap_or_else(|| host_of(controller));
    let tls = tls::enrollment_client_config(ca_sha256).map_err(|e| SessionError::Tls(e.to_string()))?;
    let endpoint = transport::client_endpoint(addr).map_err(|e| SessionError::Tls(e.to_string()))?;
    let config = transport::client_config(tls, Timing::default()).map_err(|e| SessionError::Tls(e.to_string()))?;
    let connecting = endpoint
        .connect_with(config, addr, &server_name)
        .map_err(|e| SessionError::Connect { addr: controller.into(), message: e.to_string() })?;
    let conn = connecting.await.map_err(|e| SessionError::Connect {
        addr: controller.into(),
        message: transport::explain(&e, &server_name),
    })?;
    let (send, recv) =
        conn.open_bi().await.map_err(|e| SessionError::Protocol(transport::explain(&e, &server_name)))?;
    let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
    let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
    let request = proto::EnrollRequest {
        token: token.into(),
        namespace: agent.namespace.clone(),
        agent: agent.name.clone(),
        csr_der: csr,
    };
    tx.send(&AgentMessage { body: Some(agent_message::Body::Enroll(request)) })
        .await
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let reply: Option<ControllerMessage> = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .map_err(|_| SessionError::Protocol("the controller did not answer the enrollment".into()))?
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let Some(ControllerMessage { body: Some(controller_message::Body::Enrolled(resp)) }) = reply else {
        let why =
            conn.close_reason().map(|e| transport::explain(&e, &server_name)).unwrap_or_else(|| "no answer".into());
        return Err(SessionError::EnrollmentRefused(why));
    };
    if !resp.error.is_empty() {
        return Err(SessionError::EnrollmentRefused(resp.error));
    }
    if identity::sha256_fingerprint(&resp.ca_der) != ca_sha256.trim().to_ascii_lowercase() {
        return Err(SessionError::Tls("the CA the controller returned does not match the pinned --ca-sha256".into()));
    }
    let granted = identity::agent_id(&resp.certificate_der, DEFAULT_TRUST_DOMAIN)
        .map_err(|e| SessionError::Tls(e.to_string()))?;
    if &granted != agent {
        return Err(SessionError::Tls(format!("the controller issued a certificate for {granted}, not {agent}")));
    }
    conn.close(0u32.into(), b"enrolled");
    let cert = CertificateDer::from(resp.certificate_der);
    let ca = CertificateDer::from(resp.ca_der);
    store_credentials(state, &cert, &key.serialize_pem())?;
    state.write(CA, pki::cert_pem(&ca).as_bytes(), 0o644)?;
    let id = Identity {
        namespace: agent.namespace.clone(),
        name: agent.name.clone(),
        controller: controller.into(),
        server_name,
    };
    state.write(IDENTITY, serde_yaml::to_string(&id).unwrap_or_default().as_bytes(), 0o644)?;
    Ok(id)
}

/// Certificate and key in one file, so they are replaced together atomically.
fn store_credentials(state: &StateDir, cert: &CertificateDer<'_>, key_pem: &str) -> Result<(), SessionError> {
    let text = format!("{}{}", pki::cert_pem(cert), key_pem);
    Ok(state.write(CREDENTIALS, text.as_bytes(), 0o600)?)
}

struct Credentials {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
    not_after: i64,
}

fn load_credentials(state: &StateDir) -> Result<Credentials, SessionError> {
    let creds = state.read(CREDENTIALS)?.ok_or_else(|| SessionError::NotEnrolled(CREDENTIALS.into()))?;
    let cert = CertificateDer::from_pem_slice(&creds).map_err(|e| state.quarantine(CREDENTIALS, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&creds).map_err(|e| state.quarantine(CREDENTIALS, e.to_string()))?;
    let ca_pem = state.read(CA)?.ok_or_else(|| SessionError::NotEnrolled(CA.into()))?;
    let ca = CertificateDer::from_pem_slice(&ca_pem).map_err(|e| state.quarantine(CA, e.to_string()))?;
    let info = identity::cert_info(&cert).map_err(|e| SessionError::Tls(e.to_string()))?;
    Ok(Credentials { cert, key, ca, not_after: info.not_after_unix })
}

pub fn load_identity(state: &StateDir) -> Result<Identity, SessionError> {
    state
        .read_parsed(IDENTITY, |b| serde_yaml::from_slice(b).map_err(|e| e.to_string()))?
        .ok_or_else(|| SessionError::NotEnrolled(IDENTITY.into()))
}

/// A running agent.
pub struct Agent {
    pub state: StateDir,
    pub identity: Identity,
    pub executor: Arc<Executor>,
    pub telemetry: Arc<StdMutex<Buffer>>,
    pub metrics: Arc<Metrics>,
    tracer: Arc<std::sync::RwLock<Tracer>>,
    held: Mutex<Option<ApplyConfig>>,
    boot_id: String,
    version: String,
    /// The controller's clock relative to ours, from the latest handshake.
    offset: Arc<std::sync::RwLock<Offset>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Agent {
    pub fn new(state: StateDir, identity: Identity, executor: Arc<Executor>, buffer: usize) -> Arc<Self> {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Arc::new(Self {
            state,
            identity,
            executor,
            telemetry: Arc::new(StdMutex::new(Buffer::new(buffer))),
            metrics: Arc::default(),
            tracer: Arc::default(),
            held: Mutex::new(None),
            boot_id: b.iter().map(|x| format!("{x:02x}")).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            offset: Arc::default(),
        })
    }

    /// Autonomy: re-applies the configuration saved on disk, if any. A corrupt file is moved
    /// aside and reported; the agent then waits for the controller.
    pub async fn restore(&self) -> Option<proto::ConfigApplied> {
        let cfg = match self.state.read_parsed(CONFIG, |b| ApplyConfig::decode(b).map_err(|e| e.to_string())) {
            Ok(c) => c?,
            Err(e) => {
                tracing::error!("{e}");
                return None;
            }
        };
        tracing::info!(revision = %cfg.revision, "restoring the last configuration from disk");
        let applied = apply::apply(&self.executor, &cfg).await;
        self.record_apply(&applied);
        *self.held.lock().await = Some(cfg);
        Some(applied)
    }

    async fn take_config(&self, cfg: ApplyConfig) -> Result<proto::ConfigApplied, SessionError> {
        // Persist first: after a crash the agent restores what the controller last asked for.
        self.state.write(CONFIG, &cfg.encode_to_vec(), 0o600)?;
        let applied = apply::apply(&self.executor, &cfg).await;
        self.record_apply(&applied);
        tracing::info!(revision = %cfg.revision, failures = apply::needs_retry(&self.executor, &applied), "configuration applied");
        *self.held.lock().await = Some(cfg);
        Ok(applied)
    }

    /// Exports a span per executed command through `tracer` from now on.
    pub fn trace_to(&self, tracer: Tracer) {
        *self.tracer.write().unwrap_or_else(|p| p.into_inner()) = tracer;
    }

    fn record_apply(&self, applied: &proto::ConfigApplied) {
        let outcome = if apply::has_failures(applied) { "failed" } else { "applied" };
        self.metrics.config_applies.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
        let ok = applied.slices.iter().filter(|s| s.ok).count();
        self.metrics.slices_applied.set(i64::try_from(ok).unwrap_or(i64::MAX));
        self.metrics.slices_failed.set(i64::try_from(applied.slices.len() - ok).unwrap_or(i64::MAX));
    }

    /// Brings the gauges read from the agent's state up to date (before each scrape).
    pub fn refresh_metrics(&self) {
        let buffer = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.telemetry_buffered.set(i64::try_from(buffer.len()).unwrap_or(i64::MAX));
        let counted = self.metrics.telemetry_dropped.get();
        self.metrics.telemetry_dropped.inc_by(buffer.dropped_total().saturating_sub(counted));
    }

    /// Now on the controller's clock, as far as the latest handshake measured it.
    fn controller_time(&self) -> i64 {
        self.offset.read().unwrap_or_else(|p| p.into_inner()).to_controller(self.executor.wall_clock().now_micros())
    }

    /// Reads every equipment's properties at its reporting interval into the telemetry buffer.
    pub async fn poll_telemetry(self: Arc<Self>) {
        let mut due: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            for eq in self.executor.all() {
                let every = Duration::from_millis(eq.config.reporting_interval_ms.max(100));
                let now = Instant::now();
                if due.get(&eq.config.name).is_some_and(|t| *t > now) {
                    continue;
                }
                due.insert(eq.config.name.clone(), now + every);
                for p in &eq.config.properties {
                    match eq.driver.read(p).await {
                        Ok(v) => self.telemetry.lock().unwrap_or_else(|e| e.into_inner()).push(proto::Reading {
                            equipment: eq.config.name.clone(),
                            property: p.name.clone(),
                            value: Some(v),
                            observed_unix_micros: self.controller_time(),
                        }),
                        Err(e) => tracing::debug!(equipment = %eq.config.name, property = %p.name, "read failed: {e}"),
                    }
                }
            }
        }
    }

    /// Connects, serves, and reconnects, forever. A controller that refuses or fails is retried
    /// with exponential backoff and full jitter (capped at 30 s), so a fleet does not hammer it;
    /// a controller that does not answer at all, or a session that went silent (network down),
    /// is retried within 0.25 s, since an unanswered handshake costs it nothing and the agent
    /// should be back as soon as the network is.
    pub async fn run(self: Arc<Self>, timing: Timing) {
        let mut backoff = Backoff::default();
        let mut silent_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let no_answer = match self.connect_once(timing).await {
                Ok(ended) => {
                    tracing::warn!("disconnected: {}", ended.reason);
                    silent_since = None;
                    // The controller went silent (network lost): like an unanswered handshake,
                    // retry soon — it is the network that must come back, not the controller
                    // that must recover.
                    ended.silent
                }
                Err(e @ SessionError::NoAnswer(..)) => {
                    // Say it once per outage, not twice a second.
                    match silent_since {
                        None => {
                            tracing::warn!("{e}; retrying until it answers");
                            silent_since = Some(Instant::now());
                        }
                        Some(t) => tracing::debug!("{e} (silent for {:?})", t.elapsed()),
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    false
                }
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            let delay = if no_answer {
                Backoff::new(Duration::from_millis(250), Duration::from_millis(250)).next_delay()
            } else {
                backoff.next_delay()
            };
            tracing::info!("reconnecting in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }

    async fn connect_once(self: &Arc<Self>, timing: Timing) -> Result<Ended, SessionError> {
        let creds = load_credentials(&self.state)?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        if creds.not_after <= now {
            return Err(SessionError::Expired(unix_to_string(creds.not_after)));
        }
        let id = &self.identity;
        let addr = resolve(&id.controller).await?;
        let tls = tls::client_config(&creds.ca, vec![creds.cert.clone()], creds.key)
            .map_err(|e| SessionError::Tls(e.to_string()))?;
        let endpoint = transport::client_endpoint(addr).map_err(|e| SessionError::Tls(e.to_string()))?;
        let config = transport::client_config(tls, timing).map_err(|e| SessionError::Tls(e.to_string()))?;
        let connecting = endpoint
            .connect_with(config, addr, &id.server_name)
            .map_err(|e| SessionError::Connect { addr: id.controller.clone(), message: e.to_string() })?;
        // A handshake nobody answers is abandoned quickly and retried: QUIC's own retransmission
        // backoff would otherwise leave the agent waiting seconds after the network comes back.
        let conn = tokio::time::timeout(HANDSHAKE_PATIENCE, connecting)
            .await
            .map_err(|_| SessionError::NoAnswer(id.controller.clone(), HANDSHAKE_PATIENCE))?
            .map_err(|e| SessionError::Connect {
                addr: id.controller.clone(),
                message: transport::explain(&e, &id.server_name),
            })?;
        let explain = |e: quinn::ConnectionError| SessionError::Protocol(transport::explain(&e, &id.server_name));
        let (send, recv) = conn.open_bi().await.map_err(explain)?;
        let tx = Arc::new(Mutex::new(FrameWriter::new(send, DEFAULT_MAX_FRAME)));
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let held = self.held.lock().await.as_ref().map(|c| c.revision.clone()).unwrap_or_default();
        let hello = proto::Hello {
            agent_version: self.version.clone(),
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
            boot_id: self.boot_id.clone(),
            held_revision: held,
            sent_unix_micros: self.executor.wall_clock().now_micros(),
            envelope: Some(proto::Envelope {
                sha256: self.executor.envelope().sha256.clone().unwrap_or_default(),
                problem: self.executor.envelope().refusal().unwrap_or_default().to_owned(),
            }),
        };
        let t1 = hello.sent_unix_micros;
        tx.lock()
            .await
            .send(&AgentMessage { body: Some(agent_message::Body::Hello(hello)) })
            .await
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let welcome = match tokio::time::timeout(Duration::from_secs(10), rx.next::<ControllerMessage>()).await {
            Ok(Ok(Some(ControllerMessage { body: Some(controller_message::Body::Welcome(w)) }))) => w,
            Ok(Ok(Some(ControllerMessage { body: Some(controller_message::Body::Goodbye(g)) }))) => {
                return Ok(Ended { reason: format!("refused: {}", g.reason), silent: false });
            }
            _ => {
                return Err(conn
                    .close_reason()
                    .map(explain)
                    .unwrap_or_else(|| SessionError::Protocol("no Welcome from the controller".into())));
            }
        };
        let t4 = self.executor.wall_clock().now_micros();
        let offset = Offset::measure(t1, welcome.hello_received_unix_micros, welcome.sent_unix_micros, t4);
        if let Some(o) = offset {
            *self.offset.write().unwrap_or_else(|p| p.into_inner()) = o;
            if o.micros.abs() > CLOCK_SKEW_WARNING.as_micros() as i64 {
                tracing::warn!(
                    offset_ms = o.micros / 1000,
                    "this host's clock is {} ms {} the controller's; deadlines do not depend on it, but timestamps                      in logs do: check NTP on this host",
                    o.micros.abs() / 1000,
                    if o.micros < 0 { "ahead of" } else { "behind" }
                );
            }
        }
        self.metrics.clock_offset_seconds.set(offset.map_or(0.0, |o| o.micros as f64 / 1e6));
        tracing::info!(controller = %id.controller, replica = %welcome.controller_replica, rtt = ?conn.rtt(), clock_offset_us = offset.map(|o| o.micros), "connected");
        self.metrics.sessions.inc();
        self.metrics.connected.set(1);
        self.metrics.rtt_seconds.set(conn.rtt().as_secs_f64());
        // Whatever ends the session, the gauge says so.
        struct Disconnected<'a>(&'a Metrics);
        impl Drop for Disconnected<'_> {
            fn drop(&mut self) {
                self.0.connected.set(0);
            }
        }
        let _disconnected = Disconnected(&self.metrics);

        let commands = tokio::spawn(serve_commands(
            conn.clone(),
            self.executor.clone(),
            self.metrics.clone(),
            self.tracer.clone(),
            offset,
        ));
        let reports = tokio::spawn(send_reports(conn.clone(), self.telemetry.clone()));
        let renew_before = Duration::from_secs(welcome.renew_before_secs);
        let mut renew_check = tokio::time::interval(Duration::from_secs(1));
        let mut renewing: Option<pki::KeyPair> = None;
        let mut retry_at: Option<(Instant, Duration)> = None;
        let result = loop {
            tokio::select! {
                msg = rx.next::<ControllerMessage>() => match msg {
                    Ok(Some(ControllerMessage { body: Some(controller_message::Body::ApplyConfig(cfg)) })) => {
                        let applied = self.take_config(cfg).await?;
                        retry_at = apply::needs_retry(&self.executor, &applied).then(|| (Instant::now() + Duration::from_secs(2), Duration::from_secs(2)));
                        let m = AgentMessage { body: Some(agent_message::Body::ConfigApplied(applied)) };
                        if let Err(e) = tx.lock().await.send(&m).await { break format!("control stream: {e}"); }
                    }
                    Ok(Some(ControllerMessage { body: Some(controller_message::Body::Renewed(r)) })) => {
                        match (renewing.take(), r.error.is_empty()) {
                            (Some(key), true) => {
                                let cert = CertificateDer::from(r.certificate_der);
                                store_credentials(&self.state, &cert, &key.serialize_pem())?;
                                tracing::info!("certificate renewed; used from the next connection");
                            }
                            (_, false) => tracing::warn!("renewal refused: {}", r.error),
                            (None, true) => tracing::warn!("unexpected renewal response"),
                        }
                    }
                    Ok(Some(ControllerMessage { body: Some(controller_message::Body::Goodbye(g)) })) => break format!("goodbye: {}", g.reason),
                    Ok(Some(_)) => {}
                    Ok(None) => break "the controller closed the control stream".into(),
                    Err(e) => {
                        if e.is_protocol_violation() {
                            transport::close(&conn, e.close_code(), &e.to_string());
                        }
                        break conn.close_reason().map(|c| transport::explain(&c, &id.server_name)).unwrap_or_else(|| e.to_string());
                    }
                },
                _ = renew_check.tick() => {
                    self.metrics.rtt_seconds.set(conn.rtt().as_secs_f64());
                    let creds_now = load_credentials(&self.state)?;
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
                    let left = Duration::from_secs((creds_now.not_after - now).max(0).unsigned_abs());
                    let fresh = creds_now.cert != creds.cert;
                    if renewing.is_none() && !fresh && !renew_before.is_zero() && left <= renew_before {
                        let key = pki::generate_key().map_err(|e| SessionError::Tls(e.to_string()))?;
                        let csr = pki::csr(&key).map_err(|e| SessionError::Tls(e.to_string()))?;
                        renewing = Some(key);
                        tracing::info!("certificate expires in {left:?}: renewing");
                        let m = AgentMessage { body: Some(agent_message::Body::Renew(proto::RenewRequest { csr_der: csr })) };
                        if let Err(e) = tx.lock().await.send(&m).await { break format!("control stream: {e}"); }
                    }
                    if let Some((at, wait)) = retry_at && Instant::now() >= at
                        && let Some(cfg) = self.held.lock().await.clone() {
                            let applied = apply::apply(&self.executor, &cfg).await;
                            self.record_apply(&applied);
                            retry_at = apply::needs_retry(&self.executor, &applied).then(|| (Instant::now() + wait * 2, (wait * 2).min(Duration::from_secs(60))));
                            let m = AgentMessage { body: Some(agent_message::Body::ConfigApplied(applied)) };
                            if let Err(e) = tx.lock().await.send(&m).await { break format!("control stream: {e}"); }
                        }
                }
                e = conn.closed() => break transport::explain(&e, &id.server_name),
            }
        };
        commands.abort();
        reports.abort();
        Ok(Ended { reason: result, silent: matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut)) })
    }
}

/// Accepts one bidirectional stream per command and answers it: ack, then result.
async fn serve_commands(
    conn: quinn::Connection,
    executor: Arc<Executor>,
    metrics: Arc<Metrics>,
    tracer: Arc<std::sync::RwLock<Tracer>>,
    offset: Option<Offset>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let executor = executor.clone();
        let metrics = metrics.clone();
        let tracer = tracer.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
            let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
            let cmd: proto::Command = match rx.next().await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %conn.remote_address(), "bad command frame: {e}");
                    let _ = tx.get_mut().reset(e.close_code().into());
                    return;
                }
            };
            let (received, wall) = (tokio::time::Instant::now(), executor.wall_clock().now_micros());
            let arrival = Arrival {
                received_unix_micros: offset.unwrap_or_default().to_controller(wall),
                deadline: clock::deadline(&cmd, received, wall, offset, conn.rtt()),
                offset: offset.unwrap_or_default(),
            };
            let ack = CommandReply {
                body: Some(command_reply::Body::Ack(proto::CommandAck {
                    id: cmd.id.clone(),
                    received_unix_micros: arrival.received_unix_micros,
                })),
            };
            let _ = tx.send(&ack).await;
            let result = executor.execute(&cmd, arrival).await;
            let label = CodeLabel { code: format!("{:?}", result.code()), replayed: result.replayed.to_string() };
            metrics.commands.get_or_create(&label).inc();
            metrics.command_duration.observe(received.elapsed().as_secs_f64());
            let tracer = tracer.read().unwrap_or_else(|p| p.into_inner()).clone();
            if tracer.enabled() {
                for span in command_spans(&cmd, &result) {
                    tracer.record(span);
                }
            }
            tracing::info!(command = %cmd.id, equipment = %cmd.equipment, action = %cmd.action, code = ?result.code(), replayed = result.replayed, "command answered");
            let _ = tx.send(&CommandReply { body: Some(command_reply::Body::Result(result)) }).await;
            let _ = tx.get_mut().finish();
        });
    }
}

/// The agent's spans of a command, in the trace the controller's `traceparent` names: one for
/// receipt to result, and a child for the execution itself (after validation, the journal and
/// the wait for the equipment's turn) when the command ran.
fn command_spans(cmd: &proto::Command, result: &proto::CommandResult) -> Vec<Span> {
    let Some(parent) = TraceContext::parse(&cmd.traceparent) else { return vec![] };
    let code = format!("{:?}", result.code());
    let failed = result.code() != proto::ResultCode::Ok;
    let error = failed.then(|| format!("{code}: {}", result.message));
    let handled = TraceContext { trace_id: parent.trace_id, span_id: shopfloor_trace::random_span_id() };
    let end = shopfloor_trace::from_unix_micros(result.finished_unix_micros.max(result.received_unix_micros));
    let mut spans = vec![Span {
        name: format!("execute {}/{}", cmd.equipment, cmd.action),
        context: handled,
        parent: Some(parent.span_id),
        remote_parent: true,
        kind: Kind::Server,
        start: shopfloor_trace::from_unix_micros(result.received_unix_micros),
        end,
        attributes: vec![
            ("shopfloor.command_id", cmd.id.clone().into()),
            ("shopfloor.equipment", cmd.equipment.clone().into()),
            ("shopfloor.action", cmd.action.clone().into()),
            ("shopfloor.result", code.into()),
            ("shopfloor.replayed", result.replayed.into()),
            ("shopfloor.dry_run", cmd.dry_run.into()),
        ],
        error: error.clone(),
    }];
    if result.started_unix_micros > 0 && !result.replayed {
        spans.push(Span {
            name: format!("{} {}", if cmd.dry_run { "dry-run" } else { "run" }, cmd.action),
            context: TraceContext { trace_id: parent.trace_id, span_id: shopfloor_trace::random_span_id() },
            parent: Some(handled.span_id),
            remote_parent: false,
            kind: Kind::Internal,
            start: shopfloor_trace::from_unix_micros(result.started_unix_micros),
            end,
            attributes: vec![("shopfloor.equipment", cmd.equipment.clone().into())],
            error,
        });
    }
    spans
}

/// Sends buffered readings on unidirectional streams; on failure they go back into the buffer.
async fn send_reports(conn: quinn::Connection, buffer: Arc<StdMutex<Buffer>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        loop {
            let (readings, dropped) = buffer.lock().unwrap_or_else(|e| e.into_inner()).drain(512);
            if readings.is_empty() && dropped == 0 {
                break;
            }
            let report = proto::Report { readings, dropped };
            let sent = async {
                let send = conn.open_uni().await.map_err(|e| e.to_string())?;
                let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
                tx.send(&report).await.map_err(|e| e.to_string())?;
                tx.get_mut().finish().map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = sent {
                tracing::debug!("report not sent, kept for later: {e}");
                buffer.lock().unwrap_or_else(|e| e.into_inner()).requeue(report.readings, report.dropped);
                return;
            }
        }
    }
}
