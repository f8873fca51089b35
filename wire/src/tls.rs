//! TLS for the control protocol: TLS 1.3 only, ALPN `shopfloor/1`, client certificates chained
//! to the plant CA, a hot-swappable server certificate, and the pinned-CA verifier agents use at
//! enrollment (before they trust anything else).

use std::sync::{Arc, RwLock};

use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::{ALPN, identity::sha256_fingerprint};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider every config uses: ring, TLS 1.3 suites only, AES-128-GCM/SHA-256
/// preferred. ring's default prefers AES-256-GCM/SHA-384, whose key schedule runs SHA-512 in
/// software on CPUs without SHA-512 instructions (most x86 today) while SHA-256 has hardware
/// support: measured, that was a fifth of the controller's CPU per handshake.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The controller's certificate, replaceable while connections stay up: rustls asks the resolver
/// at every handshake, so live connections keep the certificate they negotiated with.
#[derive(Debug)]
pub struct ServerCerts {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCerts {
    /// `chain` is the server certificate followed by the CA, so enrolling agents can find the CA
    /// they pinned.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self { current: RwLock::new(Arc::new(certified(chain, key)?)) }))
    }

    pub fn replace(&self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<(), TlsError> {
        let ck = Arc::new(certified(chain, key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, TlsError> {
    let signer = provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signer))
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The controller's TLS config. Client certificates are verified against the plant CA when
/// presented; a connection without one may only enroll (the endpoint enforces that).
pub fn server_config(ca: &CertificateDer<'static>, certs: Arc<ServerCerts>) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider()).allow_unauthenticated().build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: a command replayed from early data could actuate twice.
    config.max_early_data_size = 0;
    Ok(config)
}

/// An enrolled agent's TLS config: trusts the plant CA, presents its certificate.
pub fn client_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The TLS config for enrollment: no client certificate; the server is trusted if its chain
/// contains the CA whose SHA-256 the operator pinned, and its certificate is valid for the
/// dialled name under that CA.
pub fn enrollment_client_config(ca_sha256: &str) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCa { pin: ca_sha256.trim().to_ascii_lowercase(), provider: provider() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Message of the error an enrolling agent gets when the CA does not match its pin.
pub const PIN_MISMATCH: &str = "the controller's CA does not match the pinned --ca-sha256";

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_fingerprint(c) == self.pin)
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
