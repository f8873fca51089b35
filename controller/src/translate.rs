//! The one adapter between the API's types and the wire protocol's: a plan becomes an
//! ApplyConfig, a ControlCommand a Command; an agent's ConfigApplied, CommandResult and Report
//! become the controller's own reports. Nothing else in the controller builds or reads a protobuf
//! message's fields.

use std::collections::BTreeMap;

use jiff::Timestamp;

use shopfloor_api::{
    EquipmentSpec, NetworkSliceSpec, Value,
    bitrate::Bitrate,
    common::ValueType,
    control_command::{Operator, ParameterValue},
    equipment::{Access, ModbusTable, RegisterType},
};
use shopfloor_wire::proto;

use crate::{
    agents::{
        observed::{AppliedReport, FailSafeReport, PropertyResult, Reading},
        port::{Dispatch, Outcome},
    },
    planner::AgentPlan,
};

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
fn from_wire_value(v: &proto::Value) -> Option<Value> {
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
        (None, None) if spec.opcua.is_some() => spec.opcua.as_ref().map(|o| Protocol::Opcua(opcua(o))),
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
                opcua: p.opcua.as_ref().map(|n| proto::OpcUaNode {
                    node_id: n.node_id.clone(),
                    data_type: opcua_type(n.data_type) as i32,
                    sampling_interval_ms: n.sampling_interval.as_ref().map_or(millis(&spec.reporting.interval), millis),
                    deadband: n.deadband.unwrap_or(0.0),
                }),
            })
            .collect(),
        actions: spec
            .actions
            .iter()
            .map(|a| proto::ActionConfig {
                method: a.method.as_ref().map(method),
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
                rate_limit: a.rate_limit.map(proto_rate_limit),
            })
            .collect(),
        reporting_interval_ms: millis(&spec.reporting.interval),
        slice: spec.network_slice_ref.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
        rate_limit: spec.rate_limit.map(proto_rate_limit),
        fail_safe: spec.fail_safe.as_ref().map(|f| proto::FailSafe {
            after_ms: millis(&f.after),
            values: f
                .values
                .iter()
                .map(|v| proto::NamedValue { name: v.property.clone(), value: Some(value(v.value)) })
                .collect(),
            resume_automatic: f.resume == shopfloor_api::equipment::Resume::Automatic,
        }),
    }
}

fn opcua(o: &shopfloor_api::equipment::OpcUa) -> proto::OpcUa {
    use shopfloor_api::equipment::{OpcUaSecurityMode as M, OpcUaSecurityPolicy as P};
    proto::OpcUa {
        endpoint_url: o.endpoint.clone(),
        security_policy: match o.security_policy {
            P::None => proto::OpcUaSecurityPolicy::None,
            P::Basic256Sha256 => proto::OpcUaSecurityPolicy::Basic256Sha256,
            P::Aes128Sha256RsaOaep => proto::OpcUaSecurityPolicy::Aes128Sha256RsaOaep,
        } as i32,
        security_mode: match o.security_mode {
            M::None => proto::OpcUaSecurityMode::None,
            M::Sign => proto::OpcUaSecurityMode::Sign,
            M::SignAndEncrypt => proto::OpcUaSecurityMode::SignAndEncrypt,
        } as i32,
        timeout_ms: millis(&o.timeout),
        publishing_interval_ms: millis(&o.publishing_interval),
    }
}

fn opcua_type(t: shopfloor_api::equipment::OpcUaDataType) -> proto::OpcUaDataType {
    use shopfloor_api::equipment::OpcUaDataType as T;
    match t {
        T::Boolean => proto::OpcUaDataType::Boolean,
        T::SByte => proto::OpcUaDataType::Sbyte,
        T::Byte => proto::OpcUaDataType::Byte,
        T::Int16 => proto::OpcUaDataType::Int16,
        T::UInt16 => proto::OpcUaDataType::Uint16,
        T::Int32 => proto::OpcUaDataType::Int32,
        T::UInt32 => proto::OpcUaDataType::Uint32,
        T::Int64 => proto::OpcUaDataType::Int64,
        T::UInt64 => proto::OpcUaDataType::Uint64,
        T::Float => proto::OpcUaDataType::Float,
        T::Double => proto::OpcUaDataType::Double,
    }
}

fn method(m: &shopfloor_api::equipment::MethodCall) -> proto::MethodCall {
    proto::MethodCall {
        object_id: m.object_id.clone(),
        method_id: m.method_id.clone(),
        inputs: m
            .inputs
            .iter()
            .map(|i| proto::MethodArgument {
                data_type: opcua_type(i.data_type) as i32,
                source: match (&i.parameter, i.value) {
                    (Some(p), _) => Some(proto::method_argument::Source::Parameter(p.clone())),
                    (None, Some(v)) => Some(proto::method_argument::Source::Value(value(v))),
                    (None, None) => None,
                },
            })
            .collect(),
        outputs: m.outputs.clone(),
    }
}

fn proto_rate_limit(r: shopfloor_api::equipment::RateLimit) -> proto::RateLimit {
    proto::RateLimit { per_minute: r.per_minute, burst: r.burst }
}

