//! Equipment drivers: one module per protocol behind one trait. OPC UA fits the same trait: a
//! property is read and written by its configuration, whatever addresses it.

use std::sync::Arc;

use futures::future::BoxFuture;
use shopfloor_wire::proto::{EquipmentConfig, PropertyConfig, Value, equipment_config::Protocol};

use crate::slices::Marking;

pub mod modbus;
pub mod simulated;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("the device refused: {0}")]
    Exception(String),
    #[error("property {0} has no mapping this driver understands")]
    Unmapped(String),
    #[error("{0}")]
    Value(String),
}

/// Reads and writes one piece of equipment's properties.
pub trait Driver: Send + Sync {
    fn read<'a>(&'a self, property: &'a PropertyConfig) -> BoxFuture<'a, Result<Value, DriverError>>;
    fn write<'a>(&'a self, property: &'a PropertyConfig, value: &'a Value) -> BoxFuture<'a, Result<(), DriverError>>;
}

/// The driver for an equipment's protocol block; its connections carry `marking` when the
/// equipment's slice is steered on this host.
pub fn for_equipment(eq: &EquipmentConfig, marking: Option<Marking>) -> Result<Arc<dyn Driver>, DriverError> {
    match &eq.protocol {
        Some(Protocol::ModbusTcp(m)) => Ok(Arc::new(modbus::ModbusDriver::new(m).with_marking(marking))),
        Some(Protocol::Simulated(s)) => Ok(Arc::new(simulated::SimulatedDriver::new(eq, s))),
        None => Err(DriverError::Unmapped(format!("equipment {} has no protocol", eq.name))),
    }
}
