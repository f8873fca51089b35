//! What several integration tests share: an agent connection with nothing but a session.

use std::{net::SocketAddr, sync::Arc};

use shopfloor_controller::agents::{port::AgentSession, registry::Connected};

/// Connection `connection_id` of a test agent on loopback, holding no revision yet.
pub fn connected(session: Arc<dyn AgentSession>, connection_id: u64) -> Connected {
    Connected {
        session,
        connection_id,
        connected_since: jiff::Timestamp::now(),
        remote: SocketAddr::from(([127, 0, 0, 1], 4433)),
        agent_version: "test".into(),
        protocol_version: 1,
        held_revision: None,
        clock_offset_micros: None,
        envelope_sha256: None,
        envelope_problem: None,
    }
}
