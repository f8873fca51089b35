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
    // No resumption: every handshake verifies the agent's certificate chain and expiry afresh (a
    // resumed one would take them from a ticket up to a day old), and no ticket cache is kept.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
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
    // An agent keeps this configuration across attempts; it must not resume a session either.
    config.resumption = rustls::client::Resumption::disabled();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::{ClientConnection, Connection, HandshakeKind, ServerConnection};

    use super::*;
    use crate::{identity::AgentId, pki};

    /// Hands everything `from` has to send to `to`.
    fn pass(from: &mut Connection, to: &mut Connection) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).expect("writes");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("reads");
            to.process_new_packets().expect("accepts");
        }
    }

    /// Drives a handshake between `client` and `server` in memory to its end.
    fn handshake(client: &mut Connection, server: &mut Connection) {
        for _ in 0..20 {
            pass(client, server);
            pass(server, client);
            if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    /// An agent dials again and again with one configuration (it keeps it across attempts):
    /// every handshake is a full one, so the controller verifies the agent's certificate each
    /// time instead of resuming a session from a ticket.
    #[test]
    fn an_agent_dialling_again_with_one_configuration_never_resumes_a_session() {
        let ca = pki::Ca::generate("test CA", Duration::from_secs(3600)).expect("ca");
        let (cert, key) = ca.issue_server(&["controller".into()], Duration::from_secs(3600)).expect("server cert");
        let certs = ServerCerts::new(vec![cert, ca.cert_der().clone()], key).expect("certs");
        let server = Arc::new(server_config(ca.cert_der(), certs).expect("server config"));
        let agent_key = pki::generate_key().expect("key");
        let agent_cert = ca
            .sign_agent_csr(
                &pki::csr(&agent_key).expect("csr"),
                &AgentId::new("plant-a", "line-1"),
                crate::identity::DEFAULT_TRUST_DOMAIN,
                Duration::from_secs(3600),
            )
            .expect("agent cert");
        let client = Arc::new(
            client_config(ca.cert_der(), vec![agent_cert], PrivateKeyDer::Pkcs8(agent_key.serialize_der().into()))
                .expect("client config"),
        );
        for attempt in 0..3 {
            let name = ServerName::try_from("controller").expect("name");
            let mut c = Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
            let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
            handshake(&mut c, &mut s);
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full), "attempt {attempt}");
            assert!(s.peer_certificates().is_some_and(|p| !p.is_empty()), "attempt {attempt}: the agent's certificate");
        }
    }
}
