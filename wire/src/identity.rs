//! Who a peer is: an agent's identity is a SPIFFE URI in its verified certificate,
//! `spiffe://<trust-domain>/ns/<namespace>/edgeagent/<name>` — never a message field.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 of a DER certificate, lower-case hex: what agents pin and statuses record.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

/// The trust domain of a plant unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "shopfloor";

/// An EdgeAgent's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId {
    pub namespace: String,
    pub name: String,
}

impl AgentId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    pub fn spiffe_uri(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{}/edgeagent/{}", self.namespace, self.name)
    }

    /// Parses a SPIFFE URI of this trust domain.
    pub fn from_spiffe_uri(uri: &str, trust_domain: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/ns/")?;
        let (ns, rest) = rest.split_once('/')?;
        let name = rest.strip_prefix("edgeagent/")?;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        (label(ns) && label(name)).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the controller records about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
    /// SHA-256 of the DER encoding, lower-case hex.
    pub sha256: String,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error(
        "the certificate carries no Shopfloor agent identity (a SAN URI spiffe://{0}/ns/<namespace>/edgeagent/<name>)"
    )]
    NoIdentity(String),
    #[error("the certificate carries {0} agent identities; exactly one is allowed")]
    Ambiguous(usize),
}

/// Reads the fields the controller records from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => ip_addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())),
                        16 => ip_addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(CertInfo {
        serial: hex::encode(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        sha256: sha256_fingerprint(der),
        uris,
        dns_names,
        ip_addresses,
    })
}

/// The single agent identity in a (verified) certificate.
pub fn agent_id(der: &[u8], trust_domain: &str) -> Result<AgentId, IdentityError> {
    let info = cert_info(der)?;
    let ids: Vec<AgentId> = info.uris.iter().filter_map(|u| AgentId::from_spiffe_uri(u, trust_domain)).collect();
    match ids.len() {
        0 => Err(IdentityError::NoIdentity(trust_domain.to_owned())),
        1 => Ok(ids.into_iter().next().expect("one")),
        n => Err(IdentityError::Ambiguous(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_uris_round_trip_and_refuse_other_shapes() {
        let id = AgentId::new("plant-a", "line-1");
        let uri = id.spiffe_uri("shopfloor");
        assert_eq!(uri, "spiffe://shopfloor/ns/plant-a/edgeagent/line-1");
        assert_eq!(AgentId::from_spiffe_uri(&uri, "shopfloor"), Some(id));
        for bad in [
            "spiffe://other/ns/plant-a/edgeagent/line-1",
            "spiffe://shopfloor/ns/plant-a/controller/x",
            "spiffe://shopfloor/ns/Plant/edgeagent/line-1",
            "spiffe://shopfloor/ns/plant-a/edgeagent/",
            "https://shopfloor/ns/plant-a/edgeagent/line-1",
            "spiffe://shopfloor/ns/plant-a/edgeagent/line-1/extra",
        ] {
            assert_eq!(AgentId::from_spiffe_uri(bad, "shopfloor"), None, "{bad}");
        }
    }
}
