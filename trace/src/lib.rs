//! What SREs see of Shopfloor: command tracing, and (`metrics_endpoint`) the HTTP endpoint
//! both binaries serve their Prometheus metrics on.
//!
//! Command tracing: the W3C trace context a command carries from the controller to the
//! agent, and the spans both sides export over OTLP/HTTP (protobuf) to an OpenTelemetry
//! collector.
//!
//! Spans are recorded once their times are known — a command's phases are timestamped as they
//! happen and persisted, so the controller can report a command's span after a restart — which is
//! why this crate builds finished spans with explicit ids and times instead of using the SDK's
//! live-span tracer (that one always generates its own span ids, and the agent's span must point
//! at the id the controller put in the `traceparent` it sent).
//!
//! The exporter batches in a tokio task: at most [`BATCH`] spans or [`INTERVAL`] apart, bounded
//! at [`QUEUE`] spans waiting (beyond that new spans are dropped and counted), so a slow or absent
//! collector never slows a command down.

pub mod metrics_endpoint;

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks},
};
use tokio::sync::mpsc;

/// Spans per export request.
pub const BATCH: usize = 512;
/// Longest wait before a recorded span is exported.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// Spans waiting for export at most.
pub const QUEUE: usize = 8192;

/// A W3C trace context: which trace a span belongs to and its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl TraceContext {
    /// Parses a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when it is
    /// not one, or carries the all-zero ids the specification declares invalid.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(trace, &mut trace_id).ok()?;
        hex::decode_to_slice(span, &mut span_id).ok()?;
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(Self { trace_id, span_id })
    }

    /// A new span id in the trace `trace_id` (hex, as in a ControlCommand's `status.traceId`).
    pub fn in_trace(trace_id: &str) -> Option<Self> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(trace_id, &mut id).ok()?;
        (id != [0; 16]).then(|| Self { trace_id: id, span_id: random_span_id() })
    }

    /// The `traceparent` header value, sampled.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", hex::encode(self.trace_id), hex::encode(self.span_id))
    }

    /// A new trace: a random trace id and a root span id.
    pub fn root() -> Self {
        Self { trace_id: random_id(), span_id: random_id() }
    }
}

/// Random, non-zero ids (all-zero ids are invalid in W3C trace context). Falls back to the clock
/// if the OS cannot give randomness: never seen in practice, and it must not stop a command.
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    if getrandom::fill(&mut id).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let bytes = nanos.to_le_bytes();
        for (i, x) in id.iter_mut().enumerate() {
            *x = bytes[i % bytes.len()] ^ (i as u8);
        }
    }
    if id == [0; N] {
        id[N - 1] = 1;
    }
    id
}

/// A random, non-zero span id.
pub fn random_span_id() -> [u8; 8] {
    random_id()
}

/// What a span stands for, as OpenTelemetry classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside one process (a command's whole life in the controller).
    Internal,
    /// A request sent and waited for (the controller dispatching to an agent).
    Client,
    /// A request received and answered (the agent executing a command).
    Server,
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub context: TraceContext,
    /// The parent span's id, in the same trace; `None` for a trace's root.
    pub parent: Option<[u8; 8]>,
    /// Whether the parent was created in another process.
    pub remote_parent: bool,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attribute)>,
    /// Set when the work failed, with why.
    pub error: Option<String>,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attribute {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Attribute {
    fn from(v: &str) -> Self {
        Self::Str(v.to_owned())
    }
}

impl From<String> for Attribute {
    fn from(v: String) -> Self {
        Self::Str(v)
    }
}

impl From<i64> for Attribute {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<bool> for Attribute {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// A Unix time in microseconds as a `SystemTime`.
pub fn from_unix_micros(us: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(us.max(0).unsigned_abs())
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "cannot export spans to {endpoint}: {message}; check --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT), \
         the collector's base URL such as http://otel-collector:4318"
    )]
    Exporter { endpoint: String, message: String },
}

/// Where finished spans go: an OTLP/HTTP collector, or nowhere. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<SpanData>,
    scope: InstrumentationScope,
    dropped: AtomicU64,
}

