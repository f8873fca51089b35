//! The QUIC endpoint agents dial: enrollment for connections without a client certificate, and
//! for enrolled agents the handshake checks (recorded certificate, not suspended, not deleted),
//! Hello/Welcome, configuration pushes, command streams, reports and certificate renewal.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use shopfloor_api::edge_agent::CertificateStatus;
use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    identity::{self, AgentId, DEFAULT_TRUST_DOMAIN},
    pki::Ca,
    proto::{self, AgentMessage, ControllerMessage, agent_message, command_reply, controller_message},
    time::{from_micros, now_micros},
    tls::{self, ServerCerts},
    transport::{self, Timing, close_code},
};
use tokio::sync::{Mutex, mpsc};

use crate::{
    engine::lifecycle::Outcome,
    enrollment::{self, BootstrapToken},
    observed::{AppliedReport, PropertyResult, Reading},
    planner::{self, AgentPlan},
    reconcile::Core,
    registry::{AgentSession, Connected, Dispatch, Reply, SessionError},
    store::{ObjectKey, Store, StoreError},
};

pub use shopfloor_api::contract::CA_SECRET;

/// Loads the plant CA, creating it if absent. Create-if-absent: two replicas starting together
/// end up with the same CA, never overwrite each other's.
pub async fn ensure_ca<S: Store>(store: &S) -> Result<Ca, StoreError> {
    let corrupt = |m: String| StoreError::Corrupt { what: format!("Secret {CA_SECRET}"), message: m };
    let data = match store.read_secret(CA_SECRET).await? {
        Some(d) => d,
        None => {
            let ca = Ca::generate("Shopfloor plant CA", Duration::from_secs(10 * 365 * 24 * 3600))
                .map_err(|e| corrupt(e.to_string()))?;
            let mine = [
                ("ca.crt".to_owned(), ca.cert_pem().as_bytes().to_vec()),
                ("ca.key".to_owned(), ca.key_pem().as_bytes().to_vec()),
            ]
            .into_iter()
            .collect();
            store.create_secret_if_absent(CA_SECRET, mine).await?
        }
    };
    let text = |k: &str| {
        data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).ok_or_else(|| corrupt(format!("no {k}")))
    };
    Ca::from_pem(&text("ca.crt")?, &text("ca.key")?).map_err(|e| corrupt(e.to_string()))
}

/// A running endpoint.
pub struct Endpoint<S: Store> {
    core: Arc<Core<S>>,
    ca: Arc<Ca>,
    pub certs: Arc<ServerCerts>,
    endpoint: quinn::Endpoint,
    next_id: AtomicU64,
    failure_log: crate::log_limit::LogLimit,
}

impl<S: Store> std::fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

/// Handshakes and enrollments in progress at once.
pub const MAX_HANDSHAKES: usize = 256;