/// The limit the controller's engine enforces, for an Equipment's or an action's `rateLimit`.
pub fn rate_limit(r: shopfloor_api::equipment::RateLimit) -> shopfloor_wire::rate::RateLimit {
    shopfloor_wire::rate::RateLimit { per_minute: r.per_minute, burst: r.burst }
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

/// The Command message for a dispatch; its budget is stamped by the conversation as it leaves.
pub fn command(d: &Dispatch) -> proto::Command {
    let spec = &d.spec;
    proto::Command {
        id: d.id.clone(),
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
        deadline_unix_micros: d.deadline.as_microsecond(),
        budget_micros: 0,
        dry_run: spec.dry_run,
        traceparent: d.traceparent.clone(),
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
fn result_code(code: proto::ResultCode) -> shopfloor_api::control_command::ResultCode {
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
        W::RateLimited => C::RateLimited,
        W::FailSafeEngaged => C::FailSafeEngaged,
        W::Internal | W::Unspecified => C::Internal,
    }
}

/// The API's apply result for a wire one.
fn apply_result(r: proto::ApplyResult) -> shopfloor_api::equipment::ApplyResult {
    use shopfloor_api::equipment::ApplyResult as A;
    match r {
        proto::ApplyResult::Applied => A::Applied,
        proto::ApplyResult::Rejected => A::Rejected,
        proto::ApplyResult::Failed => A::Failed,
        proto::ApplyResult::Pending | proto::ApplyResult::Unspecified => A::Pending,
    }
}

/// What an agent's ConfigApplied says, in the controller's terms.
pub fn applied_report(a: &proto::ConfigApplied) -> AppliedReport {
    AppliedReport {
        revision: a.revision.clone(),
        at: Timestamp::from_microsecond(a.applied_at_unix_micros).ok(),
        equipment: a
            .equipment
            .iter()
            .map(|e| {
                (
                    e.equipment.clone(),
                    e.properties
                        .iter()
                        .filter_map(|p| {
                            Some(PropertyResult {
                                property: p.property.clone(),
                                desired: from_wire_value(p.desired.as_ref()?)?,
                                result: apply_result(p.result()),
                                message: Some(p.message.clone()).filter(|m| !m.is_empty()),
                                read_back: p.read_back.as_ref().and_then(from_wire_value),
                            })
                        })
                        .collect(),
                )
            })
            .collect(),
        slices: a
            .slices
            .iter()
            .map(|s| (s.slice.clone(), if s.ok { Ok(()) } else { Err(s.message.clone()) }))
            .collect(),
    }
}

/// The failures a ConfigApplied reports, one line each (`equipment.property: why`).
pub fn apply_failures(a: &proto::ConfigApplied) -> Vec<String> {
    a.equipment
        .iter()
        .flat_map(|e| {
            e.properties
                .iter()
                .filter(|p| p.result() != proto::ApplyResult::Applied)
                .map(move |p| format!("{}.{}: {}", e.equipment, p.property, p.message))
        })
        .chain(a.slices.iter().filter(|s| !s.ok).map(|s| format!("slice {}: {}", s.slice, s.message)))
        .collect()
}

/// An agent's CommandResult as the engine's outcome.
pub fn outcome(r: &proto::CommandResult) -> Outcome {
    let ts = |us: i64| (us > 0).then(|| Timestamp::from_microsecond(us).ok()).flatten();
    Outcome {
        code: result_code(r.code()),
        message: r.message.clone(),
        outputs: r.outputs.iter().filter_map(|o| Some((o.name.clone(), from_wire_value(o.value.as_ref()?)?))).collect(),
        received_at: ts(r.received_unix_micros),
        started_at: ts(r.started_unix_micros),
        finished_at: ts(r.finished_unix_micros),
    }
}

/// A report's fail-safes by equipment name.
pub fn fail_safes(report: &proto::Report) -> BTreeMap<String, FailSafeReport> {
    report
        .fail_safes
        .iter()
        .map(|f| {
            (
                f.equipment.clone(),
                FailSafeReport {
                    engaged: f.engaged,
                    after: std::time::Duration::from_millis(f.after_ms),
                    automatic: f.resume_automatic,
                    required_by_envelope: f.required_by_envelope,
                    message: f.message.clone(),
                    unconfirmed: f.engaged && f.safe_state_unconfirmed,
                },
            )
        })
        .collect()
}

/// A report's readings by equipment name; readings without a value or a valid time are skipped.
pub fn readings(report: proto::Report) -> BTreeMap<String, Vec<(String, Reading)>> {
    let mut by_eq: BTreeMap<String, Vec<(String, Reading)>> = BTreeMap::new();
    for r in report.readings {
        let (Some(v), Ok(at)) =
            (r.value.as_ref().and_then(from_wire_value), Timestamp::from_microsecond(r.observed_unix_micros))
        else {
            continue;
        };
        by_eq.entry(r.equipment).or_default().push((r.property, Reading { value: v, at }));
    }
    by_eq
}
