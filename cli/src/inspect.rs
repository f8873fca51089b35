//! `kubectl shopfloor agents` and `kubectl shopfloor equipment`.

use k8s_openapi::jiff::Timestamp;
use shopfloor_api::{EdgeAgent, Equipment, edge_agent::AgentPhase, equipment::ApplyResult};

use crate::table::{Tone, render};

fn age(t: Option<Timestamp>, now: Timestamp) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = now.duration_since(t).as_secs();
    let (n, unit) = match secs.abs() {
        s if s < 120 => (s, "s"),
        s if s < 7200 => (s / 60, "m"),
        s if s < 172_800 => (s / 3600, "h"),
        s => (s / 86400, "d"),
    };
    if secs < 0 { format!("in {n}{unit}") } else { format!("{n}{unit}") }
}

/// The agents table: phase, RTT, applied vs desired revision, certificate expiry.
pub fn agents_table(agents: &[EdgeAgent], now: Timestamp) -> String {
    let mut rows = Vec::new();
    for a in agents {
        let st = a.status.clone().unwrap_or_default();
        let phase = st.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Unknown".into());
        let tone = match st.phase {
            Some(AgentPhase::Connected) => Tone::Good,
            Some(AgentPhase::Disconnected | AgentPhase::Suspended) => Tone::Bad,
            _ => Tone::Warn,
        };
        let rtt = st.connection.as_ref().and_then(|c| c.rtt_micros).map(|r| format!("{:.2}ms", r as f64 / 1000.0));
        let config = st.config.unwrap_or_default();
        let desired = config.desired_revision.unwrap_or_else(|| "-".into());
        let applied = config.applied_revision.unwrap_or_else(|| "-".into());
        let sync_tone = if desired == applied && desired != "-" { Tone::Good } else { Tone::Warn };
        let cert = st.certificate.and_then(|c| c.not_after).map(|t| age(Some(t.0), now));
        rows.push(vec![
            (a.metadata.name.clone().unwrap_or_default(), Tone::Plain),
            (a.spec.site.clone(), Tone::Plain),
            (phase, tone),
            (rtt.unwrap_or_else(|| "-".into()), Tone::Plain),
            (desired, Tone::Plain),
            (applied, sync_tone),
            (cert.map(|c| c.trim_start_matches("in ").to_owned()).unwrap_or_else(|| "-".into()), Tone::Plain),
        ]);
    }
    render(&["NAME", "SITE", "PHASE", "RTT", "DESIRED", "APPLIED", "CERT EXPIRES IN"], &rows)
}

/// The equipment table: one row per property, desired against reported.
pub fn equipment_table(equipment: &[Equipment], now: Timestamp) -> String {
    let mut rows = Vec::new();
    for e in equipment {
        let st = e.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        for p in &e.spec.properties {
            let reported = st.reported.iter().find(|r| r.property == p.name);
            let applied = st.applied.iter().find(|r| r.property == p.name);
            let desired = p.desired.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
            let (value, seen) = match reported {
                Some(r) => (r.value.to_string(), age(Some(r.observed_at.0), now)),
                None => ("-".into(), "-".into()),
            };
            let tone = match applied.map(|a| a.result) {
                Some(ApplyResult::Applied) => Tone::Good,
                Some(ApplyResult::Failed | ApplyResult::Rejected) => Tone::Bad,
                Some(ApplyResult::Pending) => Tone::Warn,
                None => Tone::Plain,
            };
            rows.push(vec![
                (e.metadata.name.clone().unwrap_or_default(), Tone::Plain),
                (e.spec.agent_ref.name.clone(), Tone::Plain),
                (p.name.clone(), Tone::Plain),
                (desired, tone),
                (value, Tone::Plain),
                (p.unit.clone().unwrap_or_default(), Tone::Plain),
                (seen, Tone::Plain),
                (
                    ready
                        .map(|c| if c.status == "True" { "Ready".to_owned() } else { c.reason.clone() })
                        .unwrap_or_else(|| "-".into()),
                    if ready.is_some_and(|c| c.status == "True") { Tone::Good } else { Tone::Warn },
                ),
            ]);
        }
    }
    render(&["EQUIPMENT", "AGENT", "PROPERTY", "DESIRED", "REPORTED", "UNIT", "AGE", "STATE"], &rows)
}
