//! Enrollment: a key generated here (it never leaves the host), a CSR with the bootstrap token
//! over a connection that trusts only the pinned CA, and the certificate stored.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    identity::{self, AgentId, DEFAULT_TRUST_DOMAIN},
    pki,
    proto::{self, AgentMessage, ControllerMessage, agent_message, controller_message},
    tls,
    transport::{self, Timing},
};

use super::{
    credentials::{CA, IDENTITY, Identity, host_of, resolve, store_credentials},
    error::SessionError,
};
use crate::state::StateDir;

/// The key of an enrollment not yet answered: kept until the controller answers, so a retry
/// after a lost answer presents the same key (the controller answers that key again, and only
/// that key: tokens are single-use).
pub const ENROLL_KEY: &str = "enroll-key.pem";

/// Enrolls: generates a key here (it never leaves the host), sends a CSR with the bootstrap
/// token over a connection that trusts only the pinned CA, and stores the certificate. Until
/// the controller answers, the key waits in [`ENROLL_KEY`]; an answer (a certificate or a
/// refusal) removes it, so after a refusal the state directory is as it was.
pub async fn enroll(
    state: &StateDir,
    controller: &str,
    server_name: Option<&str>,
    token: &str,
    ca_sha256: &str,
    agent: &AgentId,
) -> Result<Identity, SessionError> {
    let key = match state.read(ENROLL_KEY)? {
        Some(pem) => {
            let pem = String::from_utf8(pem).map_err(|e| SessionError::Tls(format!("{ENROLL_KEY}: {e}")))?;
            pki::KeyPair::from_pem(&pem).map_err(|e| SessionError::Tls(format!("{ENROLL_KEY}: {e}")))?
        }
        None => {
            let key = pki::generate_key().map_err(|e| SessionError::Tls(e.to_string()))?;
            state.write(ENROLL_KEY, key.serialize_pem().as_bytes(), 0o600)?;
            key
        }
    };
    let answered = |state: &StateDir| {
        let _ = std::fs::remove_file(state.root().join(ENROLL_KEY));
    };
    let csr = pki::csr(&key).map_err(|e| SessionError::Tls(e.to_string()))?;
    let addr = resolve(controller).await?;
    let server_name = server_name.map(str::to_owned).unwrap_or_else(|| host_of(controller));
    let tls = tls::enrollment_client_config(ca_sha256).map_err(|e| SessionError::Tls(e.to_string()))?;
    let endpoint = transport::client_endpoint(addr).map_err(|e| SessionError::Tls(e.to_string()))?;
    let config = transport::client_config(tls, Timing::default()).map_err(|e| SessionError::Tls(e.to_string()))?;
    let connecting = endpoint
        .connect_with(config, addr, &server_name)
        .map_err(|e| SessionError::Connect { addr: controller.into(), message: e.to_string() })?;
    let conn = connecting.await.map_err(|e| SessionError::Connect {
        addr: controller.into(),
        message: transport::explain(&e, &server_name),
    })?;
    let (send, recv) =
        conn.open_bi().await.map_err(|e| SessionError::Protocol(transport::explain(&e, &server_name)))?;
    let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
    let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
    let request = proto::EnrollRequest {
        token: token.into(),
        namespace: agent.namespace.clone(),
        agent: agent.name.clone(),
        csr_der: csr,
    };
    tx.send(&AgentMessage { body: Some(agent_message::Body::Enroll(request)) })
        .await
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let reply: Option<ControllerMessage> = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .map_err(|_| SessionError::Protocol("the controller did not answer the enrollment".into()))?
        .map_err(|e| SessionError::Protocol(e.to_string()))?;
    let Some(ControllerMessage { body: Some(controller_message::Body::Enrolled(resp)) }) = reply else {
        let why =
            conn.close_reason().map(|e| transport::explain(&e, &server_name)).unwrap_or_else(|| "no answer".into());
        return Err(SessionError::EnrollmentRefused(why));
    };
    if !resp.error.is_empty() {
        answered(state);
        return Err(SessionError::EnrollmentRefused(resp.error));
    }
    if identity::sha256_fingerprint(&resp.ca_der) != ca_sha256.trim().to_ascii_lowercase() {
        return Err(SessionError::Tls("the CA the controller returned does not match the pinned --ca-sha256".into()));
    }
    let granted = identity::agent_id(&resp.certificate_der, DEFAULT_TRUST_DOMAIN)
        .map_err(|e| SessionError::Tls(e.to_string()))?;
    if &granted != agent {
        return Err(SessionError::Tls(format!("the controller issued a certificate for {granted}, not {agent}")));
    }
    conn.close(0u32.into(), b"enrolled");
    let cert = CertificateDer::from(resp.certificate_der);
    let ca = CertificateDer::from(resp.ca_der);
    store_credentials(state, &cert, &key.serialize_pem())?;
    state.write(CA, pki::cert_pem(&ca).as_bytes(), 0o644)?;
    let id = Identity {
        namespace: agent.namespace.clone(),
        name: agent.name.clone(),
        controller: controller.into(),
        server_name,
    };
    state.write(IDENTITY, serde_yaml::to_string(&id).unwrap_or_default().as_bytes(), 0o644)?;
    answered(state);
    Ok(id)
}
