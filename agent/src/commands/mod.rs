//! Command execution — the part that must never be wrong.
//!
//! Order of checks: the journal (a redelivered id is answered with its recorded result), the
//! deadline (a command arriving late never touches the equipment), the action and its
//! parameters (types, declared ranges, required), the properties' interlock limits, the plant's
//! safety envelope, the rate limits (commands that write only), then — under the equipment's lock, in arrival order — the deadline again and
//! the preconditions against a fresh read, the deadline once more, and again before every write
//! (an action stopped part-way reports which writes happened). Deadlines are on the agent's
//! monotonic clock (see [`crate::clock`]). A dry run stops before writing and reports what it
//! would write.
//! Commands to different equipment run concurrently; to the same equipment, one at a time.
//!
//! While an equipment's fail-safe is engaged, commands that write are refused
//! (`FailSafeEngaged`), and an action under way stops before its next write; the built-in
//! `resume-fail-safe` lifts it. The fail-safe's own writes go through [`Executor::write_safe_values`]:
//! the same limits, envelope, lock and journal, but no rate limit and no deadline.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use shopfloor_wire::proto::{
    ActionConfig, Command, CommandResult, MethodCall, NamedValue, Operator, PropertyConfig, ResultCode, Value,
    ValueType, action_write, method_argument, parameter,
};
use tokio::{
    sync::{Mutex, watch},
    time::Instant,
};

use shopfloor_wire::{
    proto::RateLimit as ProtoRateLimit,
    rate::{Limiter, RateLimit},
    value,
};

mod fail_safe;

use crate::{
    clock::{Offset, WallClock},
    envelope::Envelope,
    equipment::registry::{Equipment, EquipmentRegistry},
    fail_safe::FailSafes,
    journal::{Entry, Journal},
    slices::SliceBackend,
};

/// Executes commands against the installed equipment.
pub struct Executor {
    equipment: Arc<EquipmentRegistry>,
    journal: Mutex<Journal>,
    envelope: Envelope,
    running: StdMutex<HashMap<String, watch::Receiver<Option<CommandResult>>>>,
    wall: WallClock,
    /// The equipment's and actions' rate limits, by equipment and action, on the monotonic clock
    /// since `origin`.
    rates: StdMutex<Limiter<(String, Option<String>)>>,
    origin: Instant,
    fail_safes: Arc<FailSafes>,
}

pub use fail_safe::ACTION_RESUME_FAIL_SAFE;
use fail_safe::engaged_message;

/// When a command arrived and when it must stop touching the equipment.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Receipt, on the controller's clock (µs since the epoch), as reported back.
    pub received_unix_micros: i64,
    /// On the monotonic clock; see [`crate::clock::deadline`].
    pub deadline: Instant,
    /// Shifts this host's wall-clock stamps onto the controller's clock.
    pub offset: Offset,
}

impl Arrival {
    /// A command received now with `left` until its deadline, clocks in agreement.
    pub fn now(wall: WallClock, left: Duration) -> Self {
        Self { received_unix_micros: wall.now_micros(), deadline: Instant::now() + left, offset: Offset::default() }
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

/// A rejection: result code and message.
type Refusal = (ResultCode, String);

fn refuse<T>(code: ResultCode, msg: impl Into<String>) -> Result<T, Refusal> {
    Err((code, msg.into()))
}

/// The effective limits of a property: the controller's, narrowed by the envelope (checked
/// separately so the result code says which one was crossed).
fn check_limits(env: &Envelope, eq: &str, p: &PropertyConfig, v: &Value, field: &str) -> Result<(), Refusal> {
    let Some(x) = value::as_f64(v) else { return Ok(()) };
    if p.r#type() == ValueType::Bool {
        return Ok(());
    }
    if p.min.is_some_and(|lo| x < lo) || p.max.is_some_and(|hi| x > hi) {
        return refuse(
            ResultCode::OutOfLimits,
            format!(
                "{field}: {} is outside the interlock limits [{}, {}] of {eq}.{}",
                value::display(v),
                p.min.map_or("-inf".into(), |v| v.to_string()),
                p.max.map_or("+inf".into(), |v| v.to_string()),
                p.name
            ),
        );
    }
    env.check(eq, &p.name, x).map_err(|m| (ResultCode::OutOfEnvelope, format!("{field}: {m}")))
}

fn holds(read: &Value, op: Operator, want: &Value) -> bool {
    if let (Some(a), Some(b)) = (value::as_bool(read), value::as_bool(want)) {
        return match op {
            Operator::Equal => a == b,
            Operator::NotEqual => a != b,
            _ => false,
        };
    }
    let (Some(a), Some(b)) = (value::as_f64(read), value::as_f64(want)) else { return false };
    match op {
        Operator::Equal => a == b,
        Operator::NotEqual => a != b,
        Operator::LessThan => a < b,
        Operator::LessThanOrEqual => a <= b,
        Operator::GreaterThan => a > b,
        Operator::GreaterThanOrEqual => a >= b,
        Operator::Unspecified => false,
    }
}

/// The writes a command performs, in order: (property, value).
/// What a command does to the equipment: property writes in order, or one method call with its
/// input values.
#[derive(Default)]
struct Plan {
    writes: Vec<(PropertyConfig, Value)>,
    call: Option<(MethodCall, Vec<Value>)>,
}

impl Plan {
    /// Whether the command changes nothing on the equipment (a read).
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.call.is_none()
    }
}

