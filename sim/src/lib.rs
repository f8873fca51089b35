//! Simulated plant equipment for tests, benchmarks and the demo: a Modbus TCP device
//! (`modbus`, served by the `shopfloor-modbus-sim` binary). Never part of an agent's
//! production package.
#![forbid(unsafe_code)]

pub mod modbus;
