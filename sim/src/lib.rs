//! Simulated plant equipment for tests, benchmarks and the demo: a Modbus TCP device
//! (`modbus`, served by the `shopfloor-modbus-sim` binary) and an OPC UA machine (`opcua`,
//! served by `shopfloor-opcua-sim`). Never part of an agent's production package.
#![forbid(unsafe_code)]

pub mod modbus;
pub mod opcua;
