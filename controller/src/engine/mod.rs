//! The command engine: drives each ControlCommand through its lifecycle.
//!
//! Every transition is persisted through the store before the engine acts on it (sends the
//! command), so a controller that dies at any point resumes from the last recorded phase: a
//! command recorded Dispatched or Acknowledged is re-sent with the same id, and the agent's
//! journal turns the redelivery into the recorded result instead of a second execution.
//!
//! The engine also follows the registry itself, in both modes: when an agent connects, every
//! unfinished command routed to it is reconciled at once — Pending ones are sent, and ones whose
//! delivery died with an earlier connection are re-sent with the same id. Neither store's event
//! source has to know that a connection came up.

pub mod lifecycle;
pub mod spans;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use jiff::Timestamp;
use shopfloor_api::{
    ControlCommand, Equipment,
    control_command::{CommandPhase, ControlCommandStatus, ResultCode},
    validate::{self, CommandViolation, Violation},
};

use self::lifecycle::{Effect, Event};
use crate::{
    agents::{
        port::{Dispatch, Reply},
        registry::{Change, Registry},
    },
    link_budget::{self, LinkBudget},
    metrics::{Metrics, PhaseLabel, SliceLabel},
    store::{ObjectEvent, ObjectKey, StatusUpdate, Store, StoreError},
    translate,
};
use shopfloor_trace::{TraceContext, Tracer};
use shopfloor_wire::rate::{Exceeded, Limiter, RateLimit};

/// When a command should be looked at again.
pub type Requeue = Option<Duration>;

/// Drives commands; cheap to clone (shared state inside).
pub struct Engine<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<S: Store> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

struct Inner<S> {
    store: Arc<S>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Latest persisted status per command uid; the store's view may lag behind.
    statuses: Mutex<HashMap<String, ControlCommandStatus>>,
    /// Commands with a stream to an agent, by the connection that carries it: a command whose
    /// connection is gone is not in flight any more, whatever its delivery task still believes.
    in_flight: Mutex<HashMap<String, u64>>,
    /// Unfinished commands by the agent they are routed to, as last reconciled: what a new
    /// connection of that agent re-drives.
    waiting: Mutex<HashMap<ObjectKey, HashMap<String, Waiting>>>,
    /// Commands to reconcile again, by uid (a delivery that ended without a result).
    redrive: tokio::sync::mpsc::UnboundedSender<String>,
    redrive_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    /// Serialises the transitions of each command (its replies and reconciles race otherwise).
    transitions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where command spans go (nowhere unless an OTLP collector is configured).
    tracer: std::sync::RwLock<Tracer>,
    /// The equipment's and actions' rate limits, on this process's monotonic clock. A restarted
    /// controller (or a new leader) starts each bucket with one command, filling at the rate
    /// from there: a restart hands out no fresh burst. The agent enforces the limits again.
    rates: Mutex<Limiter<RateKey>>,
    /// Time zero of the rate limits' clock: the buckets have been filling since then.
    origin: Mutex<std::time::Instant>,
    /// The delay budgets of the slices equipment rides on, by equipment, from the latest plans.
    link_budgets: std::sync::RwLock<Arc<HashMap<ObjectKey, LinkBudget>>>,
}

/// A rate-limit bucket: an equipment, or one action of it.
type RateKey = (ObjectKey, Option<String>);

/// An unfinished command as last reconciled, with its target Equipment if that exists.
type Waiting = (ControlCommand, Option<Equipment>);

/// A command and what the engine needs to know about it.
#[derive(Clone, Debug)]
struct Cmd {
    uid: String,
    key: ObjectKey,
    created: Timestamp,
    object: ControlCommand,
}

