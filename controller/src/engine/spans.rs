//! The OpenTelemetry spans of a command, built from what the engine persists: a root span for
//! the command's whole life (acceptance to result) and one client span per delivery to an agent,
//! whose id is the parent the agent's own span names in the `traceparent` it received.

use std::time::SystemTime;

use sha2::{Digest, Sha256};
use shopfloor_api::control_command::{CommandPhase, ControlCommandSpec, ControlCommandStatus};
use shopfloor_trace::{Kind, Span, TraceContext};

use crate::store::ObjectKey;

/// The root span's id: derived from the command's uid, so a restarted controller (which may
/// finish a command another process dispatched) names the same parent.
pub fn root_span_id(uid: &str) -> [u8; 8] {
    let digest = Sha256::digest(uid.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn time(t: Option<&shopfloor_api::common::MicroTime>) -> Option<SystemTime> {
    t.map(|t| shopfloor_trace::from_unix_micros(t.0.as_microsecond()))
}

/// The span of a command that has just reached a terminal phase (recorded now): from its
/// acceptance to its result being recorded, like `latency.totalMicros`. `None` without a trace id.
pub fn command(
    key: &ObjectKey,
    uid: &str,
    spec: &ControlCommandSpec,
    status: &ControlCommandStatus,
    created: SystemTime,
) -> Option<Span> {
    let mut context = TraceContext::in_trace(status.trace_id.as_deref()?)?;
    context.span_id = root_span_id(uid);
    let ts = &status.timestamps;
    let start = time(ts.accepted_at.as_ref()).unwrap_or(created);
    let end = SystemTime::now();
    let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
    let mut attributes = vec![
        ("shopfloor.command", key.to_string().into()),
        ("shopfloor.equipment", spec.equipment_ref.name.clone().into()),
        ("shopfloor.action", spec.action.clone().into()),
        ("shopfloor.phase", phase.into()),
        ("shopfloor.dry_run", spec.dry_run.into()),
    ];
    if let Some(agent) = &status.agent {
        attributes.push(("shopfloor.agent", agent.clone().into()));
    }
    if let Some(r) = &status.result {
        attributes.push(("shopfloor.result", format!("{:?}", r.code).into()));
    }
    let l = &status.latency;
    for (name, v) in [
        ("shopfloor.latency.queue_us", l.queue_micros),
        ("shopfloor.latency.network_us", l.network_micros),
        ("shopfloor.latency.execution_us", l.execution_micros),
        ("shopfloor.latency.total_us", l.total_micros),
    ] {
        if let Some(v) = v {
            attributes.push((name, v.into()));
        }
    }
    let error = (status.phase != Some(CommandPhase::Succeeded)).then(|| {
        status.result.as_ref().map_or_else(|| format!("{:?}", status.phase), |r| format!("{:?}: {}", r.code, r.message))
    });
    Some(Span {
        name: format!("command {}/{}", spec.equipment_ref.name, spec.action),
        context,
        parent: None,
        remote_parent: false,
        kind: Kind::Internal,
        start,
        end,
        attributes,
        error,
    })
}

/// The span of one delivery: from sending the command to the agent's result arriving (`end`),
/// or to the stream ending without one.
pub fn delivery(
    uid: &str,
    context: TraceContext,
    agent: &str,
    (start, end): (SystemTime, SystemTime),
    result: Result<&str, &str>,
) -> Span {
    let (attributes, error) = match result {
        Ok(code) => (vec![("shopfloor.agent", agent.into()), ("shopfloor.result", code.into())], None),
        Err(why) => (vec![("shopfloor.agent", agent.into())], Some(why.to_owned())),
    };
    Span {
        name: format!("dispatch to {agent}"),
        context,
        parent: Some(root_span_id(uid)),
        remote_parent: false,
        kind: Kind::Client,
        start,
        end,
        attributes,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_span_id_is_stable_and_never_zero() {
        assert_eq!(root_span_id("uid-1"), root_span_id("uid-1"));
        assert_ne!(root_span_id("uid-1"), root_span_id("uid-2"));
        assert_ne!(root_span_id("uid-1"), [0; 8]);
    }
}
