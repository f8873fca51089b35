//! The planner: from the current objects, what each EdgeAgent must hold — its Equipment and the
//! NetworkSlices selecting it — with a content hash and a revision derived from it.
//!
//! Pure: no I/O, no clock, no randomness. The same objects always give the same plans, in the
//! same order, so a restarted controller computes the revisions its agents already hold and
//! sends them nothing. This is the one place where CRD types become wire messages.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use shopfloor_api::{EdgeAgent, Equipment, EquipmentSpec, NetworkSlice, NetworkSliceSpec, Validate};

use crate::{selector, store::ObjectKey};

/// What one agent must hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentPlan {
    #[serde(skip)]
    pub agent: ObjectKey,
    /// Equipment driven by the agent, by name.
    pub equipment: BTreeMap<String, EquipmentSpec>,
    /// Slices selecting the agent, by name.
    pub slices: BTreeMap<String, NetworkSliceSpec>,
    /// SHA-256 of the plan's canonical JSON, hex.
    #[serde(skip)]
    pub hash: String,
}

impl AgentPlan {
    /// The revision agents and statuses show: the first 16 hex digits of the hash.
    pub fn revision(&self) -> &str {
        &self.hash[..16]
    }
}

/// Why an object is not (fully) part of any plan; becomes a condition on the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    pub key: ObjectKey,
    /// CamelCase reason for the condition.
    pub reason: &'static str,
    pub message: String,
}

/// All plans, and the problems found on the way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plans {
    pub agents: BTreeMap<ObjectKey, AgentPlan>,
    /// Agents each slice selects.
    pub slice_agents: BTreeMap<ObjectKey, Vec<ObjectKey>>,
    pub problems: Vec<Problem>,
}

impl Plans {
    pub fn problems_of(&self, kind: &str, key: &ObjectKey) -> impl Iterator<Item = &Problem> {
        let key = key.clone();
        let kind = kind.to_owned();
        self.problems.iter().filter(move |p| p.kind == kind && p.key == key)
    }
}

/// Computes every agent's plan.
pub fn plan(agents: &[EdgeAgent], equipment: &[Equipment], slices: &[NetworkSlice]) -> Plans {
    let mut out = Plans::default();
    for a in agents {
        let key = ObjectKey::of(&a.metadata);
        out.agents.insert(
            key.clone(),
            AgentPlan { agent: key, equipment: BTreeMap::new(), slices: BTreeMap::new(), hash: String::new() },
        );
    }

    for s in slices {
        let key = ObjectKey::of(&s.metadata);
        if let Err(invalid) = s.validate() {
            out.problems.push(Problem { kind: "NetworkSlice", key, reason: "Invalid", message: invalid.to_string() });
            continue;
        }
        let mut selected = Vec::new();
        for a in agents {
            let akey = ObjectKey::of(&a.metadata);
            if akey.namespace != key.namespace {
                continue;
            }
            let labels = a.metadata.labels.clone().unwrap_or_default();
            match selector::matches(&s.spec.agent_selector, &labels) {
                Ok(true) => selected.push(akey),
                Ok(false) => {}
                Err(e) => {
                    out.problems.push(Problem {
                        kind: "NetworkSlice",
                        key: key.clone(),
                        reason: "InvalidSelector",
                        message: e.to_string(),
                    });
                    selected.clear();
                    break;
                }
            }
        }
        selected.sort();
        for akey in &selected {
            if let Some(p) = out.agents.get_mut(akey) {
                p.slices.insert(key.name.clone(), s.spec.clone());
            }
        }
        out.slice_agents.insert(key, selected);
    }

    for e in equipment {
        let key = ObjectKey::of(&e.metadata);
        if let Err(invalid) = e.validate() {
            out.problems.push(Problem { kind: "Equipment", key, reason: "Invalid", message: invalid.to_string() });
            continue;
        }
        let akey = ObjectKey::new(key.namespace.clone(), e.spec.agent_ref.name.clone());
        let Some(p) = out.agents.get_mut(&akey) else {
            out.problems.push(Problem {
                kind: "Equipment",
                key,
                reason: "AgentNotFound",
                message: format!("spec.agentRef.name: EdgeAgent {akey} does not exist; create it or fix the reference"),
            });
            continue;
        };
        if let Some(slice) = &e.spec.network_slice_ref
            && !p.slices.contains_key(&slice.name)
        {
            out.problems.push(Problem {
                kind: "Equipment",
                key: key.clone(),
                reason: "SliceNotSelected",
                message: format!(
                    "spec.networkSliceRef.name: NetworkSlice {}/{} does not exist or does not select EdgeAgent {}; its traffic is not steered",
                    key.namespace, slice.name, akey.name
                ),
            });
        }
        p.equipment.insert(key.name.clone(), e.spec.clone());
    }

    out.problems.sort_by(|a, b| (a.kind, &a.key, a.reason).cmp(&(b.kind, &b.key, b.reason)));
    for p in out.agents.values_mut() {
        let canonical = serde_json::to_vec(&*p).expect("plans always serialize");
        p.hash = hex::encode(Sha256::digest(canonical));
    }
    out
}

