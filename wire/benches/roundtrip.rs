//! Protocol benchmark: prints figures, asserts nothing.
//!
//!     cargo bench -p shopfloor-wire --bench roundtrip
//!
//! All on loopback in one process, in one run: command round trips over QUIC (one stream per
//! command, as the controller sends them) against a raw UDP echo between two sockets (the floor)
//! and the same request/response over TCP + TLS 1.3 (tokio-rustls); full mutual-TLS handshakes
//! per second on one core; resident memory per idle connection.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameReader, FrameWriter},
    identity::AgentId,
    pki::{self, Ca},
    proto,
    tls::{self, ServerCerts},
    transport::{self, Timing},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

const REQUESTS: usize = 20_000;

fn pct(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99), at(0.999))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Pki {
    ca: Ca,
    server_tls: rustls::ServerConfig,
    client_tls: rustls::ClientConfig,
    /// The client's certificate and PKCS#8 key, for the client process of the memory figure.
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
}

fn pki() -> Pki {
    let ca = Ca::generate("bench CA", Duration::from_secs(3600)).expect("ca");
    let (cert, key) = ca.issue_server(&["127.0.0.1".into()], Duration::from_secs(3600)).expect("server");
    let certs = ServerCerts::new(vec![cert, ca.cert_der().clone()], key).expect("certs");
    let server_tls = tls::server_config(ca.cert_der(), certs).expect("server tls");
    let key = pki::generate_key().expect("key");
    let cert = ca
        .sign_agent_csr(
            &pki::csr(&key).expect("csr"),
            &AgentId::new("bench", "agent"),
            "shopfloor",
            Duration::from_secs(3600),
        )
        .expect("cert");
    let client_cert = cert.to_vec();
    let client_key = key.serialize_der();
    let client_tls = client_tls(ca.cert_der(), &client_cert, &client_key);
    Pki { ca, server_tls, client_tls, client_cert, client_key }
}

fn client_tls(ca: &CertificateDer<'static>, cert: &[u8], key: &[u8]) -> rustls::ClientConfig {
    let mut client_tls =
        tls::client_config(ca, vec![CertificateDer::from(cert.to_vec())], PrivateKeyDer::Pkcs8(key.to_vec().into()))
            .expect("client tls");
    // Every handshake in these figures is a full one.
    client_tls.resumption = rustls::client::Resumption::disabled();
    client_tls
}

fn request() -> proto::Command {
    proto::Command {
        id: "00000000-0000-0000-0000-000000000000".into(),
        equipment: "conveyor".into(),
        action: "start".into(),
        deadline_unix_micros: 1,
        ..Default::default()
    }
}

async fn run_concurrent<F, Fut>(in_flight: usize, total: usize, f: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Vec<Duration>> + Send,
{
    let per = total / in_flight;
    let mut handles = Vec::new();
    for i in 0..in_flight {
        let f = f.clone();
        handles.push(tokio::spawn(async move { f(i).await.into_iter().take(per).collect::<Vec<_>>() }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("task"));
    }
    all
}

async fn udp_floor(in_flight: usize) -> Vec<Duration> {
    let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf).await {
            let _ = server.send_to(&buf[..n], from).await;
        }
    });
    let payload = prost::Message::encode_to_vec(&request());
    run_concurrent(in_flight, REQUESTS, move |_| {
        let payload = payload.clone();
        async move {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            s.connect(addr).await.expect("connect");
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..REQUESTS / in_flight {
                let t = Instant::now();
                s.send(&payload).await.expect("send");
                let _ = tokio::time::timeout(Duration::from_secs(1), s.recv(&mut buf)).await;
                out.push(t.elapsed());
            }
            out
        }
    })
    .await
}

