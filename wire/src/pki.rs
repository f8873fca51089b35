//! The plant's PKI: a CA, the controller's server certificate, agent certificates signed from
//! CSRs for exactly one identity. Agents generate their keys on their host; keys never travel.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::identity::{AgentId, sha256_fingerprint};

/// The key type agents hold; re-exported so the agent needs no direct rcgen dependency.
pub use rcgen::KeyPair;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(String),
    #[error("`{0}` is not a valid DNS name or IP address for a certificate")]
    BadName(String),
}

/// A DER certificate as PEM text (`-----BEGIN CERTIFICATE-----`, 64-column lines, LF).
pub fn cert_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = std::time::SystemTime::now();
    // Tolerate a little clock skew between controller and agents.
    params.not_before = (now - Duration::from_secs(300)).into();
    params.not_after = (now + lifetime).into();
}

/// The plant CA.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("sha256", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA valid for `lifetime`.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Shopfloor");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, lifetime);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self { cert_der: cert.der().clone(), cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) })
    }

    /// Loads a CA from its PEM certificate and PKCS#8 PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        use rustls_pki_types::pem::PemObject;
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::BadCsr(format!("CA certificate PEM: {e}")))?
            .into_owned();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { cert_der, cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned(), issuer })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn fingerprint(&self) -> String {
        sha256_fingerprint(&self.cert_der)
    }

    /// The controller's server certificate for these names (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(|_| PkiError::BadName(n.clone()))?),
            };
            params.subject_alt_names.push(san);
        }
        params.distinguished_name.push(DnType::CommonName, "shopfloor-controller");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
    }

    /// Signs an agent's CSR for exactly `id`: whatever names the CSR asks for are ignored; only
    /// its public key is used.
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        id: &AgentId,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names =
            vec![SanType::URI(id.spiffe_uri(trust_domain).try_into().map_err(|_| PkiError::BadName(id.to_string()))?)];
        params.distinguished_name.push(DnType::CommonName, id.to_string());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.der().clone())
    }
}

/// SHA-256 (hex) of the public key of a CSR whose signature verifies: what an enrollment retry
/// with the same key presents again.
pub fn csr_key_sha256(csr_der: &[u8]) -> Result<String, PkiError> {
    use rcgen::PublicKeyData as _;
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    Ok(sha256_fingerprint(csr.public_key.der_bytes()))
}

/// An agent's key pair, generated on its host.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate()?)
}

/// A CSR for `key` (the controller decides the names).
pub fn csr(key: &KeyPair) -> Result<Vec<u8>, PkiError> {
    let params = CertificateParams::new(Vec::<String>::new())?;
    Ok(params.serialize_request(key)?.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_become_pem_that_reads_back_as_the_same_der() {
        use rustls_pki_types::pem::PemObject;
        let ca = Ca::generate("test", Duration::from_secs(3600)).expect("ca");
        let text = cert_pem(ca.cert_der());
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n") && text.ends_with("-----END CERTIFICATE-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64), "64-column lines");
        let back = CertificateDer::from_pem_slice(text.as_bytes()).expect("parses");
        assert_eq!(&back, ca.cert_der());
    }
    use crate::identity;

    #[test]
    fn agent_certificates_carry_exactly_the_granted_identity() {
        let ca = Ca::generate("test CA", Duration::from_secs(3600)).expect("ca");
        let key = generate_key().expect("key");
        // A CSR asking for other names gets only the identity the controller grants.
        let greedy = CertificateParams::new(vec!["controller.example".to_owned()]).expect("params");
        let csr_der = greedy.serialize_request(&key).expect("csr").der().to_vec();
        let id = AgentId::new("plant-a", "line-1");
        let cert = ca.sign_agent_csr(&csr_der, &id, "shopfloor", Duration::from_secs(600)).expect("signed");
        assert_eq!(identity::agent_id(&cert, "shopfloor").expect("id"), id);
        let info = identity::cert_info(&cert).expect("info");
        assert!(info.dns_names.is_empty(), "{:?}", info.dns_names);
        assert!(info.not_after_unix - info.not_before_unix <= 900);
        assert_eq!(info.sha256.len(), 64);
        let reloaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect("reload");
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        let again = reloaded.sign_agent_csr(&csr_der, &id, "shopfloor", Duration::from_secs(600)).expect("signed");
        assert_eq!(identity::agent_id(&again, "shopfloor").expect("id"), id);
    }

    #[test]
    fn garbage_is_not_a_csr() {
        let ca = Ca::generate("test CA", Duration::from_secs(3600)).expect("ca");
        assert!(matches!(
            ca.sign_agent_csr(b"nope", &AgentId::new("a", "b"), "shopfloor", Duration::from_secs(60)),
            Err(PkiError::BadCsr(_))
        ));
    }
}
