//! `Equipment`: a machine (PLC, robot cell, conveyor…) that one agent drives.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Condition, Duration, LocalRef, Time, ValueType},
    value::Value,
};

/// Most properties one Equipment may declare; keeps CEL rule cost inside the API server budget.
pub const MAX_PROPERTIES: usize = 64;
/// Most actions one Equipment may declare.
pub const MAX_ACTIONS: usize = 16;
/// Most parameters one action may declare.
pub const MAX_PARAMETERS: usize = 16;
/// Most property writes one action may perform.
pub const MAX_WRITES: usize = 8;
/// The built-in action that lifts an engaged fail-safe whose `resume` is `Manual`.
pub const ACTION_RESUME_FAIL_SAFE: &str = "resume-fail-safe";

/// A machine one agent drives: how to reach it, the properties it exposes with their setpoints
/// and interlock limits, and the actions an operator may run on it.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "shopfloor.io",
    version = "v1alpha1",
    kind = "Equipment",
    plural = "equipment",
    namespaced,
    derive = "PartialEq",
    status = "EquipmentStatus",
    shortname = "eq",
    category = "shopfloor",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agentRef.name"),
    printcolumn(name = "Slice", type_ = "string", json_path = ".spec.networkSliceRef.name", priority = 1),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.appliedRevision",
        description = "Configuration revision the agent applied"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.modbusTcp) ? 1 : 0) + (has(self.opcua) ? 1 : 0) + (has(self.simulated) ? 1 : 0) == 1", "message": "exactly one protocol block (modbusTcp, opcua or simulated) must be set", "fieldPath": ".modbusTcp"},
    {"rule": "!has(self.modbusTcp) || self.properties.all(p, has(p.modbus))", "message": "every property of modbusTcp equipment needs a modbus mapping", "fieldPath": ".properties"},
    {"rule": "!has(self.opcua) || self.properties.all(p, has(p.opcua))", "message": "every property of opcua equipment needs an opcua node", "fieldPath": ".properties"},
    {"rule": "has(self.opcua) || self.properties.all(p, !has(p.opcua))", "message": "only opcua equipment maps properties to OPC UA nodes", "fieldPath": ".properties"},
    {"rule": "has(self.opcua) || self.actions.all(a, !has(a.method))", "message": "only opcua equipment has actions that call a method", "fieldPath": ".actions"},
    {"rule": "self.properties.all(p, self.properties.exists_one(q, q.name == p.name))", "message": "property names must be unique", "fieldPath": ".properties"},
    {"rule": "self.actions.all(a, self.actions.exists_one(b, b.name == a.name))", "message": "action names must be unique", "fieldPath": ".actions"},
    {"rule": "self.actions.all(a, a.writes.all(w, self.properties.exists(p, p.name == w.property && p.access == 'ReadWrite')))", "message": "every action write must name a ReadWrite property of this equipment", "fieldPath": ".actions"},
    {"rule": "!has(self.failSafe) || self.failSafe.values.all(v, self.properties.exists(p, p.name == v.property && p.access == 'ReadWrite'))", "message": "every failSafe value must name a ReadWrite property of this equipment", "fieldPath": ".failSafe.values"}
]))]
pub struct EquipmentSpec {
    /// The EdgeAgent that drives this equipment.
    pub agent_ref: LocalRef,
    /// Reach the equipment over Modbus TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus_tcp: Option<ModbusTcp>,
    /// Reach the equipment's OPC UA server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<OpcUa>,
    /// An in-process device model on the agent, for demos, training and tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<Simulated>,
    /// The values the equipment exposes (its twin).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub properties: Vec<Property>,
    /// Named operations an operator may run with a ControlCommand.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub actions: Vec<Action>,
    /// How often the agent reads and reports the properties.
    #[serde(default)]
    pub reporting: Reporting,
    /// The NetworkSlice this equipment's traffic rides on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_slice_ref: Option<LocalRef>,
    /// At most this many commands that write (the built-in `write` and every action; not `read`,
    /// not dry runs) reach the equipment, enforced by the controller and again by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What the agent writes on its own when it has not heard from the controller for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_safe: Option<FailSafe>,
}

/// A dead-man switch: after `after` without a sign of life from the controller, the agent
/// writes `values` (through the same interlock limits, envelope and journal as any write),
/// holds the desired setpoints back and refuses commands that write until it is resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.after) >= duration('100ms') && duration(self.after) <= duration('1h')", "message": "after must be between 100ms and 1h", "fieldPath": ".after"},
    {"rule": "self.values.all(v, self.values.exists_one(w, w.property == v.property))", "message": "each property may have one safe value", "fieldPath": ".values"}
]))]
pub struct FailSafe {
    /// How long the control link may be silent before the fail-safe engages (Go duration,
    /// 100ms to 1h; under 800ms the agent's keep-alive is an eighth of it).
    #[schemars(length(max = 32))]
    pub after: Duration,
    /// The safe value of each property to write, in order.
    #[schemars(length(min = 1, max = 64))]
    pub values: Vec<SafeValue>,
    /// What lifts it once the link is back (default `Manual`).
    #[serde(default)]
    pub resume: Resume,
    /// A controller in Kubernetes mode refuses a fail-safe whose `after` is shorter than its
    /// failover bound (how long agents can be without a controller when the leader dies
    /// unannounced; docs/operations.md gives the arithmetic): such a crash would engage it.
    /// `true` accepts that; planned handovers engage none either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_shorter_than_failover: bool,
}