/// One handshake's place among [`MAX_HANDSHAKES`], shown in a gauge while held.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Slot {
    fn new(permit: tokio::sync::OwnedSemaphorePermit, gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self { _permit: permit, gauge }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
/// A handshake not complete by then is abandoned (agents give up after 1 s and retry).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An enrollment connection must send its request within this.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Server certificate lifetime; replaced (without dropping connections) well before it ends.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

impl<S: Store> Endpoint<S> {
    /// Binds the endpoint on `addr` with a server certificate for `names`.
    pub fn bind(
        core: Arc<Core<S>>,
        ca: Ca,
        addr: SocketAddr,
        names: &[String],
        timing: Timing,
    ) -> std::io::Result<Arc<Self>> {
        let (cert, key) = ca.issue_server(names, SERVER_CERT_LIFETIME).map_err(std::io::Error::other)?;
        let certs = ServerCerts::new(vec![cert, ca.cert_der().clone()], key).map_err(std::io::Error::other)?;
        let config = tls::server_config(ca.cert_der(), certs.clone()).map_err(std::io::Error::other)?;
        let endpoint = transport::server_endpoint(addr, config, timing)?;
        Ok(Arc::new(Self {
            core,
            ca: Arc::new(ca),
            certs,
            endpoint,
            next_id: AtomicU64::new(1),
            failure_log: crate::log_limit::LogLimit::new(10, Duration::from_secs(10)),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Re-issues the server certificate for `names`; live connections keep theirs.
    pub fn rotate_server_certificate(&self, names: &[String]) -> Result<(), String> {
        let (cert, key) = self.ca.issue_server(names, SERVER_CERT_LIFETIME).map_err(|e| e.to_string())?;
        self.certs.replace(vec![cert, self.ca.cert_der().clone()], key).map_err(|e| e.to_string())
    }

    /// Accepts connections until the endpoint closes. At most [`MAX_HANDSHAKES`] handshakes and
    /// enrollments are in progress at once; beyond that new attempts are refused (agents retry
    /// with backoff), and past half of it a peer must first prove its address with a Retry, so
    /// spoofed floods cost nothing. A handshake or an enrollment request that does not complete
    /// in time is abandoned. Failures are counted in a metric; their log lines are rate-limited.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        while let Some(incoming) = self.endpoint.accept().await {
            let busy = MAX_HANDSHAKES - slots.available_permits();
            if busy >= MAX_HANDSHAKES / 2 && !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                self.core.metrics.handshakes_refused.inc();
                self.note_failure(incoming.remote_address(), "refused: too many handshakes in progress");
                incoming.refuse();
                continue;
            };
            let slot = Slot::new(permit, self.core.metrics.handshakes_in_progress.clone());
            let this = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => this.serve(conn, slot).await,
                    Ok(Err(e)) => this.note_failure(remote, &format!("handshake failed: {e}")),
                    Err(_) => this.note_failure(remote, "handshake abandoned: not completed within 5 s"),
                }
            });
        }
    }

    /// Counts a failed handshake and logs it within the log budget.
    fn note_failure(&self, remote: SocketAddr, what: &str) {
        self.core.metrics.handshakes_failed.inc();
        let (log, suppressed) = self.failure_log.admit(std::time::Instant::now());
        if let Some(n) = suppressed {
            tracing::warn!(
                suppressed = n,
                "{n} more failed handshakes in the last 10 s (see shopfloor_handshakes_failed_total)"
            );
        }
        if log {
            tracing::info!(%remote, "{what}");
        }
    }

    async fn serve(self: Arc<Self>, conn: quinn::Connection, slot: Slot) {
        let remote = conn.remote_address();
        let Some(cert) = transport::peer_certificate(&conn) else {
            // An enrollment holds its slot until it is answered: enrollments count as handshakes.
            self.enroll(conn).await;
            drop(slot);
            return;
        };
        drop(slot);
        let id = match identity::agent_id(&cert, DEFAULT_TRUST_DOMAIN) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(%remote, "refused: {e}");
                transport::close(&conn, close_code::UNAUTHORIZED, &e.to_string());
                return;
            }
        };
        let key = ObjectKey::new(id.namespace.clone(), id.name.clone());
        if let Err(reason) = self.allowed(&key, &cert) {
            tracing::warn!(%remote, agent = %key, "refused: {reason}");
            transport::close(&conn, close_code::UNAUTHORIZED, &reason);
            return;
        }
        if let Err(e) = self.session(conn.clone(), key.clone()).await {
            tracing::info!(agent = %key, "session ended: {e}");
        }
    }

    /// The allow-check at handshake: the EdgeAgent exists, is not suspended, and this is the
    /// certificate recorded for it.
    fn allowed(&self, key: &ObjectKey, cert: &[u8]) -> Result<(), String> {
        let agent = self.core.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
        if agent.spec.suspend {
            return Err(format!("EdgeAgent {key} is suspended"));
        }
        let recorded =
            agent.status.as_ref().and_then(|s| s.certificate.as_ref()).and_then(|c| c.sha256_fingerprint.clone());
        let presented = identity::sha256_fingerprint(cert);
        match recorded {
            Some(r) if r == presented => Ok(()),
            Some(_) => Err(format!("this is not the certificate recorded for EdgeAgent {key}: re-enroll the agent")),
            None => Err(format!("no certificate is recorded for EdgeAgent {key}: enroll it first")),
        }
    }

    async fn issue(&self, key: &ObjectKey, csr: &[u8], enrolled: bool) -> Result<Vec<u8>, String> {
        let agent = self.core.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
        let lifetime: Duration = agent.spec.certificate.duration.into();
        let der = self
            .ca
            .sign_agent_csr(csr, &AgentId::new(key.namespace.clone(), key.name.clone()), DEFAULT_TRUST_DOMAIN, lifetime)
            .map_err(|e| e.to_string())?;
        let info = identity::cert_info(&der).map_err(|e| e.to_string())?;
        let status = CertificateStatus {
            serial: Some(info.serial),
            not_after: Timestamp::from_second(info.not_after_unix).ok().map(Time),
            sha256_fingerprint: Some(info.sha256),
        };
        self.core
            .record_certificate(key, status, enrolled)
            .await
            .map_err(|e| format!("cannot record the certificate: {e}"))?;
        Ok(der.to_vec())
    }

    async fn enroll(&self, conn: quinn::Connection) {
        let remote = conn.remote_address();
        // A connection that opens no stream or sends no request is not waited for.
        let request = async {
            let (send, recv) = conn.accept_bi().await.ok()?;
            let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
            let req = rx.next::<AgentMessage>().await;
            Some((FrameWriter::new(send, DEFAULT_MAX_FRAME), req))
        };
        let (mut tx, req) = match tokio::time::timeout(ENROLL_TIMEOUT, request).await {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(_) => {
                self.note_failure(remote, "enrollment abandoned: no request within 10 s");
                transport::close(&conn, close_code::PROTOCOL_VIOLATION, "no enrollment request in time");
                return;
            }
        };
        let req = match req {
            Ok(Some(AgentMessage { body: Some(agent_message::Body::Enroll(r)) })) => r,
            Ok(_) => {
                transport::close(
                    &conn,
                    close_code::UNAUTHORIZED,
                    "a connection without a client certificate may only enroll",
                );
                return;
            }
            Err(e) => {
                tracing::warn!(%remote, "bad enrollment frame: {e}");
                transport::close(&conn, e.close_code(), &e.to_string());
                return;
            }
        };
        let key = ObjectKey::new(req.namespace.clone(), req.agent.clone());
        let result = self.redeem(&key, &req).await;
        let response = match &result {
            Ok(cert) => proto::EnrollResponse {
                certificate_der: cert.clone(),
                ca_der: self.ca.cert_der().to_vec(),
                error: String::new(),
            },
            Err(e) => proto::EnrollResponse { error: e.clone(), ..Default::default() },
        };
        match &result {
            Ok(_) => tracing::info!(agent = %key, %remote, "enrolled"),
            Err(e) => tracing::warn!(agent = %key, %remote, "enrollment refused: {e}"),
        }
        let _ = tx.send(&ControllerMessage { body: Some(controller_message::Body::Enrolled(response)) }).await;
        let _ = tx.get_mut().finish();
        // Let the answer reach the agent; it closes the connection itself.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        self.core.kick.notify_one();
    }

    async fn redeem(&self, key: &ObjectKey, req: &proto::EnrollRequest) -> Result<Vec<u8>, String> {
        let name = enrollment::token_secret_name(key);
        let store = &self.core.store;
        let data = store.read_secret(&name).await.map_err(|e| e.to_string())?;
        let mut token = data
            .as_ref()
            .and_then(BootstrapToken::from_secret)
            .ok_or_else(|| format!("no bootstrap token exists for EdgeAgent {key}: does it exist? `kubectl shopfloor enroll {}` shows its token", key.name))?;
        token.check(&req.token, key, Timestamp::now()).map_err(|e| e.to_string())?;
        let agent = self.core.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
        if agent.spec.suspend {
            return Err(format!("EdgeAgent {key} is suspended"));
        }
        // Single use: mark it used before issuing anything, and only if nobody else did since we
        // read it — of two enrollments racing for one token, exactly one gets a certificate.
        let read = data.unwrap_or_default();
        token.used_at = Some(Timestamp::now());
        if !store.replace_secret_if(&name, &read, token.to_secret()).await.map_err(|e| e.to_string())? {
            return Err(format!(
                "bootstrap token {} was redeemed by another enrollment at the same moment; tokens are single-use",
                token.id
            ));
        }
        self.issue(key, &req.csr_der, true).await
    }

    async fn session(self: &Arc<Self>, conn: quinn::Connection, key: ObjectKey) -> Result<(), String> {
        let (send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| "no control stream".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let tx = Arc::new(Mutex::new(FrameWriter::new(send, DEFAULT_MAX_FRAME)));
        let hello = match rx.next::<AgentMessage>().await {
            Ok(Some(AgentMessage { body: Some(agent_message::Body::Hello(h)) })) => h,
            Ok(_) => {
                transport::close(&conn, close_code::PROTOCOL_VIOLATION, "the first frame must be Hello");
                return Err("no Hello".into());
            }
            Err(e) => {
                tracing::warn!(agent = %key, peer = %conn.remote_address(), "bad frame on the control stream: {e}");
                transport::close(&conn, e.close_code(), &e.to_string());
                return Err(e.to_string());
            }
        };
        let hello_received = now_micros();
        let Some(version) =
            hello.protocol_versions.iter().copied().filter(|v| shopfloor_wire::PROTOCOL_VERSIONS.contains(v)).max()
        else {
            transport::close(
                &conn,
                close_code::UNSUPPORTED_VERSION,
                &format!("this controller speaks {:?}", shopfloor_wire::PROTOCOL_VERSIONS),
            );
            return Err("no common protocol version".into());
        };
        let agent = self.core.agent(&key).ok_or("the EdgeAgent vanished")?;
        let welcome = proto::Welcome {
            protocol_version: version,
            heartbeat_interval_ms: u64::try_from(Duration::from(agent.spec.heartbeat.interval).as_millis())
                .unwrap_or(1000),
            heartbeat_timeout_ms: u64::try_from(Duration::from(agent.spec.heartbeat.timeout).as_millis())
                .unwrap_or(5000),
            renew_before_secs: Duration::from(agent.spec.certificate.renew_before).as_secs(),
            controller_replica: self.core.replica.clone(),
            hello_received_unix_micros: hello_received,
            sent_unix_micros: now_micros(),
        };
        tx.lock()
            .await
            .send(&ControllerMessage { body: Some(controller_message::Body::Welcome(welcome)) })
            .await
            .map_err(|e| e.to_string())?;
        let connection_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(QuicSession { conn: conn.clone(), control: tx.clone() });
        self.core.registry.connect(
            key.clone(),
            Connected {
                session,
                connection_id,
                connected_since: Timestamp::now(),
                remote: conn.remote_address(),
                agent_version: hello.agent_version.clone(),
                protocol_version: version,
                held_revision: Some(hello.held_revision.clone()).filter(|r| !r.is_empty()),
                // The Hello left the agent half a round trip before it arrived.
                clock_offset_micros: (hello.sent_unix_micros != 0).then(|| {
                    hello.sent_unix_micros + i64::try_from(conn.rtt().as_micros() / 2).unwrap_or(0) - hello_received
                }),
                envelope_sha256: hello.envelope.as_ref().map(|e| e.sha256.clone()).filter(|s| !s.is_empty()),
                envelope_problem: hello.envelope.as_ref().map(|e| e.problem.clone()).filter(|s| !s.is_empty()),
            },
        );
        self.core.metrics.agents_connected.set(i64::try_from(self.core.registry.len()).unwrap_or(i64::MAX));
        tracing::info!(agent = %key, peer = %conn.remote_address(), held = %hello.held_revision, version = %hello.agent_version, "agent connected");
        self.core.agent_event(
            &key,
            false,
            "Connected",
            format!("connected from {} (agent {})", conn.remote_address(), hello.agent_version),
        );
        self.core.kick.notify_one();
        let reports = tokio::spawn(receive_reports(conn.clone(), key.clone(), self.core.clone()));
        let result = loop {
            tokio::select! {
                msg = rx.next::<AgentMessage>() => match msg {
                    Ok(Some(AgentMessage { body: Some(agent_message::Body::ConfigApplied(applied)) })) => {
                        self.core.registry.set_held_revision(&key, Some(applied.revision.clone()));
                        self.core.observed.record_applied(key.clone(), applied_report(&applied));
                        tracing::info!(agent = %key, revision = %applied.revision, "configuration applied");
                        let failures: Vec<String> = applied
                            .equipment
                            .iter()
                            .flat_map(|e| e.properties.iter().filter(|p| p.result != proto::ApplyResult::Applied as i32).map(move |p| format!("{}.{}: {}", e.equipment, p.property, p.message)))
                            .chain(applied.slices.iter().filter(|s| !s.ok).map(|s| format!("slice {}: {}", s.slice, s.message)))
                            .collect();
                        if failures.is_empty() {
                            self.core.agent_event(&key, false, "ConfigurationApplied", format!("revision {} applied", applied.revision));
                        } else {
                            self.core.agent_event(&key, true, "ConfigurationFailed", format!("revision {}: {}", applied.revision, failures.join("; ")));
                        }
                        self.core.kick.notify_one();
                    }
                    Ok(Some(AgentMessage { body: Some(agent_message::Body::Renew(r)) })) => {
                        let response = match self.issue(&key, &r.csr_der, false).await {
                            Ok(der) => proto::RenewResponse { certificate_der: der, error: String::new() },
                            Err(e) => proto::RenewResponse { error: e, ..Default::default() },
                        };
                        tracing::info!(agent = %key, ok = response.error.is_empty(), "certificate renewal");
                        let _ = tx.lock().await.send(&ControllerMessage { body: Some(controller_message::Body::Renewed(response)) }).await;
                    }
                    Ok(Some(AgentMessage { body: Some(agent_message::Body::Goodbye(g)) })) => break Ok(format!("agent said goodbye: {}", g.reason)),
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok("control stream closed".into()),
                    Err(e) => {
                        if e.is_protocol_violation() {
                            tracing::warn!(agent = %key, peer = %conn.remote_address(), "bad frame on the control stream: {e}");
                            transport::close(&conn, e.close_code(), &e.to_string());
                        }
                        break Err(e.to_string());
                    }
                },
                e = conn.closed() => break Ok(e.to_string()),
            }
        };
        reports.abort();
        self.core.registry.disconnect(&key, connection_id);
        self.core.metrics.agents_connected.set(i64::try_from(self.core.registry.len()).unwrap_or(i64::MAX));
        let why = result.as_deref().unwrap_or_else(|e| e).to_owned();
        tracing::info!(agent = %key, "agent disconnected: {why}");
        // A newer connection of the same agent replaced this one: that is not a disconnection.
        if self.core.registry.get(&key).is_none() {
            self.core.agent_event(&key, true, "Disconnected", format!("disconnected: {why}"));
        }
        self.core.kick.notify_one();
        result.map(|_| ())
    }
}