impl Tracer {
    /// A tracer that records nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Exports to the collector at `endpoint` (its base URL, e.g. `http://otel-collector:4318`;
    /// spans go to `/v1/traces`) as `service`. Must be called inside a tokio runtime.
    pub fn otlp(endpoint: &str, service: &'static str) -> Result<Self, TraceError> {
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
        let error = |e: &dyn std::fmt::Display| TraceError::Exporter { endpoint: url.clone(), message: e.to_string() };
        let client = opentelemetry_http::hyper::HyperClient::with_default_connector(Duration::from_secs(10), None);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| error(&e))?;
        exporter.set_resource(&Resource::builder_empty().with_service_name(service).build());
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(exporter, rx, url));
        let scope = InstrumentationScope::builder(service).with_version(env!("CARGO_PKG_VERSION")).build();
        Ok(Self { inner: Some(Arc::new(Inner { tx, scope, dropped: AtomicU64::new(0) })) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Spans dropped because the collector could not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner.as_ref().map_or(0, |i| i.dropped.load(Ordering::Relaxed))
    }

    /// Queues `span` for export; never waits.
    pub fn record(&self, span: Span) {
        let Some(inner) = &self.inner else { return };
        let data = span_data(span, inner.scope.clone());
        if inner.tx.try_send(data).is_err() {
            inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn span_data(span: Span, scope: InstrumentationScope) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(span.context.trace_id),
        SpanId::from_bytes(span.context.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let attributes = span
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            Attribute::Str(s) => KeyValue::new(k, s),
            Attribute::Int(i) => KeyValue::new(k, i),
            Attribute::Bool(b) => KeyValue::new(k, b),
        })
        .collect();
    SpanData {
        span_context: context,
        parent_span_id: span.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: span.remote_parent,
        span_kind: match span.kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Client => SpanKind::Client,
            Kind::Server => SpanKind::Server,
        },
        name: Cow::Owned(span.name),
        start_time: span.start,
        end_time: span.end.max(span.start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.error {
            Some(e) => Status::error(e),
            None => Status::Ok,
        },
        instrumentation_scope: scope,
    }
}

async fn export_loop(exporter: opentelemetry_otlp::SpanExporter, mut rx: mpsc::Receiver<SpanData>, url: String) {
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + INTERVAL;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        match exporter.export(batch).await {
            Ok(()) if failing => {
                tracing::info!(collector = %url, "exporting spans again");
                failing = false;
            }
            Ok(()) => {}
            // Say it once per outage: a missing collector must not flood the log.
            Err(e) if !failing => {
                tracing::warn!(collector = %url, "cannot export {n} spans (dropped): {e}");
                failing = true;
            }
            Err(e) => tracing::debug!(collector = %url, "cannot export {n} spans (dropped): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_invalid_ones_are_refused() {
        let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(ctx.traceparent(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let child = TraceContext::in_trace("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id");
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, [0; 8]);
    }

    #[test]
    fn a_span_keeps_its_ids_times_and_parent() {
        let ctx = TraceContext { trace_id: [1; 16], span_id: [2; 8] };
        let start = from_unix_micros(1_000_000);
        let data = span_data(
            Span {
                name: "execute".into(),
                context: ctx,
                parent: Some([3; 8]),
                remote_parent: true,
                kind: Kind::Server,
                start,
                end: from_unix_micros(1_002_000),
                attributes: vec![("shopfloor.result", "Ok".into())],
                error: None,
            },
            InstrumentationScope::builder("test").build(),
        );
        assert_eq!(data.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        assert_eq!(data.span_context.span_id(), SpanId::from_bytes([2; 8]));
        assert_eq!(data.parent_span_id, SpanId::from_bytes([3; 8]));
        assert_eq!(data.end_time.duration_since(data.start_time).ok(), Some(Duration::from_millis(2)));
        assert_eq!(data.attributes, vec![KeyValue::new("shopfloor.result", "Ok")]);
    }

    #[test]
    fn new_traces_have_valid_distinct_ids() {
        let (a, b) = (TraceContext::root(), TraceContext::root());
        assert_ne!(a.trace_id, b.trace_id);
        assert!(TraceContext::parse(&a.traceparent()).is_some(), "a root context is a valid traceparent");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let span = Span {
            name: "x".into(),
            context: TraceContext { trace_id: [1; 16], span_id: [2; 8] },
            parent: None,
            remote_parent: false,
            kind: Kind::Internal,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: vec![],
            error: None,
        };
        // A tracer whose export loop never drains: the queue fills, then spans are counted.
        let (tx, _rx) = mpsc::channel(1);
        let full = Tracer {
            inner: Some(Arc::new(Inner {
                tx,
                scope: InstrumentationScope::builder("t").build(),
                dropped: AtomicU64::new(0),
            })),
        };
        full.record(span.clone());
        assert_eq!(full.dropped(), 0);
        full.record(span);
        assert_eq!(full.dropped(), 1);
    }
}
