//! Shopfloor's control protocol between the controller and its edge agents.
//!
//! This crate never depends on Kubernetes: the agent links it, and a third party can implement
//! the protocol from its schema alone. The messages, framing, QUIC transport with mutual TLS and
//! the PKI are being built under issue #3; until then this crate only fixes the identifiers both
//! sides agree on.
#![forbid(unsafe_code)]

/// TLS application protocol negotiated on every connection.
pub const ALPN: &[u8] = b"shopfloor/1";
