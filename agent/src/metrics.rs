//! The agent's Prometheus metrics and the HTTP endpoint that serves them (`/metrics`, and
//! `/healthz` for a liveness probe). Served only when `--metrics <addr>` is given.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use axum::routing::get;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use shopfloor_trace::metrics_endpoint;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The result code as the plugin prints it, e.g. `Ok`, `OutOfLimits`, `Expired`.
    pub code: String,
    /// Whether the result came from the journal (a redelivery) instead of an execution.
    pub replayed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// What an SRE watches on a plant host.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// 1 while a session with the controller is up.
    pub connected: Gauge,
    /// Smoothed round-trip time of the current connection.
    pub rtt_seconds: Gauge<f64, AtomicU64>,
    /// The controller's clock minus this host's, measured at the latest handshake.
    pub clock_offset_seconds: Gauge<f64, AtomicU64>,
    pub sessions: Counter,
    /// Every attempt to reach the controller, successful or not.
    pub connect_attempts: Counter,
    pub commands: Family<CodeLabel, Counter>,
    /// Receipt to result on the agent, seconds.
    pub command_duration: Histogram,
    pub config_applies: Family<OutcomeLabel, Counter>,
    pub telemetry_buffered: Gauge,
    pub telemetry_dropped: Counter,
    pub slices_applied: Gauge,
    pub slices_failed: Gauge,
    /// Equipment held at its safe values.
    pub fail_safes_engaged: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            connected: Gauge::default(),
            rtt_seconds: Gauge::default(),
            clock_offset_seconds: Gauge::default(),
            sessions: Counter::default(),
            connect_attempts: Counter::default(),
            commands: Family::default(),
            command_duration: Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
            config_applies: Family::default(),
            telemetry_buffered: Gauge::default(),
            telemetry_dropped: Counter::default(),
            slices_applied: Gauge::default(),
            slices_failed: Gauge::default(),
            fail_safes_engaged: Gauge::default(),
        };
        let mut r = Registry::with_prefix("shopfloor_agent");
        r.register("connected", "1 while a session with the controller is up", m.connected.clone());
        r.register("rtt_seconds", "Round-trip time to the controller", m.rtt_seconds.clone());
        r.register(
            "clock_offset_seconds",
            "The controller's clock minus this host's, measured at the latest handshake",
            m.clock_offset_seconds.clone(),
        );
        r.register("sessions", "Sessions established with the controller", m.sessions.clone());
        r.register(
            "connect_attempts",
            "Attempts to reach the controller, counted as each ends (refused, unanswered, or a session that ended)",
            m.connect_attempts.clone(),
        );
        r.register("commands", "Commands answered, by result code", m.commands.clone());
        r.register(
            "command_duration_seconds",
            "Receipt to result of commands on the agent",
            m.command_duration.clone(),
        );
        r.register("config_applies", "Configuration applies, by outcome", m.config_applies.clone());
        r.register("telemetry_buffered", "Readings waiting to be sent", m.telemetry_buffered.clone());
        r.register("telemetry_dropped", "Readings dropped because the buffer was full", m.telemetry_dropped.clone());
        r.register("slices_applied", "Network slices steered on this host", m.slices_applied.clone());
        r.register(
            "opcua_chunks_refused",
            "OPC UA chunks refused at their header for announcing more than the agent's receive buffer",
            crate::equipment::drivers::opcua::OPCUA_REFUSED.clone(),
        );
        r.register("slices_failed", "Network slices that could not be steered", m.slices_failed.clone());
        r.register(
            "fail_safes_engaged",
            "Equipment whose fail-safe is engaged (safe values written, setpoints held back)",
            m.fail_safes_engaged.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }
}

impl Metrics {
    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        metrics_endpoint::render(&self.registry)
    }
}

/// Brings gauges read from the agent's state up to date before a scrape.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves `/metrics` and `/healthz` on `addr`. Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, before_scrape: Refresh) -> std::io::Result<SocketAddr> {
    let scrape = Arc::new(move || {
        before_scrape();
        metrics.render()
    });
    let app = metrics_endpoint::router(scrape).route("/healthz", get(|| async { "ok" }));
    let (bound, _task) = metrics_endpoint::serve(addr, app).await?;
    Ok(bound)
}