impl Executor {
    /// An executor whose slices are not steered (the `noop` slice backend).
    pub fn new(journal: Journal, envelope: Envelope) -> Self {
        Self {
            equipment: Arc::default(),
            journal: Mutex::new(journal),
            envelope,
            running: StdMutex::default(),
            wall: WallClock::system(),
            // The controller's head start (one command) and the agent's one of slack.
            rates: StdMutex::new(Limiter::with_head_start(2)),
            origin: Instant::now(),
            fail_safes: Arc::default(),
        }
    }

    /// Keeps fail-safes in `fail_safes` (persisted) instead of in memory only.
    #[must_use]
    pub fn with_fail_safes(mut self, fail_safes: Arc<FailSafes>) -> Self {
        self.fail_safes = fail_safes;
        self
    }

    pub fn fail_safes(&self) -> &Arc<FailSafes> {
        &self.fail_safes
    }

    /// Reads wall-clock time from `wall` instead of the system clock (tests skew it).
    #[must_use]
    pub fn with_wall_clock(mut self, wall: WallClock) -> Self {
        self.wall = wall;
        self
    }

    pub fn wall_clock(&self) -> WallClock {
        self.wall
    }

    /// Steers slices with `backend` instead (before any equipment is installed).
    #[must_use]
    pub fn with_slice_backend(mut self, backend: Arc<dyn SliceBackend>) -> Self {
        self.equipment = Arc::new(EquipmentRegistry::new(backend));
        self
    }

    /// Opens OPC UA sessions with the host's PKI folder and users (before any equipment is
    /// installed).
    #[must_use]
    pub fn with_opcua(mut self, site: crate::equipment::drivers::opcua::Site) -> Self {
        self.equipment = Arc::new(EquipmentRegistry::new(self.equipment.slices()).with_opcua(site));
        self
    }

    /// The equipment commands run against.
    pub fn equipment(&self) -> &Arc<EquipmentRegistry> {
        &self.equipment
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Executes `cmd` and returns its result — exactly once per command id, whatever the number
    /// of deliveries.
    pub async fn execute(&self, cmd: &Command, arrival: Arrival) -> CommandResult {
        // A redelivery while the first delivery still runs waits for that one's result.
        let (tx, waiting) = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            match running.get(&cmd.id) {
                Some(rx) => (None, Some(rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(cmd.id.clone(), rx);
                    (Some(tx), None)
                }
            }
        };
        if let Some(mut rx) = waiting {
            let _ = rx.wait_for(Option::is_some).await;
            let mut r = rx.borrow().clone().unwrap_or_default();
            r.replayed = true;
            return r;
        }
        let result = self.execute_once(cmd, arrival).await;
        if let Some(tx) = tx {
            let _ = tx.send(Some(result.clone()));
        }
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&cmd.id);
        result
    }

