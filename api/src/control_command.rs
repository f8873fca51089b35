//! `ControlCommand`: one remote-control actuation of one piece of equipment.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Condition, Duration, LocalRef, MicroTime},
    value::Value,
};

/// The built-in action that writes one ReadWrite property: parameters `property` and `value`.
pub const ACTION_WRITE: &str = "write";
/// The built-in action that reads one property: parameter `property`.
pub const ACTION_READ: &str = "read";
/// Most preconditions one command may carry.
pub const MAX_PRECONDITIONS: usize = 8;

/// One remote-control command. Commands are discrete actuations: never merged, coalesced or
/// retried into a second execution; the spec is immutable once created.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shopfloor.io",
    version = "v1alpha1",
    kind = "ControlCommand",
    plural = "controlcommands",
    namespaced,
    derive = "PartialEq",
    status = "ControlCommandStatus",
    shortname = "cmd",
    category = "shopfloor",
    printcolumn(name = "Equipment", type_ = "string", json_path = ".spec.equipmentRef.name"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result.code"),
    printcolumn(
        name = "Total-us",
        type_ = "integer",
        json_path = ".status.latency.totalMicros",
        description = "End-to-end latency in microseconds"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a ControlCommand's spec is immutable: create a new command instead"},
    {"rule": "duration(self.timeout) >= duration('100ms') && duration(self.timeout) <= duration('24h')", "message": "timeout must be between 100ms and 24h", "fieldPath": ".timeout"}
]))]
pub struct ControlCommandSpec {
    /// The Equipment to act on.
    pub equipment_ref: LocalRef,
    /// One of the equipment's actions, or the built-ins `write` and `read`.
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub action: String,
    /// Action parameters by name. `write` takes `property` and `value`; `read` takes `property`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// Deadline relative to creation (Go duration, default `30s`). A command that reaches the
    /// agent after its deadline is never executed.
    #[serde(default = "default_timeout")]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
    /// What to do when the agent is not connected.
    #[serde(default)]
    pub when_offline: WhenOffline,
    /// Conditions checked at the agent against a fresh read just before executing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub preconditions: Vec<Precondition>,
    /// Validate everything, preconditions included, and report what would be written without
    /// writing.
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse the command (`LinkOverBudget`) instead of sending it while the control link's
    /// estimated one-way delay exceeds the packet delay budget of the equipment's NetworkSlice.
    /// Default: on for URLLC slices (`snssai.sst: 2`), off otherwise; without a
    /// `qos.packetDelayBudget` on the slice there is nothing to compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_link_within_budget: Option<bool>,
    /// Delete the command this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

fn default_timeout() -> Duration {
    std::time::Duration::from_secs(30).into()
}

/// A parameter value: a scalar, or a property name for the built-ins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParameterValue {
    Scalar(Value),
    Name(String),
}

impl JsonSchema for ParameterValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParameterValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A boolean, a number, or (for the built-in actions' `property`) a property name.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

impl ParameterValue {
    pub fn as_value(&self) -> Option<Value> {
        match self {
            ParameterValue::Scalar(v) => Some(*v),
            ParameterValue::Name(_) => None,
        }
    }

    pub fn as_name(&self) -> Option<&str> {
        match self {
            ParameterValue::Name(n) => Some(n),
            ParameterValue::Scalar(_) => None,
        }
    }
}

impl std::fmt::Display for ParameterValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParameterValue::Scalar(v) => v.fmt(f),
            ParameterValue::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// Behaviour when the owning agent is offline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WhenOffline {
    /// Wait for the agent until the deadline, then expire.
    #[default]
    Queue,
    /// Fail at once with `AgentOffline`.
    Reject,
}

/// A comparison checked against a fresh read of a property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Precondition {
    #[schemars(length(min = 1, max = 63))]
    pub property: String,
    pub operator: Operator,
    pub value: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    Equal,
    NotEqual,
    LessThan,
    LessThanOrEqual,
    GreaterThan,
    GreaterThanOrEqual,
}

/// Where a command is in its life. Terminal phases never change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CommandPhase {
    Pending,
    Dispatched,
    Acknowledged,
    Succeeded,
    Failed,
    Rejected,
    Expired,
}

impl CommandPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Rejected | Self::Expired)
    }
}

/// Machine-readable outcome of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResultCode {
    Ok,
    /// Dry run: everything validated; nothing written.
    DryRunOk,
    UnknownEquipment,
    UnknownAction,
    UnknownProperty,
    InvalidParameter,
    /// Outside the property's min/max interlock.
    OutOfLimits,
    /// Outside the plant's local safety envelope on the agent.
    OutOfEnvelope,
    PreconditionFailed,
    DeadlineExceeded,
    AgentOffline,
    DeviceError,
    Internal,
    /// Over a `rateLimit` of the equipment or of the action; the message names it and says
    /// when the next command is allowed.
    RateLimited,
    /// The control link's delay was over the slice's packet delay budget and the command
    /// required it within (`requireLinkWithinBudget`); it was not sent.
    LinkOverBudget,
    /// The equipment's fail-safe is engaged: commands that write are refused until it is
    /// resumed (`resume-fail-safe`, or the link's return when `resume` is `Automatic`).
    FailSafeEngaged,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    pub code: ResultCode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Values read or written, by property name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
}

/// When each step happened, to the microsecond.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandTimestamps {
    /// When the controller first saw the command; latencies count from here, because
    /// `metadata.creationTimestamp` only has second precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<MicroTime>,
    /// Execution start on the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<MicroTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<MicroTime>,
    /// Creation time plus `spec.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<MicroTime>,
}

/// Where the time went, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyBreakdown {
    /// From acceptance to dispatch, in the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_micros: Option<i64>,
    /// From dispatch to receipt at the agent (one way, estimated from RTT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_micros: Option<i64>,
    /// Execution on the agent, device I/O included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_micros: Option<i64>,
    /// From acceptance to the result recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_micros: Option<i64>,
}

/// Observed state of a ControlCommand.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlCommandStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CommandPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CommandResult>,
    /// Deliveries to the agent; more than one only after a reconnect or controller restart, and
    /// the agent's journal guarantees a single execution.
    #[serde(default)]
    pub attempts: i32,
    /// The agent the command was routed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default)]
    pub timestamps: CommandTimestamps,
    #[serde(default)]
    pub latency: LatencyBreakdown,
    /// W3C trace id of the command's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}
