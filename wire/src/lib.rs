//! Shopfloor's control protocol between the controller and its edge agents: the messages
//! (`proto`, protobuf), their framing (`codec`), the PKI (`pki`), TLS with the agent identity in
//! the certificate (`tls`, `identity`), the QUIC transport (`transport`), reconnection backoff
//! (`backoff`) and the command rate limits both ends enforce (`rate`). See `docs/protocol.md`.
//!
//! This crate never depends on Kubernetes: the agent links it, and a third party can implement
//! the protocol from `proto/shopfloor.proto` and the documentation alone.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod close_code;
pub mod codec;
pub mod conversation;
pub mod identity;
pub mod pki;
pub mod proto;
pub mod rate;
pub mod time;
pub mod tls;
pub mod transport;
pub mod udp;
pub mod value;

/// TLS application protocol negotiated on every connection.
pub const ALPN: &[u8] = b"shopfloor/1";

/// Protocol versions this build speaks.
pub const PROTOCOL_VERSIONS: &[u32] = &[1];