/// One safe value. Its type and the property's interlock limits are checked by the controller,
/// not by a CEL rule: `value` is an untyped scalar, which the API server's CEL type-checker
/// cannot see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SafeValue {
    /// A ReadWrite property of this equipment.
    #[schemars(length(min = 1, max = 63))]
    pub property: String,
    pub value: Value,
}

/// How an engaged fail-safe is lifted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Resume {
    /// An operator runs the built-in `resume-fail-safe` action (`kubectl shopfloor exec
    /// <equipment> resume-fail-safe`); until then the safe values stay.
    #[default]
    Manual,
    /// As soon as the agent hears the controller again, it returns to the desired
    /// setpoints.
    Automatic,
}

/// A token bucket: `burst` commands at once, refilled at `perMinute` a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Commands a minute, sustained.
    #[schemars(range(min = 1, max = 60000))]
    pub per_minute: u32,
    /// Commands at once after a quiet spell (default 1).
    #[serde(default = "one_command")]
    #[schemars(range(min = 1, max = 1000))]
    pub burst: u32,
}

fn one_command() -> u32 {
    1
}

/// Modbus TCP endpoint of the equipment, as seen from the agent's host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModbusTcp {
    /// Host name or IP address.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[serde(default = "default_modbus_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Modbus unit (slave) identifier.
    #[serde(default = "default_unit_id")]
    #[schemars(range(min = 0, max = 255))]
    pub unit_id: u8,
    /// Per-request timeout (Go duration, default `1s`).
    #[serde(default = "default_request_timeout")]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
}

/// An OPC UA server's endpoint, as seen from the agent's host, and how the channel to it is
/// secured. The agent's certificate, the servers it trusts and the user it signs in as stay on
/// the plant host (the agent's configuration): nothing secret is in this object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.endpoint.startsWith('opc.tcp://')", "message": "endpoint must be an opc.tcp:// URL", "fieldPath": ".endpoint"},
    {"rule": "(self.securityPolicy == 'None') == (self.securityMode == 'None')", "message": "an unsecured channel is chosen with both securityPolicy: None and securityMode: None; a secured one with neither", "fieldPath": ".securityMode"}
]))]
pub struct OpcUa {
    /// The server's endpoint URL, e.g. `opc.tcp://packer-1.plant.local:4840/`.
    #[schemars(length(min = 11, max = 512))]
    pub endpoint: String,
    /// Default `Basic256Sha256`; `None` only when chosen, together with `securityMode: None`.
    #[serde(default)]
    pub security_policy: OpcUaSecurityPolicy,
    /// Default `SignAndEncrypt`.
    #[serde(default)]
    pub security_mode: OpcUaSecurityMode,
    /// Per-request timeout (Go duration, default `2s`).
    #[serde(default = "default_opcua_timeout")]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
    /// How often the server sends the subscription's changes (Go duration, default `500ms`).
    #[serde(default = "default_publishing_interval")]
    #[schemars(length(max = 32))]
    pub publishing_interval: Duration,
}

fn default_opcua_timeout() -> Duration {
    std::time::Duration::from_secs(2).into()
}

fn default_publishing_interval() -> Duration {
    std::time::Duration::from_millis(500).into()
}

/// OPC UA security policies the agent speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OpcUaSecurityPolicy {
    /// No signature, no encryption: only on a network you trust, and only when chosen.
    None,
    #[default]
    Basic256Sha256,
    Aes128Sha256RsaOaep,
}

/// OPC UA message security modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OpcUaSecurityMode {
    None,
    Sign,
    #[default]
    SignAndEncrypt,
}

/// The OPC UA built-in types a property or a method argument maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OpcUaDataType {
    Boolean,
    SByte,
    Byte,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
}

impl OpcUaDataType {
    /// Whether a value of Shopfloor type `ty` can be carried by this OPC UA type without loss of
    /// kind: Bool by Boolean, Int by the integer types (and Float and Double), Float by Float
    /// and Double.
    pub fn carries(self, ty: ValueType) -> bool {
        use OpcUaDataType as T;
        match ty {
            ValueType::Bool => self == T::Boolean,
            ValueType::Int => self != T::Boolean,
            ValueType::Float => matches!(self, T::Float | T::Double),
        }
    }
}

