//! Prometheus metrics and the health endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shopfloor_trace::metrics_endpoint;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// One EdgeAgent.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub namespace: String,
    pub agent: String,
}

/// One NetworkSlice.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SliceLabel {
    pub namespace: String,
    pub slice: String,
}

/// One Equipment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EquipmentLabel {
    pub namespace: String,
    pub equipment: String,
}

/// Buckets of command latencies, seconds: 0.5 ms to 5 s.
const LATENCY_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconciliations: Family<KindLabel, Counter>,
    pub reconcile_errors: Family<KindLabel, Counter>,
    pub commands_finished: Family<PhaseLabel, Counter>,
    /// End-to-end command latency, seconds.
    pub command_latency: Histogram,
    pub agents_connected: Gauge,
    pub plans_pushed: Counter,
    pub status_writes: Counter,
    /// Handshakes that failed or timed out (a flood shows here, not in the log).
    pub handshakes_failed: Counter,
    /// Handshakes refused because too many were in progress.
    pub handshakes_refused: Counter,
    /// Handshakes and enrollments in progress.
    pub handshakes_in_progress: Gauge,
    /// Per EdgeAgent (not suspended): 1 while it has a session.
    pub agent_connected: Family<AgentLabel, Gauge>,
    /// Per EdgeAgent: 1 while the revision it applied is not the one it should hold.
    pub agent_config_drift: Family<AgentLabel, Gauge>,
    /// Per enrolled EdgeAgent: when its certificate expires, Unix seconds.
    pub agent_certificate_expiry: Family<AgentLabel, Gauge>,
    /// 1 on the replica that leads (always, standalone).
    pub leader: Gauge,
    /// Readings agents dropped from their buffers while disconnected.
    pub telemetry_dropped: Counter,
    /// Where finished commands' time went: queue, network (one way), execution.
    pub command_phase: Histograms<PhaseLabel>,
    /// The network share (one way) of finished commands, per slice their equipment rides.
    pub command_network: Histograms<SliceLabel>,
    /// Each NetworkSlice's packet delay budget, seconds.
    pub slice_delay_budget: Family<SliceLabel, Gauge<f64, AtomicU64>>,
    /// Per Equipment with a fail-safe: 1 while its agent reports it engaged.
    pub fail_safe_engaged: Family<EquipmentLabel, Gauge>,
    pub fail_safe_unconfirmed: Family<EquipmentLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shopfloor");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            commands_finished: Family::default(),
            command_latency: latency_histogram(),
            agents_connected: Gauge::default(),
            plans_pushed: Counter::default(),
            status_writes: Counter::default(),
            handshakes_failed: Counter::default(),
            handshakes_refused: Counter::default(),
            handshakes_in_progress: Gauge::default(),
            agent_connected: Family::default(),
            agent_config_drift: Family::default(),
            agent_certificate_expiry: Family::default(),
            leader: Gauge::default(),
            telemetry_dropped: Counter::default(),
            command_phase: Family::new_with_constructor(latency_histogram),
            command_network: Family::new_with_constructor(latency_histogram),
            slice_delay_budget: Family::default(),
            fail_safe_engaged: Family::default(),
            fail_safe_unconfirmed: Family::default(),
        };
        registry.register("reconciliations", "Reconciliations by kind", m.reconciliations.clone());
        registry.register("reconcile_errors", "Failed reconciliations by kind", m.reconcile_errors.clone());
        registry.register(
            "commands_finished",
            "ControlCommands that reached a terminal phase",
            m.commands_finished.clone(),
        );
        registry.register(
            "command_latency_seconds",
            "Creation to result of ControlCommands",
            m.command_latency.clone(),
        );
        registry.register("agents_connected", "Agents with a live session", m.agents_connected.clone());
        registry.register("plans_pushed", "Configuration revisions pushed to agents", m.plans_pushed.clone());
        registry.register("status_writes", "Status writes to the store", m.status_writes.clone());
        registry.register(
            "handshakes_failed",
            "QUIC handshakes and enrollments that failed or timed out",
            m.handshakes_failed.clone(),
        );
        registry.register(
            "handshakes_refused",
            "QUIC handshakes refused because too many were in progress",
            m.handshakes_refused.clone(),
        );
        registry.register(
            "handshakes_in_progress",
            "QUIC handshakes and enrollments in progress",
            m.handshakes_in_progress.clone(),
        );
        registry.register(
            "agent_connected",
            "1 while the EdgeAgent has a session (suspended agents have no series)",
            m.agent_connected.clone(),
        );
        registry.register(
            "agent_config_drift",
            "1 while the EdgeAgent's applied configuration revision is not the desired one",
            m.agent_config_drift.clone(),
        );
        registry.register(
            "agent_certificate_expiry_timestamp_seconds",
            "When the EdgeAgent's client certificate expires",
            m.agent_certificate_expiry.clone(),
        );
        registry.register("leader", "1 on the replica that leads", m.leader.clone());
        registry.register(
            "telemetry_dropped",
            "Readings agents dropped from their buffers while disconnected",
            m.telemetry_dropped.clone(),
        );
        registry.register(
            "command_phase_seconds",
            "Where finished ControlCommands' time went: queue, network (one way), execution",
            m.command_phase.clone(),
        );
        registry.register(
            "command_network_seconds",
            "One-way network time of finished ControlCommands, by the slice their equipment rides",
            m.command_network.clone(),
        );
        registry.register(
            "slice_delay_budget_seconds",
            "The packet delay budget of each NetworkSlice that declares one",
            m.slice_delay_budget.clone(),
        );
        registry.register(
            "equipment_fail_safe_engaged",
            "1 while an Equipment's fail-safe is engaged on its agent",
            m.fail_safe_engaged.clone(),
        );
        registry.register(
            "equipment_fail_safe_unconfirmed",
            "1 while an Equipment's fail-safe is engaged but its safe values are not read back from the device",
            m.fail_safe_unconfirmed.clone(),
        );
        // Series of known label values exist from the start at zero: a rate over a counter that
        // appears with its first increment misses that increment, and dashboards show 0, not
        // "no data".
        for kind in ["EdgeAgent", "Equipment", "NetworkSlice", "ControlCommand"] {
            let label = KindLabel { kind: kind.into() };
            let _ = m.reconciliations.get_or_create(&label);
            let _ = m.reconcile_errors.get_or_create(&label);
        }
        for phase in ["Succeeded", "Failed", "Rejected", "Expired"] {
            let _ = m.commands_finished.get_or_create(&PhaseLabel { phase: phase.into() });
        }
        for phase in ["queue", "network", "execution"] {
            let _ = m.command_phase.get_or_create(&PhaseLabel { phase: phase.into() });
        }
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        metrics_endpoint::render(&self.registry)
    }
}