// ------------------------------------------------------------------ CRD types → wire messages

use shopfloor_api::{
    Value,
    bitrate::Bitrate,
    common::ValueType,
    control_command::{ControlCommandSpec, Operator, ParameterValue},
    equipment::{Access, ModbusTable, RegisterType},
};
use shopfloor_wire::proto;

fn value(v: Value) -> proto::Value {
    use proto::value::Kind;
    proto::Value {
        kind: Some(match v {
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Int(i) => Kind::IntValue(i),
            Value::Float(f) => Kind::FloatValue(f),
        }),
    }
}

/// A wire value back into the API's, for statuses.
pub fn from_wire_value(v: &proto::Value) -> Option<Value> {
    use proto::value::Kind;
    Some(match v.kind? {
        Kind::BoolValue(b) => Value::Bool(b),
        Kind::IntValue(i) => Value::Int(i),
        Kind::FloatValue(f) => Value::Float(f),
    })
}

fn value_type(t: ValueType) -> proto::ValueType {
    match t {
        ValueType::Bool => proto::ValueType::Bool,
        ValueType::Int => proto::ValueType::Int,
        ValueType::Float => proto::ValueType::Float,
    }
}

fn millis(d: &shopfloor_api::Duration) -> u64 {
    let d: std::time::Duration = (*d).into();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn bps(s: &str) -> u64 {
    s.parse::<Bitrate>().map(|b| b.0).unwrap_or(0)
}

fn equipment(name: &str, spec: &EquipmentSpec) -> proto::EquipmentConfig {
    use proto::equipment_config::Protocol;
    let protocol = match (&spec.modbus_tcp, &spec.simulated) {
        (Some(m), _) => Some(Protocol::ModbusTcp(proto::ModbusTcp {
            host: m.host.clone(),
            port: u32::from(m.port),
            unit_id: u32::from(m.unit_id),
            timeout_ms: millis(&m.timeout),
        })),
        (None, Some(s)) => Some(Protocol::Simulated(proto::Simulated {
            initial: s
                .initial
                .iter()
                .map(|(k, v)| proto::NamedValue { name: k.clone(), value: Some(value(*v)) })
                .collect(),
        })),
        (None, None) => None,
    };
    proto::EquipmentConfig {
        name: name.to_owned(),
        protocol,
        properties: spec
            .properties
            .iter()
            .map(|p| proto::PropertyConfig {
                name: p.name.clone(),
                r#type: value_type(p.type_) as i32,
                writable: p.access == Access::ReadWrite,
                modbus: p.modbus.as_ref().map(|m| proto::ModbusMapping {
                    table: match m.table {
                        ModbusTable::Coil => proto::ModbusTable::Coil,
                        ModbusTable::DiscreteInput => proto::ModbusTable::DiscreteInput,
                        ModbusTable::InputRegister => proto::ModbusTable::InputRegister,
                        ModbusTable::HoldingRegister => proto::ModbusTable::HoldingRegister,
                    } as i32,
                    address: u32::from(m.address),
                    register_type: match m.register_type.unwrap_or_default() {
                        RegisterType::U16 => proto::RegisterType::U16,
                        RegisterType::I16 => proto::RegisterType::I16,
                        RegisterType::U32 => proto::RegisterType::U32,
                        RegisterType::I32 => proto::RegisterType::I32,
                        RegisterType::F32 => proto::RegisterType::F32,
                    } as i32,
                    scale: m.scale,
                    offset: m.offset,
                }),
                desired: p.desired.map(value),
                min: p.min,
                max: p.max,
                unit: p.unit.clone().unwrap_or_default(),
            })
            .collect(),
        actions: spec
            .actions
            .iter()
            .map(|a| proto::ActionConfig {
                name: a.name.clone(),
                parameters: a
                    .parameters
                    .iter()
                    .map(|p| proto::ParameterConfig {
                        name: p.name.clone(),
                        r#type: value_type(p.type_) as i32,
                        min: p.min,
                        max: p.max,
                        required: p.required,
                    })
                    .collect(),
                writes: a
                    .writes
                    .iter()
                    .map(|w| proto::ActionWrite {
                        property: w.property.clone(),
                        source: match (&w.parameter, w.value) {
                            (Some(p), _) => Some(proto::action_write::Source::Parameter(p.clone())),
                            (None, Some(v)) => Some(proto::action_write::Source::Value(value(v))),
                            (None, None) => None,
                        },
                    })
                    .collect(),
                timeout_ms: millis(&a.timeout),
            })
            .collect(),
        reporting_interval_ms: millis(&spec.reporting.interval),
        slice: spec.network_slice_ref.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
    }
}

fn slice(name: &str, spec: &NetworkSliceSpec) -> proto::SliceConfig {
    let q = &spec.qos;
    proto::SliceConfig {
        name: name.to_owned(),
        sst: u32::from(spec.snssai.sst),
        sd: spec.snssai.sd.clone().unwrap_or_default(),
        dnn: spec.dnn.clone(),
        five_qi: u32::from(q.five_qi),
        gbr_uplink_bps: q.gbr.as_ref().map_or(0, |g| bps(&g.uplink)),
        gbr_downlink_bps: q.gbr.as_ref().map_or(0, |g| bps(&g.downlink)),
        mbr_uplink_bps: q.mbr.as_ref().map_or(0, |m| bps(&m.uplink)),
        mbr_downlink_bps: q.mbr.as_ref().map_or(0, |m| bps(&m.downlink)),
        interface: spec.steering.interface.clone(),
        routing_table: spec.steering.routing_table,
        fwmark: spec.steering.fwmark,
        dscp: spec.steering.dscp.map(u32::from),
    }
}

/// The ApplyConfig message for a plan.
pub fn apply_config(plan: &AgentPlan) -> proto::ApplyConfig {
    proto::ApplyConfig {
        revision: plan.revision().to_owned(),
        content_hash: plan.hash.clone(),
        equipment: plan.equipment.iter().map(|(n, s)| equipment(n, s)).collect(),
        slices: plan.slices.iter().map(|(n, s)| slice(n, s)).collect(),
    }
}

/// The Command message for a ControlCommand.
pub fn command(id: &str, spec: &ControlCommandSpec, deadline_unix_micros: i64, traceparent: &str) -> proto::Command {
    proto::Command {
        id: id.to_owned(),
        equipment: spec.equipment_ref.name.clone(),
        action: spec.action.clone(),
        parameters: spec
            .parameters
            .iter()
            .map(|(k, v)| proto::Parameter {
                name: k.clone(),
                kind: Some(match v {
                    ParameterValue::Scalar(x) => proto::parameter::Kind::Value(value(*x)),
                    ParameterValue::Name(n) => proto::parameter::Kind::Text(n.clone()),
                }),
            })
            .collect(),
        deadline_unix_micros,
        // Stamped by the session at the moment it sends.
        budget_micros: 0,
        dry_run: spec.dry_run,
        traceparent: traceparent.to_owned(),
        preconditions: spec
            .preconditions
            .iter()
            .map(|p| proto::Precondition {
                property: p.property.clone(),
                operator: match p.operator {
                    Operator::Equal => proto::Operator::Equal,
                    Operator::NotEqual => proto::Operator::NotEqual,
                    Operator::LessThan => proto::Operator::LessThan,
                    Operator::LessThanOrEqual => proto::Operator::LessThanOrEqual,
                    Operator::GreaterThan => proto::Operator::GreaterThan,
                    Operator::GreaterThanOrEqual => proto::Operator::GreaterThanOrEqual,
                } as i32,
                value: Some(value(p.value)),
            })
            .collect(),
    }
}

/// The API's result code for a wire result code.
pub fn result_code(code: proto::ResultCode) -> shopfloor_api::control_command::ResultCode {
    use proto::ResultCode as W;
    use shopfloor_api::control_command::ResultCode as C;
    match code {
        W::Ok => C::Ok,
        W::DryRunOk => C::DryRunOk,
        W::UnknownEquipment => C::UnknownEquipment,
        W::UnknownAction => C::UnknownAction,
        W::UnknownProperty => C::UnknownProperty,
        W::InvalidParameter => C::InvalidParameter,
        W::OutOfLimits => C::OutOfLimits,
        W::OutOfEnvelope => C::OutOfEnvelope,
        W::PreconditionFailed => C::PreconditionFailed,
        W::DeadlineExceeded => C::DeadlineExceeded,
        W::AgentOffline => C::AgentOffline,
        W::DeviceError => C::DeviceError,
        W::Internal | W::Unspecified => C::Internal,
    }
}

/// The API's apply result for a wire one.
pub fn apply_result(r: proto::ApplyResult) -> shopfloor_api::equipment::ApplyResult {
    use shopfloor_api::equipment::ApplyResult as A;
    match r {
        proto::ApplyResult::Applied => A::Applied,
        proto::ApplyResult::Rejected => A::Rejected,
        proto::ApplyResult::Failed => A::Failed,
        proto::ApplyResult::Pending | proto::ApplyResult::Unspecified => A::Pending,
    }
}