/// A node id: `ns=<index>;s=<id>` (or `i=`, `g=`, `b=`), or with the namespace's URI instead of
/// its index (`nsu=<uri>;s=<id>`), which survives a server that renumbers its namespaces.
pub const OPCUA_NODE_ID_PATTERN: &str = "^(ns=[0-9]+|nsu=[^;]+);[isgb]=.+$";

/// Where a property lives in the server's address space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.deadband) || self.deadband >= 0.0", "message": "deadband must not be negative", "fieldPath": ".deadband"},
    {"rule": "!has(self.samplingInterval) || duration(self.samplingInterval) >= duration('10ms')", "message": "samplingInterval must be at least 10ms", "fieldPath": ".samplingInterval"}
]))]
pub struct OpcUaNode {
    #[schemars(length(min = 5, max = 512), regex(pattern = "^(ns=[0-9]+|nsu=[^;]+);[isgb]=.+$"))]
    pub node_id: String,
    pub data_type: OpcUaDataType,
    /// How often the server samples the variable for the subscription (Go duration; default the
    /// equipment's reporting interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub sampling_interval: Option<Duration>,
    /// A change smaller than this (absolute, in the node's units) is not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
}

/// An action that calls a method of the server instead of writing properties. Its outputs,
/// named here in order, are the command's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.outputs.all(o, self.outputs.exists_one(p, p == o))", "message": "output names must be unique", "fieldPath": ".outputs"}
]))]
pub struct MethodCall {
    /// The object the method belongs to.
    #[schemars(length(min = 5, max = 512), regex(pattern = "^(ns=[0-9]+|nsu=[^;]+);[isgb]=.+$"))]
    pub object_id: String,
    #[schemars(length(min = 5, max = 512), regex(pattern = "^(ns=[0-9]+|nsu=[^;]+);[isgb]=.+$"))]
    pub method_id: String,
    /// The method's input arguments, in order.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub inputs: Vec<MethodInput>,
    /// Names for the method's output arguments, in order.
    #[serde(default)]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 63), regex(pattern = "^[a-zA-Z0-9]([-_a-zA-Z0-9]*[a-zA-Z0-9])?$"))
    )]
    pub outputs: Vec<String>,
}

/// One input argument: its OPC UA type, and a parameter of the command or a constant.
///
/// "Exactly one of parameter or value" is checked by the controller, not by a CEL rule: `value`
/// is an untyped scalar, which the API server's CEL type-checker cannot see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MethodInput {
    pub data_type: OpcUaDataType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub parameter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

fn default_modbus_port() -> u16 {
    502
}

fn default_unit_id() -> u8 {
    1
}

fn default_request_timeout() -> Duration {
    std::time::Duration::from_secs(1).into()
}

/// A simulated device: the agent keeps its register values in memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Simulated {
    /// Value of each property at start, by property name; unset properties start at zero/false.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub initial: BTreeMap<String, Value>,
}

/// Whether operators may write a property.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Access {
    #[default]
    ReadOnly,
    ReadWrite,
}

/// One value the equipment exposes: a measurement, a state or a setpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max", "fieldPath": ".min"},
    {"rule": "self.type != 'Bool' || (!has(self.min) && !has(self.max))", "message": "min and max apply to Int and Float properties only", "fieldPath": ".min"},
    {"rule": "!has(self.modbus) || self.access == 'ReadOnly' || self.modbus.table == 'Coil' || self.modbus.table == 'HoldingRegister'", "message": "a ReadWrite property must map to a Coil or a HoldingRegister", "fieldPath": ".modbus.table"},
    {"rule": "!has(self.modbus) || (self.type == 'Bool') == (self.modbus.table == 'Coil' || self.modbus.table == 'DiscreteInput')", "message": "Bool properties map to Coil or DiscreteInput, Int and Float properties to registers", "fieldPath": ".modbus.table"},
    {"rule": "!has(self.opcua) || (self.type == 'Bool') == (self.opcua.dataType == 'Boolean')", "message": "Bool properties map to Boolean nodes, Int and Float properties to numeric nodes", "fieldPath": ".opcua.dataType"},
    {"rule": "!has(self.opcua) || self.type != 'Float' || self.opcua.dataType == 'Float' || self.opcua.dataType == 'Double'", "message": "Float properties map to Float or Double nodes", "fieldPath": ".opcua.dataType"}
]))]
pub struct Property {
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ValueType,
    #[serde(default)]
    pub access: Access,
    /// Where the value lives in the Modbus address space (required for modbusTcp equipment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus: Option<ModbusMapping>,
    /// The variable that holds the value in the OPC UA server (required for opcua equipment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcua: Option<OpcUaNode>,
    /// Setpoint the agent writes and keeps; only for ReadWrite properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    /// Interlock: lowest value any write may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Interlock: highest value any write may set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Engineering unit for display, e.g. `degC`, `m/s`, `rpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub unit: Option<String>,
}

