//! End-to-end tests, benchmarks and the demo: real processes, real QUIC with mutual TLS and real
//! Modbus over sockets. Being built under issue #6.
#![forbid(unsafe_code)]