fn applied_report(a: &proto::ConfigApplied) -> AppliedReport {
    AppliedReport {
        revision: a.revision.clone(),
        at: Timestamp::from_microsecond(a.applied_at_unix_micros).ok(),
        equipment: a
            .equipment
            .iter()
            .map(|e| {
                (
                    e.equipment.clone(),
                    e.properties
                        .iter()
                        .filter_map(|p| {
                            Some(PropertyResult {
                                property: p.property.clone(),
                                desired: planner::from_wire_value(p.desired.as_ref()?)?,
                                result: planner::apply_result(p.result()),
                                message: Some(p.message.clone()).filter(|m| !m.is_empty()),
                                read_back: p.read_back.as_ref().and_then(planner::from_wire_value),
                            })
                        })
                        .collect(),
                )
            })
            .collect(),
        slices: a
            .slices
            .iter()
            .map(|s| (s.slice.clone(), if s.ok { Ok(()) } else { Err(s.message.clone()) }))
            .collect(),
    }
}

async fn receive_reports<S: Store>(conn: quinn::Connection, agent: ObjectKey, core: Arc<Core<S>>) {
    while let Ok(recv) = conn.accept_uni().await {
        let core = core.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
            loop {
                match rx.next::<proto::Report>().await {
                    Ok(Some(report)) => {
                        if report.dropped > 0 {
                            tracing::warn!(agent = %agent, dropped = report.dropped, "the agent dropped telemetry while disconnected");
                        }
                        let mut by_eq: std::collections::BTreeMap<String, Vec<(String, Reading)>> = Default::default();
                        for r in report.readings {
                            let (Some(v), Ok(at)) = (
                                r.value.as_ref().and_then(planner::from_wire_value),
                                Timestamp::from_microsecond(r.observed_unix_micros),
                            ) else {
                                continue;
                            };
                            by_eq.entry(r.equipment).or_default().push((r.property, Reading { value: v, at }));
                        }
                        for (eq, values) in by_eq {
                            core.observed.record_readings(ObjectKey::new(agent.namespace.clone(), eq), values);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(agent = %agent, "bad report frame: {e}");
                        break;
                    }
                }
            }
        });
    }
}

