//! The port the controller reaches a connected agent through, in the controller's own terms:
//! the engine dispatches a command and reads its replies, the reconciler pushes a plan. The QUIC
//! endpoint implements it; tests implement it in memory.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use jiff::Timestamp;
use shopfloor_api::{
    Value,
    control_command::{ControlCommandSpec, ResultCode},
};
use tokio::sync::mpsc;

use crate::{planner::AgentPlan, store::ObjectKey};

/// A command as the engine hands it to a session.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// The command's id on the wire and in the agent's journal: the object's uid.
    pub id: String,
    pub key: ObjectKey,
    pub spec: ControlCommandSpec,
    pub deadline: Timestamp,
    /// W3C traceparent of the command's span.
    pub traceparent: String,
}

/// What comes back on a command's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Acknowledged,
    Finished(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the connection to the agent is closed")]
    Closed,
    #[error("the agent refused the stream: {0}")]
    Refused(String),
}

/// One live agent connection.
pub trait AgentSession: Send + Sync + 'static {
    /// Smoothed round-trip time.
    fn rtt(&self) -> Duration;
    /// Sends a configuration revision on the control stream.
    fn push_config(&self, plan: Arc<AgentPlan>) -> BoxFuture<'_, Result<(), SessionError>>;
    /// Opens a command stream and sends the command; replies arrive on the receiver, which
    /// closes when the stream ends (with or without a result).
    fn dispatch(&self, command: Dispatch) -> BoxFuture<'_, Result<mpsc::Receiver<Reply>, SessionError>>;
    /// Keeps the round-trip estimate fresh for `span` from now: a command refused for a slow
    /// link sends nothing, and an idle link's estimate stays at its last value, so the link
    /// must be measured while commands are refused or its recovery is not seen.
    fn measure_link(&self, span: Duration);
    /// Closes the connection with a Goodbye carrying `reason`; with `redial_after`, a Goodbye
    /// that asks the agent to dial the same address again after that delay, without backing
    /// off (a handover, not a refusal).
    fn close(&self, reason: &str, redial_after: Option<Duration>);
}

/// A result reported by the agent, with the agent's own timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub code: ResultCode,
    pub message: String,
    pub outputs: BTreeMap<String, Value>,
    pub received_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}
