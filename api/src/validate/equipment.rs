//! Equipment rules: the protocol block, properties with their Modbus or OPC UA mapping and
//! limits, actions (property writes or an OPC UA method call).

use super::*;
use crate::{
    equipment::{MethodCall, OpcUa, OpcUaSecurityMode, OpcUaSecurityPolicy, Parameter},
    value::Value,
};

pub(super) fn equipment_spec_rules(spec: &EquipmentSpec) -> Violations {
    let mut v = Violations::default();
    v.reference("spec.agentRef", &spec.agent_ref);
    if let Some(slice) = &spec.network_slice_ref {
        v.reference("spec.networkSliceRef", slice);
    }
    match [spec.modbus_tcp.is_some(), spec.opcua.is_some(), spec.simulated.is_some()].iter().filter(|b| **b).count() {
        0 => v.push("spec.modbusTcp", "exactly one protocol block must be set: add modbusTcp, opcua or simulated"),
        1 => {}
        _ => v.push(
            "spec.modbusTcp",
            "exactly one protocol block may be set: keep one of modbusTcp, opcua and simulated",
        ),
    }
    if let Some(o) = &spec.opcua {
        opcua(&mut v, o);
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
        property(&mut v, &at, p, spec.modbus_tcp.is_some(), spec.opcua.is_some());
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
        action(&mut v, &at, a, &spec.properties, spec.opcua.is_some());
        if let Some(r) = &a.rate_limit {
            rate_limit(&mut v, &format!("{at}.rateLimit"), r);
        }
    }
    v.duration_between("spec.reporting.interval", &spec.reporting.interval, MS(100), None);
    if let Some(r) = &spec.rate_limit {
        rate_limit(&mut v, "spec.rateLimit", r);
    }
    if let Some(f) = &spec.fail_safe {
        fail_safe(&mut v, f, &spec.properties);
    }
    v
}

/// A fail-safe's bounds, and each safe value against its property: ReadWrite, of its type and
/// inside its interlock limits (an agent would refuse to write it otherwise, exactly when it
/// matters).
fn fail_safe(v: &mut Violations, f: &FailSafe, properties: &[Property]) {
    v.duration_between("spec.failSafe.after", &f.after, std::time::Duration::from_millis(100), Some(SECS(3600)));
    if f.values.is_empty() {
        v.push("spec.failSafe.values", "a fail-safe must write at least one property");
    }
    v.max_items("spec.failSafe.values", f.values.len(), MAX_PROPERTIES);
    let mut seen = BTreeSet::new();
    for (i, s) in f.values.iter().enumerate() {
        let at = format!("spec.failSafe.values[{i}]");
        if !seen.insert(s.property.as_str()) {
            v.push(format!("{at}.property"), format!("`{}` has a safe value already: one per property", s.property));
        }
        match properties.iter().find(|p| p.name == s.property) {
            None => v.push(format!("{at}.property"), format!("`{}` is not a property of this equipment", s.property)),
            Some(p) if p.access != Access::ReadWrite => v.push(
                format!("{at}.property"),
                format!("property `{}` is ReadOnly: a safe value needs a ReadWrite property", p.name),
            ),
            Some(p) if !s.value.fits(p.type_) => v.push(
                format!("{at}.value"),
                format!("{} is a {} but property `{}` has type {}", s.value, s.value.type_name(), p.name, p.type_),
            ),
            Some(p) => {
                if let Some(x) = s.value.as_f64()
                    && (p.min.is_some_and(|lo| x < lo) || p.max.is_some_and(|hi| x > hi))
                {
                    v.push(
                        format!("{at}.value"),
                        format!("{} is outside the interlock limits {} of `{}`", s.value, range(p.min, p.max), p.name),
                    );
                }
            }
        }
    }
}

/// The schema's ranges of a `rateLimit`.
fn rate_limit(v: &mut Violations, at: &str, r: &RateLimit) {
    if !(1..=60_000).contains(&r.per_minute) {
        v.push(format!("{at}.perMinute"), format!("is {}; must be between 1 and 60000", r.per_minute));
    }
    if !(1..=1000).contains(&r.burst) {
        v.push(format!("{at}.burst"), format!("is {}; must be between 1 and 1000", r.burst));
    }
}

pub(super) fn limits(v: &mut Violations, at: &str, ty: ValueType, min: Option<f64>, max: Option<f64>) {
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

/// The OPC UA block: an opc.tcp URL, and security that is either fully off (chosen) or on.
fn opcua(v: &mut Violations, o: &OpcUa) {
    if !o.endpoint.starts_with("opc.tcp://") || o.endpoint.len() > 512 {
        v.push(
            "spec.opcua.endpoint",
            format!(
                "`{}` is not an opc.tcp:// URL of at most 512 characters, e.g. opc.tcp://packer-1.plant.local:4840/",
                o.endpoint
            ),
        );
    }
    if (o.security_policy == OpcUaSecurityPolicy::None) != (o.security_mode == OpcUaSecurityMode::None) {
        v.push(
            "spec.opcua.securityMode",
            format!(
                "securityPolicy {:?} with securityMode {:?}: an unsecured channel is chosen with both set to None, a secured one with neither",
                o.security_policy, o.security_mode
            ),
        );
    }
    v.duration_between("spec.opcua.timeout", &o.timeout, MS(100), Some(SECS(60)));
    v.duration_between("spec.opcua.publishingInterval", &o.publishing_interval, MS(50), Some(SECS(3600)));
}

/// `ns=<index>;<kind>=<id>` or `nsu=<uri>;<kind>=<id>`, kind one of i, s, g, b.
pub(super) fn node_id(v: &mut Violations, at: &str, id: &str) {
    let ok = id.len() <= 512
        && id.split_once(';').is_some_and(|(ns, rest)| {
            let ns_ok = match (ns.strip_prefix("ns="), ns.strip_prefix("nsu=")) {
                (Some(i), _) => !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()),
                (None, Some(uri)) => !uri.is_empty(),
                _ => false,
            };
            let id_ok = ["i=", "s=", "g=", "b="].iter().any(|k| rest.strip_prefix(k).is_some_and(|x| !x.is_empty()));
            ns_ok && id_ok
        });
    if !ok {
        v.push(at, format!("`{id}` is not an OPC UA node id: write ns=<index>;s=<id> (or i=, g=, b=), or nsu=<namespace URI>;s=<id>"));
    }
}