/// As in production: the agent (client) dials, the controller (server) opens one stream per
/// command on that connection and the agent answers on it.
async fn quic(p: &Pki, in_flight: usize) -> Vec<Duration> {
    let server =
        transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), p.server_tls.clone(), Timing::default())
            .expect("server");
    let addr = server.local_addr().expect("addr");
    let client = transport::client_endpoint(addr).expect("client");
    let agent = client
        .connect_with(
            transport::client_config(p.client_tls.clone(), Timing::default()).expect("cfg"),
            addr,
            "127.0.0.1",
        )
        .expect("connect");
    let conn = server.accept().await.expect("incoming").await.expect("handshake");
    let agent = agent.await.expect("handshake");
    tokio::spawn(async move {
        while let Ok((send, recv)) = agent.accept_bi().await {
            tokio::spawn(async move {
                let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
                let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
                if let Ok(Some(c)) = rx.next::<proto::Command>().await {
                    let r = proto::CommandReply {
                        body: Some(proto::command_reply::Body::Result(proto::CommandResult {
                            id: c.id,
                            code: 1,
                            ..Default::default()
                        })),
                    };
                    let _ = tx.send(&r).await;
                    let _ = tx.get_mut().finish();
                }
            });
        }
    });
    run_concurrent(in_flight, REQUESTS, move |_| {
        let conn = conn.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..REQUESTS / in_flight {
                let t = Instant::now();
                let (send, recv) = conn.open_bi().await.expect("stream");
                let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
                tx.send(&request()).await.expect("send");
                let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
                let _ = rx.next::<proto::CommandReply>().await.expect("reply");
                out.push(t.elapsed());
            }
            out
        }
    })
    .await
}

async fn tcp_tls(p: &Pki, in_flight: usize) -> Vec<Duration> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(p.server_tls.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(s).await else { return };
                let mut len = [0u8; 4];
                let mut buf = vec![0u8; 4096];
                while tls.read_exact(&mut len).await.is_ok() {
                    let n = u32::from_be_bytes(len) as usize;
                    if tls.read_exact(&mut buf[..n]).await.is_err() {
                        return;
                    }
                    let reply = shopfloor_wire::codec::encode_frame(&proto::CommandReply::default());
                    if tls.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(p.client_tls.clone()));
    run_concurrent(in_flight, REQUESTS, move |_| {
        let connector = connector.clone();
        async move {
            let s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let mut tls = connector.connect(ServerName::try_from("127.0.0.1").expect("name"), s).await.expect("tls");
            let frame = shopfloor_wire::codec::encode_frame(&request());
            let mut out = Vec::new();
            let mut len = [0u8; 4];
            let mut buf = vec![0u8; 4096];
            for _ in 0..REQUESTS / in_flight {
                let t = Instant::now();
                tls.write_all(&frame).await.expect("write");
                tls.read_exact(&mut len).await.expect("len");
                let n = u32::from_be_bytes(len) as usize;
                tls.read_exact(&mut buf[..n]).await.expect("body");
                out.push(t.elapsed());
            }
            out
        }
    })
    .await
}

/// CPU time of the calling thread (user + system), from /proc.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name, from `state`: utime and stime are the 12th and 13th of them
    // (some fields before them, like tpgid, can be -1).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

struct Handshakes {
    /// Wall-clock rate with the server on one thread and the clients on another.
    per_second: f64,
    /// Server CPU per handshake, and the rate one core of it sustains.
    server_cpu: Duration,
    per_core_second: f64,
    client_cpu: Duration,
    /// Both sides on one thread: the earlier, stricter reading.
    same_thread: f64,
}