    async fn execute_once(&self, cmd: &Command, arrival: Arrival) -> CommandResult {
        let mut result = CommandResult {
            id: cmd.id.clone(),
            received_unix_micros: arrival.received_unix_micros,
            ..Default::default()
        };
        // Bound first: a guard in the match scrutinee would live through the arms, and the
        // outcome-unknown arm takes the journal's lock again (it deadlocked every restarted
        // agent's answer to a command it had been killed in the middle of).
        let recorded = self.journal.lock().await.lookup(&cmd.id).cloned();
        match recorded {
            Some(Entry::Finished { result: recorded, .. }) => {
                tracing::info!(command = %cmd.id, "redelivered: answering from the journal");
                return CommandResult { replayed: true, ..recorded };
            }
            Some(Entry::Started { .. }) => {
                result.code = ResultCode::Internal as i32;
                result.message = "the agent restarted while this command was executing; the outcome is unknown — check the equipment before retrying".into();
                result.replayed = true;
                self.record(&cmd.id, &result).await;
                return result;
            }
            None => {}
        }
        let outcome = self.run(cmd, arrival, &mut result).await;
        if let Err((code, message)) = outcome {
            result.code = code as i32;
            result.message = message;
        }
        result.finished_unix_micros = arrival.offset.to_controller(self.wall.now_micros());
        self.record(&cmd.id, &result).await;
        result
    }

    async fn record(&self, id: &str, result: &CommandResult) {
        if let Err(e) = self.journal.lock().await.finish(id, result) {
            // The result is still returned: the controller needs it; but a redelivery after a
            // restart could not be recognised, so say so.
            tracing::error!(command = id, "journal write failed: {e}");
        }
    }