pub(super) fn property(v: &mut Violations, at: &str, p: &Property, modbus_equipment: bool, opcua_equipment: bool) {
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
    match &p.opcua {
        None if opcua_equipment => {
            v.push(format!("{at}.opcua"), "opcua equipment needs an opcua node for every property")
        }
        None => {}
        Some(_) if !opcua_equipment => v.push(
            format!("{at}.opcua"),
            "only opcua equipment maps properties to OPC UA nodes: remove it, or give the equipment spec.opcua",
        ),
        Some(n) => {
            node_id(v, &format!("{at}.opcua.nodeId"), &n.node_id);
            if !n.data_type.carries(p.type_) {
                v.push(
                    format!("{at}.opcua.dataType"),
                    format!("a {} property cannot map to a {:?} node: Bool maps to Boolean, Float to Float or Double, Int to the integer types", p.type_, n.data_type),
                );
            }
            if let Some(d) = n.deadband
                && !(d.is_finite() && d >= 0.0)
            {
                v.push(format!("{at}.opcua.deadband"), "must be a finite number of at least 0");
            }
            if let Some(s) = &n.sampling_interval {
                v.duration_between(&format!("{at}.opcua.samplingInterval"), s, MS(10), Some(SECS(3600)));
            }
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

pub(super) fn range(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(lo), Some(hi)) => format!("[{lo}, {hi}]"),
        (Some(lo), None) => format!(">= {lo}"),
        (None, Some(hi)) => format!("<= {hi}"),
        (None, None) => "(none)".to_owned(),
    }
}

pub(super) fn action(v: &mut Violations, at: &str, a: &Action, properties: &[Property], opcua_equipment: bool) {
    v.name(&format!("{at}.name"), &a.name);
    if a.name == ACTION_READ || a.name == ACTION_WRITE || a.name == ACTION_RESUME_FAIL_SAFE {
        v.push(
            format!("{at}.name"),
            format!("`{}` is a built-in action and cannot be redeclared; pick another name", a.name),
        );
    }
    v.max_items(&format!("{at}.parameters"), a.parameters.len(), MAX_PARAMETERS);
    v.max_items(&format!("{at}.writes"), a.writes.len(), MAX_WRITES);
    match (&a.method, a.writes.is_empty()) {
        (None, true) => v.push(format!("{at}.writes"), "an action must write at least one property or call a method"),
        (Some(_), false) => v.push(
            format!("{at}.method"),
            "an action either writes properties or calls a method, not both: remove writes or method",
        ),
        _ => {}
    }
    if let Some(m) = &a.method {
        if !opcua_equipment {
            v.push(
                format!("{at}.method"),
                "only opcua equipment has methods: remove method, or give the equipment spec.opcua",
            );
        }
        method(v, &format!("{at}.method"), m, &a.parameters);
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

/// A method call: its node ids, each input from exactly one declared parameter or constant of a
/// type its OPC UA type carries, and unique output names.
fn method(v: &mut Violations, at: &str, m: &MethodCall, parameters: &[Parameter]) {
    node_id(v, &format!("{at}.objectId"), &m.object_id);
    node_id(v, &format!("{at}.methodId"), &m.method_id);
    v.max_items(&format!("{at}.inputs"), m.inputs.len(), MAX_PARAMETERS);
    v.max_items(&format!("{at}.outputs"), m.outputs.len(), MAX_PARAMETERS);
    for (k, i) in m.inputs.iter().enumerate() {
        let iat = format!("{at}.inputs[{k}]");
        match (&i.parameter, &i.value) {
            (Some(_), Some(_)) | (None, None) => v.push(&iat, "set exactly one of parameter or value"),
            (Some(param), None) => match parameters.iter().find(|p| &p.name == param) {
                None => {
                    v.push(format!("{iat}.parameter"), format!("`{param}` is not declared in the action's parameters"))
                }
                Some(decl) if !i.data_type.carries(decl.type_) => v.push(
                    format!("{iat}.dataType"),
                    format!("parameter `{param}` is {} and cannot be passed as {:?}", decl.type_, i.data_type),
                ),
                Some(decl) if !decl.required => v.push(
                    format!("{iat}.parameter"),
                    format!("parameter `{param}` feeds a method input, which cannot be left out: make it required"),
                ),
                Some(_) => {}
            },
            (None, Some(value)) => {
                let own = match value {
                    Value::Bool(_) => ValueType::Bool,
                    Value::Int(_) => ValueType::Int,
                    Value::Float(_) => ValueType::Float,
                };
                if !i.data_type.carries(own) {
                    v.push(format!("{iat}.value"), format!("{value} cannot be passed as {:?}", i.data_type));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (k, o) in m.outputs.iter().enumerate() {
        if o.is_empty() || o.len() > 63 {
            v.push(format!("{at}.outputs[{k}]"), "must be 1 to 63 characters");
        }
        if !seen.insert(o.as_str()) {
            v.push(format!("{at}.outputs[{k}]"), format!("duplicate output name `{o}`"));
        }
    }
}
