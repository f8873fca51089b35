//! How what the controller knows becomes the status of EdgeAgents, Equipment and
//! NetworkSlices: `build` computes each status (pure), `conditions` keeps their conditions'
//! transition times honest, `link` says whether the control link meets its slices' delay
//! budgets, `fail_safe` whether an Equipment's dead-man fail-safe is engaged, `events` which
//! of their changes are published as Events.
//! `store::status_writer` records them.

pub mod build;
pub mod conditions;
pub mod events;
pub mod fail_safe;
pub mod link;
