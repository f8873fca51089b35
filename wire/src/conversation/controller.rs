//! The control stream as the controller holds it: it waits for the agent's Hello, answers with a
//! Welcome on the version both speak, then pushes configurations, answers renewals, and ends
//! with a Goodbye from either side.

use crate::{
    PROTOCOL_VERSIONS, close_code,
    proto::{
        AgentMessage, ApplyConfig, ConfigApplied, ControllerMessage, Goodbye, RenewResponse, Welcome, agent_message,
        controller_message,
    },
};

use super::{Violation, name_of_agent};

/// How many pushed revisions are remembered to tell a late ConfigApplied from a current one.
const REMEMBERED_REVISIONS: usize = 16;

/// What the controller tells an agent in its Welcome, besides the version and the clock stamps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Terms {
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub renew_before_secs: u64,
    pub controller_replica: String,
}

/// The time as the caller measured it when a message arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// The controller's wall clock, Unix microseconds.
    pub unix_micros: i64,
    /// The connection's smoothed round-trip time, microseconds.
    pub rtt_micros: i64,
}

/// What the agent said about itself in its Hello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Greeting {
    pub agent_version: String,
    pub protocol_version: u32,
    /// The configuration revision the agent holds.
    pub held_revision: Option<String>,
    /// The agent's wall clock minus the controller's; `None` from an agent that sends no time.
    pub clock_offset_micros: Option<i64>,
    /// SHA-256 of the safety envelope the agent enforces.
    pub envelope_sha256: Option<String>,
    /// Why the agent's configured envelope cannot be used (it refuses every write then).
    pub envelope_problem: Option<String>,
    pub boot_id: String,
}

/// What the caller must do or know after a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Send this on the control stream.
    Send(ControllerMessage),
    /// The agent is in session: register it.
    Established(Greeting),
    /// The agent applied a configuration (possibly again, after retrying failed properties).
    Applied(ConfigApplied),
    /// The agent asks for a certificate for this CSR; answer with [`ControllerSide::renewed`].
    RenewalRequested(Vec<u8>),
    /// The agent ended the session.
    Ended(String),
    /// A message that is late or repeated: nothing to do but say so.
    Ignored(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Established,
    Closed,
}

/// One control stream, from the controller's end.
#[derive(Clone, Debug)]
pub struct ControllerSide {
    state: State,
    terms: Terms,
    /// Revisions the agent may report, oldest first: the one it held at Hello, then each pushed.
    revisions: Vec<String>,
    /// Index in `revisions` of the newest one the agent reported applied.
    applied: Option<usize>,
    renewing: bool,
}

