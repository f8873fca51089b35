//! The validation rules of the CRD schema and its CEL rules, in Rust.
//!
//! The controller, the standalone folder mode and the CLI run these so that they refuse exactly
//! the objects an API server would refuse, and they report every violation at once with the
//! field path, so an operator can fix a manifest in one pass. A few rules the API server cannot
//! express (a value's type against the property's declared type, bit rates, cross-object
//! references) are only here; they are marked as such.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::{collections::BTreeSet, fmt, time::Duration as StdDuration};

use crate::{
    bitrate::Bitrate,
    common::{Duration, LocalRef, NAME_MAX, ValueType},
    control_command::{
        ACTION_READ, ACTION_WRITE, ControlCommand, ControlCommandSpec, MAX_PRECONDITIONS, ParameterValue,
    },
    edge_agent::{EdgeAgent, EdgeAgentSpec},
    equipment::{
        Access, Action, Equipment, EquipmentSpec, MAX_ACTIONS, MAX_PARAMETERS, MAX_PROPERTIES, MAX_WRITES, ModbusTable,
        Property, RegisterType,
    },
    network_slice::{NetworkSlice, NetworkSliceSpec},
    object::Object,
};

/// One broken rule: where, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON path from the object root, e.g. `spec.properties[2].max`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// An object that failed validation, with every violation found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    pub kind: &'static str,
    /// `namespace/name`, or just `name` when the manifest has no namespace.
    pub object: String,
    pub violations: Vec<Violation>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} is invalid:", self.kind, self.object)?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

/// Validation of a whole object, metadata included.
pub trait Validate {
    fn validate(&self) -> Result<(), Invalid>;
}

fn object_id(meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn finish(kind: &'static str, meta: &ObjectMeta, mut v: Violations) -> Result<(), Invalid> {
    v.metadata(meta);
    if v.0.is_empty() { Ok(()) } else { Err(Invalid { kind, object: object_id(meta), violations: v.0 }) }
}

impl Validate for EdgeAgent {
    fn validate(&self) -> Result<(), Invalid> {
        finish("EdgeAgent", &self.metadata, edge_agent_spec_rules(&self.spec))
    }
}

impl Validate for Equipment {
    fn validate(&self) -> Result<(), Invalid> {
        finish("Equipment", &self.metadata, equipment_spec_rules(&self.spec))
    }
}

impl Validate for NetworkSlice {
    fn validate(&self) -> Result<(), Invalid> {
        finish("NetworkSlice", &self.metadata, network_slice_spec_rules(&self.spec))
    }
}

impl Validate for ControlCommand {
    fn validate(&self) -> Result<(), Invalid> {
        finish("ControlCommand", &self.metadata, control_command_spec_rules(&self.spec))
    }
}

/// Collects violations; `at` builds the field path.
#[derive(Default)]
struct Violations(Vec<Violation>);

impl Violations {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Violation { field: field.into(), message: message.into() });
    }

    fn metadata(&mut self, meta: &ObjectMeta) {
        match meta.name.as_deref() {
            None | Some("") => self.push("metadata.name", "is required"),
            Some(name) => self.name("metadata.name", name),
        }
        if let Some(ns) = meta.namespace.as_deref() {
            self.name("metadata.namespace", ns);
        }
    }

    /// A DNS-1123 label: the form every name Shopfloor refers to must have.
    fn name(&mut self, field: &str, value: &str) {
        if !is_dns_label(value) {
            self.push(
                field,
                format!(
                    "`{value}` is not a valid name: use at most {NAME_MAX} lower-case letters, digits and '-', starting and ending with a letter or digit"
                ),
            );
        }
    }

    fn reference(&mut self, field: &str, r: &LocalRef) {
        if r.name.is_empty() {
            self.push(format!("{field}.name"), "is required");
        } else {
            self.name(&format!("{field}.name"), &r.name);
        }
    }

    fn max_items(&mut self, field: &str, len: usize, max: usize) {
        if len > max {
            self.push(field, format!("has {len} items; at most {max} are allowed"));
        }
    }

    fn max_len(&mut self, field: &str, value: &str, max: usize) {
        if value.chars().count() > max {
            self.push(field, format!("is {} characters long; at most {max} are allowed", value.chars().count()));
        }
    }

    fn duration_between(&mut self, field: &str, d: &Duration, min: StdDuration, max: Option<StdDuration>) {
        let too_small = d.is_negative() || *d < min;
        let too_large = max.is_some_and(|max| *d > max);
        if too_small || too_large {
            let range = match max {
                Some(max) => format!("between {} and {}", go(min), go(max)),
                None => format!("at least {}", go(min)),
            };
            self.push(field, format!("is {d}; it must be {range}"));
        }
    }
}

