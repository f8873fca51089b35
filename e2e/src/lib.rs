//! End-to-end tests, benchmarks and the demo: real processes, real QUIC with mutual TLS and real
//! Modbus over sockets. `harness` starts and watches the processes, `proxy` impairs UDP between
//! them, `inprocess` runs a controller and an agent in one process, `fixtures` holds shared plants.
#![forbid(unsafe_code)]

pub mod fixtures;
pub mod fleet;
pub mod flood;
pub mod harness;
pub mod inprocess;
pub mod proxy;
