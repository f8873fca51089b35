//! Issuing agent certificates from the plant CA, and recording each in the book before the
//! agent can use it (its next handshake is checked against that record).

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use shopfloor_api::{common::Time, edge_agent::CertificateStatus};
use shopfloor_wire::{
    identity::{self, AgentId, DEFAULT_TRUST_DOMAIN},
    pki::Ca,
};

use crate::{
    agents::book::AgentBook,
    store::{ObjectKey, Store},
};

/// Signs agents' CSRs.
pub struct Issuer<S: Store> {
    pub ca: Arc<Ca>,
    pub book: Arc<AgentBook<S>>,
}

impl<S: Store> std::fmt::Debug for Issuer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").finish_non_exhaustive()
    }
}

impl<S: Store> Issuer<S> {
    /// A certificate for `key` from `csr`, for the lifetime its EdgeAgent asks; `enrolled` marks
    /// a first certificate (an enrollment) rather than a renewal.
    pub async fn issue(&self, key: &ObjectKey, csr: &[u8], enrolled: bool) -> Result<Vec<u8>, String> {
        let agent = self.book.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
        let lifetime: Duration = agent.spec.certificate.duration.into();
        let der = self
            .ca
            .sign_agent_csr(csr, &AgentId::new(key.namespace.clone(), key.name.clone()), DEFAULT_TRUST_DOMAIN, lifetime)
            .map_err(|e| e.to_string())?;
        let info = identity::cert_info(&der).map_err(|e| e.to_string())?;
        let status = CertificateStatus {
            serial: Some(info.serial),
            not_after: Timestamp::from_second(info.not_after_unix).ok().map(Time),
            sha256_fingerprint: Some(info.sha256),
        };
        self.book
            .record_certificate(key, status, enrolled)
            .await
            .map_err(|e| format!("cannot record the certificate: {e}"))?;
        Ok(der.to_vec())
    }
}
