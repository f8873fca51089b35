//! The Shopfloor controller: a planner from CRDs to per-agent configuration, the command engine,
//! the stores (Kubernetes and standalone folder) and the QUIC endpoint.
//!
//! - `planner`: objects in, per-agent plans out (pure).
//! - `engine`: the ControlCommand lifecycle (pure, `engine::lifecycle`) and its driver.
//! - `reconcile`: the per-object reconcile steps both stores share.
//! - `store`: the `Store` trait with the Kubernetes, folder and in-memory implementations.
//! - `registry`, `observed`, `status`, `status_writer`, `conditions`: agents' sessions and reports
//!   and how they become status.
//! - `enrollment` (bootstrap tokens), `leader` (Lease election), `metrics` (health and Prometheus).
#![forbid(unsafe_code)]

pub mod conditions;
pub mod endpoint;
pub mod engine;
pub mod enrollment;
pub mod kube_controllers;
pub mod leader;
pub mod log_limit;
pub mod metrics;
pub mod observed;
pub mod planner;
pub mod reconcile;
pub mod registry;
pub mod selector;
pub mod standalone;
pub mod status;
pub mod status_writer;
pub mod store;
