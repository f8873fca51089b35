//! Types shared by every Shopfloor resource.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Kubernetes metadata types these CRDs embed, re-exported so their users need not name
/// k8s-openapi.
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, MicroTime, ObjectMeta, Time,
};
pub use kube::core::Duration;

/// The API group of every Shopfloor resource.
pub const GROUP: &str = "shopfloor.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "shopfloor.io/v1alpha1";
/// The `kubectl get shopfloor` category every resource belongs to.
pub const CATEGORY: &str = "shopfloor";

/// Names of other objects in the same namespace, and of properties, actions and parameters, are
/// DNS-1123 labels (lower case, digits and `-`), so they can double as label values and file names.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Longest allowed name (a DNS-1123 label).
pub const NAME_MAX: usize = 63;

/// A reference to another object in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRef {
    /// Name of the referenced object.
    #[schemars(length(min = 1, max = 63), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

impl LocalRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// The declared type of a property or action parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ValueType {
    Bool,
    Int,
    Float,
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueType::Bool => "Bool",
            ValueType::Int => "Int",
            ValueType::Float => "Float",
        })
    }
}

/// The standard condition types Shopfloor sets.
pub mod condition_type {
    /// The object is valid, reconciled and (for agents) connected.
    pub const READY: &str = "Ready";
    /// The object passed validation; `False` carries the field and the reason.
    pub const VALID: &str = "Valid";
    /// The desired configuration has been applied by the agent.
    pub const APPLIED: &str = "Applied";
    /// The agent's clock is within a second of the controller's.
    pub const CLOCK_SYNCHRONIZED: &str = "ClockSynchronized";
    /// The control link's estimated one-way delay is within the packet delay budget of the
    /// slice the equipment rides on.
    pub const LINK_WITHIN_BUDGET: &str = "LinkWithinBudget";
    /// The equipment's dead-man fail-safe has engaged: the agent wrote its safe values and
    /// holds the desired setpoints back until it is resumed.
    pub const FAIL_SAFE: &str = "FailSafe";
}

/// Keeps `conditions` a list-map keyed by `type`, so server-side apply merges one condition at a
/// time instead of replacing the list.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition> as JsonSchema>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema.insert("maxItems".into(), 16.into());
    schema
}
