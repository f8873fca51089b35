//! The QUIC endpoint agents dial, a thin shell around `shopfloor_wire::conversation`: admission
//! (a bound on handshakes in progress), then for a connection without a client certificate an
//! enrollment (`enroll`), and for an enrolled agent the handshake checks (recorded certificate,
//! not suspended, not deleted) and its session (`session`: control stream, command streams,
//! reports, renewal).

mod context;
mod enroll;
mod issuer;
mod session;

pub use context::EndpointContext;
use issuer::Issuer;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use shopfloor_wire::{
    close_code,
    identity::{self, DEFAULT_TRUST_DOMAIN},
    pki::Ca,
    tls::{self, ServerCerts},
    transport::{self, Timing},
};

use crate::store::{ObjectKey, Store, StoreError};

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
    ctx: EndpointContext<S>,
    issuer: Arc<Issuer<S>>,
    pub certs: Arc<ServerCerts>,
    endpoint: quinn::Endpoint,
    next_id: AtomicU64,
    failure_log: crate::log_limit::LogLimit,
    /// Set when this replica steps down: every agent is sent to the next leader.
    handing_over: std::sync::atomic::AtomicBool,
    /// Cleared while this replica stands by (Kubernetes mode): agents routed here meanwhile are
    /// asked to dial again.
    leading: std::sync::atomic::AtomicBool,
}

impl<S: Store> std::fmt::Debug for Endpoint<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