/// A Go-style duration string for messages, e.g. `100ms`, `10m0s`.
fn go(d: StdDuration) -> String {
    Duration::from(d).to_string()
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

const MS: fn(u64) -> StdDuration = StdDuration::from_millis;
const SECS: fn(u64) -> StdDuration = StdDuration::from_secs;

fn edge_agent_spec_rules(spec: &EdgeAgentSpec) -> Violations {
    let mut v = Violations::default();
    let site_ok = !spec.site.is_empty()
        && spec.site.len() <= 128
        && spec.site.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-./".contains(&b))
        && spec.site.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && spec.site.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !site_ok {
        v.push(
            "spec.site",
            format!(
                "`{}` is not a site: use lower-case letters, digits, '-', '.' and '/', e.g. `plant-a/line-1`",
                spec.site
            ),
        );
    }
    let cert = &spec.certificate;
    v.duration_between("spec.certificate.duration", &cert.duration, SECS(600), None);
    if cert.renew_before >= cert.duration {
        v.push(
            "spec.certificate.renewBefore",
            format!("is {} but must be shorter than spec.certificate.duration ({})", cert.renew_before, cert.duration),
        );
    }
    let hb = &spec.heartbeat;
    v.duration_between("spec.heartbeat.interval", &hb.interval, MS(100), None);
    if hb.interval >= hb.timeout {
        v.push(
            "spec.heartbeat.interval",
            format!("is {} but must be shorter than spec.heartbeat.timeout ({})", hb.interval, hb.timeout),
        );
    }
    v
}

fn equipment_spec_rules(spec: &EquipmentSpec) -> Violations {
    let mut v = Violations::default();
    v.reference("spec.agentRef", &spec.agent_ref);
    if let Some(slice) = &spec.network_slice_ref {
        v.reference("spec.networkSliceRef", slice);
    }
    match (&spec.modbus_tcp, &spec.simulated) {
        (Some(_), Some(_)) => {
            v.push("spec.modbusTcp", "exactly one protocol block may be set: remove modbusTcp or simulated")
        }
        (None, None) => v.push("spec.modbusTcp", "exactly one protocol block must be set: add modbusTcp or simulated"),
        _ => {}
    }
    if let Some(m) = &spec.modbus_tcp {
        if m.host.is_empty() || m.host.len() > 253 {
            v.push("spec.modbusTcp.host", "must be a host name or IP address of at most 253 characters");
        }
        if m.port == 0 {
            v.push("spec.modbusTcp.port", "must be between 1 and 65535");
        }
        v.duration_between("spec.modbusTcp.timeout", &m.timeout, MS(10), Some(SECS(60)));
    }
    v.max_items("spec.properties", spec.properties.len(), MAX_PROPERTIES);
    v.max_items("spec.actions", spec.actions.len(), MAX_ACTIONS);

    let mut seen = BTreeSet::new();
    for (i, p) in spec.properties.iter().enumerate() {
        let at = format!("spec.properties[{i}]");
        if !seen.insert(p.name.as_str()) {
            v.push(
                format!("{at}.name"),
                format!("duplicate property name `{}`: property names must be unique", p.name),
            );
        }
        property(&mut v, &at, p, spec.modbus_tcp.is_some());
    }
    if let Some(sim) = &spec.simulated {
        if sim.initial.len() > MAX_PROPERTIES {
            v.push(
                "spec.simulated.initial",
                format!("has {} entries; at most {MAX_PROPERTIES} are allowed", sim.initial.len()),
            );
        }
        for (name, value) in &sim.initial {
            let at = format!("spec.simulated.initial.{name}");
            match spec.properties.iter().find(|p| &p.name == name) {
                None => v.push(
                    at,
                    format!("`{name}` is not a declared property; declare it in spec.properties or remove it"),
                ),
                Some(p) if !value.fits(p.type_) => {
                    v.push(at, format!("is a {} but property `{name}` has type {}", value.type_name(), p.type_))
                }
                Some(_) => {}
            }
        }
    }

    let mut seen = BTreeSet::new();
    for (i, a) in spec.actions.iter().enumerate() {
        let at = format!("spec.actions[{i}]");
        if !seen.insert(a.name.as_str()) {
            v.push(format!("{at}.name"), format!("duplicate action name `{}`: action names must be unique", a.name));
        }
        action(&mut v, &at, a, &spec.properties);
    }
    v.duration_between("spec.reporting.interval", &spec.reporting.interval, MS(100), None);
    v
}

fn limits(v: &mut Violations, at: &str, ty: ValueType, min: Option<f64>, max: Option<f64>) {
    for (field, x) in [("min", min), ("max", max)] {
        if let Some(x) = x {
            if ty == ValueType::Bool {
                v.push(format!("{at}.{field}"), "min and max apply to Int and Float only; remove it");
            } else if !x.is_finite() {
                v.push(format!("{at}.{field}"), "must be a finite number");
            }
        }
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        v.push(format!("{at}.min"), format!("min ({lo}) must not exceed max ({hi})"));
    }
}

fn property(v: &mut Violations, at: &str, p: &Property, modbus_equipment: bool) {
    v.name(&format!("{at}.name"), &p.name);
    limits(v, at, p.type_, p.min, p.max);
    if let Some(unit) = &p.unit {
        v.max_len(&format!("{at}.unit"), unit, 16);
    }
    if let Some(d) = &p.desired {
        let field = format!("{at}.desired");
        if p.access != Access::ReadWrite {
            v.push(&field, format!("property `{}` is ReadOnly: set access: ReadWrite or remove desired", p.name));
        }
        if !d.fits(p.type_) {
            v.push(&field, format!("{d} is a {} but property `{}` has type {}", d.type_name(), p.name, p.type_));
        } else if let Some(x) = d.as_f64()
            && (p.min.is_some_and(|lo| x < lo) || p.max.is_some_and(|hi| x > hi))
        {
            v.push(&field, format!("{d} is outside the interlock limits {}", range(p.min, p.max)));
        }
    }
    match &p.modbus {
        None if modbus_equipment => {
            v.push(format!("{at}.modbus"), "modbusTcp equipment needs a modbus mapping for every property")
        }
        None => {}
        Some(m) => {
            let field = format!("{at}.modbus.table");
            let bit_table = matches!(m.table, ModbusTable::Coil | ModbusTable::DiscreteInput);
            if p.access == Access::ReadWrite && !matches!(m.table, ModbusTable::Coil | ModbusTable::HoldingRegister) {
                v.push(
                    &field,
                    format!(
                        "{:?} is read-only in Modbus: a ReadWrite property maps to Coil or HoldingRegister",
                        m.table
                    ),
                );
            }
            if (p.type_ == ValueType::Bool) != bit_table {
                v.push(
                    &field,
                    format!("a {} property cannot map to {:?}: Bool maps to Coil or DiscreteInput, Int and Float to registers", p.type_, m.table),
                );
            }
            if m.scale == 0.0 || !m.scale.is_finite() {
                v.push(format!("{at}.modbus.scale"), "must be a non-zero finite number");
            }
            if !m.offset.is_finite() {
                v.push(format!("{at}.modbus.offset"), "must be a finite number");
            }
            if bit_table && m.register_type.is_some_and(|t| t != RegisterType::U16) {
                v.push(format!("{at}.modbus.registerType"), "applies to registers only; remove it");
            }
        }
    }
}

fn range(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("[{lo}, {hi}]"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => "(none)".to_owned(),
    }
}

fn action(v: &mut Violations, at: &str, a: &Action, properties: &[Property]) {
    v.name(&format!("{at}.name"), &a.name);
    if a.name == ACTION_READ || a.name == ACTION_WRITE {
        v.push(
            format!("{at}.name"),
            format!("`{}` is a built-in action and cannot be redeclared; pick another name", a.name),
        );
    }
    v.max_items(&format!("{at}.parameters"), a.parameters.len(), MAX_PARAMETERS);
    v.max_items(&format!("{at}.writes"), a.writes.len(), MAX_WRITES);
    if a.writes.is_empty() {
        v.push(format!("{at}.writes"), "an action must write at least one property");
    }
    v.duration_between(&format!("{at}.timeout"), &a.timeout, MS(10), Some(SECS(3600)));
    let mut seen = BTreeSet::new();
    for (j, p) in a.parameters.iter().enumerate() {
        let pat = format!("{at}.parameters[{j}]");
        v.name(&format!("{pat}.name"), &p.name);
        if !seen.insert(p.name.as_str()) {
            v.push(format!("{pat}.name"), format!("duplicate parameter name `{}`", p.name));
        }
        limits(v, &pat, p.type_, p.min, p.max);
    }
    for (j, w) in a.writes.iter().enumerate() {
        let wat = format!("{at}.writes[{j}]");
        let target = properties.iter().find(|p| p.name == w.property);
        match target {
            None => v.push(format!("{wat}.property"), format!("`{}` is not a property of this equipment", w.property)),
            Some(p) if p.access != Access::ReadWrite => v.push(
                format!("{wat}.property"),
                format!("property `{}` is ReadOnly: an action can only write ReadWrite properties", p.name),
            ),
            Some(_) => {}
        }
        match (&w.parameter, &w.value) {
            (Some(_), Some(_)) | (None, None) => v.push(&wat, "set exactly one of parameter or value"),
            (Some(param), None) => match a.parameters.iter().find(|p| &p.name == param) {
                None => v.push(format!("{wat}.parameter"), format!("`{param}` is not declared in {at}.parameters")),
                Some(decl) => {
                    if let Some(t) = target
                        && decl.type_ != t.type_
                        && !(decl.type_ == ValueType::Int && t.type_ == ValueType::Float)
                    {
                        v.push(
                            format!("{wat}.parameter"),
                            format!(
                                "parameter `{param}` has type {} but property `{}` has type {}",
                                decl.type_, t.name, t.type_
                            ),
                        );
                    }
                }
            },
            (None, Some(value)) => {
                if let Some(t) = target {
                    if !value.fits(t.type_) {
                        v.push(
                            format!("{wat}.value"),
                            format!(
                                "{value} is a {} but property `{}` has type {}",
                                value.type_name(),
                                t.name,
                                t.type_
                            ),
                        );
                    } else if let Some(x) = value.as_f64()
                        && (t.min.is_some_and(|lo| x < lo) || t.max.is_some_and(|hi| x > hi))
                    {
                        v.push(
                            format!("{wat}.value"),
                            format!("{value} is outside the interlock limits {} of `{}`", range(t.min, t.max), t.name),
                        );
                    }
                }
            }
        }
    }
}

/// 5QIs of GBR and delay-critical GBR resource type (TS 23.501 table 5.7.4-1).
pub const GBR_FIVE_QIS: [u8; 22] = [1, 2, 3, 4, 65, 66, 67, 71, 72, 73, 74, 75, 76, 82, 83, 84, 85, 86, 87, 88, 89, 90];

fn network_slice_spec_rules(spec: &NetworkSliceSpec) -> Violations {
    let mut v = Violations::default();
    if spec.snssai.sst == 0 {
        v.push("spec.snssai.sst", "must be between 1 and 255 (1 eMBB, 2 URLLC, 3 MIoT, 4 V2X)");
    }
    if let Some(sd) = &spec.snssai.sd
        && !(sd.len() == 6 && sd.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        v.push(
            "spec.snssai.sd",
            format!("`{sd}` is not a slice differentiator: write exactly 6 hex digits, e.g. `00A001`"),
        );
    }
    let dnn_ok = !spec.dnn.is_empty()
        && spec.dnn.len() <= 100
        && spec.dnn.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && spec.dnn.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && spec.dnn.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !dnn_ok {
        v.push(
            "spec.dnn",
            format!(
                "`{}` is not a data network name: use letters, digits, '-' and '.', e.g. `plant-control`",
                spec.dnn
            ),
        );
    }
    let qos = &spec.qos;
    if qos.five_qi == 0 {
        v.push("spec.qos.fiveQi", "must be between 1 and 255");
    }
    if !(1..=15).contains(&qos.arp.priority_level) {
        v.push(
            "spec.qos.arp.priorityLevel",
            format!("is {}; it must be between 1 (highest) and 15 (lowest)", qos.arp.priority_level),
        );
    }
    if GBR_FIVE_QIS.contains(&qos.five_qi) && qos.gbr.is_none() {
        v.push("spec.qos.gbr", format!("5QI {} has a GBR resource type: set qos.gbr uplink and downlink", qos.five_qi));
    }
    let mut rates = [[None, None], [None, None]];
    for (k, (name, limits)) in [("gbr", &qos.gbr), ("mbr", &qos.mbr)].into_iter().enumerate() {
        if let Some(l) = limits {
            for (d, (dir, s)) in [("uplink", &l.uplink), ("downlink", &l.downlink)].into_iter().enumerate() {
                match s.parse::<Bitrate>() {
                    Ok(b) => rates[k][d] = Some(b),
                    Err(e) => v.push(format!("spec.qos.{name}.{dir}"), e.to_string()),
                }
            }
        }
    }
    // Only checkable here: the API server cannot compare quantity strings.
    for (d, dir) in ["uplink", "downlink"].into_iter().enumerate() {
        if let (Some(g), Some(m)) = (rates[0][d], rates[1][d])
            && g > m
        {
            v.push(format!("spec.qos.gbr.{dir}"), format!("GBR ({g}) must not exceed MBR ({m})"));
        }
    }
    if let Some(pdb) = &qos.packet_delay_budget {
        v.duration_between("spec.qos.packetDelayBudget", pdb, MS(1), Some(SECS(10)));
    }
    if let Some(per) = &qos.packet_error_rate {
        let b = per.as_bytes();
        let ok = b.len() == 4 && (b'1'..=b'9').contains(&b[0]) && &b[1..3] == b"e-" && (b'1'..=b'9').contains(&b[3]);
        if !ok {
            v.push(
                "spec.qos.packetErrorRate",
                format!("`{per}` is not a packet error rate: write scalar e-exponent with single digits, e.g. `1e-5`"),
            );
        }
    }
    let st = &spec.steering;
    let iface_ok = !st.interface.is_empty()
        && st.interface.len() <= 15
        && st.interface.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !iface_ok {
        v.push(
            "spec.steering.interface",
            format!("`{}` is not a Linux interface name (at most 15 characters)", st.interface),
        );
    }
    if !(1..=252).contains(&st.routing_table) {
        v.push(
            "spec.steering.routingTable",
            format!("is {}; use a table between 1 and 252 (253-255 are the kernel's)", st.routing_table),
        );
    }
    if st.fwmark == 0 {
        v.push("spec.steering.fwmark", "must be non-zero: mark 0 is unmarked traffic");
    }
    if let Some(dscp) = st.dscp
        && dscp > 63
    {
        v.push("spec.steering.dscp", format!("is {dscp}; DSCP is 0-63"));
    }
    v
}

fn control_command_spec_rules(spec: &ControlCommandSpec) -> Violations {
    let mut v = Violations::default();
    v.reference("spec.equipmentRef", &spec.equipment_ref);
    v.name("spec.action", &spec.action);
    v.duration_between("spec.timeout", &spec.timeout, MS(100), Some(SECS(24 * 3600)));
    v.max_items("spec.preconditions", spec.preconditions.len(), MAX_PRECONDITIONS);
    if spec.parameters.len() > 16 {
        v.push("spec.parameters", format!("has {} entries; at most 16 are allowed", spec.parameters.len()));
    }
    let needs: &[&str] = match spec.action.as_str() {
        ACTION_WRITE => &["property", "value"],
        ACTION_READ => &["property"],
        _ => &[],
    };
    for key in needs {
        if !spec.parameters.contains_key(*key) {
            v.push(format!("spec.parameters.{key}"), format!("the {} action needs parameter `{key}`", spec.action));
        }
    }
    if needs.contains(&"property")
        && let Some(p) = spec.parameters.get("property")
        && p.as_name().is_none()
    {
        v.push("spec.parameters.property", format!("{p} is not a property name"));
    }
    if let Some(ttl) = spec.ttl_seconds_after_finished
        && ttl < 0
    {
        v.push("spec.ttlSecondsAfterFinished", "must not be negative");
    }
    v
}

/// Why a command does not fit its equipment: the result code the command ends with, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandViolation {
    pub code: crate::control_command::ResultCode,
    pub violation: Violation,
}

