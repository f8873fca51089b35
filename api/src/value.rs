//! The scalar a property holds: a bool, an integer or a float.

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// A property value as an operator writes it in YAML: `true`, `42` or `21.5`.
///
/// Serialized untagged, so manifests read naturally. In the CRD schema it is an untyped scalar
/// (`x-kubernetes-preserve-unknown-fields`), because OpenAPI cannot express "bool or number" in a
/// structural schema; [`crate::validate`] checks that it matches the property's declared type.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl Value {
    /// The value as a number, for range checks; `None` for booleans.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Bool(_) => None,
            // Precision loss above 2^53 is irrelevant for limits on plant setpoints.
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
        }
    }

    /// Whether this value can be stored in a property of type `ty` without loss of meaning.
    /// Integers are accepted for float properties (`max: 10` is a fine float); floats are not
    /// accepted for integer properties.
    pub fn fits(&self, ty: crate::common::ValueType) -> bool {
        use crate::common::ValueType as T;
        matches!(
            (self, ty),
            (Value::Bool(_), T::Bool) | (Value::Int(_), T::Int | T::Float) | (Value::Float(_), T::Float)
        )
    }

    /// A short name of the value's own type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

impl JsonSchema for Value {
    fn schema_name() -> Cow<'static, str> {
        "Value".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A scalar value: a boolean, an integer or a number.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}
