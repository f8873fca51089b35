//! QUIC transport on quinn: endpoint and connection configuration, and errors a plant engineer can act on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{
    ConnectionError, IdleTimeout, TransportConfig, VarInt,
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
};
use rustls_pki_types::CertificateDer;

use crate::close_code;

/// Liveness settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
}

impl Timing {
    /// The heartbeat a Welcome asks for (`heartbeat_interval_ms`, `heartbeat_timeout_ms`), or
    /// `None` when it makes no sense (no interval, or one not shorter than the timeout): the
    /// agent then keeps what it has.
    pub fn from_terms(interval_ms: u64, timeout_ms: u64) -> Option<Self> {
        (interval_ms > 0 && interval_ms < timeout_ms).then(|| Self {
            keep_alive: Duration::from_millis(interval_ms),
            idle_timeout: Duration::from_millis(timeout_ms),
        })
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(5) }
    }
}

/// Streams the controller lets an agent open at once: the control stream, plus room for an
/// enrollment or renewal exchange. quinn keeps an entry per stream the peer may open, for the
/// life of the connection, so this limit is memory the controller spends on every agent.
pub const AGENT_BIDI_STREAMS: u32 = 4;
/// Telemetry streams an agent may have open at once (it waits for one to finish beyond that).
pub const AGENT_UNI_STREAMS: u32 = 16;
/// Commands the controller may have in flight to one agent at once, one stream each; beyond
/// that a dispatch waits for a stream to finish. Also memory: every allowed stream costs the
/// agent state for the life of the connection (256 keep an idle connection near 50 KiB).
pub const COMMAND_STREAMS: u32 = 256;

/// Transport parameters: keep-alive and idle timeout from `timing`; windows sized for control
/// traffic (small messages); stream limits per side: an agent may open few streams, the
/// controller many (one per command). `accept` is `(bidi, uni)` streams the peer may open.
fn transport_config(timing: Timing, accept: (u32, u32), keep_alive: bool) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(keep_alive.then_some(timing.keep_alive));
    t.max_idle_timeout(IdleTimeout::try_from(timing.idle_timeout).ok());
    // Plant networks (LAN, 5G URLLC) answer in well under 100 ms; starting from quinn's 333 ms
    // guess would leave a lost handshake packet unrepeated for about a second.
    t.initial_rtt(Duration::from_millis(100));
    t.max_concurrent_bidi_streams(VarInt::from_u32(accept.0));
    t.max_concurrent_uni_streams(VarInt::from_u32(accept.1));
    t.stream_receive_window(VarInt::from_u32(256 * 1024));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.send_window(2 * 1024 * 1024);
    t
}

/// The controller's side: agents open the control stream and telemetry streams. The controller
/// sends no keep-alive of its own: each agent's keep-alive and the controller's acknowledgement
/// of it keep both sides' idle timers fed, and an agent that goes away still times out. Pinging
/// from both ends would double the packets an idle fleet costs the controller.
///
/// Segmentation offload is off: with it, quinn keeps each connection's send buffer sized for a
/// batch of up to 10 datagrams (13–26 KiB, never shrunk) from its first multi-datagram flight,
/// the handshake's. The controller sends agents small messages; one datagram per send costs it
/// nothing measurable and saves that buffer on every connected agent.
/// The connection-wide receive window both sides start with.
pub const RECEIVE_WINDOW: u32 = 2 * 1024 * 1024;

/// Makes the peer answer now: quinn's API has no PING, so the connection's receive window grows
/// by one byte, a MAX_DATA frame the peer must acknowledge (a round-trip sample for this side,
/// and a packet heard). `grown` counts the bytes added so far on this connection.
pub fn elicit_ack(conn: &quinn::Connection, grown: &mut u64) {
    *grown += 1;
    let window = u64::from(RECEIVE_WINDOW).saturating_add(*grown);
    conn.set_receive_window(VarInt::from_u64(window).unwrap_or(VarInt::MAX));
}

pub fn server_transport_config(timing: Timing) -> TransportConfig {
    let mut t = transport_config(timing, (AGENT_BIDI_STREAMS, AGENT_UNI_STREAMS), false);
    t.enable_segmentation_offload(false);
    // Shopfloor sends no QUIC datagrams; quinn would otherwise let a peer queue up to 1.25 MiB
    // of them per connection.
    t.datagram_receive_buffer_size(None);
    t
}

/// The agent's side: the controller opens one stream per command and nothing else. The agent
/// keeps the connection alive (and its NAT or firewall binding open).
pub fn client_transport_config(timing: Timing) -> TransportConfig {
    transport_config(timing, (COMMAND_STREAMS, 0), true)
}

/// Connection attempts a server endpoint queues before the application takes them up; beyond
/// it, attempts are refused at once.
pub const MAX_INCOMING: usize = 1024;

/// A server endpoint on `addr`.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    timing: Timing,
) -> std::io::Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport_config(timing)));
    // Address validation costs a round trip per handshake; agents are known hosts and the
    // handshake requires a certificate anyway.
    config.retry_token_lifetime(Duration::from_secs(15));
    // Bound what connection attempts not yet taken up by the application can hold: a flood of
    // Initial packets must not grow the process (quinn's defaults allow 65,536 and 100 MiB).
    config.max_incoming(MAX_INCOMING);
    config.incoming_buffer_size(64 * 1024);
    config.incoming_buffer_size_total(8 * 1024 * 1024);
    let socket = server_socket(addr)?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, Arc::new(quinn::TokioRuntime))
}

/// What the controller asks of its socket's receive buffer. Every agent's keep-alives, reports
/// and handshakes arrive on this one socket: with the kernel's default (208 KiB) a fleet of
/// thousands overflowed it whenever the controller paused (3 million datagrams dropped while
/// 10,000 agents enrolled), lost keep-alives timed sessions out, and the reconnections made it
/// worse.
pub const SERVER_RECEIVE_BUFFER: usize = 8 * 1024 * 1024;