impl<S: Store> Engine<S> {
    pub fn new(store: Arc<S>, registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        let (redrive, redrive_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                store,
                registry,
                metrics,
                statuses: Mutex::default(),
                in_flight: Mutex::default(),
                waiting: Mutex::default(),
                redrive,
                redrive_rx: Mutex::new(Some(redrive_rx)),
                transitions: Mutex::default(),
                tracer: std::sync::RwLock::default(),
                rates: Mutex::new(Limiter::with_head_start(1)),
                origin: Mutex::new(std::time::Instant::now()),
                link_budgets: std::sync::RwLock::default(),
            }),
        }
    }

    /// Reconciles an agent's unfinished commands whenever it connects, until the registry goes
    /// away. Started once per engine by whoever owns it (the controller's core).
    pub fn follow_connections(&self) -> tokio::task::JoinHandle<()> {
        let mut changes = self.inner.registry.subscribe();
        let mut redrive = self.inner.redrive_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let weak: Weak<Inner<S>> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    c = changes.recv() => c,
                    Some(uid) = async { match redrive.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                        let Some(inner) = weak.upgrade() else { return };
                        let engine = Engine { inner };
                        if let Some((cmd, eq)) = engine.waiting_command(&uid) {
                            tokio::spawn(async move {
                                if let Err(e) = engine.reconcile(&cmd, eq.as_ref()).await {
                                    tracing::warn!(command = %ObjectKey::of(&cmd.metadata), "reconcile after a lost delivery failed: {e}");
                                }
                            });
                        }
                        continue;
                    }
                };
                let agents = match change {
                    Ok(Change::Connected(agent)) => vec![agent],
                    Ok(Change::Disconnected(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let Some(inner) = weak.upgrade() else { return };
                        inner.waiting.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                let engine = Engine { inner };
                for agent in agents {
                    let commands: Vec<(ControlCommand, Option<Equipment>)> = engine
                        .inner
                        .waiting
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&agent)
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default();
                    if !commands.is_empty() {
                        tracing::info!(agent = %agent, commands = commands.len(), "agent connected: sending its unfinished commands");
                    }
                    for (cmd, eq) in commands {
                        let engine = engine.clone();
                        tokio::spawn(async move {
                            if let Err(e) = engine.reconcile(&cmd, eq.as_ref()).await {
                                tracing::warn!(command = %ObjectKey::of(&cmd.metadata), "reconcile after connect failed: {e}");
                            }
                        });
                    }
                }
            }
        })
    }

    fn settle(&self, uid: &str) {
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, m| {
            m.remove(uid);
            !m.is_empty()
        });
    }

    /// Exports each command's spans through `tracer` from now on.
    pub fn trace_to(&self, tracer: Tracer) {
        *self.inner.tracer.write().unwrap_or_else(|p| p.into_inner()) = tracer;
    }

    fn tracer(&self) -> Tracer {
        self.inner.tracer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn status_of(&self, cmd: &Cmd) -> ControlCommandStatus {
        let cached = self.inner.statuses.lock().unwrap_or_else(|p| p.into_inner()).get(&cmd.uid).cloned();
        cached.or_else(|| cmd.object.status.clone()).unwrap_or_default()
    }

    /// Where a finished command's time went, for the metrics; the network share also per
    /// slice, where its equipment rides one with a delay budget.
    fn observe_latency(&self, cmd: &Cmd, latency: &shopfloor_api::control_command::LatencyBreakdown) {
        let m = &self.inner.metrics;
        let seconds = |us: i64| us.max(0) as f64 / 1e6;
        if let Some(total) = latency.total_micros {
            m.command_latency.observe(seconds(total));
        }
        for (phase, us) in [
            ("queue", latency.queue_micros),
            ("network", latency.network_micros),
            ("execution", latency.execution_micros),
        ] {
            if let Some(us) = us {
                m.command_phase.get_or_create(&PhaseLabel { phase: phase.into() }).observe(seconds(us));
            }
        }
        let equipment = ObjectKey::new(cmd.key.namespace.clone(), cmd.object.spec.equipment_ref.name.clone());
        if let (Some(us), Some(budget)) =
            (latency.network_micros, self.link_budget(&equipment).filter(|b| b.budget.is_some()))
        {
            let label = SliceLabel { namespace: cmd.key.namespace.clone(), slice: budget.slice };
            m.command_network.get_or_create(&label).observe(seconds(us));
        }
    }

    /// Applies `event`, persists the result, then returns the effect to carry out.
    async fn transition(&self, cmd: &Cmd, event: Event) -> Result<Option<(ControlCommandStatus, Effect)>, StoreError> {
        let lock = self
            .inner
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cmd.uid.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let current = self.status_of(cmd);
        let Some((next, effect)) = lifecycle::step(&cmd.object.spec, cmd.created, &current, event, Timestamp::now())
        else {
            return Ok(None);
        };
        match self.inner.store.write_status(StatusUpdate::ControlCommand(cmd.key.clone(), next.clone())).await {
            Ok(()) => {}
            Err(e @ StoreError::Gone { .. }) => {
                // Deleted: cancelled. Nothing about it is kept, and it is never sent again.
                drop(_guard);
                self.forget(&cmd.uid);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.inner.metrics.status_writes.inc();
        if let Some(phase) = next.phase.filter(|p| p.is_terminal()) {
            self.settle(&cmd.uid);
            self.inner.metrics.commands_finished.get_or_create(&PhaseLabel { phase: format!("{phase:?}") }).inc();
            self.observe_latency(cmd, &next.latency);
            tracing::info!(command = %cmd.key, phase = ?phase, result = ?next.result.as_ref().map(|r| r.code), "command finished");
            if !current.phase.is_some_and(CommandPhase::is_terminal)
                && let Some(span) = spans::command(
                    &cmd.key,
                    &cmd.uid,
                    &cmd.object.spec,
                    &next,
                    std::time::SystemTime::from(cmd.created),
                )
            {
                self.tracer().record(span);
            }
        }
        self.inner.statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(cmd.uid.clone(), next.clone());
        if let Some(event) = lifecycle_event(cmd, current.phase, &next) {
            let store = self.inner.store.clone();
            tokio::spawn(async move { store.publish_event(event).await });
        }
        Ok(Some((next, effect)))
    }

    /// Moves a command as far as it can go now. `equipment` is the target Equipment if it
    /// exists. Returns when to look again (deadline, TTL), if ever.
    pub async fn reconcile(
        &self,
        object: &ControlCommand,
        equipment: Option<&Equipment>,
    ) -> Result<Requeue, StoreError> {
        let key = ObjectKey::of(&object.metadata);
        let uid = object.metadata.uid.clone().unwrap_or_else(|| key.to_string());
        let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
        let cmd = Cmd { uid, key, created, object: object.clone() };
        let deadline = lifecycle::deadline(&object.spec, created);
        let until =
            |t: Timestamp| Some(Timestamp::now().duration_until(t).unsigned_abs().max(Duration::from_millis(10)));

        let mut status = self.status_of(&cmd);
        if status.phase.is_none() {
            let trace_id = hex::encode(TraceContext::root().trace_id);
            match self.transition(&cmd, Event::Admitted { trace_id }).await? {
                Some((s, _)) => status = s,
                None => return Ok(None),
            }
        }
        match status.phase {
            Some(p) if p.is_terminal() => return self.ttl(&cmd, &status).await,
            Some(CommandPhase::Pending) => {
                if let Some(refusal) = refusal(&cmd, equipment) {
                    self.transition(&cmd, refusal).await?;
                    return self.ttl(&cmd, &self.status_of(&cmd)).await;
                }
            }
            _ => {}
        }
        let Some(equipment) = equipment else {
            // Dispatched earlier, equipment deleted since: the agent may still answer.
            self.transition(&cmd, Event::Tick).await?;
            return Ok(Some(Duration::from_secs(1)));
        };
        let agent = ObjectKey::new(cmd.key.namespace.clone(), equipment.spec.agent_ref.name.clone());
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(agent.clone())
            .or_default()
            .insert(cmd.uid.clone(), (cmd.object.clone(), Some(equipment.clone())));
        let Some(connected) = self.inner.registry.get(&agent) else {
            if let Some((s, _)) = self.transition(&cmd, Event::AgentOffline).await?
                && s.phase.is_some_and(CommandPhase::is_terminal)
            {
                return self.ttl(&cmd, &s).await;
            }
            self.transition(&cmd, Event::Tick).await?;
            let phase = self.status_of(&cmd).phase;
            return match phase {
                Some(p) if p.is_terminal() => self.ttl(&cmd, &self.status_of(&cmd)).await,
                Some(CommandPhase::Pending) => Ok(until(deadline)),
                _ => Ok(until(deadline.checked_add(lifecycle::RESULT_GRACE).unwrap_or(deadline))),
            };
        };
        // Claimed before the transition, in one step: a reconcile from the watch and one from
        // the connection may race, and only one of them may send.
        let claimed = {
            let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let carried = in_flight.get(&cmd.uid) == Some(&connected.connection_id);
            if !carried {
                in_flight.insert(cmd.uid.clone(), connected.connection_id);
            }
            !carried
        };
        if !claimed {
            self.transition(&cmd, Event::Tick).await?;
            return Ok(until(deadline.checked_add(lifecycle::RESULT_GRACE).unwrap_or(deadline)));
        }
        // A first send only: a redelivery carries a command that was admitted already.
        if status.phase == Some(CommandPhase::Pending) {
            let budget = self.link_budget(&ObjectKey::of(&equipment.metadata));
            if let Some(budget) = budget
                && link_budget::required(&cmd.object.spec, &budget)
                && !link_budget::within(&budget, connected.session.rtt())
            {
                // Refused commands send nothing: measure the link meanwhile, so its recovery
                // is seen within a second or two rather than at the next telemetry report.
                connected.session.measure_link(MEASURE_WHILE_REFUSING);
                self.release(&cmd.uid, connected.connection_id);
                self.transition(&cmd, over_budget(equipment, &budget, connected.session.rtt())).await?;
                return self.ttl(&cmd, &self.status_of(&cmd)).await;
            }
            let limits = rate_limits(&cmd, equipment);
            let now = self.inner.origin.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
            let admitted = self.inner.rates.lock().unwrap_or_else(|p| p.into_inner()).admit(&limits, now);
            if let Err(exceeded) = admitted {
                self.release(&cmd.uid, connected.connection_id);
                self.transition(&cmd, rate_limited(equipment, &limits, exceeded)).await?;
                return self.ttl(&cmd, &self.status_of(&cmd)).await;
            }
        }
        let sent = self.transition(&cmd, Event::Dispatched { agent: agent.name.clone() }).await;
        let Ok(Some((status, Effect::Send))) = sent else {
            self.release(&cmd.uid, connected.connection_id);
            sent?;
            return self.ttl(&cmd, &self.status_of(&cmd)).await;
        };
        let dispatch = Dispatch {
            id: cmd.uid.clone(),
            key: cmd.key.clone(),
            spec: cmd.object.spec.clone(),
            deadline,
            // A new span per delivery, in the command's trace: the agent's span names it as parent.
            traceparent: status
                .trace_id
                .as_deref()
                .and_then(TraceContext::in_trace)
                .unwrap_or_else(TraceContext::root)
                .traceparent(),
        };
        let engine = self.clone();
        tokio::spawn(async move {
            engine.deliver(cmd, connected.session, dispatch, connected.connection_id).await;
        });
        Ok(until(deadline.checked_add(lifecycle::RESULT_GRACE).unwrap_or(deadline)))
    }

    /// Moves the rate limits' time zero `by` earlier: buckets first used from now on have been
    /// filling for that much longer (a test of a long-running controller; a controller that
    /// knew how long its predecessor's buckets had been filling).
    pub fn backdate_rate_limits(&self, by: Duration) {
        let mut origin = self.inner.origin.lock().unwrap_or_else(|p| p.into_inner());
        *origin = origin.checked_sub(by).unwrap_or(*origin);
    }

    /// Replaces the delay budgets commands are held to (after the plans changed).
    pub fn set_link_budgets(&self, budgets: HashMap<ObjectKey, LinkBudget>) {
        *self.inner.link_budgets.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(budgets);
    }

    fn link_budget(&self, equipment: &ObjectKey) -> Option<LinkBudget> {
        self.inner.link_budgets.read().unwrap_or_else(|p| p.into_inner()).get(equipment).cloned()
    }

    /// Sends one command and records what comes back; the stream ending without a result leaves
    /// the command Dispatched/Acknowledged for a redelivery on the next connection.
    async fn deliver(
        &self,
        cmd: Cmd,
        session: Arc<dyn crate::agents::port::AgentSession>,
        dispatch: Dispatch,
        connection_id: u64,
    ) {
        let started = std::time::SystemTime::now();
        // Span work only when spans go somewhere: this is every command's path.
        let tracer = self.tracer();
        let context = tracer.enabled().then(|| TraceContext::parse(&dispatch.traceparent)).flatten();
        let mut code = None;
        let mut answered = None;
        let result = session.dispatch(dispatch).await;
        match result {
            Ok(mut replies) => {
                while let Some(reply) = replies.recv().await {
                    let event = match reply {
                        Reply::Acknowledged => Event::Acknowledged,
                        Reply::Finished(outcome) => {
                            code = Some(format!("{:?}", outcome.code));
                            answered = Some(std::time::SystemTime::now());
                            Event::Finished { outcome, rtt: Some(session.rtt()) }
                        }
                    };
                    if let Err(e) = self.persist_retrying(&cmd, event).await {
                        tracing::error!(command = %cmd.key, "cannot record the command's progress: {e}");
                        break;
                    }
                }
            }
            Err(e) => tracing::warn!(command = %cmd.key, "command not delivered, will retry on reconnect: {e}"),
        }
        if let Some(context) = context {
            let result = code.as_deref().ok_or("no result on this delivery; redelivered on the next connection");
            let end = answered.unwrap_or_else(std::time::SystemTime::now);
            let agent = self.status_of(&cmd).agent.unwrap_or_default();
            tracer.record(spans::delivery(&cmd.uid, context, &agent, (started, end), result));
        }
        self.release(&cmd.uid, connection_id);
        if code.is_none() {
            // The stream ended without a result. If the connection is gone, its successor's
            // connect re-drives the command; if it is somehow still up, nothing else would, so
            // look again shortly (a redelivery is answered from the agent's journal).
            let agent = self.status_of(&cmd).agent.map(|a| ObjectKey::new(cmd.key.namespace.clone(), a));
            if agent.and_then(|a| self.inner.registry.get(&a)).is_some_and(|c| c.connection_id == connection_id) {
                let redrive = self.inner.redrive.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = redrive.send(cmd.uid);
                });
            }
        }
    }

    fn waiting_command(&self, uid: &str) -> Option<(ControlCommand, Option<Equipment>)> {
        let waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.values().find_map(|m| m.get(uid)).cloned()
    }

    /// Ends `connection_id`'s claim on a command; a newer connection's claim stays.
    fn release(&self, uid: &str, connection_id: u64) {
        let mut in_flight = self.inner.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight.get(uid) == Some(&connection_id) {
            in_flight.remove(uid);
        }
    }

    async fn persist_retrying(&self, cmd: &Cmd, event: Event) -> Result<(), StoreError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.transition(cmd, event.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::warn!(command = %cmd.key, "status write failed, retrying in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ttl(&self, cmd: &Cmd, status: &ControlCommandStatus) -> Result<Requeue, StoreError> {
        let (Some(ttl), Some(finished)) =
            (cmd.object.spec.ttl_seconds_after_finished, status.timestamps.finished_at.as_ref())
        else {
            return Ok(None);
        };
        let expires =
            finished.0.checked_add(Duration::from_secs(ttl.max(0).unsigned_abs().into())).unwrap_or(Timestamp::MAX);
        let now = Timestamp::now();
        if now >= expires {
            match self.inner.store.delete_command(&cmd.key).await {
                Ok(()) | Err(StoreError::Gone { .. }) => {}
                Err(e) => return Err(e),
            }
            self.forget(&cmd.uid);
            tracing::info!(command = %cmd.key, "deleted {ttl}s after it finished (ttlSecondsAfterFinished)");
            Ok(None)
        } else {
            Ok(Some(now.duration_until(expires).unsigned_abs()))
        }
    }

    /// Stops re-driving every command whose uid is not in `present` (the store's commands now):
    /// a deleted command is cancelled, so a connection never sends it. Only the connect index is
    /// dropped: a delivery already under way still records its result.
    pub fn retain(&self, present: &std::collections::HashSet<String>) {
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|_, m| {
            m.retain(|uid, _| present.contains(uid));
            !m.is_empty()
        });
    }

    /// Forgets a command that no longer exists.
    pub fn forget(&self, uid: &str) {
        self.inner.statuses.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        self.inner.transitions.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
        self.settle(uid);
    }
}

