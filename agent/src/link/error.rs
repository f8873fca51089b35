//! How the link to the controller fails, each error saying what the plant engineer can do.

use std::time::Duration;

/// How an established session ended.
#[derive(Debug)]
pub struct Ended {
    pub reason: String,
    /// The controller stopped answering (idle timeout), as opposed to closing or refusing.
    pub silent: bool,
    /// The controller is starting or handing over and asked for a new dial after this long.
    pub redial_after: Option<Duration>,
}

impl Ended {
    /// Ended with nothing to redial for.
    pub fn closed(reason: String, silent: bool) -> Self {
        Self { reason, silent, redial_after: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot reach the controller at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("no answer from the controller at {0} within {1:?}")]
    NoAnswer(String, Duration),
    #[error("enrollment refused by the controller: {0}")]
    EnrollmentRefused(String),
    #[error("{0}")]
    Protocol(String),
    #[error(
        "this agent is not enrolled (no {0} in the state directory): run `shopfloor-agent enroll` with the command `kubectl shopfloor enroll <agent>` prints"
    )]
    NotEnrolled(String),
    #[error(
        "this agent's certificate expired at {0} (it was offline past its lifetime): re-enroll with a new token — `kubectl shopfloor enroll <agent> --renew` prints the command"
    )]
    Expired(String),
    #[error("{0}")]
    Tls(String),
}