/// Liveness and readiness, flipped by the parts of the controller that know.
#[derive(Debug, Default)]
pub struct Health {
    /// The first view of the objects is loaded and the QUIC endpoint listens.
    pub ready: AtomicBool,
    /// This replica holds the leader lease (always true in standalone mode).
    pub leader: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    // A standby is ready (it can take over at once) but says so; only an unloaded replica is not.
    match (s.health.ready.load(Ordering::Relaxed), s.health.leader.load(Ordering::Relaxed)) {
        (true, true) => (StatusCode::OK, "ready: leader\n"),
        (true, false) => (StatusCode::OK, "ready: standby\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not ready: loading\n"),
    }
}

/// The HTTP router for health and metrics.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    let health =
        Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(AppState { health });
    metrics_endpoint::router(Arc::new(move || metrics.render())).merge(health)
}

/// Serves the router on `addr` until the task is dropped; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    metrics_endpoint::serve(addr, router(metrics, health)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.reconciliations.get_or_create(&KindLabel { kind: "Equipment".into() }).inc();
        m.agents_connected.set(3);
        m.command_latency.observe(0.002);
        let text = m.render();
        assert!(text.contains("shopfloor_reconciliations_total{kind=\"Equipment\"} 1"), "{text}");
        assert!(text.contains("shopfloor_agents_connected 3"), "{text}");
        assert!(text.contains("shopfloor_command_latency_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
