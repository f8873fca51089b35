//! The Shopfloor edge agent: keeps a plant host's equipment at its desired configuration and
//! executes remote-control commands safely, with or without the controller.
//!
//! - `state`: the only module that touches the state directory (atomic writes only);
//! - `clock`: deadlines on the monotonic clock, the controller's clock offset;
//! - `journal`: exactly-once command execution under redelivery, across restarts;
//! - `drivers`: Modbus TCP and a simulated device behind one trait; `sim` a Modbus TCP simulator;
//! - `envelope`: the plant's local safety envelope, which can only narrow limits;
//! - `commands`: validation, deadline, envelope, preconditions, journal, execution;
//! - `apply`: idempotent configuration apply with read-back;
//! - `telemetry`: bounded buffering of readings while disconnected;
//! - `session`: enrollment, connection, reconnection and the protocol loop;
//! - `slices`: host traffic steering behind one trait (Linux netlink, or a logging `noop`);
//! - `metrics`: Prometheus metrics and their HTTP endpoint.
//!
//! It depends on `shopfloor-wire`, never on Kubernetes crates.
#![forbid(unsafe_code)]

pub mod apply;
pub mod clock;
pub mod commands;
pub mod drivers;
pub mod envelope;
pub mod journal;
pub mod metrics;
pub mod session;
pub mod sim;
pub mod slices;
pub mod state;
pub mod telemetry;
pub mod value;