fn handshakes(p: &Pki) -> Handshakes {
    const SECONDS: u64 = 4;
    let server_tls = p.server_tls.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                let server =
                    transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), server_tls, Timing::default())
                        .expect("server");
                addr_tx.send(server.local_addr().expect("addr")).expect("addr");
                let cpu0 = thread_cpu();
                let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let counter = accepted.clone();
                let serve = async move {
                    while let Some(inc) = server.accept().await {
                        let counter = counter.clone();
                        tokio::spawn(async move {
                            if let Ok(c) = inc.await {
                                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                let _ = c.closed().await;
                            }
                        });
                    }
                };
                tokio::select! { () = serve => {}, _ = stop_rx => {} }
                (accepted.load(std::sync::atomic::Ordering::Relaxed), thread_cpu() - cpu0)
            })
        })
        .expect("server thread");
    let addr = addr_rx.recv().expect("server address");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let client_cpu0 = thread_cpu();
    let (n, wall) = rt.block_on(async {
        let client = transport::client_endpoint(addr).expect("client");
        let cfg = transport::client_config(p.client_tls.clone(), Timing::default()).expect("cfg");
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(SECONDS) {
            let batch: Vec<_> =
                (0..16).map(|_| client.connect_with(cfg.clone(), addr, "127.0.0.1").expect("connect")).collect();
            for c in batch {
                c.await.expect("handshake").close(0u32.into(), b"");
                n += 1;
            }
        }
        (n, start.elapsed())
    });
    let client_cpu = (thread_cpu() - client_cpu0) / n.max(1);
    let _ = stop_tx.send(());
    let (accepted, cpu) = server.join().expect("server thread");
    let server_cpu = cpu / u32::try_from(accepted.max(1)).unwrap_or(u32::MAX);
    Handshakes {
        per_second: f64::from(n) / wall.as_secs_f64(),
        server_cpu,
        per_core_second: accepted as f64 / cpu.as_secs_f64().max(1e-9),
        client_cpu,
        same_thread: handshakes_same_thread(p),
    }
}

fn handshakes_same_thread(p: &Pki) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        let server =
            transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), p.server_tls.clone(), Timing::default())
                .expect("server");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                tokio::spawn(async move {
                    if let Ok(c) = inc.await {
                        let _ = c.closed().await;
                    }
                });
            }
        });
        let client = transport::client_endpoint(addr).expect("client");
        let cfg = transport::client_config(p.client_tls.clone(), Timing::default()).expect("cfg");
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(3) {
            let mut batch = Vec::new();
            for _ in 0..16 {
                batch.push(client.connect_with(cfg.clone(), addr, "127.0.0.1").expect("connect"));
            }
            for c in batch {
                let conn = c.await.expect("handshake");
                conn.close(0u32.into(), b"");
                n += 1;
            }
        }
        f64::from(n) / start.elapsed().as_secs_f64()
    })
}