/// The controller's liveness settings. It sends no keep-alive of its own (agents do), and its
/// idle timeout is the longest an EdgeAgent may ask for: QUIC takes the shorter of the two
/// sides', so each agent's `spec.heartbeat.timeout` is the one that applies.
pub fn timing() -> Timing {
    Timing { idle_timeout: shopfloor_api::edge_agent::MAX_HEARTBEAT_TIMEOUT, ..Timing::default() }
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

/// How long a starting controller asks agents to wait before they dial again: its plant is
/// usually read within a second; an agent adds up to half again as jitter.
pub const STARTING_REDIAL: Duration = Duration::from_millis(500);
/// How long a replica stepping down asks its agents to wait before they dial the next leader:
/// the Lease changes hands within milliseconds of the release, and the next leader reads its
/// plant within a second.
pub const HANDOVER_REDIAL: Duration = Duration::from_millis(200);

/// A handshake not complete by then is abandoned (agents give up after 1 s and retry).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server certificate lifetime; replaced (without dropping connections) well before it ends.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

impl<S: Store> Endpoint<S> {
    /// Binds the endpoint on `addr` with a server certificate for `names`.
    pub fn bind(
        ctx: EndpointContext<S>,
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
            issuer: Arc::new(Issuer { ca: Arc::new(ca), book: ctx.book.clone() }),
            ctx,
            certs,
            endpoint,
            next_id: AtomicU64::new(1),
            failure_log: crate::log_limit::LogLimit::new(10, Duration::from_secs(10)),
            handing_over: Default::default(),
            leading: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Re-issues the server certificate for `names`; live connections keep theirs.
    pub fn rotate_server_certificate(&self, names: &[String]) -> Result<(), String> {
        let (cert, key) = self.issuer.ca.issue_server(names, SERVER_CERT_LIFETIME).map_err(|e| e.to_string())?;
        self.certs.replace(vec![cert, self.issuer.ca.cert_der().clone()], key).map_err(|e| e.to_string())
    }

    /// Steps down: every connected agent is closed with a Goodbye asking it to dial the same
    /// address again after [`HANDOVER_REDIAL`] (the Service then routes it to the next leader),
    /// and every agent that dials here from now on is answered the same. Returns how many
    /// sessions were closed. Fail-safes count silence from the last packet an agent heard, so a
    /// handover within their `after` engages none.
    pub fn hand_over(&self) -> usize {
        self.handing_over.store(true, std::sync::atomic::Ordering::Release);
        self.ctx.registry.hand_over("this controller replica is stepping down: dial again", HANDOVER_REDIAL)
    }

    /// Stands by: listening, so that the moment this replica leads (and the Service routes to
    /// it) agents find it answering, but asking each to dial again until [`Self::lead`].
    pub fn stand_by(&self) {
        self.leading.store(false, std::sync::atomic::Ordering::Release);
    }

    /// Leads: agents are let in once the plant is read.
    pub fn lead(&self) {
        self.leading.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Waits, at most `patience`, until every connection has closed and its close was sent.
    pub async fn drain(&self, patience: Duration) {
        let _ = tokio::time::timeout(patience, self.endpoint.wait_idle()).await;
    }

    /// Why a connection is declined before its session, and when to dial again: while the plant
    /// is not read (every agent would be refused as one whose EdgeAgent does not exist) and after
    /// a step-down.
    fn declining(&self) -> Option<(String, Duration)> {
        if self.handing_over.load(std::sync::atomic::Ordering::Acquire) {
            let after = HANDOVER_REDIAL;
            return Some((format!("controller replica stepping down, retry in {:.1} s", after.as_secs_f64()), after));
        }
        if !self.leading.load(std::sync::atomic::Ordering::Acquire) {
            let after = HANDOVER_REDIAL;
            return Some((
                format!("controller replica standing by (another leads), retry in {:.1} s", after.as_secs_f64()),
                after,
            ));
        }
        (!self.ctx.book.is_complete()).then(|| {
            let after = STARTING_REDIAL;
            (format!("controller starting (reading its EdgeAgents), retry in {:.1} s", after.as_secs_f64()), after)
        })
    }

    /// Accepts connections until the endpoint closes. At most [`MAX_HANDSHAKES`] handshakes and
    /// enrollments are in progress at once; beyond that new attempts are refused (agents retry
    /// with backoff), and past half of it a peer must first prove its address with a Retry, so
    /// spoofed floods cost nothing. A handshake or an enrollment request that does not complete
    /// in time is abandoned. Failures are counted in a metric; their log lines are rate-limited.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        let mut said_starting = false;
        while let Some(incoming) = self.endpoint.accept().await {
            if !said_starting && !self.ctx.book.is_complete() {
                said_starting = true;
                tracing::info!(
                    "agents are let in once the plant's EdgeAgents are read; until then they are asked to dial again"
                );
            }
            let busy = MAX_HANDSHAKES - slots.available_permits();
            if busy >= MAX_HANDSHAKES / 2 && !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                self.ctx.metrics.handshakes_refused.inc();
                self.note_failure(incoming.remote_address(), "refused: too many handshakes in progress");
                incoming.refuse();
                continue;
            };
            let slot = Slot::new(permit, self.ctx.metrics.handshakes_in_progress.clone());
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
        self.ctx.metrics.handshakes_failed.inc();
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
        // Declined with a delay to dial again, not refused: refused agents back off for up to
        // 30 s, and unanswered ones log a network fault that is not there.
        if let Some((reason, after)) = self.declining() {
            let has_cert = transport::peer_certificate(&conn).is_some();
            drop(slot);
            if has_cert {
                session::decline(conn, &reason, after).await;
            } else {
                transport::close(&conn, close_code::REDIAL, &reason);
            }
            return;
        }
        let Some(cert) = transport::peer_certificate(&conn) else {
            // An enrollment holds its slot until it is answered: enrollments count as handshakes.
            // Boxed, so that an enrollment's future does not widen every session's task.
            if let Err(failure) = Box::pin(enroll::serve(&self.ctx, &self.issuer, conn)).await {
                self.note_failure(remote, failure);
            }
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
        // Not held for the session's life: once per connected agent.
        drop((cert, id));
        let connection_id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = session::serve(&self.ctx, &self.issuer, conn.clone(), key.clone(), connection_id).await {
            tracing::info!(agent = %key, "session ended: {e}");
        }
    }

    /// The allow-check at handshake: the EdgeAgent exists, is not suspended, and this is the
    /// certificate recorded for it.
    fn allowed(&self, key: &ObjectKey, cert: &[u8]) -> Result<(), String> {
        let agent = self.ctx.book.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
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
}
