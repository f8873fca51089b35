//! The heartbeat the controller asks for (the EdgeAgent's `spec.heartbeat`), kept in the state
//! directory. QUIC fixes a connection's keep-alive and idle timeout when it is made, and the
//! terms arrive in the Welcome, after that: so the agent keeps them for its next connections, and
//! when a Welcome brings terms other than those the connection was made with, it reconnects once
//! to use them.

use serde::{Deserialize, Serialize};
use shopfloor_wire::transport::Timing;

use crate::state::StateDir;

const HEARTBEAT: &str = "heartbeat.yaml";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    interval_ms: u64,
    timeout_ms: u64,
}

/// The terms kept from the last Welcome, or `fallback` when none are (or they are unreadable:
/// the file is then moved aside and the next Welcome writes it again).
pub(super) fn load(state: &StateDir, fallback: Timing) -> Timing {
    let parsed = state.read_parsed(HEARTBEAT, |b| serde_yaml::from_slice::<Stored>(b).map_err(|e| e.to_string()));
    match parsed {
        Ok(Some(s)) => Timing::from_terms(s.interval_ms, s.timeout_ms).unwrap_or(fallback),
        Ok(None) => fallback,
        Err(e) => {
            tracing::warn!("{e}; using the default heartbeat until the controller's next Welcome");
            fallback
        }
    }
}

/// Keeps `timing` for the next connections.
pub(super) fn store(state: &StateDir, timing: Timing) -> Result<(), crate::state::StateError> {
    let s = Stored {
        interval_ms: u64::try_from(timing.keep_alive.as_millis()).unwrap_or(u64::MAX),
        timeout_ms: u64::try_from(timing.idle_timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let text = serde_yaml::to_string(&s).unwrap_or_default();
    state.write(HEARTBEAT, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn terms_kept_are_the_terms_used_next_and_nonsense_falls_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("state");
        let fallback = Timing::default();
        assert_eq!(load(&state, fallback), fallback, "nothing kept yet");
        let slow = Timing { keep_alive: Duration::from_secs(5), idle_timeout: Duration::from_secs(20) };
        store(&state, slow).expect("store");
        assert_eq!(load(&state, fallback), slow);
        std::fs::write(dir.path().join(HEARTBEAT), "intervalMs: 5000\ntimeoutMs: 5000\n").expect("write");
        assert_eq!(load(&state, fallback), fallback, "an interval not shorter than the timeout is refused");
        std::fs::write(dir.path().join(HEARTBEAT), "not: [yaml").expect("write");
        assert_eq!(load(&state, fallback), fallback, "unreadable: moved aside");
        assert!(!dir.path().join(HEARTBEAT).exists());
    }
}
