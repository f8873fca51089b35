//! Property values as the protocol carries them: construction, type checks, conversion and
//! display, the same for every reader of the protocol. A boolean is not a number here, as in the
//! API's `Value`: `as_f64` of a boolean is `None`; a driver that stores a boolean in a register
//! says so with [`as_register_number`].

use crate::proto::{Operator, Value, ValueType, value::Kind};

pub fn bool_value(b: bool) -> Value {
    Value { kind: Some(Kind::BoolValue(b)) }
}

pub fn int_value(i: i64) -> Value {
    Value { kind: Some(Kind::IntValue(i)) }
}

pub fn float_value(f: f64) -> Value {
    Value { kind: Some(Kind::FloatValue(f)) }
}

/// The value as a number; `None` for a boolean, which is not one.
pub fn as_f64(v: &Value) -> Option<f64> {
    match v.kind? {
        Kind::BoolValue(_) => None,
        Kind::IntValue(i) => Some(i as f64),
        Kind::FloatValue(f) => Some(f),
    }
}

/// The number a register holds for `v`: a boolean is stored as 1 or 0.
pub fn as_register_number(v: &Value) -> Option<f64> {
    as_f64(v).or_else(|| as_bool(v).map(|b| if b { 1.0 } else { 0.0 }))
}

pub fn as_bool(v: &Value) -> Option<bool> {
    match v.kind? {
        Kind::BoolValue(b) => Some(b),
        _ => None,
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v.kind {
        Some(Kind::BoolValue(_)) => "bool",
        Some(Kind::IntValue(_)) => "int",
        Some(Kind::FloatValue(_)) => "float",
        None => "empty",
    }
}

/// Whether `v` can be stored in a property of type `ty` (ints are fine for floats).
pub fn fits(v: &Value, ty: ValueType) -> bool {
    matches!(
        (v.kind, ty),
        (Some(Kind::BoolValue(_)), ValueType::Bool)
            | (Some(Kind::IntValue(_)), ValueType::Int | ValueType::Float)
            | (Some(Kind::FloatValue(_)), ValueType::Float)
    )
}

/// `v` converted to the property's type (an int written to a float property becomes a float).
pub fn coerce(v: &Value, ty: ValueType) -> Option<Value> {
    match (v.kind?, ty) {
        (Kind::BoolValue(b), ValueType::Bool) => Some(bool_value(b)),
        (Kind::IntValue(i), ValueType::Int) => Some(int_value(i)),
        (Kind::IntValue(i), ValueType::Float) => Some(float_value(i as f64)),
        (Kind::FloatValue(f), ValueType::Float) => Some(float_value(f)),
        _ => None,
    }
}

pub fn display(v: &Value) -> String {
    match v.kind {
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::IntValue(i)) => i.to_string(),
        Some(Kind::FloatValue(f)) => f.to_string(),
        None => "(none)".into(),
    }
}

/// Whether two values are equal for read-back: numbers compare with a tolerance of half the
/// register resolution a scaled property can represent.
pub fn same(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (as_bool(a), as_bool(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => (x - y).abs() <= tolerance.max(1e-9),
            _ => false,
        },
    }
}

/// How an operator is written in messages.
pub fn symbol(op: Operator) -> &'static str {
    match op {
        Operator::Equal => "==",
        Operator::NotEqual => "!=",
        Operator::LessThan => "<",
        Operator::LessThanOrEqual => "<=",
        Operator::GreaterThan => ">",
        Operator::GreaterThanOrEqual => ">=",
        Operator::Unspecified => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boolean_is_not_a_number_but_a_register_holds_it_as_one() {
        assert_eq!(as_f64(&bool_value(true)), None);
        assert_eq!(as_register_number(&bool_value(true)), Some(1.0));
        assert_eq!(as_register_number(&bool_value(false)), Some(0.0));
        assert_eq!(as_f64(&int_value(3)), Some(3.0));
        assert!(!same(&bool_value(true), &int_value(1), 0.5), "true is not 1");
    }
}