/// The four Modbus data tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ModbusTable {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

/// How a register value is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RegisterType {
    #[default]
    U16,
    I16,
    /// Two registers, high word first.
    U32,
    /// Two registers, high word first.
    I32,
    /// IEEE 754 single precision in two registers, high word first.
    F32,
}

/// Location and scaling of a property in the Modbus address space. The engineering value is
/// `raw * scale + offset`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.scale != 0.0", "message": "scale must not be zero", "fieldPath": ".scale"},
    {"rule": "!has(self.registerType) || self.registerType == 'U16' || self.table == 'InputRegister' || self.table == 'HoldingRegister'", "message": "registerType applies to registers only", "fieldPath": ".registerType"}
]))]
pub struct ModbusMapping {
    pub table: ModbusTable,
    /// Zero-based address in the table.
    #[schemars(range(min = 0, max = 65535))]
    pub address: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_type: Option<RegisterType>,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
}

fn one() -> f64 {
    1.0
}

/// A named operation: typed parameters and the property writes it performs, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.name != 'read' && self.name != 'write' && self.name != 'resume-fail-safe'", "message": "read, write and resume-fail-safe are built-in actions and cannot be redeclared", "fieldPath": ".name"},
    {"rule": "self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))", "message": "parameter names must be unique", "fieldPath": ".parameters"},
    {"rule": "self.writes.all(w, !has(w.parameter) || self.parameters.exists(p, p.name == w.parameter))", "message": "a write's parameter must be declared in parameters", "fieldPath": ".writes"},
    {"rule": "(size(self.writes) > 0) != has(self.method)", "message": "an action either writes properties or calls a method: set writes or method", "fieldPath": ".writes"},
    {"rule": "!has(self.method) || self.method.inputs.all(i, !has(i.parameter) || self.parameters.exists(p, p.name == i.parameter))", "message": "a method input's parameter must be declared in parameters", "fieldPath": ".method.inputs"}
]))]
pub struct Action {
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub parameters: Vec<Parameter>,
    /// The property writes the action performs, in order (or none, when it calls a method).
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub writes: Vec<ActionWrite>,
    /// The OPC UA method the action calls instead of writing properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodCall>,
    /// How long the agent may take to execute the action (Go duration, default `5s`).
    #[serde(default = "default_action_timeout")]
    #[schemars(length(max = 32))]
    pub timeout: Duration,
    /// At most this many runs of this action, on top of the equipment's own `rateLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn default_action_timeout() -> Duration {
    std::time::Duration::from_secs(5).into()
}

/// A typed action parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max", "fieldPath": ".min"},
    {"rule": "self.type != 'Bool' || (!has(self.min) && !has(self.max))", "message": "min and max apply to Int and Float parameters only", "fieldPath": ".min"}
]))]
pub struct Parameter {
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ValueType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default)]
    pub required: bool,
}

/// One property write of an action: the value comes from a parameter or is a constant.
///
/// "Exactly one of parameter or value" is checked by the controller, not by a CEL rule: `value`
/// is an untyped scalar, which the API server's CEL type-checker cannot see.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActionWrite {
    /// The ReadWrite property to write.
    #[schemars(length(min = 1, max = 63))]
    pub property: String,
    /// Take the value from this parameter of the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub parameter: Option<String>,
    /// Write this constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// Telemetry cadence (KubeEdge calls this `reportCycle`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.interval) >= duration('100ms')", "message": "interval must be at least 100ms", "fieldPath": ".interval"}
]))]
pub struct Reporting {
    /// How often properties are read and reported (Go duration, default `1s`).
    #[serde(default = "default_report_interval")]
    #[schemars(length(max = 32))]
    pub interval: Duration,
}

fn default_report_interval() -> Duration {
    std::time::Duration::from_secs(1).into()
}

impl Default for Reporting {
    fn default() -> Self {
        Self { interval: default_report_interval() }
    }
}

/// Observed state of an Equipment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EquipmentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::common::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Configuration revision whose results `applied` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// Result of applying each desired setpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub applied: Vec<PropertyApplyStatus>,
    /// Last value read from the equipment, per property.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub reported: Vec<ReportedValue>,
}

/// Outcome of applying one desired setpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApplyResult {
    /// Written and read back equal.
    Applied,
    /// Not applied yet (agent offline or retrying).
    Pending,
    /// Outside the agent's local safety envelope; never written.
    Rejected,
    /// The device refused or could not be reached.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PropertyApplyStatus {
    pub property: String,
    pub desired: Value,
    pub result: ApplyResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_back: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportedValue {
    pub property: String,
    pub value: Value,
    pub observed_at: Time,
}
