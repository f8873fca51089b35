//! Telemetry reports: buffered readings on unidirectional streams.

use std::{
    sync::{Arc, Mutex as StdMutex},
    time::Duration,
};

use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameWriter},
    proto,
};

use crate::telemetry::Buffer;

/// Sends buffered readings on unidirectional streams; on failure they go back into the buffer.
pub(super) async fn send_reports(conn: quinn::Connection, buffer: Arc<StdMutex<Buffer>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        loop {
            let (readings, dropped) = buffer.lock().unwrap_or_else(|e| e.into_inner()).drain(512);
            if readings.is_empty() && dropped == 0 {
                break;
            }
            let report = proto::Report { readings, dropped };
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
                return;
            }
        }
    }
}
