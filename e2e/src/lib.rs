//! End-to-end tests, benchmarks and the demo: real processes, real QUIC with mutual TLS and real
//! Modbus over sockets. The scenarios and the demo are being built under issue #6; what exists
//! is the UDP impairment proxy they use.
#![forbid(unsafe_code)]

pub mod harness;
pub mod inprocess;
pub mod proxy;
