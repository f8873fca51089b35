//! `EdgeAgent`: one Shopfloor agent on one plant host.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, Time};

/// One agent on one plant host. The controller issues its bootstrap token, records its
/// certificate, and pushes it the configuration of the Equipment and NetworkSlices it serves.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shopfloor.io",
    version = "v1alpha1",
    kind = "EdgeAgent",
    plural = "edgeagents",
    namespaced,
    derive = "PartialEq",
    status = "EdgeAgentStatus",
    shortname = "ea",
    category = "shopfloor",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "RTT-us",
        type_ = "integer",
        json_path = ".status.connection.rttMicros",
        description = "Round-trip time to the agent in microseconds"
    ),
    printcolumn(
        name = "Desired",
        type_ = "string",
        json_path = ".status.config.desiredRevision",
        description = "Configuration revision the agent must hold"
    ),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.config.appliedRevision",
        description = "Configuration revision the agent reported applied"
    ),
    printcolumn(name = "Cert-Expiry", type_ = "date", json_path = ".status.certificate.notAfter", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeAgentSpec {
    /// The plant, line or cell this agent belongs to, e.g. `plant-a/line-1`.
    #[schemars(length(min = 1, max = 128), regex(pattern = "^[a-z0-9]([-a-z0-9./]*[a-z0-9])?$"))]
    pub site: String,
    /// Lifetime and renewal of the agent's client certificate.
    #[serde(default)]
    pub certificate: CertificatePolicy,
    /// How often the connection is probed and when a silent agent counts as lost.
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// A suspended agent is disconnected and refused until `suspend` is false again. Its equipment
    /// keeps its last applied configuration.
    #[serde(default)]
    pub suspend: bool,
}

/// Client-certificate lifetime; the agent renews over its live connection `renewBefore` expiry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.renewBefore) < duration(self.duration)", "message": "renewBefore must be shorter than duration"},
    {"rule": "duration(self.duration) >= duration('10m')", "message": "duration must be at least 10m"}
]))]
pub struct CertificatePolicy {
    /// How long an issued certificate is valid (Go duration, e.g. `720h`).
    #[serde(default = "default_cert_duration")]
    #[schemars(length(max = 32))]
    pub duration: Duration,
    /// How long before expiry the agent renews (Go duration, e.g. `240h`).
    #[serde(default = "default_renew_before")]
    #[schemars(length(max = 32))]
    pub renew_before: Duration,
}

fn default_cert_duration() -> Duration {
    std::time::Duration::from_secs(30 * 24 * 3600).into()
}

fn default_renew_before() -> Duration {
    std::time::Duration::from_secs(10 * 24 * 3600).into()
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self { duration: default_cert_duration(), renew_before: default_renew_before() }
    }
}

/// Liveness of the agent's connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.interval) < duration(self.timeout)", "message": "interval must be shorter than timeout"},
    {"rule": "duration(self.interval) >= duration('100ms')", "message": "interval must be at least 100ms"},
    {"rule": "duration(self.timeout) <= duration('60s')", "message": "timeout must be at most 60s"}
]))]
pub struct Heartbeat {
    /// Keep-alive interval (Go duration, default `1s`).
    #[serde(default = "default_heartbeat_interval")]
    #[schemars(length(max = 32))]
    pub interval: Duration,
    /// Silence after which the agent is considered disconnected (Go duration, default `5s`, at
    /// most [`MAX_HEARTBEAT_TIMEOUT`]).
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
}

/// The longest `spec.heartbeat.timeout`: the controller's own idle timeout, so that the agent's
/// (QUIC takes the shorter of the two sides') is the one that applies.
pub const MAX_HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn default_heartbeat_interval() -> Duration {
    std::time::Duration::from_secs(1).into()
}

fn default_heartbeat_timeout() -> Duration {
    std::time::Duration::from_secs(5).into()
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { interval: default_heartbeat_interval(), timeout: default_heartbeat_timeout() }
    }
}

/// Where an agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AgentPhase {
    /// Waiting for the agent to enroll with its bootstrap token.
    Pending,
    /// Enrolled (certificate issued) but not connected yet.
    Enrolled,
    /// Connected over QUIC with mutual TLS.
    Connected,
    /// Was connected; the connection is gone.
    Disconnected,
    /// `spec.suspend` is true: refused and disconnected.
    Suspended,
}

/// Observed state of an EdgeAgent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeAgentStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AgentPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
}

/// Where the agent's bootstrap token is and until when it can be used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    /// Name of the Secret holding the single-use bootstrap token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
    /// When the token was redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<Time>,
}

/// The agent's live connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Smoothed QUIC round-trip time in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_micros: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    /// The controller replica holding the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<i32>,
    /// The agent's wall clock minus the controller's, in milliseconds, estimated at the
    /// handshake. Deadlines do not depend on it; timestamps in the agent's logs do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_millis: Option<i64>,
    /// SHA-256 of the plant's safety envelope the agent enforces; absent when it runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub envelope_sha256: Option<String>,
}

/// The client certificate the controller issued and will accept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Serial number, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// SHA-256 of the DER certificate, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_fingerprint: Option<String>,
}

/// Which configuration the agent must hold and which it holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Time>,
}