impl ControllerSide {
    pub fn new(terms: Terms) -> Self {
        Self { state: State::AwaitingHello, terms, revisions: Vec::new(), applied: None, renewing: false }
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// A message from the agent. `Err` is a protocol violation: close the connection with it.
    pub fn on_message(&mut self, msg: AgentMessage, now: Now) -> Result<Vec<Event>, Violation> {
        use agent_message::Body;
        let Some(body) = msg.body else {
            // A message type from a newer protocol minor: not ours to refuse.
            return Ok(vec![Event::Ignored("a message of an unknown type".into())]);
        };
        match (&self.state, body) {
            (State::Closed, b) => Ok(vec![Event::Ignored(format!("{} after the session ended", name_of_agent(&b)))]),
            (State::AwaitingHello, Body::Hello(hello)) => {
                let Some(version) =
                    hello.protocol_versions.iter().copied().filter(|v| PROTOCOL_VERSIONS.contains(v)).max()
                else {
                    self.state = State::Closed;
                    return Err(Violation {
                        code: close_code::UNSUPPORTED_VERSION,
                        reason: format!(
                            "this controller speaks protocol versions {PROTOCOL_VERSIONS:?}, the agent {:?}",
                            hello.protocol_versions
                        ),
                    });
                };
                let held = Some(hello.held_revision.clone()).filter(|r| !r.is_empty());
                self.revisions.extend(held.clone());
                self.state = State::Established;
                let welcome = Welcome {
                    protocol_version: version,
                    heartbeat_interval_ms: self.terms.heartbeat_interval_ms,
                    heartbeat_timeout_ms: self.terms.heartbeat_timeout_ms,
                    renew_before_secs: self.terms.renew_before_secs,
                    controller_replica: self.terms.controller_replica.clone(),
                    hello_received_unix_micros: now.unix_micros,
                    sent_unix_micros: now.unix_micros,
                };
                let envelope = hello.envelope.unwrap_or_default();
                let greeting = Greeting {
                    agent_version: hello.agent_version,
                    protocol_version: version,
                    held_revision: held,
                    // The Hello left the agent half a round trip before it arrived.
                    clock_offset_micros: (hello.sent_unix_micros != 0)
                        .then(|| hello.sent_unix_micros + now.rtt_micros / 2 - now.unix_micros),
                    envelope_sha256: Some(envelope.sha256).filter(|s| !s.is_empty()),
                    envelope_problem: Some(envelope.problem).filter(|s| !s.is_empty()),
                    boot_id: hello.boot_id,
                };
                Ok(vec![
                    Event::Send(ControllerMessage { body: Some(controller_message::Body::Welcome(welcome)) }),
                    Event::Established(greeting),
                ])
            }
            (State::AwaitingHello, b) => {
                self.state = State::Closed;
                Err(Violation::order(format!("the first frame must be Hello, not {}", name_of_agent(&b))))
            }
            (State::Established, Body::ConfigApplied(applied)) => {
                let Some(at) = self.revisions.iter().rposition(|r| *r == applied.revision) else {
                    return Ok(vec![Event::Ignored(format!(
                        "ConfigApplied for revision {}, which was never sent to this agent",
                        applied.revision
                    ))]);
                };
                if self.applied.is_some_and(|newest| at < newest) {
                    return Ok(vec![Event::Ignored(format!(
                        "ConfigApplied for revision {}, older than one the agent already applied",
                        applied.revision
                    ))]);
                }
                self.applied = Some(at);
                Ok(vec![Event::Applied(applied)])
            }
            (State::Established, Body::Renew(r)) => {
                if self.renewing {
                    return Ok(vec![Event::Ignored("a second RenewRequest while one is being answered".into())]);
                }
                self.renewing = true;
                Ok(vec![Event::RenewalRequested(r.csr_der)])
            }
            (State::Established, Body::Goodbye(g)) => {
                self.state = State::Closed;
                Ok(vec![Event::Ended(format!("agent said goodbye: {}", g.reason))])
            }
            (State::Established, b @ (Body::Hello(_) | Body::Enroll(_))) => {
                self.state = State::Closed;
                Err(Violation::order(format!("{} in an established session", name_of_agent(&b))))
            }
        }
    }

    /// The ApplyConfig to send for `cfg`; `None` before the Hello or after the end.
    pub fn push(&mut self, cfg: ApplyConfig) -> Option<ControllerMessage> {
        if self.state != State::Established {
            return None;
        }
        if self.revisions.last() != Some(&cfg.revision) {
            self.revisions.push(cfg.revision.clone());
        }
        if self.revisions.len() > REMEMBERED_REVISIONS {
            let cut = self.revisions.len() - REMEMBERED_REVISIONS;
            self.revisions.drain(..cut);
            self.applied = self.applied.and_then(|a| a.checked_sub(cut));
        }
        Some(ControllerMessage { body: Some(controller_message::Body::ApplyConfig(cfg)) })
    }

    /// The answer to the renewal in progress; `None` when none is.
    pub fn renewed(&mut self, response: RenewResponse) -> Option<ControllerMessage> {
        if !std::mem::take(&mut self.renewing) || self.state != State::Established {
            return None;
        }
        Some(ControllerMessage { body: Some(controller_message::Body::Renewed(response)) })
    }

    /// Ends the session with `reason`; `None` when it already ended.
    pub fn goodbye(&mut self, reason: &str) -> Option<ControllerMessage> {
        self.bye(reason, None)
    }

    /// Ends the session, or declines it before the Welcome, asking the agent to dial the same
    /// address again after `after` (a starting controller, a handover); `None` when it already
    /// ended.
    pub fn redial(&mut self, reason: &str, after: std::time::Duration) -> Option<ControllerMessage> {
        self.bye(reason, Some(u32::try_from(after.as_millis()).unwrap_or(u32::MAX)))
    }

    fn bye(&mut self, reason: &str, redial_after_ms: Option<u32>) -> Option<ControllerMessage> {
        if std::mem::replace(&mut self.state, State::Closed) == State::Closed {
            return None;
        }
        Some(ControllerMessage {
            body: Some(controller_message::Body::Goodbye(Goodbye { reason: reason.to_owned(), redial_after_ms })),
        })
    }
}
