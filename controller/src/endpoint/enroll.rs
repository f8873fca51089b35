//! Enrollment: a connection without a client certificate may send one EnrollRequest with its
//! bootstrap token and a CSR, and gets a certificate (or the reason it does not) back.

use std::time::Duration;

use shopfloor_wire::{
    close_code,
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    proto::{self, AgentMessage, ControllerMessage, agent_message, controller_message},
    transport,
};

use super::{context::EndpointContext, issuer::Issuer};
use crate::{
    agents::changes::Change,
    store::{ObjectKey, Store},
};

/// An enrollment connection must send its request within this.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one enrollment connection; `Err` says why it failed before it was answered.
pub(super) async fn serve<S: Store>(
    ctx: &EndpointContext<S>,
    issuer: &Issuer<S>,
    conn: quinn::Connection,
) -> Result<(), &'static str> {
    let remote = conn.remote_address();
    // A connection that opens no stream or sends no request is not waited for.
    let request = async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let req = rx.next::<AgentMessage>().await;
        Some((FrameWriter::new(send, DEFAULT_MAX_FRAME), req))
    };
    let (mut tx, req) = match tokio::time::timeout(ENROLL_TIMEOUT, request).await {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()),
        Err(_) => {
            transport::close(&conn, close_code::PROTOCOL_VIOLATION, "no enrollment request in time");
            return Err("enrollment abandoned: no request within 10 s");
        }
    };
    let req = match req {
        Ok(Some(AgentMessage { body: Some(agent_message::Body::Enroll(r)) })) => r,
        Ok(_) => {
            transport::close(
                &conn,
                close_code::UNAUTHORIZED,
                "a connection without a client certificate may only enroll",
            );
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(%remote, "bad enrollment frame: {e}");
            transport::close(&conn, e.close_code(), &e.to_string());
            return Ok(());
        }
    };
    let key = ObjectKey::new(req.namespace.clone(), req.agent.clone());
    let result = match shopfloor_wire::pki::csr_key_sha256(&req.csr_der) {
        Err(e) => Err(e.to_string()),
        Ok(public_key) => match ctx.book.redeem_token(&key, &req.token, &public_key).await {
            Ok(()) => issuer.issue(&key, &req.csr_der, true).await,
            Err(e) => Err(e),
        },
    };
    let response = match &result {
        Ok(cert) => proto::EnrollResponse {
            certificate_der: cert.clone(),
            ca_der: issuer.ca.cert_der().to_vec(),
            error: String::new(),
        },
        Err(e) => proto::EnrollResponse { error: e.clone(), ..Default::default() },
    };
    match &result {
        Ok(_) => tracing::info!(agent = %key, %remote, "enrolled"),
        Err(e) => tracing::warn!(agent = %key, %remote, "enrollment refused: {e}"),
    }
    let _ = tx.send(&ControllerMessage { body: Some(controller_message::Body::Enrolled(response)) }).await;
    let _ = tx.get_mut().finish();
    // Let the answer reach the agent; it closes the connection itself.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    ctx.changes.mark(&key, Change::Session);
    Ok(())
}
