//! End-to-end tests, benchmarks and the demo: real processes, real QUIC with mutual TLS and real
//! Modbus over sockets. `harness` starts and watches the processes, `proxy` impairs UDP between
//! them, `inprocess` runs a controller and an agent in one process, `fixtures` holds shared plants,
//! `mock_api` is a Kubernetes API server in memory and `cluster` runs controller replicas against it.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod fixtures;
pub mod fleet;
pub mod flood;
pub mod harness;
pub mod inprocess;
pub mod mock_api;
pub mod proxy;