/// The controller's UDP socket on `addr`, with as much of [`SERVER_RECEIVE_BUFFER`] as the
/// kernel grants (`net.core.rmem_max` caps it; a warning says so).
pub fn server_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Refused only on odd platforms; the default buffer still works, for a smaller fleet.
    if let Err(e) = sock.set_recv_buffer_size(SERVER_RECEIVE_BUFFER) {
        tracing::warn!("cannot size the QUIC socket's receive buffer: {e}");
    }
    // Linux reports twice what it grants (the doubling covers its bookkeeping).
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < SERVER_RECEIVE_BUFFER {
        tracing::warn!(
            granted,
            wanted = SERVER_RECEIVE_BUFFER,
            "the QUIC socket's receive buffer is smaller than asked: a large fleet may lose packets when the controller pauses; raise net.core.rmem_max to at least {SERVER_RECEIVE_BUFFER}"
        );
    }
    Ok(socket)
}

/// A client configuration for dialling the controller.
pub fn client_config(tls: rustls::ClientConfig, timing: Timing) -> std::io::Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(client_transport_config(timing)));
    Ok(config)
}

/// A client endpoint on an ephemeral port of the right address family (see [`crate::udp`] for
/// why its socket receives one datagram per buffer).
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = if remote.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    crate::udp::client_endpoint(bind)
}

/// The verified certificate the peer presented, if any.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

/// Closes `conn` with `code` and a reason the peer logs.
pub fn close(conn: &quinn::Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// Why a connection attempt or a connection failed, in words an operator can act on.
pub fn explain(err: &ConnectionError, dialled: &str) -> String {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX) {
                close_code::UNAUTHORIZED => format!("the controller refused this agent: {reason}"),
                close_code::GOODBYE => format!("the controller closed the connection: {reason}"),
                close_code::REDIAL => format!("the controller asked this agent to dial again: {reason}"),
                close_code::REPLACED => "a newer connection of this agent replaced this one".into(),
                close_code::UNSUPPORTED_VERSION => {
                    format!("no protocol version in common with the controller: {reason}")
                }
                close_code::ENROLLMENT_REFUSED => format!("enrollment refused: {reason}"),
                close_code::FRAME_TOO_LARGE | close_code::PROTOCOL_VIOLATION => format!("protocol error: {reason}"),
                _ => format!("closed by the controller: {reason}"),
            }
        }
        ConnectionError::TransportError(_) | ConnectionError::ConnectionClosed(_) => {
            let text = err.to_string();
            let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
            // "aborted by peer": the controller refused what this agent presented; otherwise this
            // agent refused what the controller presented.
            if text.contains("aborted by peer") {
                if has(&["Expired", "expired"]) {
                    "the controller refused this agent's certificate because it has expired (the agent was offline past its lifetime): re-enroll with a new token from `kubectl shopfloor enroll <agent>`".into()
                } else if has(&["UnknownIssuer", "BadSignature", "unknown ca", "bad certificate"]) {
                    "the controller does not accept this agent's certificate (issued by another CA?): re-enroll with a new token from `kubectl shopfloor enroll <agent>`".into()
                } else if has(&["CertificateRequired", "certificate required"]) {
                    "the controller requires a client certificate: enroll this agent first".into()
                } else {
                    format!("the controller refused the handshake: {text}")
                }
            } else if has(&["NotValidForName", "not valid for name"]) {
                format!(
                    "the controller's certificate is not valid for `{dialled}`: dial a name in its certificate, or add `{dialled}` to the controller's server names (--server-name) and restart it"
                )
            } else if text.contains(crate::tls::PIN_MISMATCH) {
                format!(
                    "{}: check the --ca-sha256 printed by `kubectl shopfloor enroll <agent>`",
                    crate::tls::PIN_MISMATCH
                )
            } else if has(&["UnknownIssuer", "unknown issuer"]) {
                "the controller's certificate is not signed by the plant CA this agent trusts: re-enroll with `kubectl shopfloor enroll <agent>`".into()
            } else if has(&["Expired", "expired"]) {
                "the controller's certificate has expired: renew the controller's server certificate".into()
            } else {
                format!("transport error: {text}")
            }
        }
        ConnectionError::TimedOut => format!("no answer from the controller at {dialled} (timed out)"),
        ConnectionError::LocallyClosed => "closed locally".into(),
        ConnectionError::Reset => format!("the controller at {dialled} reset the connection (restarted?)"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_terms_that_make_no_sense_are_not_taken() {
        assert_eq!(
            Timing::from_terms(5_000, 20_000),
            Some(Timing { keep_alive: Duration::from_secs(5), idle_timeout: Duration::from_secs(20) })
        );
        assert_eq!(Timing::from_terms(0, 5_000), None, "no keep-alive at all");
        assert_eq!(Timing::from_terms(5_000, 5_000), None, "a keep-alive as long as the timeout loses the link");
    }

    /// The kernel's default (208 KiB) overflowed under a fleet; the controller asks for more and
    /// gets what `net.core.rmem_max` allows (Linux reports it doubled).
    #[test]
    fn the_controllers_socket_takes_a_receive_buffer_for_a_fleet() {
        let socket = server_socket("127.0.0.1:0".parse().expect("addr")).expect("socket");
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().expect("size");
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(SERVER_RECEIVE_BUFFER);
        let expected = SERVER_RECEIVE_BUFFER.min(max);
        println!("receive buffer: {granted} bytes granted, rmem_max {max}");
        assert!(granted >= expected, "{granted} bytes, expected at least {expected}");
    }
}
