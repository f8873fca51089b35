//! The agent's link to the controller: enrollment (`enroll`), the credentials it leaves in the
//! state directory (`credentials`), the connection and its control stream driven by the wire's
//! `AgentSide` (`connection`), the heartbeat it asks for (`heartbeat`) and when to dial again (`reconnect`), command streams (`command_streams`) and telemetry reports
//! (`reports`), and the dead-man switch that engages fail-safes when the controller falls silent
//! (`dead_man`). With or without a link, the agent holds its equipment at the last configuration
//! it received, or at its safe values once a fail-safe engaged.

pub mod command_streams;
pub mod connection;
pub mod credentials;
mod dead_man;
pub mod enroll;
pub mod error;
mod heartbeat;
pub mod reconnect;
pub mod reports;
