//! Telemetry reports: buffered readings on unidirectional streams, each with the state of every
//! fail-safe; a report goes out at the start of a session and whenever a fail-safe changes, even
//! without readings. The sender sleeps until there is something to say, then lets readings
//! gather for a moment so that one report carries them together.

use std::{
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameWriter},
    proto,
};

use crate::{fail_safe::FailSafes, telemetry::Buffer};

/// How long readings gather before a report goes out.
const GATHER: Duration = Duration::from_millis(250);

/// Sends buffered readings on unidirectional streams; on failure they go back into the buffer.
/// `ready` is told when a reading joins the buffer.
pub(super) async fn send_reports(
    conn: quinn::Connection,
    buffer: Arc<StdMutex<Buffer>>,
    ready: Arc<tokio::sync::Notify>,
    fail_safes: Arc<FailSafes>,
) {
    let mut changes = fail_safes.subscribe();
    // Unseen: the first report tells the fail-safes, readings or not.
    changes.mark_changed();
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                () = ready.notified() => {}
                // The fail-safes' sender lives as long as the agent: an error here means it is
                // shutting down, and the session with it.
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // `changed()` marked the change seen; the report below must still carry it.
                    changes.mark_changed();
                }
            }
            tokio::time::sleep(GATHER).await;
        }
        loop {
            let (readings, dropped) = buffer.lock().unwrap_or_else(|e| e.into_inner()).drain(512);
            let changed = changes.has_changed().unwrap_or(false);
            if readings.is_empty() && dropped == 0 && !changed {
                break;
            }
            changes.mark_unchanged();
            let report = proto::Report { readings, dropped, fail_safes: fail_safes.states() };
            let sent = async {
                let send = conn.open_uni().await.map_err(|e| e.to_string())?;
                let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
                tx.send(&report).await.map_err(|e| e.to_string())?;
                tx.get_mut().finish().map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = sent {
                tracing::debug!("report not sent, kept for later: {e}");
                buffer.lock().unwrap_or_else(|e| e.into_inner()).requeue(report.readings, report.dropped);
                changes.mark_changed();
                return;
            }
        }
    }
}
