//! The Shopfloor controller: a planner from CRDs to per-agent configuration, the command engine,
//! the stores (Kubernetes and standalone folder) and the QUIC endpoint.
//!
//! Being built under issue #5; nothing here runs yet. The CRD generator lives with the types in
//! `shopfloor-api` (`cargo run -p shopfloor-api --bin crdgen`).
#![forbid(unsafe_code)]