/// The event an operator follows for a command that moved from `before` to `next.phase`:
/// accepted, and how it ended. Intermediate phases are in the status, not in events.
fn lifecycle_event(cmd: &Cmd, before: Option<CommandPhase>, next: &ControlCommandStatus) -> Option<ObjectEvent> {
    let phase = next.phase?;
    if before == Some(phase) {
        return None;
    }
    let spec = &cmd.object.spec;
    let what = format!("{} on {}", spec.action, spec.equipment_ref.name);
    let result = next.result.as_ref().map(|r| format!("{:?}: {}", r.code, r.message)).unwrap_or_default();
    let (warning, reason, note) = match phase {
        CommandPhase::Pending => (false, "Accepted", format!("{what} accepted; deadline in {}", spec.timeout)),
        CommandPhase::Succeeded => {
            (false, "Succeeded", format!("{what} succeeded in {} µs", next.latency.total_micros.unwrap_or_default()))
        }
        CommandPhase::Failed => (true, "Failed", format!("{what} failed: {result}")),
        CommandPhase::Rejected => (true, "Rejected", format!("{what} rejected: {result}")),
        CommandPhase::Expired => (true, "Expired", format!("{what} expired: {result}")),
        CommandPhase::Dispatched | CommandPhase::Acknowledged => return None,
    };
    Some(ObjectEvent {
        kind: "ControlCommand",
        key: cmd.key.clone(),
        uid: cmd.object.metadata.uid.clone(),
        warning,
        reason,
        note,
    })
}