/// An agent's live QUIC connection, as the registry sees it.
#[derive(Debug)]
pub struct QuicSession {
    conn: quinn::Connection,
    control: Arc<Mutex<FrameWriter<quinn::SendStream>>>,
}

impl AgentSession for QuicSession {
    fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    fn push_config(&self, plan: Arc<AgentPlan>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let msg =
                ControllerMessage { body: Some(controller_message::Body::ApplyConfig(planner::apply_config(&plan))) };
            self.control.lock().await.send(&msg).await.map_err(|_| SessionError::Closed)
        })
    }

    fn dispatch(&self, d: Dispatch) -> BoxFuture<'_, Result<mpsc::Receiver<Reply>, SessionError>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await.map_err(|_| SessionError::Closed)?;
            let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
            let deadline = d.deadline.as_microsecond();
            let mut cmd = planner::command(&d.id, &d.spec, deadline, &d.traceparent);
            // Stamped as late as possible: the agent counts this down on its own monotonic clock.
            // A command past its deadline still goes out (a redelivery the journal answers) with
            // a budget of zero time, which the agent never executes.
            cmd.budget_micros = (deadline - now_micros()).max(-1);
            tx.send(&cmd).await.map_err(|e| SessionError::Refused(e.to_string()))?;
            let (out, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME);
                let _keep = tx;
                while let Ok(Some(reply)) = reader.next::<proto::CommandReply>().await {
                    let r = match reply.body {
                        Some(command_reply::Body::Ack(_)) => Reply::Acknowledged,
                        Some(command_reply::Body::Result(r)) => {
                            let ts = |us: i64| (us > 0).then(|| Timestamp::try_from(from_micros(us)).ok()).flatten();
                            Reply::Finished(Outcome {
                                code: planner::result_code(r.code()),
                                message: r.message.clone(),
                                outputs: r
                                    .outputs
                                    .iter()
                                    .filter_map(|o| {
                                        Some((o.name.clone(), planner::from_wire_value(o.value.as_ref()?)?))
                                    })
                                    .collect(),
                                received_at: ts(r.received_unix_micros),
                                started_at: ts(r.started_unix_micros),
                                finished_at: ts(r.finished_unix_micros),
                            })
                        }
                        None => continue,
                    };
                    let last = matches!(r, Reply::Finished(_));
                    if out.send(r).await.is_err() || last {
                        break;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn close(&self, reason: &str) {
        let control = self.control.clone();
        let conn = self.conn.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let bye = ControllerMessage {
                body: Some(controller_message::Body::Goodbye(proto::Goodbye { reason: reason.clone() })),
            };
            let _ =
                tokio::time::timeout(Duration::from_millis(200), async { control.lock().await.send(&bye).await }).await;
            transport::close(&conn, close_code::GOODBYE, &reason);
        });
    }
}
