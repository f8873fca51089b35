//! The equipment this agent drives: the registry of what is installed (`registry`) and the
//! drivers that reach each protocol (`drivers`). Configuration apply installs into the registry;
//! commands and telemetry look equipment up in it.

pub mod drivers;
pub mod registry;
