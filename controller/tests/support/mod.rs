//! What several integration tests share: an agent connection with nothing but a session.

use std::{net::SocketAddr, sync::Arc, time::Duration};

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

/// A session that counts configuration pushes and never answers them.
#[derive(Default)]
// Not every test file that includes this module uses it.
#[allow(dead_code)]
pub struct Silent {
    pub pushes: std::sync::atomic::AtomicUsize,
}

impl AgentSession for Silent {
    fn rtt(&self) -> Duration {
        Duration::from_micros(500)
    }

    fn push_config(
        &self,
        _: Arc<shopfloor_controller::planner::AgentPlan>,
    ) -> futures::future::BoxFuture<'_, Result<(), shopfloor_controller::agents::port::SessionError>> {
        self.pushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn dispatch(
        &self,
        _: shopfloor_controller::agents::port::Dispatch,
    ) -> futures::future::BoxFuture<
        '_,
        Result<
            tokio::sync::mpsc::Receiver<shopfloor_controller::agents::port::Reply>,
            shopfloor_controller::agents::port::SessionError,
        >,
    > {
        Box::pin(async { Err(shopfloor_controller::agents::port::SessionError::Closed) })
    }

    fn measure_link(&self, _: Duration) {}

    fn close(&self, _: &str, _: Option<Duration>) {}
}