/// Resident memory per idle connection, each side measured in its own process as it runs in
/// production (the controller holds the server ends, each agent one client end): this process
/// runs the server; a child — this benchmark re-run with `SHOPFLOOR_BENCH=memory-clients` — dials
/// and reports its own growth. Returns (server KiB, client KiB) per connection.
fn idle_memory(p: &Pki, connections: usize) -> (f64, f64) {
    use std::io::{BufRead, Write};
    let dir = std::env::temp_dir().join(format!("shopfloor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("ca.der"), p.ca.cert_der()).expect("ca");
    std::fs::write(dir.join("client.der"), &p.client_cert).expect("cert");
    std::fs::write(dir.join("client.key"), &p.client_key).expect("key");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let timing = Timing { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(60) };
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = rt.block_on(async {
        let server = transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), p.server_tls.clone(), timing)
            .expect("server");
        let addr = server.local_addr().expect("addr");
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(inc) = server.accept().await {
                if let Ok(c) = inc.await {
                    held.push(c);
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        addr
    });
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("SHOPFLOOR_BENCH", "memory-clients")
        .args([addr.to_string(), dir.display().to_string(), connections.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client process");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdin = child.stdin.take().expect("stdin");
    let wait_accepted = |n: usize| {
        while accepted.load(std::sync::atomic::Ordering::Relaxed) < n {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(lines.next().expect("child").expect("line"), "warm");
    wait_accepted(1);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    writeln!(stdin, "go").expect("go");
    let reported = lines.next().expect("child").expect("line");
    wait_accepted(connections + 1);
    std::thread::sleep(Duration::from_secs(2));
    let server = rss_kib().saturating_sub(before) as f64 / connections as f64;
    drop(stdin);
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let client = reported.strip_prefix("client ").and_then(|k| k.parse().ok()).expect("client figure");
    (server, client)
}

/// The client process of [`idle_memory`].
fn memory_clients() {
    use std::io::BufRead;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: std::net::SocketAddr = args[0].parse().expect("addr");
    let dir = std::path::PathBuf::from(&args[1]);
    let n: usize = args[2].parse().expect("count");
    let read = |f: &str| std::fs::read(dir.join(f)).expect("credentials");
    let tls = client_tls(&CertificateDer::from(read("ca.der")), &read("client.der"), &read("client.key"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let timing = Timing { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(60) };
    let client = rt.block_on(async { transport::client_endpoint(addr).expect("client") });
    let cfg = transport::client_config(tls, timing).expect("cfg");
    let dial = || {
        rt.block_on(async { client.connect_with(cfg.clone(), addr, "127.0.0.1").expect("connect").await }).expect("hs")
    };
    let _warm = dial();
    println!("warm");
    let mut stdin = std::io::stdin().lock().lines();
    let _ = stdin.next();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    let held: Vec<_> = (0..n).map(|_| dial()).collect();
    std::thread::sleep(Duration::from_secs(2));
    println!("client {:.1}", rss_kib().saturating_sub(before) as f64 / n as f64);
    // Hold the connections until the server side is measured.
    let _ = stdin.next();
    drop(held);
}

fn report_handshakes(p: &Pki) {
    let hs = handshakes(p);
    println!(
        "full mutual-TLS QUIC handshakes: {:.0}/s with the server on one thread and the clients on another; \
         server CPU {:.0} µs per handshake = {:.0} handshakes per core-second (client CPU {:.0} µs per handshake); \
         both sides on one thread: {:.0}/s",
        hs.per_second,
        hs.server_cpu.as_secs_f64() * 1e6,
        hs.per_core_second,
        hs.client_cpu.as_secs_f64() * 1e6,
        hs.same_thread
    );
}

fn main() {
    if std::env::var("SHOPFLOOR_BENCH").as_deref() == Ok("memory-clients") {
        memory_clients();
        return;
    }
    let p = pki();
    println!("plant CA {}", &p.ca.fingerprint()[..16]);
    let report_memory = |p: &Pki| {
        let n = 1000;
        let (server, client) = idle_memory(p, n);
        println!(
            "resident memory per idle connection at {n} connections, each side in its own process: \
             server {server:.1} KiB, client {client:.1} KiB"
        );
    };
    // SHOPFLOOR_BENCH=memory or =handshakes measures only that.
    match std::env::var("SHOPFLOOR_BENCH").as_deref() {
        Ok("memory") => return report_memory(&p),
        Ok("handshakes") => return report_handshakes(&p),
        _ => {}
    }
    // Both runtimes a deployment may use: one thread (every hop between the endpoint, the
    // connection and the stream tasks is a local wake-up, like the floor's single task) and two
    // worker threads (hops may cross threads). The floor and TCP run on the same runtime.
    for (label, one_thread) in [("one runtime thread", true), ("two runtime worker threads", false)] {
        let rt = if one_thread {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt")
        } else {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt")
        };
        println!("command round trip on loopback, {label}, {REQUESTS} requests per row (p50 / p99 / p99.9)");
        for in_flight in [1, 100, 1000] {
            let floor = pct(rt.block_on(udp_floor(in_flight)));
            let q = pct(rt.block_on(quic(&p, in_flight)));
            let t = pct(rt.block_on(tcp_tls(&p, in_flight)));
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "  {in_flight:>4} in flight: UDP floor {:>7.1} / {:>7.1} / {:>7.1} µs | QUIC {:>7.1} / {:>7.1} / {:>7.1} µs ({:.2}x floor at p50) | TCP+TLS {:>7.1} / {:>7.1} / {:>7.1} µs (QUIC/TCP {:.2}x at p50)",
                us(floor.0),
                us(floor.1),
                us(floor.2),
                us(q.0),
                us(q.1),
                us(q.2),
                us(q.0) / us(floor.0),
                us(t.0),
                us(t.1),
                us(t.2),
                us(q.0) / us(t.0)
            );
        }
    }
    report_handshakes(&p);
    report_memory(&p);
}
