//! An enrolled agent's session: the control stream driven by the wire's `ControllerSide`, the
//! agent's report streams, and [`QuicSession`], through which the engine and the reconciler reach
//! the agent (one command stream per command, driven by the wire's `command::Call`).

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use jiff::Timestamp;
use shopfloor_wire::{
    close_code,
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    conversation::{
        command::{self, Call},
        controller::{ControllerSide, Event, Now, Terms},
    },
    proto::{self, AgentMessage, CommandReply, ControllerMessage},
    time::now_micros,
    transport,
};
use tokio::sync::{Mutex, mpsc};

use super::{context::EndpointContext, issuer::Issuer};
use crate::{
    agents::{
        changes::Change,
        port::{AgentSession, Dispatch, Reply, SessionError},
        registry::Connected,
    },
    planner::AgentPlan,
    store::{ObjectKey, Store},
    translate,
};

/// How long a connection may take to open its control stream.
const CONTROL_STREAM_PATIENCE: Duration = Duration::from_secs(10);

/// The control stream's sending half with the conversation it belongs to: every message goes
/// through the state machine before it is written.
struct Control {
    side: ControllerSide,
    tx: FrameWriter<quinn::SendStream>,
}

impl Control {
    async fn send(&mut self, msg: &ControllerMessage) -> Result<(), String> {
        self.tx.send(msg).await.map_err(|e| e.to_string())
    }
}

fn now(conn: &quinn::Connection) -> Now {
    Now { unix_micros: now_micros(), rtt_micros: i64::try_from(conn.rtt().as_micros()).unwrap_or(i64::MAX) }
}

/// Declines a connection before its session: answers the agent's Hello with a Goodbye that asks
/// it to dial again after `after` (a starting controller, one handing over), then closes.
pub(super) async fn decline(conn: quinn::Connection, reason: &str, after: Duration) {
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        // The Hello is read, not acted on: the answer is the same whoever it is from.
        rx.next::<AgentMessage>().await.ok()??;
        let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
        let bye = ControllerSide::new(Terms::default()).redial(reason, after)?;
        tx.send(&bye).await.ok()?;
        tx.get_mut().finish().ok()?;
        // Closing at once would discard the Goodbye unsent: the agent closes once it has it.
        conn.closed().await;
        Some(())
    })
    .await;
    if answered.is_err() {
        tracing::debug!(remote = %conn.remote_address(), "declined a connection that sent no Hello in time");
    }
    transport::close(&conn, close_code::REDIAL, reason);
}

