//! An in-process device model: each property is a register holding its last value.

use std::{collections::HashMap, sync::Mutex};

use futures::future::BoxFuture;
use shopfloor_wire::proto::{EquipmentConfig, PropertyConfig, Simulated, Value, ValueType};

use super::{Driver, DriverError};
use shopfloor_wire::value;

#[derive(Debug)]
pub struct SimulatedDriver {
    values: Mutex<HashMap<String, Value>>,
    writes: Mutex<u64>,
}

impl SimulatedDriver {
    pub fn new(eq: &EquipmentConfig, sim: &Simulated) -> Self {
        let mut values = HashMap::new();
        for p in &eq.properties {
            let zero = match p.r#type() {
                ValueType::Bool => value::bool_value(false),
                ValueType::Int => value::int_value(0),
                _ => value::float_value(0.0),
            };
            values.insert(p.name.clone(), zero);
        }
        for nv in &sim.initial {
            if let Some(v) = &nv.value {
                values.insert(nv.name.clone(), *v);
            }
        }
        Self { values: Mutex::new(values), writes: Mutex::new(0) }
    }

    /// Writes performed so far (for tests).
    pub fn writes(&self) -> u64 {
        *self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Driver for SimulatedDriver {
    fn read<'a>(&'a self, property: &'a PropertyConfig) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            self.values
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&property.name)
                .cloned()
                .ok_or_else(|| DriverError::Unmapped(property.name.clone()))
        })
    }

    fn write<'a>(&'a self, property: &'a PropertyConfig, value: &'a Value) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let v = value::coerce(value, property.r#type()).ok_or_else(|| {
                DriverError::Value(format!("{} does not fit {}", value::display(value), property.name))
            })?;
            self.values.lock().unwrap_or_else(|p| p.into_inner()).insert(property.name.clone(), v);
            *self.writes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            Ok(())
        })
    }
}
