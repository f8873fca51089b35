//! Equipment drivers: one module per protocol behind one trait. A property is read and written
//! by its configuration, whatever addresses it; OPC UA adds method calls and values the device
//! pushes (subscriptions), which the other drivers refuse or leave to polling.

use std::sync::Arc;

use futures::future::BoxFuture;
use shopfloor_wire::proto::{EquipmentConfig, MethodCall, PropertyConfig, Value, equipment_config::Protocol};

use crate::slices::Marking;

pub mod modbus;
pub mod opcua;
pub mod simulated;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The request was sent and no answer came in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The request was sent and its answer lost (the connection broke before it came).
    #[error("the answer was lost: {0}")]
    Lost(String),
    #[error("the device refused: {0}")]
    Exception(String),
    #[error("property {0} has no mapping this driver understands")]
    Unmapped(String),
    #[error("{0}")]
    Value(String),
    /// The secure channel cannot be opened as configured (trust, policy, identity).
    #[error("{0}")]
    Security(String),
    #[error("{0}")]
    Unsupported(String),
}

impl DriverError {
    /// Whether a write or a call that failed so may have been carried out by the device all the
    /// same: it was sent, and no answer says either way.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Lost(_))
    }
}

/// A value the device pushed (an OPC UA data change), or why it could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub property: String,
    pub value: Result<Value, DriverError>,
}

/// Reads and writes one piece of equipment's properties.
pub trait Driver: Send + Sync {
    fn read<'a>(&'a self, property: &'a PropertyConfig) -> BoxFuture<'a, Result<Value, DriverError>>;
    fn write<'a>(&'a self, property: &'a PropertyConfig, value: &'a Value) -> BoxFuture<'a, Result<(), DriverError>>;

    /// Calls a device method with `inputs` in order; its outputs, in the order `method.outputs`
    /// names them.
    fn call<'a>(
        &'a self,
        method: &'a MethodCall,
        inputs: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Value>, DriverError>> {
        let _ = inputs;
        Box::pin(
            async move { Err(DriverError::Unsupported(format!("{}: this protocol has no methods", method.method_id))) },
        )
    }

    /// Has the device push the values of `properties` to `to` as they change, across
    /// reconnections. `false`: this driver has no such thing and its properties are polled.
    fn subscribe<'a>(
        &'a self,
        properties: &'a [PropertyConfig],
        to: tokio::sync::mpsc::Sender<Pushed>,
    ) -> BoxFuture<'a, Result<bool, DriverError>> {
        let _ = (properties, to);
        Box::pin(async { Ok(false) })
    }
}

/// The driver for an equipment's protocol block; its connections carry `marking` when the
/// equipment's slice is steered on this host. OPC UA sessions use the host's `site`.
pub fn for_equipment(
    eq: &EquipmentConfig,
    marking: Option<Marking>,
    site: &Arc<opcua::Site>,
) -> Result<Arc<dyn Driver>, DriverError> {
    match &eq.protocol {
        Some(Protocol::ModbusTcp(m)) => Ok(Arc::new(modbus::ModbusDriver::new(m).with_marking(marking))),
        Some(Protocol::Opcua(o)) if site.pki_dir.as_os_str().is_empty() => Err(DriverError::Security(format!(
            "equipment {} speaks OPC UA ({}), but this agent has no OPC UA PKI folder configured (opcua.pkiDir in its configuration)",
            eq.name, o.endpoint_url
        ))),
        Some(Protocol::Opcua(o)) => {
            Ok(Arc::new(opcua::OpcUaDriver::new(&eq.name, o, site.clone()).with_marking(marking)))
        }
        Some(Protocol::Simulated(s)) => Ok(Arc::new(simulated::SimulatedDriver::new(eq, s))),
        None => Err(DriverError::Unmapped(format!("equipment {} has no protocol", eq.name))),
    }
}
