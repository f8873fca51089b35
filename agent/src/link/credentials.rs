//! The agent's identity and credentials in its state directory: the certificate and key (one
//! file, replaced atomically), the plant CA, and where the controller is.

use std::net::SocketAddr;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use shopfloor_wire::{identity, pki};

use super::error::SessionError;
use crate::state::StateDir;

pub(super) const CREDENTIALS: &str = "agent.pem";
pub(super) const CA: &str = "ca.crt";
pub(super) const IDENTITY: &str = "identity.yaml";

/// What `enroll` records besides the credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub controller: String,
    /// The name the controller's certificate is checked against.
    pub server_name: String,
}

/// `secs` (Unix time) as "N hours ago", for messages about a past expiry.
pub(super) fn unix_to_string(secs: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let ago = (now - secs).max(0);
    format!("unix time {secs}, {} h {} min ago", ago / 3600, (ago % 3600) / 60)
}

pub(super) async fn resolve(controller: &str) -> Result<SocketAddr, SessionError> {
    tokio::net::lookup_host(controller)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| SessionError::Connect { addr: controller.into(), message: "cannot resolve the address".into() })
}

/// The host part of `host:port`, the default server name.
pub fn host_of(controller: &str) -> String {
    match controller.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => controller.to_owned(),
    }
}

/// Certificate and key in one file, so they are replaced together atomically.
pub(super) fn store_credentials(
    state: &StateDir,
    cert: &CertificateDer<'_>,
    key_pem: &str,
) -> Result<(), SessionError> {
    let text = format!("{}{}", pki::cert_pem(cert), key_pem);
    Ok(state.write(CREDENTIALS, text.as_bytes(), 0o600)?)
}

pub(super) struct Credentials {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub ca: CertificateDer<'static>,
    pub not_after: i64,
}

pub(super) fn load_credentials(state: &StateDir) -> Result<Credentials, SessionError> {
    let creds = state.read(CREDENTIALS)?.ok_or_else(|| SessionError::NotEnrolled(CREDENTIALS.into()))?;
    let cert = CertificateDer::from_pem_slice(&creds).map_err(|e| state.quarantine(CREDENTIALS, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&creds).map_err(|e| state.quarantine(CREDENTIALS, e.to_string()))?;
    let ca_pem = state.read(CA)?.ok_or_else(|| SessionError::NotEnrolled(CA.into()))?;
    let ca = CertificateDer::from_pem_slice(&ca_pem).map_err(|e| state.quarantine(CA, e.to_string()))?;
    let info = identity::cert_info(&cert).map_err(|e| SessionError::Tls(e.to_string()))?;
    Ok(Credentials { cert, key, ca, not_after: info.not_after_unix })
}

pub fn load_identity(state: &StateDir) -> Result<Identity, SessionError> {
    state
        .read_parsed(IDENTITY, |b| serde_yaml::from_slice(b).map_err(|e| e.to_string()))?
        .ok_or_else(|| SessionError::NotEnrolled(IDENTITY.into()))
}