/// Checks a command against the Equipment it targets: the action exists, parameters are declared,
/// typed and inside the declared ranges and the properties' interlock limits, and preconditions
/// name existing properties with values of the right type. An agent repeats these checks with
/// its local safety envelope on top; this catches mistakes before anything is sent.
pub fn command_against_equipment(cmd: &ControlCommandSpec, eq: &EquipmentSpec) -> Vec<CommandViolation> {
    use crate::control_command::ResultCode as C;
    let mut out = Vec::new();
    let mut push = |code, field: String, message: String| {
        out.push(CommandViolation { code, violation: Violation { field, message } })
    };
    let property = |name: &str| eq.properties.iter().find(|p| p.name == name);
    let equipment = &cmd.equipment_ref.name;

    match cmd.action.as_str() {
        ACTION_WRITE | ACTION_READ => {
            let name = cmd.parameters.get("property").and_then(ParameterValue::as_name);
            if let Some(name) = name {
                match property(name) {
                    None => push(
                        C::UnknownProperty,
                        "spec.parameters.property".into(),
                        format!("equipment {equipment} has no property `{name}`"),
                    ),
                    Some(p) if cmd.action == ACTION_WRITE => {
                        if p.access != Access::ReadWrite {
                            push(
                                C::InvalidParameter,
                                "spec.parameters.property".into(),
                                format!("property `{name}` of {equipment} is ReadOnly"),
                            );
                        }
                        if let Some(value) = cmd.parameters.get("value") {
                            check_value(&mut push, "spec.parameters.value", value, p.type_, p);
                        }
                    }
                    Some(_) => {}
                }
            }
            for key in cmd.parameters.keys().filter(|k| !matches!(k.as_str(), "property" | "value")) {
                push(
                    C::InvalidParameter,
                    format!("spec.parameters.{key}"),
                    format!("the {} action takes no parameter `{key}`", cmd.action),
                );
            }
        }
        name => match eq.actions.iter().find(|a| a.name == name) {
            None => {
                let known: Vec<&str> =
                    eq.actions.iter().map(|a| a.name.as_str()).chain([ACTION_WRITE, ACTION_READ]).collect();
                push(
                    C::UnknownAction,
                    "spec.action".into(),
                    format!("equipment {equipment} has no action `{name}`; it has: {}", known.join(", ")),
                );
            }
            Some(action) => {
                for key in cmd.parameters.keys() {
                    if !action.parameters.iter().any(|p| &p.name == key) {
                        push(
                            C::InvalidParameter,
                            format!("spec.parameters.{key}"),
                            format!("action `{name}` has no parameter `{key}`"),
                        );
                    }
                }
                for decl in &action.parameters {
                    let field = format!("spec.parameters.{}", decl.name);
                    match cmd.parameters.get(&decl.name) {
                        None if decl.required => push(
                            C::InvalidParameter,
                            field,
                            format!("action `{name}` requires parameter `{}`", decl.name),
                        ),
                        None => {}
                        Some(value) => {
                            // Interlock limits of every property the parameter is written to apply too.
                            let targets: Vec<&Property> = action
                                .writes
                                .iter()
                                .filter(|w| w.parameter.as_deref() == Some(decl.name.as_str()))
                                .filter_map(|w| property(&w.property))
                                .collect();
                            check_param(&mut push, &field, value, decl, &targets);
                        }
                    }
                }
            }
        },
    }
    for (i, pre) in cmd.preconditions.iter().enumerate() {
        let at = format!("spec.preconditions[{i}]");
        match property(&pre.property) {
            None => push(
                C::UnknownProperty,
                format!("{at}.property"),
                format!("equipment {equipment} has no property `{}`", pre.property),
            ),
            Some(p) if !pre.value.fits(p.type_) => push(
                C::InvalidParameter,
                format!("{at}.value"),
                format!("{} is a {} but property `{}` has type {}", pre.value, pre.value.type_name(), p.name, p.type_),
            ),
            Some(p)
                if p.type_ == ValueType::Bool
                    && !matches!(
                        pre.operator,
                        crate::control_command::Operator::Equal | crate::control_command::Operator::NotEqual
                    ) =>
            {
                push(
                    C::InvalidParameter,
                    format!("{at}.operator"),
                    format!("Bool property `{}` can only be compared with Equal or NotEqual", p.name),
                )
            }
            Some(_) => {}
        }
    }
    out
}

