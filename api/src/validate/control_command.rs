//! ControlCommand rules, alone and against the Equipment it targets.

use super::{equipment::range, *};

pub(super) fn control_command_spec_rules(spec: &ControlCommandSpec) -> Violations {
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
        // Allowed whether or not the Equipment declares a fail-safe: the plant's envelope may
        // require one the cloud does not know of.
        ACTION_RESUME_FAIL_SAFE => {
            for key in cmd.parameters.keys() {
                push(
                    C::InvalidParameter,
                    format!("spec.parameters.{key}"),
                    format!("the {ACTION_RESUME_FAIL_SAFE} action takes no parameters"),
                );
            }
        }
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
                let known: Vec<&str> = eq
                    .actions
                    .iter()
                    .map(|a| a.name.as_str())
                    .chain([ACTION_WRITE, ACTION_READ, ACTION_RESUME_FAIL_SAFE])
                    .collect();
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

pub(super) fn check_value(
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

pub(super) fn check_param(
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
