//! The Shopfloor edge agent: keeps a plant host's equipment at its desired configuration and
//! executes remote-control commands safely, with or without the controller.
//!
//! - `state`: the only module that touches the state directory (atomic writes only);
//! - `clock`: deadlines on the monotonic clock, the controller's clock offset;
//! - `journal`: exactly-once command execution under redelivery, across restarts;
//! - `equipment`: the registry of installed equipment and the drivers behind one trait;
//! - `envelope`: the plant's local safety envelope, which can only narrow limits;
//! - `fail_safe`: the dead-man switch: what to write when the controller is silent, when it
//!   engages and what lifts it (decisions pure in `fail_safe::watchdog`);
//! - `commands`: validation, deadline, envelope, preconditions, journal, execution;
//! - `apply`: idempotent configuration apply with read-back;
//! - `telemetry`: bounded buffering of readings while disconnected;
//! - `link`: enrollment, the connection to the controller, command streams and reports;
//! - `slices`: host traffic steering behind one trait (Linux netlink, or a logging `noop`);
//! - `metrics`: Prometheus metrics and their HTTP endpoint.
//!
//! It depends on `shopfloor-wire`, never on Kubernetes crates. The Modbus simulator lives in
//! the `shopfloor-sim` crate, outside the agent.
#![forbid(unsafe_code)]

pub mod apply;
pub mod clock;
pub mod commands;
pub mod envelope;
pub mod equipment;
pub mod fail_safe;
pub mod journal;
pub mod link;
pub mod metrics;
pub mod slices;
pub mod state;
pub mod telemetry;
