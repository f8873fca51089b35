//! Telemetry reports: buffered readings on unidirectional streams, each with the state of every
//! fail-safe; a report goes out at the start of a session and whenever a fail-safe changes, even
//! without readings.

use std::{
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameWriter},
    proto,
};

use crate::{fail_safe::FailSafes, telemetry::Buffer};

/// Sends buffered readings on unidirectional streams; on failure they go back into the buffer.
pub(super) async fn send_reports(conn: quinn::Connection, buffer: Arc<StdMutex<Buffer>>, fail_safes: Arc<FailSafes>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut changes = fail_safes.subscribe();
    // Unseen: the first tick reports the fail-safes, readings or not.
    changes.mark_changed();
    loop {
        tick.tick().await;
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
