//! One command stream. The controller opens it and writes one Command; the agent answers with an
//! Ack, then a Result, and finishes. [`Call`] is the controller's end, [`Answer`] the agent's.

use crate::proto::{Command, CommandAck, CommandReply, CommandResult, command_reply};

use super::Violation;

/// What a reply meant to the controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// The agent has the command (and journals it before executing).
    Acknowledged,
    /// The agent's result; nothing comes after it.
    Finished(CommandResult),
}

/// A command in flight, from the controller's end.
#[derive(Clone, Debug)]
pub struct Call {
    command: Command,
    acknowledged: bool,
    finished: bool,
}

impl Call {
    pub fn new(command: Command) -> Self {
        Self { command, acknowledged: false, finished: false }
    }

    /// The Command to write, its budget stamped at `now_unix_micros`: the time left until the
    /// deadline, which the agent counts down on its own monotonic clock. Past the deadline the
    /// command still goes out (a redelivery the journal answers) with a negative budget, which
    /// the agent never executes.
    pub fn send(&self, now_unix_micros: i64) -> Command {
        let mut cmd = self.command.clone();
        cmd.budget_micros = (cmd.deadline_unix_micros - now_unix_micros).max(-1);
        cmd
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// A reply from the agent: `Ok(None)` when it adds nothing (a repeated Ack, anything after
    /// the result), `Err` when it answers another command.
    pub fn on_reply(&mut self, reply: CommandReply) -> Result<Option<Reply>, Violation> {
        if self.finished {
            return Ok(None);
        }
        match reply.body {
            None => Ok(None),
            Some(command_reply::Body::Ack(ack)) => {
                self.check(&ack.id)?;
                Ok((!std::mem::replace(&mut self.acknowledged, true)).then_some(Reply::Acknowledged))
            }
            Some(command_reply::Body::Result(result)) => {
                self.check(&result.id)?;
                // A result without an Ack still is the result: the Ack may have been lost with
                // an earlier stream of a redelivery.
                self.acknowledged = true;
                self.finished = true;
                Ok(Some(Reply::Finished(result)))
            }
        }
    }

    fn check(&self, id: &str) -> Result<(), Violation> {
        // An empty id comes from an agent that does not echo it: the stream says which command.
        if id.is_empty() || id == self.command.id {
            Ok(())
        } else {
            Err(Violation::order(format!("a reply for command {id} on the stream of command {}", self.command.id)))
        }
    }
}

/// A command being answered, from the agent's end.
#[derive(Clone, Debug)]
pub struct Answer {
    id: String,
    acknowledged: bool,
    finished: bool,
}

impl Answer {
    /// The command read from the stream's first frame.
    pub fn new(command: &Command) -> Self {
        Self { id: command.id.clone(), acknowledged: false, finished: false }
    }

    /// The Ack, once; `None` when already sent or finished.
    pub fn ack(&mut self, received_unix_micros: i64) -> Option<CommandReply> {
        if self.finished || std::mem::replace(&mut self.acknowledged, true) {
            return None;
        }
        Some(CommandReply {
            body: Some(command_reply::Body::Ack(CommandAck { id: self.id.clone(), received_unix_micros })),
        })
    }

    /// The result, once, with this command's id; `None` when already sent.
    pub fn finish(&mut self, mut result: CommandResult) -> Option<CommandReply> {
        if std::mem::replace(&mut self.finished, true) {
            return None;
        }
        result.id = self.id.clone();
        Some(CommandReply { body: Some(command_reply::Body::Result(result)) })
    }
}
