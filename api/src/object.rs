//! One Shopfloor object of any of the four kinds: what a manifest holds and validation checks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    control_command::ControlCommand, edge_agent::EdgeAgent, equipment::Equipment, network_slice::NetworkSlice,
};

/// One Shopfloor object read from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    EdgeAgent(EdgeAgent),
    Equipment(Equipment),
    NetworkSlice(NetworkSlice),
    ControlCommand(ControlCommand),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::EdgeAgent(_) => "EdgeAgent",
            Object::Equipment(_) => "Equipment",
            Object::NetworkSlice(_) => "NetworkSlice",
            Object::ControlCommand(_) => "ControlCommand",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::EdgeAgent(o) => &o.metadata,
            Object::Equipment(o) => &o.metadata,
            Object::NetworkSlice(o) => &o.metadata,
            Object::ControlCommand(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }
}
