//! The protocol conversation as pure state machines, the way `quinn-proto` is QUIC without I/O:
//! messages and time go in, messages to send and events for the caller come out. No socket, no
//! clock of its own (the caller passes the time), no task. The controller's endpoint and the
//! agent's connection are thin loops around these, so every ordering rule lives here once and is
//! tested in memory (`wire/tests/conversation.rs`).
//!
//! - [`controller::ControllerSide`]: the control stream as the controller holds it (Hello →
//!   Welcome, ApplyConfig → ConfigApplied, Renew → Renewed, Goodbye).
//! - [`agent::AgentSide`]: the same stream from the agent's end.
//! - [`command`]: one command stream; [`command::Call`] at the controller (Command out, Ack and
//!   Result back) and [`command::Answer`] at the agent.
//!
//! A message the other side must not send at that point is a [`Violation`]: the caller closes
//! the connection (or resets the stream) with its code. A message that is merely late or repeated
//! (a stale ConfigApplied, a second Ack) is ignored and said so, never acted on twice.

pub mod agent;
pub mod command;
pub mod controller;

use crate::close_code;

/// The peer broke the protocol: close with `code`, telling it `reason`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Violation {
    pub code: u32,
    pub reason: String,
}

impl Violation {
    fn order(reason: impl Into<String>) -> Self {
        Self { code: close_code::PROTOCOL_VIOLATION, reason: reason.into() }
    }
}

/// The name of a message body, for violations and logs.
fn name_of_agent(body: &crate::proto::agent_message::Body) -> &'static str {
    use crate::proto::agent_message::Body;
    match body {
        Body::Hello(_) => "Hello",
        Body::ConfigApplied(_) => "ConfigApplied",
        Body::Renew(_) => "RenewRequest",
        Body::Goodbye(_) => "Goodbye",
        Body::Enroll(_) => "EnrollRequest",
    }
}

fn name_of_controller(body: &crate::proto::controller_message::Body) -> &'static str {
    use crate::proto::controller_message::Body;
    match body {
        Body::Welcome(_) => "Welcome",
        Body::ApplyConfig(_) => "ApplyConfig",
        Body::Renewed(_) => "RenewResponse",
        Body::Goodbye(_) => "Goodbye",
        Body::Enrolled(_) => "EnrollResponse",
    }
}
