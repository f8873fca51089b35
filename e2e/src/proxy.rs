//! A userspace UDP impairment proxy: sits between agents and the controller and delays,
//! jitters, drops or blackholes datagrams. (tc netem is not available on the CI machines.)
//!
//! Each client address gets its own upstream socket, so the server sees one peer per client
//! exactly as without the proxy, and QUIC connection migration is not triggered.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{net::UdpSocket, task::JoinHandle};

/// What the network does to each datagram, in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Added to every datagram.
    pub delay: Duration,
    /// Uniformly random extra delay in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability of dropping a datagram, 0.0..=1.0.
    pub loss: f64,
    /// Drop everything.
    pub partitioned: bool,
    /// Drop only what the client sends upstream: the client hears the server but cannot answer
    /// (a result that never gets back, reconnect attempts that go nowhere).
    pub upstream_cut: bool,
}

/// Datagram counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct UdpProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    impairment: Arc<Mutex<Impairment>>,
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small, fast PRNG (xorshift64*): the proxy needs cheap coin flips, not cryptography.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Shared {
    impairment: Arc<Mutex<Impairment>>,
    counters: Arc<Counters>,
    rng: Mutex<Rng>,
}

impl Shared {
    /// `None` to drop, else how long to hold the datagram going `upstream` (or back down).
    fn verdict(&self, upstream: bool) -> Option<Duration> {
        let imp = *self.impairment.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if imp.partitioned || (upstream && imp.upstream_cut) || (imp.loss > 0.0 && rng.next_f64() < imp.loss) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        Some(imp.delay + imp.jitter.mul_f64(rng.next_f64()))
    }
}

/// Sends now (in order) or after `after` (on its own timer, so jitter can reorder datagrams as
/// a real network does).
async fn forward(socket: &Arc<UdpSocket>, data: &[u8], to: SocketAddr, after: Duration) {
    if after.is_zero() {
        let _ = socket.send_to(data, to).await;
        return;
    }
    let (socket, data) = (socket.clone(), data.to_vec());
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = socket.send_to(&data, to).await;
    });
}

impl UdpProxy {
    /// Listens on `listen` and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let addr = front.local_addr()?;
        let to = Arc::new(Mutex::new(upstream));
        let upstream_now = to.clone();
        let impairment = Arc::new(Mutex::new(Impairment::default()));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            impairment: impairment.clone(),
            counters: counters.clone(),
            rng: Mutex::new(Rng(seed | 1)),
        });
        let task = tokio::spawn(async move {
            let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else { continue };
                let back = match clients.get(&from) {
                    Some(s) => s.clone(),
                    None => {
                        let bind: SocketAddr = if upstream.is_ipv4() {
                            ([127, 0, 0, 1], 0).into()
                        } else {
                            "[::1]:0".parse().expect("v6")
                        };
                        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
                        let sock = Arc::new(sock);
                        clients.insert(from, sock.clone());
                        // Replies from upstream go back to this client through the front socket.
                        let (front, sock2, shared) = (front.clone(), sock.clone(), shared.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = sock2.recv_from(&mut buf).await {
                                if let Some(after) = shared.verdict(false) {
                                    forward(&front, &buf[..n], from, after).await;
                                }
                            }
                        });
                        sock
                    }
                };
                if let Some(after) = shared.verdict(true) {
                    let upstream = *upstream_now.lock().unwrap_or_else(|p| p.into_inner());
                    forward(&back, &buf[..n], upstream, after).await;
                }
            }
        });
        Ok(Self { addr, upstream: to, impairment, counters, task })
    }

    /// Forwards to `upstream` from now on (a Service whose endpoint changed).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    pub fn set(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap_or_else(|p| p.into_inner()) = impairment;
    }

    pub fn partition(&self, on: bool) {
        self.impairment.lock().unwrap_or_else(|p| p.into_inner()).partitioned = on;
    }

    /// Drops (or stops dropping) only the client-to-upstream direction.
    pub fn cut_upstream(&self, on: bool) {
        self.impairment.lock().unwrap_or_else(|p| p.into_inner()).upstream_cut = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> (SocketAddr, JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = s.local_addr().expect("addr");
        let t = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        (addr, t)
    }

    async fn round_trips(client: &UdpSocket, n: usize, wait: Duration) -> usize {
        let mut ok = 0;
        let mut buf = [0u8; 64];
        for i in 0..n {
            client.send(&(i as u32).to_be_bytes()).await.expect("send");
            if tokio::time::timeout(wait, client.recv(&mut buf)).await.is_ok() {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test]
    async fn forwards_both_ways_and_honours_partition_loss_and_delay() {
        let (upstream, _echo) = echo().await;
        let proxy = UdpProxy::start("127.0.0.1:0".parse().expect("addr"), upstream, 42).await.expect("proxy");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.connect(proxy.addr).await.expect("connect");
        assert_eq!(round_trips(&client, 20, Duration::from_millis(200)).await, 20);

        proxy.partition(true);
        assert_eq!(round_trips(&client, 5, Duration::from_millis(50)).await, 0);
        proxy.partition(false);

        proxy.set(Impairment { loss: 0.5, ..Default::default() });
        let ok = round_trips(&client, 100, Duration::from_millis(20)).await;
        // Each round trip survives two coin flips: about a quarter get through.
        assert!((8..=45).contains(&ok), "{ok} of 100 round trips at 50% loss each way");

        proxy.set(Impairment { delay: Duration::from_millis(40), ..Default::default() });
        let t = std::time::Instant::now();
        assert_eq!(round_trips(&client, 1, Duration::from_secs(1)).await, 1);
        assert!(t.elapsed() >= Duration::from_millis(80), "delay applies in both directions: {:?}", t.elapsed());
    }
}