/// The refusal event for a command that cannot be sent to its equipment, if it cannot.
fn refusal(cmd: &Cmd, equipment: Option<&Equipment>) -> Option<Event> {
    let spec = &cmd.object.spec;
    let violations: Vec<CommandViolation> = match equipment {
        None => vec![CommandViolation {
            code: ResultCode::UnknownEquipment,
            violation: Violation {
                field: "spec.equipmentRef.name".into(),
                message: format!("Equipment {}/{} does not exist", cmd.key.namespace, spec.equipment_ref.name),
            },
        }],
        Some(eq) => {
            let mut v: Vec<CommandViolation> = validate::control_command_spec(spec)
                .into_iter()
                .map(|violation| CommandViolation { code: ResultCode::InvalidParameter, violation })
                .collect();
            v.extend(validate::command_against_equipment(spec, &eq.spec));
            v
        }
    };
    let code = violations.first()?.code;
    Some(Event::Refused { code, violations })
}

/// The limits a command must pass, with their buckets: the equipment's, then its action's. A
/// command that cannot write (a `read`, a dry run) passes none, nor does lifting a fail-safe
/// (an operator's deliberate step, which must never wait for a token).
fn rate_limits(cmd: &Cmd, equipment: &Equipment) -> Vec<(RateKey, RateLimit)> {
    let spec = &cmd.object.spec;
    if spec.dry_run
        || spec.action == shopfloor_api::control_command::ACTION_READ
        || spec.action == shopfloor_api::equipment::ACTION_RESUME_FAIL_SAFE
    {
        return Vec::new();
    }
    let key = ObjectKey::of(&equipment.metadata);
    let action = equipment.spec.actions.iter().find(|a| a.name == spec.action);
    let mut limits = Vec::new();
    if let Some(r) = equipment.spec.rate_limit {
        limits.push(((key.clone(), None), translate::rate_limit(r)));
    }
    if let Some(r) = action.and_then(|a| a.rate_limit) {
        limits.push(((key, Some(spec.action.clone())), translate::rate_limit(r)));
    }
    limits
}