/// Serves one agent's connection until it ends.
pub(super) async fn serve<S: Store>(
    ctx: &EndpointContext<S>,
    issuer: &Issuer<S>,
    conn: quinn::Connection,
    key: ObjectKey,
    connection_id: u64,
) -> Result<(), String> {
    let (send, recv) = tokio::time::timeout(CONTROL_STREAM_PATIENCE, conn.accept_bi())
        .await
        .map_err(|_| "no control stream".to_owned())?
        .map_err(|e| e.to_string())?;
    let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
    // In a block of its own: the EdgeAgent is not kept in this future for the connection's life
    // (every byte of it is held once per connected agent).
    let terms = {
        let agent = ctx.book.agent(&key).ok_or("the EdgeAgent vanished")?;
        let millis = |d: shopfloor_api::Duration| u64::try_from(Duration::from(d).as_millis()).unwrap_or(u64::MAX);
        Terms {
            heartbeat_interval_ms: millis(agent.spec.heartbeat.interval),
            heartbeat_timeout_ms: millis(agent.spec.heartbeat.timeout),
            renew_before_secs: Duration::from(agent.spec.certificate.renew_before).as_secs(),
            controller_replica: ctx.replica.clone(),
        }
    };
    let control = Arc::new(Mutex::new(Control {
        side: ControllerSide::new(terms),
        tx: FrameWriter::new(send, DEFAULT_MAX_FRAME),
    }));
    let mut registered = false;
    // The revision the agent said it holds, until its first report: a report of that revision
    // then restates what it holds (agents open each session with one) and is no new event.
    let mut opening: Option<String> = None;
    let mut reports = None;
    let result = loop {
        let msg = tokio::select! {
            msg = rx.next::<AgentMessage>() => msg,
            e = conn.closed() => break Ok(e.to_string()),
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break Ok("control stream closed".into()),
            Err(e) => {
                if e.is_protocol_violation() {
                    tracing::warn!(agent = %key, peer = %conn.remote_address(), "bad frame on the control stream: {e}");
                    transport::close(&conn, e.close_code(), &e.to_string());
                }
                break Err(e.to_string());
            }
        };
        let events = {
            let mut c = control.lock().await;
            match c.side.on_message(msg, now(&conn)) {
                Ok(events) => events,
                Err(v) => {
                    tracing::warn!(agent = %key, peer = %conn.remote_address(), "protocol violation: {v}");
                    transport::close(&conn, v.code, &v.reason);
                    break Err(v.reason);
                }
            }
        };
        let mut ended = None;
        for event in events {
            match event {
                Event::Send(m) => {
                    if let Err(e) = control.lock().await.send(&m).await {
                        ended = Some(Err(e));
                    }
                }
                Event::Established(g) => {
                    opening.clone_from(&g.held_revision);
                    let session = Arc::new(QuicSession {
                        conn: conn.clone(),
                        control: control.clone(),
                        measuring: Arc::default(),
                    });
                    tracing::info!(agent = %key, peer = %conn.remote_address(), held = ?g.held_revision, version = %g.agent_version, "agent connected");
                    ctx.book.event(
                        &key,
                        false,
                        "Connected",
                        format!("connected from {} (agent {})", conn.remote_address(), g.agent_version),
                    );
                    ctx.registry.connect(
                        key.clone(),
                        Connected {
                            session,
                            connection_id,
                            connected_since: Timestamp::now(),
                            remote: conn.remote_address(),
                            agent_version: g.agent_version,
                            protocol_version: g.protocol_version,
                            held_revision: g.held_revision,
                            clock_offset_micros: g.clock_offset_micros,
                            envelope_sha256: g.envelope_sha256,
                            envelope_problem: g.envelope_problem,
                        },
                    );
                    registered = true;
                    ctx.metrics.agents_connected.set(i64::try_from(ctx.registry.len()).unwrap_or(i64::MAX));
                    reports = Some(tokio::spawn(receive_reports(conn.clone(), key.clone(), ctx.clone())));
                    ctx.changes.mark(&key, Change::Session);
                }
                Event::Applied(applied) => {
                    ctx.registry.set_held_revision(&key, Some(applied.revision.clone()));
                    ctx.observed.record_applied(key.clone(), translate::applied_report(&applied));
                    if opening.take().is_some_and(|held| held == applied.revision) {
                        tracing::debug!(agent = %key, revision = %applied.revision, "holds this configuration");
                    } else {
                        tracing::info!(agent = %key, revision = %applied.revision, "configuration applied");
                        let failures = translate::apply_failures(&applied);
                        let (warning, reason, note) = if failures.is_empty() {
                            (false, "ConfigurationApplied", format!("revision {} applied", applied.revision))
                        } else {
                            (
                                true,
                                "ConfigurationFailed",
                                format!("revision {}: {}", applied.revision, failures.join("; ")),
                            )
                        };
                        ctx.book.event(&key, warning, reason, note);
                    }
                    ctx.changes.mark(&key, Change::Session);
                }
                Event::RenewalRequested(csr) => {
                    // Boxed: renewal is rare, and inline its future would widen every
                    // connected agent's session task for the connection's life.
                    let response = match Box::pin(issuer.issue(&key, &csr, false)).await {
                        Ok(der) => proto::RenewResponse { certificate_der: der, error: String::new() },
                        Err(e) => proto::RenewResponse { error: e, ..Default::default() },
                    };
                    tracing::info!(agent = %key, ok = response.error.is_empty(), "certificate renewal");
                    let mut c = control.lock().await;
                    if let Some(m) = c.side.renewed(response) {
                        let _ = c.send(&m).await;
                    }
                }
                Event::Ended(why) => ended = Some(Ok(why)),
                Event::Ignored(why) => tracing::debug!(agent = %key, "ignored: {why}"),
            }
        }
        if let Some(end) = ended {
            break end;
        }
    };
    if let Some(r) = reports {
        r.abort();
    }
    if registered {
        ctx.registry.disconnect(&key, connection_id);
        ctx.metrics.agents_connected.set(i64::try_from(ctx.registry.len()).unwrap_or(i64::MAX));
        let why = result.as_deref().unwrap_or_else(|e| e).to_owned();
        tracing::info!(agent = %key, "agent disconnected: {why}");
        // A newer connection of the same agent replaced this one: that is not a disconnection.
        if ctx.registry.get(&key).is_none() {
            ctx.book.event(&key, true, "Disconnected", format!("disconnected: {why}"));
        }
        ctx.changes.mark(&key, Change::Session);
    }
    result.map(|_| ())
}

