//! The controller's side of its agents: the port a connected agent is reached through (`port`:
//! a session, a command dispatch and its replies), who is connected (`registry`), what they
//! reported (`observed`), which of them changed since the last pass (`changes`), and the
//! EdgeAgents with the certificates and tokens issued to them (`book`).

pub mod book;
pub mod changes;
pub mod observed;
pub mod port;
pub mod registry;