fn check_value(
    push: &mut impl FnMut(crate::control_command::ResultCode, String, String),
    field: &str,
    value: &ParameterValue,
    ty: ValueType,
    target: &Property,
) {
    use crate::control_command::ResultCode as C;
    let Some(value) = value.as_value() else {
        push(C::InvalidParameter, field.into(), format!("{value} is not a {ty}"));
        return;
    };
    if !value.fits(ty) {
        push(C::InvalidParameter, field.into(), format!("{value} is a {} but {ty} is required", value.type_name()));
        return;
    }
    let Some(x) = value.as_f64() else { return };
    if target.min.is_some_and(|lo| x < lo) || target.max.is_some_and(|hi| x > hi) {
        push(
            C::OutOfLimits,
            field.into(),
            format!(
                "{value} is outside the interlock limits {} of property `{}`",
                range(target.min, target.max),
                target.name
            ),
        );
    }
}

fn check_param(
    push: &mut impl FnMut(crate::control_command::ResultCode, String, String),
    field: &str,
    value: &ParameterValue,
    decl: &crate::equipment::Parameter,
    targets: &[&Property],
) {
    use crate::control_command::ResultCode as C;
    let Some(v) = value.as_value() else {
        push(C::InvalidParameter, field.into(), format!("{value} is not a {}", decl.type_));
        return;
    };
    if !v.fits(decl.type_) {
        push(
            C::InvalidParameter,
            field.into(),
            format!("{v} is a {} but parameter `{}` is {}", v.type_name(), decl.name, decl.type_),
        );
        return;
    }
    if let Some(x) = v.as_f64()
        && (decl.min.is_some_and(|lo| x < lo) || decl.max.is_some_and(|hi| x > hi))
    {
        push(
            C::InvalidParameter,
            field.into(),
            format!("{v} is outside the declared range {} of parameter `{}`", range(decl.min, decl.max), decl.name),
        );
    }
    for target in targets {
        if let Some(x) = v.as_f64()
            && (target.min.is_some_and(|lo| x < lo) || target.max.is_some_and(|hi| x > hi))
        {
            push(
                C::OutOfLimits,
                field.into(),
                format!(
                    "{v} is outside the interlock limits {} of property `{}`",
                    range(target.min, target.max),
                    target.name
                ),
            );
        }
    }
}

