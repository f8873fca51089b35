//! The Shopfloor controller. Pure decisions in the middle, thin shells at the edges:
//!
//! - `planner`, `selector`: objects in, per-agent plans out (pure, no wire or Kubernetes types).
//! - `engine`: the ControlCommand lifecycle (pure, `engine::lifecycle`) and its driver.
//! - `status`: how plans, connections and reports become each object's status, and the
//!   coalescing writer that records them.
//! - `agents`: the agent port (a session, a dispatch, its replies), the registry of connected
//!   agents, what they reported, and the book of EdgeAgents with their certificates and tokens.
//! - `reconcile`: the per-object reconcile steps both stores share.
//! - `translate`: the one adapter between API (CRD) types and wire messages.
//! - `endpoint`: the QUIC shell agents dial, driving `shopfloor_wire::conversation`.
//! - `store`: the `Store` port and an in-memory store; `kube`: the Kubernetes adapter
//!   (controllers, leader election, store); `standalone`: the folder store and its loop.
//! - `enrollment` (bootstrap tokens), `metrics` (health and Prometheus), `log_limit`.
#![forbid(unsafe_code)]

pub mod agents;
pub mod endpoint;
pub mod engine;
pub mod enrollment;
pub mod kube;
pub mod link_budget;
pub mod log_limit;
pub mod metrics;
pub mod planner;
pub mod reconcile;
pub mod selector;
pub mod standalone;
pub mod status;
pub mod store;
pub mod translate;
