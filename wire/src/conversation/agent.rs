//! The control stream from the agent's end: Hello, then the Welcome (or a refusal), then
//! configurations to apply, renewals, and a Goodbye from either side.

use crate::{
    PROTOCOL_VERSIONS,
    proto::{
        AgentMessage, ApplyConfig, ConfigApplied, ControllerMessage, Envelope, Goodbye, Hello, RenewRequest,
        RenewResponse, Welcome, agent_message, controller_message,
    },
};

use super::{Violation, name_of_controller};

/// What the agent says about itself in its Hello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Introduction {
    pub agent_version: String,
    pub boot_id: String,
    /// The configuration revision the agent holds, if any.
    pub held_revision: Option<String>,
    /// SHA-256 of the safety envelope in force, if any.
    pub envelope_sha256: Option<String>,
    /// Why the configured envelope cannot be used, if so.
    pub envelope_problem: Option<String>,
}

/// What the caller must do or know after a message.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The controller accepted the session. The four stamps (NTP's t1..t4) let the caller
    /// estimate how far apart the two clocks are.
    Welcomed { welcome: Welcome, hello_sent_unix_micros: i64, received_unix_micros: i64 },
    /// The controller turned the session down before it began.
    Refused(String),
    /// Apply this configuration, then report with [`AgentSide::applied`].
    Apply(ApplyConfig),
    /// The answer to the renewal this side asked for.
    Renewed(RenewResponse),
    /// The controller ended the session.
    Ended(String),
    /// The controller is starting or handing over (before or during a session): dial the same
    /// address again after `after`, without backing off.
    Redial { reason: String, after: std::time::Duration },
    /// A message that is late or repeated: nothing to do but say so.
    Ignored(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    AwaitingWelcome { hello_sent_unix_micros: i64 },
    Established,
    Closed,
}

/// One control stream, from the agent's end.
#[derive(Clone, Debug)]
pub struct AgentSide {
    state: State,
    renew_before_secs: u64,
    renewing: bool,
    /// A renewed certificate is stored: it is used from the next connection on.
    renewed: bool,
}

impl AgentSide {
    /// Starts a conversation: the side, and the Hello to send first.
    pub fn hello(me: Introduction, now_unix_micros: i64) -> (Self, AgentMessage) {
        let hello = Hello {
            agent_version: me.agent_version,
            protocol_versions: PROTOCOL_VERSIONS.to_vec(),
            boot_id: me.boot_id,
            held_revision: me.held_revision.unwrap_or_default(),
            sent_unix_micros: now_unix_micros,
            envelope: Some(Envelope {
                sha256: me.envelope_sha256.unwrap_or_default(),
                problem: me.envelope_problem.unwrap_or_default(),
            }),
        };
        let side = Self {
            state: State::AwaitingWelcome { hello_sent_unix_micros: now_unix_micros },
            renew_before_secs: 0,
            renewing: false,
            renewed: false,
        };
        (side, AgentMessage { body: Some(agent_message::Body::Hello(hello)) })
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// A message from the controller. `Err` is a protocol violation: close the connection.
    pub fn on_message(&mut self, msg: ControllerMessage, now_unix_micros: i64) -> Result<Event, Violation> {
        use controller_message::Body;
        let Some(body) = msg.body else {
            return Ok(Event::Ignored("a message of an unknown type".into()));
        };
        match (&self.state, body) {
            (State::Closed, b) => Ok(Event::Ignored(format!("{} after the session ended", name_of_controller(&b)))),
            (State::AwaitingWelcome { hello_sent_unix_micros }, Body::Welcome(welcome)) => {
                if !PROTOCOL_VERSIONS.contains(&welcome.protocol_version) {
                    self.state = State::Closed;
                    return Err(Violation {
                        code: crate::close_code::UNSUPPORTED_VERSION,
                        reason: format!(
                            "the controller chose protocol version {}, this agent speaks {PROTOCOL_VERSIONS:?}",
                            welcome.protocol_version
                        ),
                    });
                }
                let hello_sent_unix_micros = *hello_sent_unix_micros;
                self.renew_before_secs = welcome.renew_before_secs;
                self.state = State::Established;
                Ok(Event::Welcomed { welcome, hello_sent_unix_micros, received_unix_micros: now_unix_micros })
            }
            (State::AwaitingWelcome { .. } | State::Established, Body::Goodbye(g)) if g.redial_after_ms.is_some() => {
                self.state = State::Closed;
                let after = std::time::Duration::from_millis(u64::from(g.redial_after_ms.unwrap_or_default()));
                Ok(Event::Redial { reason: g.reason, after })
            }
            (State::AwaitingWelcome { .. }, Body::Goodbye(g)) => {
                self.state = State::Closed;
                Ok(Event::Refused(g.reason))
            }
            (State::AwaitingWelcome { .. }, b) => {
                self.state = State::Closed;
                Err(Violation::order(format!(
                    "the controller's first frame must be Welcome, not {}",
                    name_of_controller(&b)
                )))
            }
            (State::Established, Body::ApplyConfig(cfg)) => Ok(Event::Apply(cfg)),
            (State::Established, Body::Renewed(r)) => {
                if !std::mem::take(&mut self.renewing) {
                    return Ok(Event::Ignored("a RenewResponse nobody asked for".into()));
                }
                self.renewed = r.error.is_empty();
                Ok(Event::Renewed(r))
            }
            (State::Established, Body::Goodbye(g)) => {
                self.state = State::Closed;
                Ok(Event::Ended(format!("goodbye: {}", g.reason)))
            }
            (State::Established, b @ (Body::Welcome(_) | Body::Enrolled(_))) => {
                self.state = State::Closed;
                Err(Violation::order(format!("{} in an established session", name_of_controller(&b))))
            }
        }
    }

    /// The report of an applied configuration; `None` outside a session.
    pub fn applied(&self, applied: ConfigApplied) -> Option<AgentMessage> {
        (self.state == State::Established)
            .then_some(AgentMessage { body: Some(agent_message::Body::ConfigApplied(applied)) })
    }

    /// Whether a certificate valid until `not_after_unix_secs` should be renewed now: inside
    /// the controller's renewal window, in a session, and with no renewal already asked for.
    pub fn renewal_due(&self, now_unix_secs: i64, not_after_unix_secs: i64) -> bool {
        let left = not_after_unix_secs.saturating_sub(now_unix_secs);
        self.state == State::Established
            && !self.renewing
            && !self.renewed
            && self.renew_before_secs > 0
            && left <= i64::try_from(self.renew_before_secs).unwrap_or(i64::MAX)
    }

    /// Asks for a certificate for `csr_der`; `None` when a renewal is already asked for.
    pub fn renew(&mut self, csr_der: Vec<u8>) -> Option<AgentMessage> {
        if self.state != State::Established || std::mem::replace(&mut self.renewing, true) {
            return None;
        }
        Some(AgentMessage { body: Some(agent_message::Body::Renew(RenewRequest { csr_der })) })
    }

    /// Ends the session with `reason`; `None` when it already ended.
    pub fn goodbye(&mut self, reason: &str) -> Option<AgentMessage> {
        if std::mem::replace(&mut self.state, State::Closed) == State::Closed {
            return None;
        }
        Some(AgentMessage {
            body: Some(agent_message::Body::Goodbye(Goodbye { reason: reason.to_owned(), redial_after_ms: None })),
        })
    }
}