/// Violations of an EdgeAgent spec alone; paths start at `spec`.
pub fn edge_agent_spec(spec: &EdgeAgentSpec) -> Vec<Violation> {
    edge_agent_spec_rules(spec).0
}

/// Violations of an Equipment spec alone; paths start at `spec`.
pub fn equipment_spec(spec: &EquipmentSpec) -> Vec<Violation> {
    equipment_spec_rules(spec).0
}

/// Violations of a NetworkSlice spec alone; paths start at `spec`.
pub fn network_slice_spec(spec: &NetworkSliceSpec) -> Vec<Violation> {
    network_slice_spec_rules(spec).0
}

/// Violations of a ControlCommand spec alone; paths start at `spec`. Whether the action and
/// parameters fit the target equipment is [`command_against_equipment`].
pub fn control_command_spec(spec: &ControlCommandSpec) -> Vec<Violation> {
    control_command_spec_rules(spec).0
}

/// Cross-object checks over a set of objects, as a folder of manifests or a namespace holds
/// them: every Equipment's agent and slice exist, and every ControlCommand targets existing
/// equipment and fits it. The API server cannot check these; the controller reports them as
/// conditions, and `kubectl shopfloor validate` as errors.
pub fn references(objects: &[Object]) -> Vec<Invalid> {
    let find = |kind: &str, ns: Option<&str>, name: &str| {
        objects.iter().find(|o| o.kind() == kind && o.namespace() == ns && o.name() == name)
    };
    let mut out = Vec::new();
    for obj in objects {
        let mut v = Violations::default();
        match obj {
            Object::Equipment(eq) => {
                let ns = obj.namespace();
                if find("EdgeAgent", ns, &eq.spec.agent_ref.name).is_none() {
                    v.push(
                        "spec.agentRef.name",
                        format!("EdgeAgent `{}` does not exist in this namespace", eq.spec.agent_ref.name),
                    );
                }
                if let Some(s) = &eq.spec.network_slice_ref
                    && find("NetworkSlice", ns, &s.name).is_none()
                {
                    v.push(
                        "spec.networkSliceRef.name",
                        format!("NetworkSlice `{}` does not exist in this namespace", s.name),
                    );
                }
            }
            Object::ControlCommand(cmd) => match find("Equipment", obj.namespace(), &cmd.spec.equipment_ref.name) {
                Some(Object::Equipment(eq)) => {
                    v.0.extend(command_against_equipment(&cmd.spec, &eq.spec).into_iter().map(|c| c.violation));
                }
                _ => v.push(
                    "spec.equipmentRef.name",
                    format!("Equipment `{}` does not exist in this namespace", cmd.spec.equipment_ref.name),
                ),
            },
            _ => {}
        }
        if !v.0.is_empty() {
            out.push(Invalid { kind: obj.kind(), object: object_id(obj.metadata()), violations: v.0 });
        }
    }
    out
}

impl Object {
    /// Runs [`Validate`] on the object.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            Object::EdgeAgent(o) => o.validate(),
            Object::Equipment(o) => o.validate(),
            Object::NetworkSlice(o) => o.validate(),
            Object::ControlCommand(o) => o.validate(),
        }
    }
}
