//! A handshake flood, as an attacker or a misbehaving fleet produces one: QUIC Initial packets,
//! each opening a handshake whose sender never answers the server. The Initials are real —
//! made by quinn-proto's client state machine, one connection each, then abandoned — so the
//! server does all the work a real flood costs it.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use shopfloor_wire::{tls, transport};

/// Sends `n` half-open handshakes to `target` from one UDP socket and returns how many went
/// out. Replies are never read.
pub async fn half_open_handshakes(target: SocketAddr, n: usize) -> std::io::Result<usize> {
    let socket = tokio::net::UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).await?;
    // Any client configuration will do: the handshake never gets as far as checking it.
    let crypto = tls::enrollment_client_config(&"00".repeat(32)).map_err(std::io::Error::other)?;
    let config = transport::client_config(crypto, transport::Timing::default())?;
    let mut endpoint = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let mut buf = Vec::with_capacity(1500);
    let mut sent = 0;
    for _ in 0..n {
        let now = Instant::now();
        let Ok((_, mut conn)) = endpoint.connect(now, config.clone(), target, "shopfloor-controller") else {
            break;
        };
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            socket.send_to(&buf[..t.size], target).await?;
            sent += 1;
        }
        // The connection is dropped here: its handshake is never continued.
    }
    Ok(sent)
}
