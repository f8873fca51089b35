//! Shopfloor's Kubernetes API, `shopfloor.io/v1alpha1`: the four custom resources operators
//! write (EdgeAgent, Equipment, NetworkSlice, ControlCommand), the validation rules the API
//! server and every Shopfloor component enforce, and reading them from YAML manifests.
//!
//! This crate knows nothing about the wire protocol; the controller's planner is the one place
//! that maps these types onto it.
#![forbid(unsafe_code)]
// kube's `printcolumn(...)` attributes repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

pub mod bitrate;
pub mod common;
pub mod contract;
pub mod control_command;
pub mod crds;
pub mod edge_agent;
pub mod equipment;
pub mod manifest;
pub mod network_slice;
pub mod object;
pub mod validate;
pub mod value;

pub use common::{API_VERSION, Condition, Duration, GROUP, LocalRef, VERSION, ValueType};
pub use control_command::{ControlCommand, ControlCommandSpec, ControlCommandStatus};
pub use edge_agent::{EdgeAgent, EdgeAgentSpec, EdgeAgentStatus};
pub use equipment::{Equipment, EquipmentSpec, EquipmentStatus};
pub use network_slice::{NetworkSlice, NetworkSliceSpec, NetworkSliceStatus};
pub use validate::{Invalid, Validate, Violation};
pub use value::Value;
