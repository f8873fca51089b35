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
        ACTION_RESUME_FAIL_SAFE, Access, Action, Equipment, EquipmentSpec, FailSafe, MAX_ACTIONS, MAX_PARAMETERS,
        MAX_PROPERTIES, MAX_WRITES, ModbusTable, Property, RateLimit, RegisterType,
    },
    network_slice::{NetworkSlice, NetworkSliceSpec},
    object::Object,
};

mod control_command;
mod edge_agent;
mod equipment;
mod network_slice;

use control_command::control_command_spec_rules;
pub use control_command::{CommandViolation, command_against_equipment};
use edge_agent::edge_agent_spec_rules;
use equipment::equipment_spec_rules;
pub use network_slice::GBR_FIVE_QIS;
use network_slice::network_slice_spec_rules;

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
