//! The Shopfloor controller: a planner from CRDs to per-agent configuration, the command engine,
//! the stores (Kubernetes and standalone folder) and the QUIC endpoint.
//!
//! Being built under issue #5. What exists: the command lifecycle (`engine::lifecycle`).
#![forbid(unsafe_code)]

pub mod conditions;
pub mod engine;
pub mod enrollment;
pub mod leader;
pub mod metrics;
pub mod observed;
pub mod planner;
pub mod registry;
pub mod selector;
pub mod status;
pub mod status_writer;
pub mod store;
