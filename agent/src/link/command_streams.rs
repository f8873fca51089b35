//! Command streams: one bidirectional stream per command, answered through the wire's
//! `command::Answer` (Ack, then Result), with the agent's spans of each command.

use std::sync::Arc;

use shopfloor_trace::{Kind, Span, TraceContext, Tracer};
use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    conversation::command::Answer,
    proto,
};

use crate::{
    clock::{self, Offset},
    commands::{Arrival, Executor},
    metrics::{CodeLabel, Metrics},
};

/// Accepts one bidirectional stream per command and answers it: ack, then result.
pub(super) async fn serve_commands(
    conn: quinn::Connection,
    executor: Arc<Executor>,
    metrics: Arc<Metrics>,
    tracer: Arc<std::sync::RwLock<Tracer>>,
    offset: Option<Offset>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let executor = executor.clone();
        let metrics = metrics.clone();
        let tracer = tracer.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
            let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
            let cmd: proto::Command = match rx.next().await {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(peer = %conn.remote_address(), "bad command frame: {e}");
                    let _ = tx.get_mut().reset(e.close_code().into());
                    return;
                }
            };
            let (received, wall) = (tokio::time::Instant::now(), executor.wall_clock().now_micros());
            let arrival = Arrival {
                received_unix_micros: offset.unwrap_or_default().to_controller(wall),
                deadline: clock::deadline(&cmd, received, wall, offset, conn.rtt()),
                offset: offset.unwrap_or_default(),
            };
            let mut answer = Answer::new(&cmd);
            if let Some(ack) = answer.ack(arrival.received_unix_micros) {
                let _ = tx.send(&ack).await;
            }
            let result = executor.execute(&cmd, arrival).await;
            let label = CodeLabel { code: format!("{:?}", result.code()), replayed: result.replayed.to_string() };
            metrics.commands.get_or_create(&label).inc();
            metrics.command_duration.observe(received.elapsed().as_secs_f64());
            let tracer = tracer.read().unwrap_or_else(|p| p.into_inner()).clone();
            if tracer.enabled() {
                for span in command_spans(&cmd, &result) {
                    tracer.record(span);
                }
            }
            tracing::info!(command = %cmd.id, equipment = %cmd.equipment, action = %cmd.action, code = ?result.code(), replayed = result.replayed, "command answered");
            if let Some(done) = answer.finish(result) {
                let _ = tx.send(&done).await;
            }
            let _ = tx.get_mut().finish();
        });
    }
}

/// The agent's spans of a command, in the trace the controller's `traceparent` names: one for
/// receipt to result, and a child for the execution itself (after validation, the journal and
/// the wait for the equipment's turn) when the command ran.
fn command_spans(cmd: &proto::Command, result: &proto::CommandResult) -> Vec<Span> {
    let Some(parent) = TraceContext::parse(&cmd.traceparent) else { return vec![] };
    let code = format!("{:?}", result.code());
    let failed = result.code() != proto::ResultCode::Ok;
    let error = failed.then(|| format!("{code}: {}", result.message));
    let handled = TraceContext { trace_id: parent.trace_id, span_id: shopfloor_trace::random_span_id() };
    let end = shopfloor_trace::from_unix_micros(result.finished_unix_micros.max(result.received_unix_micros));
    let mut spans = vec![Span {
        name: format!("execute {}/{}", cmd.equipment, cmd.action),
        context: handled,
        parent: Some(parent.span_id),
        remote_parent: true,
        kind: Kind::Server,
        start: shopfloor_trace::from_unix_micros(result.received_unix_micros),
        end,
        attributes: vec![
            ("shopfloor.command_id", cmd.id.clone().into()),
            ("shopfloor.equipment", cmd.equipment.clone().into()),
            ("shopfloor.action", cmd.action.clone().into()),
            ("shopfloor.result", code.into()),
            ("shopfloor.replayed", result.replayed.into()),
            ("shopfloor.dry_run", cmd.dry_run.into()),
        ],
        error: error.clone(),
    }];
    if result.started_unix_micros > 0 && !result.replayed {
        spans.push(Span {
            name: format!("{} {}", if cmd.dry_run { "dry-run" } else { "run" }, cmd.action),
            context: TraceContext { trace_id: parent.trace_id, span_id: shopfloor_trace::random_span_id() },
            parent: Some(handled.span_id),
            remote_parent: false,
            kind: Kind::Internal,
            start: shopfloor_trace::from_unix_micros(result.started_unix_micros),
            end,
            attributes: vec![("shopfloor.equipment", cmd.equipment.clone().into())],
            error,
        });
    }
    spans
}
