//! The agent's UDP socket: one datagram per receive buffer. quinn sizes an endpoint's receive
//! buffer for the socket's GRO segments (64 on Linux) times its batch (32): 3 MiB, zeroed, for
//! every endpoint, and an agent makes one per connection attempt. A fleet simulator with
//! thousands of agents in one process ran out of memory on it (about 2 MiB resident per agent).
//! An agent's link carries small control messages at low rates, so GRO buys it nothing: with GRO
//! off the buffer is 46 KiB.

use std::{
    fmt,
    io::{self, IoSliceMut},
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use quinn::{
    AsyncUdpSocket, Runtime, UdpPoller,
    udp::{RecvMeta, Transmit},
};

/// A socket that reports (and, on Linux, is set to) one datagram per receive.
struct WithoutGro(Arc<dyn AsyncUdpSocket>);

impl fmt::Debug for WithoutGro {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WithoutGro").field(&self.0).finish()
    }
}

impl AsyncUdpSocket for WithoutGro {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.0.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// A client endpoint bound to `bind`, receiving one datagram per buffer.
pub fn client_endpoint(bind: SocketAddr) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    // The same socket, to change what quinn set on it: it turns GRO on when it wraps it.
    #[cfg(target_os = "linux")]
    let same = socket.try_clone()?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let wrapped = runtime.wrap_udp_socket(socket)?;
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt::UdpGroSegment};
        // Without this the kernel could hand over several datagrams in one buffer too small for
        // them (a burst sent with GSO over loopback arrives that way), and they would be lost.
        setsockopt(&same, UdpGroSegment, &false).map_err(io::Error::from)?;
    }
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(WithoutGro(wrapped)),
        runtime,
    )
}