/// The refusal of a command over a rate limit, naming the limit and when a command may pass.
fn rate_limited(equipment: &Equipment, limits: &[(RateKey, RateLimit)], exceeded: Exceeded) -> Event {
    let action = limits.get(exceeded.which).and_then(|((_, action), _)| action.as_deref());
    let field = match action.and_then(|a| equipment.spec.actions.iter().position(|x| x.name == a)) {
        Some(i) => format!("spec.actions[{i}].rateLimit"),
        None => "spec.rateLimit".to_owned(),
    };
    let message = format!(
        "Equipment {} {field} allows {}; the next command may pass in {:.1} s: retry then, or raise the limit",
        ObjectKey::of(&equipment.metadata),
        exceeded.limit,
        exceeded.retry_after.as_secs_f64()
    );
    Event::Refused {
        code: ResultCode::RateLimited,
        violations: vec![CommandViolation {
            code: ResultCode::RateLimited,
            violation: Violation { field: "spec.action".into(), message },
        }],
    }
}

/// How long a link is measured after a command was refused for it.
const MEASURE_WHILE_REFUSING: Duration = Duration::from_secs(30);

/// The refusal of a command that requires a link within its slice's delay budget, sent while
/// the link is over it.
fn over_budget(equipment: &Equipment, budget: &LinkBudget, rtt: Duration) -> Event {
    let remedy = if budget.budget.is_some() {
        "Retry when the link recovers (see the LinkWithinBudget condition), or set spec.requireLinkWithinBudget: false to send it over a slow link"
    } else {
        "Fix the Equipment's spec.networkSliceRef or the NetworkSlice, or set spec.requireLinkWithinBudget: false to send it without a budget"
    };
    let message = format!(
        "Equipment {}: {}; not sent. {remedy}",
        ObjectKey::of(&equipment.metadata),
        link_budget::describe(budget, rtt)
    );
    Event::Refused {
        code: ResultCode::LinkOverBudget,
        violations: vec![CommandViolation {
            code: ResultCode::LinkOverBudget,
            violation: Violation { field: "spec.requireLinkWithinBudget".into(), message },
        }],
    }
}