    async fn run(&self, cmd: &Command, arrival: Arrival, result: &mut CommandResult) -> Result<(), Refusal> {
        let past = || Instant::now() >= arrival.deadline;
        if past() {
            return refuse(
                ResultCode::DeadlineExceeded,
                "arrived with no time left before its deadline (budget less the link's round trip); not executed",
            );
        }
        let Some(eq) = self.equipment.get(&cmd.equipment) else {
            return refuse(
                ResultCode::UnknownEquipment,
                format!("this agent drives no equipment named {}", cmd.equipment),
            );
        };
        if cmd.action == ACTION_RESUME_FAIL_SAFE {
            return self.resume(&eq, cmd, arrival, result);
        }
        let (plan, reads, timeout) = self.plan(&eq, cmd)?;
        if let Some(why) = self.envelope.refusal()
            && !plan.is_empty()
        {
            return refuse(ResultCode::OutOfEnvelope, why);
        }
        if !plan.is_empty()
            && let Some(e) = self.fail_safes.holding(&eq.config.name)
        {
            return refuse(ResultCode::FailSafeEngaged, engaged_message(&eq.config.name, &e.message));
        }
        if !plan.is_empty() && !cmd.dry_run {
            self.admit_rate(&eq, cmd)?;
        }
        let _turn = eq.lock.lock().await;
        if past() {
            return refuse(
                ResultCode::DeadlineExceeded,
                "the deadline passed while waiting for the equipment; not executed",
            );
        }
        for (i, pre) in cmd.preconditions.iter().enumerate() {
            let field = format!("spec.preconditions[{i}]");
            let p = eq.property(&pre.property).ok_or((
                ResultCode::UnknownProperty,
                format!("{field}.property: {} has no property {}", eq.config.name, pre.property),
            ))?;
            let want = pre.value.unwrap_or_default();
            let read = tokio::time::timeout(timeout, eq.driver.read(p))
                .await
                .map_err(|_| (ResultCode::DeviceError, format!("{field}: reading {} timed out", p.name)))?
                .map_err(|e| (ResultCode::DeviceError, format!("{field}: reading {}: {e}", p.name)))?;
            if !holds(&read, pre.operator(), &want) {
                return refuse(
                    ResultCode::PreconditionFailed,
                    format!(
                        "{field}: {} read {}, which does not satisfy {} {} {}",
                        p.name,
                        value::display(&read),
                        p.name,
                        value::symbol(pre.operator()),
                        value::display(&want)
                    ),
                );
            }
        }
        if past() {
            return refuse(
                ResultCode::DeadlineExceeded,
                "the deadline passed while reading the preconditions; nothing was written",
            );
        }
        result.started_unix_micros = arrival.offset.to_controller(self.wall.now_micros());
        if cmd.dry_run {
            result.code = ResultCode::DryRunOk as i32;
            result.outputs =
                plan.writes.iter().map(|(p, v)| NamedValue { name: p.name.clone(), value: Some(*v) }).collect();
            let mut what: Vec<String> =
                plan.writes.iter().map(|(p, v)| format!("{}={}", p.name, value::display(v))).collect();
            if let Some((m, args)) = &plan.call {
                let args: Vec<String> = args.iter().map(value::display).collect();
                what.push(format!("call {}({})", m.method_id, args.join(", ")));
            }
            result.message = if what.is_empty() {
                "valid; nothing to write".into()
            } else {
                format!("valid; would write {}", what.join(", "))
            };
            return Ok(());
        }
        if let Err(e) = self.journal.lock().await.start(&cmd.id) {
            return refuse(ResultCode::Internal, format!("cannot journal the command, so it is not executed: {e}"));
        }
        // The request on the wire, if any: the action's timeout may cut it off unanswered.
        let in_flight: std::sync::Mutex<Option<String>> = Default::default();
        let unknown = |what: &str, e: &dyn std::fmt::Display, done: String| {
            let done = if done.is_empty() { done } else { format!(" ({done})") };
            (
                ResultCode::Internal,
                format!(
                    "{what}: {e}; the outcome is unknown: the device may have carried it out{done}; check the equipment before retrying"
                ),
            )
        };
        let run = async {
            let plan_writes = &plan.writes;
            for (i, (p, v)) in plan_writes.iter().enumerate() {
                if past() {
                    let done: Vec<String> =
                        plan_writes[..i].iter().map(|(p, v)| format!("{}={}", p.name, value::display(v))).collect();
                    return refuse(
                        ResultCode::DeadlineExceeded,
                        if i == 0 {
                            "the deadline passed before the first write; nothing was written".to_owned()
                        } else {
                            format!(
                                "the deadline passed after {i} of {} writes ({}); {} and later were not written",
                                plan_writes.len(),
                                done.join(", "),
                                p.name
                            )
                        },
                    );
                }
                if let Some(e) = self.fail_safes.holding(&eq.config.name) {
                    return refuse(
                        ResultCode::FailSafeEngaged,
                        format!(
                            "{} after {i} of {} writes; {} and later were not written",
                            engaged_message(&eq.config.name, &e.message),
                            plan_writes.len(),
                            p.name
                        ),
                    );
                }
                let done = format!("{i} of {} writes done before it", plan_writes.len());
                *in_flight.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("writing {}={} ({done})", p.name, value::display(v)));
                eq.driver.write(p, v).await.map_err(|e| {
                    if e.outcome_unknown() {
                        return unknown(&format!("writing {}={}", p.name, value::display(v)), &e, done.clone());
                    }
                    let done = if i == 0 { "nothing was written".to_owned() } else { done.clone() };
                    (ResultCode::DeviceError, format!("writing {}: {e} ({done})", p.name))
                })?;
                *in_flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
                result.outputs.push(NamedValue { name: p.name.clone(), value: Some(*v) });
            }
            if let Some((m, args)) = &plan.call {
                if past() {
                    return refuse(
                        ResultCode::DeadlineExceeded,
                        "the deadline passed before the method call; not called",
                    );
                }
                if let Some(e) = self.fail_safes.holding(&eq.config.name) {
                    return refuse(ResultCode::FailSafeEngaged, engaged_message(&eq.config.name, &e.message));
                }
                let done = format!("{} writes done before it", plan_writes.len());
                *in_flight.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("calling {} ({done})", m.method_id));
                let outputs = eq.driver.call(m, args).await.map_err(|e| {
                    if e.outcome_unknown() {
                        return unknown(&format!("calling {}", m.method_id), &e, done.clone());
                    }
                    (ResultCode::DeviceError, format!("calling {}: {e}", m.method_id))
                })?;
                *in_flight.lock().unwrap_or_else(|p| p.into_inner()) = None;
                result.outputs.extend(
                    m.outputs.iter().zip(outputs).map(|(name, v)| NamedValue { name: name.clone(), value: Some(v) }),
                );
            }
            for p in &reads {
                let v = eq
                    .driver
                    .read(p)
                    .await
                    .map_err(|e| (ResultCode::DeviceError, format!("reading {}: {e}", p.name)))?;
                result.outputs.push(NamedValue { name: p.name.clone(), value: Some(v) });
            }
            Ok::<(), Refusal>(())
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => match in_flight.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(what) => {
                    Err(unknown(&what, &format!("no answer within the action's {timeout:?} timeout"), String::new()))
                }
                None => {
                    refuse(ResultCode::DeviceError, format!("the action did not finish within its {timeout:?} timeout"))
                }
            },
            Ok(r) => {
                r?;
                result.code = ResultCode::Ok as i32;
                Ok(())
            }
        }
    }

    /// Takes a token from the equipment's and the action's rate limits. The agent allows one
    /// command more than the burst: the controller admitted each command against the same limit
    /// on its own clock, and the link's jitter may bring two of them closer together.
    fn admit_rate(&self, eq: &Equipment, cmd: &Command) -> Result<(), Refusal> {
        let name = &eq.config.name;
        let with_slack = |r: &ProtoRateLimit| RateLimit { per_minute: r.per_minute, burst: r.burst.saturating_add(1) };
        let mut limits = Vec::new();
        let mut fields = Vec::new();
        if let Some(r) = &eq.config.rate_limit {
            limits.push(((name.clone(), None), with_slack(r)));
            fields.push("spec.rateLimit".to_owned());
        }
        if let Some((i, a)) = eq.config.actions.iter().enumerate().find(|(_, a)| a.name == cmd.action)
            && let Some(r) = &a.rate_limit
        {
            limits.push(((name.clone(), Some(a.name.clone())), with_slack(r)));
            fields.push(format!("spec.actions[{i}].rateLimit"));
        }
        let admitted = self.rates.lock().unwrap_or_else(|p| p.into_inner()).admit(&limits, self.origin.elapsed());
        admitted.or_else(|e| {
            refuse(
                ResultCode::RateLimited,
                format!(
                    "{name} {} allows {} per minute with a burst of {} (the agent's own check, one above the controller's burst); not executed, the next may pass in {:.1} s",
                    fields.get(e.which).map_or("rateLimit", String::as_str),
                    e.limit.per_minute,
                    e.limit.burst - 1,
                    e.retry_after.as_secs_f64().min(86_400.0)
                ),
            )
        })
    }

    /// Validates the command against the equipment and returns the writes, the reads and the
    /// time allowed.
    fn plan(&self, eq: &Equipment, cmd: &Command) -> Result<(Plan, Vec<PropertyConfig>, Duration), Refusal> {
        let name = &eq.config.name;
        let params: HashMap<&str, &parameter::Kind> =
            cmd.parameters.iter().filter_map(|p| p.kind.as_ref().map(|k| (p.name.as_str(), k))).collect();
        let text = |key: &str| match params.get(key) {
            Some(parameter::Kind::Text(t)) => Ok(t.as_str()),
            Some(_) => refuse(ResultCode::InvalidParameter, format!("spec.parameters.{key}: must be a property name")),
            None => refuse(
                ResultCode::InvalidParameter,
                format!("spec.parameters.{key}: required by the {} action", cmd.action),
            ),
        };
        let property = |n: &str| {
            eq.property(n).ok_or_else(|| {
                (ResultCode::UnknownProperty, format!("spec.parameters.property: {name} has no property {n}"))
            })
        };
        match cmd.action.as_str() {
            "read" => {
                let p = property(text("property")?)?;
                Ok((Plan::default(), vec![p.clone()], Duration::from_secs(5)))
            }
            "write" => {
                let p = property(text("property")?)?;
                if !p.writable {
                    return refuse(
                        ResultCode::InvalidParameter,
                        format!("spec.parameters.property: {name}.{} is read-only", p.name),
                    );
                }
                let v = match params.get("value") {
                    Some(parameter::Kind::Value(v)) => *v,
                    _ => {
                        return refuse(
                            ResultCode::InvalidParameter,
                            "spec.parameters.value: a bool or a number is required",
                        );
                    }
                };
                let v = value::coerce(&v, p.r#type()).ok_or_else(|| {
                    (
                        ResultCode::InvalidParameter,
                        format!(
                            "spec.parameters.value: {} is a {}, {}.{} is {:?}",
                            value::display(&v),
                            value::type_name(&v),
                            name,
                            p.name,
                            p.r#type()
                        ),
                    )
                })?;
                check_limits(&self.envelope, name, p, &v, "spec.parameters.value")?;
                Ok((Plan { writes: vec![(p.clone(), v)], call: None }, vec![], Duration::from_secs(5)))
            }
            action => {
                let a: &ActionConfig = eq.config.actions.iter().find(|a| a.name == action).ok_or_else(|| {
                    (ResultCode::UnknownAction, format!("spec.action: {name} has no action {action}"))
                })?;
                if let Some(m) = self.envelope.action_denied(name, action) {
                    return refuse(ResultCode::OutOfEnvelope, format!("spec.action: {m}"));
                }
                for key in params.keys() {
                    if !a.parameters.iter().any(|d| d.name == *key) {
                        return refuse(
                            ResultCode::InvalidParameter,
                            format!("spec.parameters.{key}: action {action} has no such parameter"),
                        );
                    }
                }
                let mut values: HashMap<&str, Value> = HashMap::new();
                for d in &a.parameters {
                    let field = format!("spec.parameters.{}", d.name);
                    match params.get(d.name.as_str()) {
                        None if d.required => {
                            return refuse(ResultCode::InvalidParameter, format!("{field}: required"));
                        }
                        None => {}
                        Some(parameter::Kind::Text(t)) => {
                            return refuse(
                                ResultCode::InvalidParameter,
                                format!("{field}: `{t}` is not a {:?}", d.r#type()),
                            );
                        }
                        Some(parameter::Kind::Value(v)) => {
                            let v = value::coerce(v, d.r#type()).ok_or_else(|| {
                                (
                                    ResultCode::InvalidParameter,
                                    format!(
                                        "{field}: {} is a {}, the parameter is {:?}",
                                        value::display(v),
                                        value::type_name(v),
                                        d.r#type()
                                    ),
                                )
                            })?;
                            // Ranges bound numbers; a boolean parameter has none.
                            if let Some(x) = value::as_f64(&v)
                                && (d.min.is_some_and(|lo| x < lo) || d.max.is_some_and(|hi| x > hi))
                            {
                                return refuse(
                                    ResultCode::InvalidParameter,
                                    format!(
                                        "{field}: {x} is outside the declared range [{}, {}]",
                                        d.min.map_or("-inf".into(), |v| v.to_string()),
                                        d.max.map_or("+inf".into(), |v| v.to_string())
                                    ),
                                );
                            }
                            values.insert(d.name.as_str(), v);
                        }
                    }
                }
                let mut plan = Plan::default();
                if let Some(m) = &a.method {
                    let mut args = Vec::with_capacity(m.inputs.len());
                    for (k, input) in m.inputs.iter().enumerate() {
                        let v = match &input.source {
                            Some(method_argument::Source::Parameter(n)) => {
                                *values.get(n.as_str()).ok_or_else(|| {
                                    (
                                        ResultCode::InvalidParameter,
                                        format!("spec.parameters.{n}: required by the method {action} calls"),
                                    )
                                })?
                            }
                            Some(method_argument::Source::Value(v)) => *v,
                            None => {
                                return refuse(
                                    ResultCode::Internal,
                                    format!("action {action}: method input {k} has neither a parameter nor a value"),
                                );
                            }
                        };
                        args.push(v);
                    }
                    plan.call = Some((m.clone(), args));
                }
                for w in &a.writes {
                    let p = eq.property(&w.property).ok_or_else(|| {
                        (ResultCode::Internal, format!("action {action} writes unknown property {}", w.property))
                    })?;
                    let (v, field) = match &w.source {
                        Some(action_write::Source::Parameter(n)) => match values.get(n.as_str()) {
                            Some(v) => (*v, format!("spec.parameters.{n}")),
                            None => continue, // optional parameter not given: that write is skipped
                        },
                        Some(action_write::Source::Value(v)) => (*v, format!("action {action}")),
                        None => continue,
                    };
                    let v = value::coerce(&v, p.r#type())
                        .ok_or_else(|| (ResultCode::InvalidParameter, format!("{field}: does not fit {}", p.name)))?;
                    check_limits(&self.envelope, name, p, &v, &field)?;
                    plan.writes.push((p.clone(), v));
                }
                Ok((plan, vec![], Duration::from_millis(a.timeout_ms.max(100))))
            }
        }
    }
}
