//! How what the controller knows becomes the status of EdgeAgents, Equipment and
//! NetworkSlices: `build` computes each status (pure), `conditions` keeps their conditions'
//! transition times honest, `writer` coalesces and records them through the store.

pub mod build;
pub mod conditions;
pub mod writer;
