//! The connection to the controller: connect, say Hello, serve the session through the wire's
//! `AgentSide`, reconnect with backoff; and autonomy: with or without a controller, the agent
//! holds its equipment at the last configuration it received (restored from disk at start).

use std::{
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use prost::Message;
use rustls_pki_types::CertificateDer;
use shopfloor_trace::Tracer;
use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    conversation::agent::{AgentSide, Event, Introduction},
    pki,
    proto::{self, AgentMessage, ApplyConfig, ControllerMessage},
    tls,
    transport::{self, Timing},
};
use tokio::sync::Mutex;

use super::{
    command_streams::serve_commands,
    credentials::{Credentials, Identity, load_credentials, resolve, store_credentials, unix_to_string},
    error::{Ended, SessionError},
    reconnect::{Attempt, Reconnect},
    reports::send_reports,
};
use crate::{
    apply,
    clock::Offset,
    commands::Executor,
    metrics::{Metrics, OutcomeLabel},
    state::StateDir,
    telemetry::Buffer,
};

const CONFIG: &str = "config.pb";
/// A clock this far from the controller's is worth a warning in the log.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(1);

/// What an agent dials from (quinn's client endpoint).
pub use quinn::Endpoint;

/// A running agent.
pub struct Agent {
    pub state: StateDir,
    pub identity: Identity,
    pub executor: Arc<Executor>,
    pub telemetry: Arc<StdMutex<Buffer>>,
    /// Told when a reading joins `telemetry`.
    readings_ready: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    tracer: Arc<std::sync::RwLock<Tracer>>,
    held: Mutex<Option<ApplyConfig>>,
    /// The report of the last apply (of the held configuration), repeated at the start of each
    /// session: see [`Agent::opening_report`].
    report: StdMutex<Option<proto::ConfigApplied>>,
    boot_id: String,
    version: String,
    /// The controller's clock relative to ours, from the latest handshake.
    offset: Arc<std::sync::RwLock<Offset>>,
    /// The QUIC endpoint to dial from, when shared (a fleet simulator running thousands of
    /// agents in one process, under its open-file limit); otherwise each attempt makes its own.
    endpoint: std::sync::OnceLock<Endpoint>,
    /// The dialling configuration of the last attempt, with the certificate, CA and heartbeat it
    /// was made for: reused while they hold, instead of parsing the key and building the TLS
    /// configuration at every attempt (also those a busy controller refuses at once). It resumes
    /// no TLS session (`tls::client_config`).
    dialling: StdMutex<Option<(CertificateDer<'static>, CertificateDer<'static>, Timing, quinn::ClientConfig)>>,
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
            readings_ready: Arc::default(),
            metrics: Arc::default(),
            tracer: Arc::default(),
            held: Mutex::new(None),
            report: StdMutex::new(None),
            boot_id: b.iter().map(|x| format!("{x:02x}")).collect(),
            version: env!("CARGO_PKG_VERSION").into(),
            offset: Arc::default(),
            endpoint: std::sync::OnceLock::new(),
            dialling: StdMutex::new(None),
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
        self.executor.fail_safes().restore(&cfg, |eq| self.executor.envelope().fail_safe(eq));
        let applied =
            apply::apply(self.executor.equipment(), self.executor.envelope(), self.executor.fail_safes(), &cfg).await;
        self.record_apply(&applied);
        *self.held.lock().await = Some(cfg);
        Some(applied)
    }

    async fn take_config(&self, cfg: ApplyConfig) -> Result<proto::ConfigApplied, SessionError> {
        // Persist first: after a crash the agent restores what the controller last asked for.
        self.state.write(CONFIG, &cfg.encode_to_vec(), 0o600)?;
        self.executor.fail_safes().arm(&cfg, |eq| self.executor.envelope().fail_safe(eq));
        let applied =
            apply::apply(self.executor.equipment(), self.executor.envelope(), self.executor.fail_safes(), &cfg).await;
        self.record_apply(&applied);
        tracing::info!(revision = %cfg.revision, failures = apply::needs_retry(self.executor.equipment(), &applied), "configuration applied");
        *self.held.lock().await = Some(cfg);
        Ok(applied)
    }

    /// Dials from `endpoint` from now on, sharing its socket with whoever else uses it; `false`
    /// when one was set already.
    pub fn dial_from(&self, endpoint: Endpoint) -> bool {
        self.endpoint.set(endpoint).is_ok()
    }

    /// The revision of the configuration this agent holds, if any.
    pub async fn held_revision(&self) -> Option<String> {
        self.held.lock().await.as_ref().map(|c| c.revision.clone())
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
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied.clone());
    }

    /// What a session opens with after the Welcome: the report of the configuration this agent
    /// holds. The controller pushes nothing an agent already holds, so a report lost with the
    /// connection it was sent on (a timeout just after applying) or with the controller (killed
    /// before it wrote the status) would leave the EdgeAgent's status on the old revision for
    /// good.
    fn opening_report(&self) -> Option<proto::ConfigApplied> {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Brings the gauges read from the agent's state up to date (before each scrape).
    pub fn refresh_metrics(&self) {
        let buffer = self.telemetry.lock().unwrap_or_else(|p| p.into_inner());
        self.metrics.telemetry_buffered.set(i64::try_from(buffer.len()).unwrap_or(i64::MAX));
        let counted = self.metrics.telemetry_dropped.get();
        self.metrics.telemetry_dropped.inc_by(buffer.dropped_total().saturating_sub(counted));
        let engaged = self.executor.fail_safes().states().iter().filter(|s| s.engaged).count();
        self.metrics.fail_safes_engaged.set(i64::try_from(engaged).unwrap_or(i64::MAX));
    }

    /// Now on the controller's clock, as far as the latest handshake measured it.
    fn controller_time(&self) -> i64 {
        self.offset.read().unwrap_or_else(|p| p.into_inner()).to_controller(self.executor.wall_clock().now_micros())
    }

    /// Buffers a reading for the next report and wakes the report sender.
    fn record_reading(&self, reading: proto::Reading) {
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner()).push(reading);
        self.readings_ready.notify_one();
    }

    /// Reads every equipment's properties at its reporting interval into the telemetry buffer.
    /// Sleeps until the next reading is due or the equipment changes: a fleet of agents in one
    /// process (or a small edge host) pays for readings, not for looking at the clock.
    pub async fn poll_telemetry(self: Arc<Self>) {
        let mut due: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
        // Equipment whose driver pushes its values (OPC UA subscriptions) is not polled; the key
        // (driver instance and properties) says when to subscribe again. Polled equipment is
        // remembered too, so a driver that cannot push is asked once, not every tick.
        let mut pushing: std::collections::HashMap<String, PollKey> = std::collections::HashMap::new();
        let mut polled: std::collections::HashMap<String, PollKey> = std::collections::HashMap::new();
        // Each equipment is polled in a task of its own, one poll at a time: a dead or silent
        // device (an OPC UA server that answers nothing) delays no other equipment's readings.
        let mut busy: std::collections::HashSet<String> = std::collections::HashSet::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(String, PollKey, Polled)>();
        let mut installs = self.executor.equipment().installs();
        let mut installs_open = true;
        loop {
            let mut next: Option<Instant> = None;
            for eq in self.executor.equipment().all() {
                let name = eq.config.name.clone();
                let key: PollKey = (Arc::as_ptr(&eq.driver) as *const () as usize, eq.config.properties.clone());
                if pushing.get(&name) == Some(&key) {
                    continue;
                }
                let every = Duration::from_millis(eq.config.reporting_interval_ms.max(100));
                let now = Instant::now();
                if let Some(t) = due.get(&name).filter(|t| **t > now) {
                    next = Some(next.map_or(*t, |n| n.min(*t)));
                    continue;
                }
                due.insert(name.clone(), now + every);
                next = Some(next.map_or(now + every, |n| n.min(now + every)));
                if !busy.insert(name.clone()) {
                    continue;
                }
                let subscribe = polled.get(&name) != Some(&key);
                let (this, done) = (self.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let outcome = this.poll_one(&eq, subscribe).await;
                    let _ = done.send((name, key, outcome));
                });
            }
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                changed = installs.changed(), if installs_open => installs_open = changed.is_ok(),
                Some((name, key, outcome)) = done_rx.recv() => {
                    busy.remove(&name);
                    match outcome {
                        Polled::Subscribed => {
                            pushing.insert(name, key);
                        }
                        Polled::CannotPush => {
                            polled.insert(name, key);
                        }
                        Polled::Read => {}
                    }
                }
            }
        }
    }

    /// One equipment's turn: subscribe when asked (a driver that can push its values is not
    /// polled again), else read every property and record what was read.
    async fn poll_one(self: &Arc<Self>, eq: &crate::equipment::registry::Equipment, subscribe: bool) -> Polled {
        use crate::equipment::drivers::Pushed;
        let name = eq.config.name.clone();
        let mut outcome = Polled::Read;
        if subscribe {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Pushed>(256);
            match eq.driver.subscribe(&eq.config.properties, tx).await {
                Ok(true) => {
                    tracing::info!(equipment = %name, "values arrive by subscription");
                    let this = self.clone();
                    // Ends when the driver drops its sender (equipment removed or rebuilt).
                    tokio::spawn(async move {
                        while let Some(p) = rx.recv().await {
                            match p.value {
                                Ok(v) => this.record_reading(proto::Reading {
                                    equipment: name.clone(),
                                    property: p.property,
                                    value: Some(v),
                                    observed_unix_micros: this.controller_time(),
                                }),
                                Err(e) => {
                                    tracing::debug!(equipment = %name, property = %p.property, "pushed value unreadable: {e}")
                                }
                            }
                        }
                    });
                    return Polled::Subscribed;
                }
                Ok(false) => outcome = Polled::CannotPush,
                // Polled meanwhile; subscribing is tried again at the next interval.
                Err(e) => tracing::debug!(equipment = %name, "cannot subscribe yet: {e}"),
            }
        }
        for p in &eq.config.properties {
            match eq.driver.read(p).await {
                Ok(v) => self.record_reading(proto::Reading {
                    equipment: eq.config.name.clone(),
                    property: p.name.clone(),
                    value: Some(v),
                    observed_unix_micros: self.controller_time(),
                }),
                Err(e) => tracing::debug!(equipment = %eq.config.name, property = %p.name, "read failed: {e}"),
            }
        }
        outcome
    }

    /// Applies the held configuration again (after a fail-safe was lifted, or to retry).
    async fn reapply(&self) -> Option<proto::ConfigApplied> {
        let cfg = self.held.lock().await.clone()?;
        let applied =
            apply::apply(self.executor.equipment(), self.executor.envelope(), self.executor.fail_safes(), &cfg).await;
        self.record_apply(&applied);
        Some(applied)
    }

    /// Connects, serves, and reconnects, forever, when [`Reconnect`] says; meanwhile engages
    /// fail-safes whenever the controller falls silent.
    pub async fn run(self: Arc<Self>, timing: Timing) {
        let dead_man = tokio::spawn(super::dead_man::engage_when_silent(self.executor.clone(), self.offset.clone()));
        // Ends only with the task that runs the agent.
        struct Abort(tokio::task::JoinHandle<()>);
        impl Drop for Abort {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _dead_man = Abort(dead_man);
        let mut policy = Reconnect::default();
        let mut silent_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let attempt = match self.connect_once(timing, policy.patience()).await {
                Ok(Ended { reason, redial_after: Some(after), .. }) => {
                    tracing::info!("the controller asked for a new dial: {reason}");
                    silent_since = None;
                    Attempt::Redial(after)
                }
                Ok(ended) => {
                    tracing::warn!("disconnected: {}", ended.reason);
                    silent_since = None;
                    Attempt::Ended { lasted: started.elapsed(), silent: ended.silent }
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
                    Attempt::NoAnswer
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    Attempt::Failed
                }
            };
            self.metrics.connect_attempts.inc();
            let delay = policy.after(attempt);
            tracing::info!("reconnecting in {delay:?}");
            tokio::time::sleep(delay).await;
        }
    }

    /// The client configuration for `creds` and `timing`: the last one when they are the same
    /// (a renewed certificate or new heartbeat terms make a new one).
    fn dialling_config(&self, creds: Credentials, timing: Timing) -> Result<quinn::ClientConfig, SessionError> {
        let mut cached = self.dialling.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cert, ca, t, config)) = cached.as_ref()
            && *cert == creds.cert
            && *ca == creds.ca
            && *t == timing
        {
            return Ok(config.clone());
        }
        let cert = creds.cert.clone();
        let tls =
            tls::client_config(&creds.ca, vec![creds.cert], creds.key).map_err(|e| SessionError::Tls(e.to_string()))?;
        let config = transport::client_config(tls, timing).map_err(|e| SessionError::Tls(e.to_string()))?;
        *cached = Some((cert, creds.ca, timing, config.clone()));
        Ok(config)
    }

    async fn connect_once(self: &Arc<Self>, timing: Timing, patience: Duration) -> Result<Ended, SessionError> {
        let creds = load_credentials(&self.state)?;
        // The session runs on this certificate until it ends: a renewed one is used from the
        // next connection, so its expiry is read here once, not from disk every second.
        let not_after = creds.not_after;
        let now = unix_secs();
        if creds.not_after <= now {
            return Err(SessionError::Expired(unix_to_string(creds.not_after)));
        }
        let id = &self.identity;
        let addr = resolve(&id.controller).await?;
        let endpoint = match self.endpoint.get() {
            Some(shared) => shared.clone(),
            None => transport::client_endpoint(addr).map_err(|e| SessionError::Tls(e.to_string()))?,
        };
        // The heartbeat the EdgeAgent asks for, as the last Welcome said; `timing` until one did.
        let asked = super::heartbeat::load(&self.state, timing);
        // A live link must be heard several times within the shortest fail-safe's `after`.
        let timing = Timing { keep_alive: self.executor.fail_safes().keep_alive(asked.keep_alive), ..asked };
        let config = self.dialling_config(creds, timing)?;
        let connecting = endpoint
            .connect_with(config, addr, &id.server_name)
            .map_err(|e| SessionError::Connect { addr: id.controller.clone(), message: e.to_string() })?;
        // A handshake nobody answers is abandoned quickly and retried: QUIC's own retransmission
        // backoff would otherwise leave the agent waiting seconds after the network comes back.
        let conn = tokio::time::timeout(patience, connecting)
            .await
            .map_err(|_| SessionError::NoAnswer(id.controller.clone(), patience))?
            .map_err(|e| SessionError::Connect {
                addr: id.controller.clone(),
                message: transport::explain(&e, &id.server_name),
            })?;
        let explain = |e: quinn::ConnectionError| SessionError::Protocol(transport::explain(&e, &id.server_name));
        let (send, recv) = conn.open_bi().await.map_err(explain)?;
        let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let envelope = self.executor.envelope();
        let me = Introduction {
            agent_version: self.version.clone(),
            boot_id: self.boot_id.clone(),
            held_revision: self.held.lock().await.as_ref().map(|c| c.revision.clone()),
            envelope_sha256: envelope.sha256.clone(),
            envelope_problem: envelope.refusal().map(str::to_owned),
        };
        let (mut side, hello) = AgentSide::hello(me, self.executor.wall_clock().now_micros());
        tx.send(&hello).await.map_err(|e| SessionError::Protocol(e.to_string()))?;
        let first = match tokio::time::timeout(Duration::from_secs(10), rx.next::<ControllerMessage>()).await {
            Ok(Ok(Some(m))) => m,
            _ => {
                if let Some(ended) = conn.close_reason().as_ref().and_then(|e| redial(e, &id.server_name)) {
                    return Ok(ended);
                }
                return Err(conn
                    .close_reason()
                    .map(explain)
                    .unwrap_or_else(|| SessionError::Protocol("no Welcome from the controller".into())));
            }
        };
        let welcome = match side.on_message(first, self.executor.wall_clock().now_micros()) {
            Ok(Event::Welcomed { welcome, hello_sent_unix_micros, received_unix_micros }) => {
                let offset = Offset::measure(
                    hello_sent_unix_micros,
                    welcome.hello_received_unix_micros,
                    welcome.sent_unix_micros,
                    received_unix_micros,
                );
                (welcome, offset)
            }
            Ok(Event::Refused(reason)) => return Ok(Ended::closed(format!("refused: {reason}"), false)),
            Ok(Event::Redial { reason, after }) => {
                return Ok(Ended { reason, silent: false, redial_after: Some(after) });
            }
            Ok(other) => return Err(SessionError::Protocol(format!("unexpected {other:?} before the Welcome"))),
            Err(v) => {
                transport::close(&conn, v.code, &v.reason);
                return Err(SessionError::Protocol(v.reason));
            }
        };
        let (welcome, offset) = welcome;
        if let Some(terms) = Timing::from_terms(welcome.heartbeat_interval_ms, welcome.heartbeat_timeout_ms)
            && terms != asked
        {
            // Kept first: the next connection is made with them, whatever ends this one. Not
            // kept (a full disk), a reconnection would come back to the same terms: carry on.
            if let Err(e) = super::heartbeat::store(&self.state, terms) {
                tracing::warn!("cannot keep the heartbeat the EdgeAgent asks for ({e}); keeping this connection's");
            } else {
                let reason = format!(
                    "the EdgeAgent asks for a keep-alive every {:?} and a timeout of {:?} (this connection has {:?} and {:?}): reconnecting with them",
                    terms.keep_alive, terms.idle_timeout, asked.keep_alive, asked.idle_timeout
                );
                tracing::info!("{reason}");
                if let Some(bye) = side.goodbye(&reason) {
                    let _ = tx.send(&bye).await;
                }
                transport::close(&conn, shopfloor_wire::close_code::GOODBYE, &reason);
                return Ok(Ended::closed(reason, false));
            }
        }
        if let Some(o) = offset {
            *self.offset.write().unwrap_or_else(|p| p.into_inner()) = o;
            if o.micros.abs() > CLOCK_SKEW_WARNING.as_micros() as i64 {
                tracing::warn!(
                    offset_ms = o.micros / 1000,
                    "this host's clock is {} ms {} the controller's; deadlines do not depend on it, but timestamps in logs do: check NTP on this host",
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
        if let Some(m) = self.opening_report().and_then(|r| side.applied(r)) {
            tx.send(&m).await.map_err(|e| SessionError::Protocol(format!("control stream: {e}")))?;
        }

        let commands = tokio::spawn(serve_commands(
            conn.clone(),
            self.executor.clone(),
            self.metrics.clone(),
            self.tracer.clone(),
            offset,
        ));
        let reports = tokio::spawn(send_reports(
            conn.clone(),
            self.telemetry.clone(),
            self.readings_ready.clone(),
            self.executor.fail_safes().clone(),
        ));
        let fail_safes = self.executor.fail_safes();
        // A session is a sign of life: it lifts `Automatic` fail-safes, re-applied below.
        fail_safes.heard();
        let liveness = tokio::spawn(super::dead_man::hear(conn.clone(), fail_safes.clone()));
        let mut renew_check = tokio::time::interval(Duration::from_secs(1));
        let mut redial_after: Option<Duration> = None;
        let mut renewing: Option<pki::KeyPair> = None;
        let mut retry_at: Option<(Instant, Duration)> = None;
        let result = loop {
            // What to send on the control stream after this turn, if anything.
            let mut reply: Option<AgentMessage> = None;
            tokio::select! {
                msg = rx.next::<ControllerMessage>() => match msg {
                    Ok(Some(m)) => match side.on_message(m, self.executor.wall_clock().now_micros()) {
                        Ok(Event::Apply(cfg)) => {
                            let applied = self.take_config(cfg).await?;
                            retry_at = apply::needs_retry(self.executor.equipment(), &applied).then(|| (Instant::now() + Duration::from_secs(2), Duration::from_secs(2)));
                            reply = side.applied(applied);
                        }
                        Ok(Event::Renewed(r)) => match (renewing.take(), r.error.is_empty()) {
                            (Some(key), true) => {
                                let cert = CertificateDer::from(r.certificate_der);
                                store_credentials(&self.state, &cert, &key.serialize_pem())?;
                                tracing::info!("certificate renewed; used from the next connection");
                            }
                            (_, false) => tracing::warn!("renewal refused: {}", r.error),
                            (None, true) => tracing::warn!("a renewed certificate without a key waiting for it"),
                        },
                        Ok(Event::Ended(why)) => break why,
                        Ok(Event::Redial { reason, after }) => {
                            redial_after = Some(after);
                            break reason;
                        }
                        Ok(Event::Ignored(why)) => tracing::debug!("ignored: {why}"),
                        Ok(other @ (Event::Welcomed { .. } | Event::Refused(_))) => tracing::debug!("ignored: {other:?}"),
                        Err(v) => {
                            transport::close(&conn, v.code, &v.reason);
                            break v.reason;
                        }
                    },
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
                    if side.renewal_due(unix_secs(), not_after) {
                        let key = pki::generate_key().map_err(|e| SessionError::Tls(e.to_string()))?;
                        let csr = pki::csr(&key).map_err(|e| SessionError::Tls(e.to_string()))?;
                        reply = side.renew(csr);
                        if reply.is_some() {
                            renewing = Some(key);
                            tracing::info!("certificate expires at {}: renewing", unix_to_string(not_after));
                        }
                    }
                    if let Some((at, wait)) = retry_at && Instant::now() >= at
                        && let Some(applied) = self.reapply().await {
                            retry_at = apply::needs_retry(self.executor.equipment(), &applied).then(|| (Instant::now() + wait * 2, (wait * 2).min(Duration::from_secs(60))));
                            reply = side.applied(applied);
                        }
                }
                () = fail_safes.resumed() => {
                    if let Some(applied) = self.reapply().await {
                        reply = side.applied(applied);
                    }
                }
                e = conn.closed() => {
                    if let Some(ended) = redial(&e, &id.server_name) {
                        redial_after = ended.redial_after;
                    }
                    break transport::explain(&e, &id.server_name);
                }
            }
            if let Some(m) = reply
                && let Err(e) = tx.send(&m).await
            {
                break format!("control stream: {e}");
            }
        };
        commands.abort();
        reports.abort();
        liveness.abort();
        Ok(Ended {
            reason: result,
            silent: matches!(conn.close_reason(), Some(quinn::ConnectionError::TimedOut)),
            redial_after,
        })
    }
}

/// A connection the controller closed with the redial code, its Goodbye not read (the close
/// overtook it): dial again as a starting controller asks.
fn redial(e: &quinn::ConnectionError, dialled: &str) -> Option<Ended> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == u64::from(shopfloor_wire::close_code::REDIAL) =>
        {
            Some(Ended { reason: transport::explain(e, dialled), silent: false, redial_after: Some(REDIAL_UNSAID) })
        }
        _ => None,
    }
}

/// How long to wait before dialling again after a redial close whose Goodbye was not read.
const REDIAL_UNSAID: Duration = Duration::from_millis(500);

/// Now, in whole seconds of Unix time.
fn unix_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Which driver instance and properties an equipment's telemetry decision was made for.
type PollKey = (usize, Vec<proto::PropertyConfig>);

/// How one equipment's telemetry turn went.
enum Polled {
    /// Its driver pushes its values from now on.
    Subscribed,
    /// Its driver cannot push: polled from now on without asking again.
    CannotPush,
    /// Read (or tried to), to be polled again.
    Read,
}