/// Reads the agent's report streams one after another, in this task rather than a task per
/// stream: an agent opens one per report and ends it after the report. (One stream kept for the
/// session was tried: the stream credit the controller returns per report is the only packet an
/// idle controller sends that an agent acknowledges, so without it the controller's RTT
/// estimate, and the `LinkWithinBudget` condition that follows it, froze.)
async fn receive_reports<S: Store>(conn: quinn::Connection, agent: ObjectKey, ctx: EndpointContext<S>) {
    while let Ok(recv) = conn.accept_uni().await {
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        loop {
            match rx.next::<proto::Report>().await {
                Ok(Some(report)) => {
                    if report.dropped > 0 {
                        ctx.metrics.telemetry_dropped.inc_by(report.dropped);
                        tracing::warn!(agent = %agent, dropped = report.dropped, "the agent dropped telemetry while disconnected");
                    }
                    ctx.observed.record_fail_safes(&agent, translate::fail_safes(&report));
                    for (eq, values) in translate::readings(report) {
                        ctx.observed.record_readings(ObjectKey::new(agent.namespace.clone(), eq), values);
                    }
                    ctx.changes.mark(&agent, Change::Readings);
                }
                Ok(None) => break,
                // A stream cut by its connection's end is the session's to log; only what the
                // agent sent wrong is worth a warning here.
                Err(e) if e.is_protocol_violation() => {
                    tracing::warn!(agent = %agent, "bad report frame: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// An agent's live QUIC connection, as the registry sees it.
struct QuicSession {
    conn: quinn::Connection,
    control: Arc<Mutex<Control>>,
    /// Until when the link is being measured, and whether a task is measuring it.
    measuring: Arc<std::sync::Mutex<(Option<tokio::time::Instant>, bool)>>,
}

/// How often a link being measured is made to answer.
const MEASURE_EVERY: Duration = Duration::from_millis(100);

impl std::fmt::Debug for QuicSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSession").field("remote", &self.conn.remote_address()).finish_non_exhaustive()
    }
}

impl AgentSession for QuicSession {
    fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Every [`MEASURE_EVERY`] the agent is made to answer (`transport::elicit_ack`): each
    /// answer is a round-trip sample, and the smoothed estimate follows within about a second.
    fn measure_link(&self, span: Duration) {
        let until = tokio::time::Instant::now() + span;
        {
            let mut m = self.measuring.lock().unwrap_or_else(|p| p.into_inner());
            m.0 = Some(m.0.map_or(until, |u| u.max(until)));
            if std::mem::replace(&mut m.1, true) {
                return;
            }
        }
        let (conn, measuring) = (self.conn.clone(), self.measuring.clone());
        tokio::spawn(async move {
            let mut grown = 0;
            let mut tick = tokio::time::interval(MEASURE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = conn.closed() => break,
                }
                {
                    let mut m = measuring.lock().unwrap_or_else(|p| p.into_inner());
                    if m.0.is_none_or(|u| tokio::time::Instant::now() >= u) {
                        *m = (None, false);
                        return;
                    }
                }
                transport::elicit_ack(&conn, &mut grown);
            }
            *measuring.lock().unwrap_or_else(|p| p.into_inner()) = (None, false);
        });
    }

    fn push_config(&self, plan: Arc<AgentPlan>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let mut c = self.control.lock().await;
            let msg = c.side.push(translate::apply_config(&plan)).ok_or(SessionError::Closed)?;
            c.send(&msg).await.map_err(|_| SessionError::Closed)
        })
    }

    fn dispatch(&self, d: Dispatch) -> BoxFuture<'_, Result<mpsc::Receiver<Reply>, SessionError>> {
        Box::pin(async move {
            let (send, recv) = self.conn.open_bi().await.map_err(|_| SessionError::Closed)?;
            let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
            let mut call = Call::new(translate::command(&d));
            // Stamped as late as possible: the agent counts the budget down from receipt.
            tx.send(&call.send(now_micros())).await.map_err(|e| SessionError::Refused(e.to_string()))?;
            let (out, rx) = mpsc::channel(4);
            let conn = self.conn.clone();
            tokio::spawn(async move {
                let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME);
                let _keep = tx;
                while let Ok(Some(reply)) = reader.next::<CommandReply>().await {
                    let r = match call.on_reply(reply) {
                        Ok(Some(command::Reply::Acknowledged)) => Reply::Acknowledged,
                        Ok(Some(command::Reply::Finished(result))) => Reply::Finished(translate::outcome(&result)),
                        Ok(None) => continue,
                        Err(v) => {
                            tracing::warn!(command = %d.id, peer = %conn.remote_address(), "protocol violation: {v}");
                            transport::close(&conn, v.code, &v.reason);
                            break;
                        }
                    };
                    if out.send(r).await.is_err() || call.is_finished() {
                        break;
                    }
                }
            });
            Ok(rx)
        })
    }

    fn close(&self, reason: &str, redial_after: Option<Duration>) {
        let control = self.control.clone();
        let conn = self.conn.clone();
        let reason = reason.to_owned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                let mut c = control.lock().await;
                let bye = match redial_after {
                    Some(after) => c.side.redial(&reason, after),
                    None => c.side.goodbye(&reason),
                };
                if let Some(bye) = bye {
                    let _ = c.send(&bye).await;
                }
            })
            .await;
            let code = if redial_after.is_some() { close_code::REDIAL } else { close_code::GOODBYE };
            transport::close(&conn, code, &reason);
        });
    }
}
