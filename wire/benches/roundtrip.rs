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

use rustls_pki_types::{PrivateKeyDer, ServerName};
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
    let mut client_tls =
        tls::client_config(ca.cert_der(), vec![cert], PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .expect("client tls");
    client_tls.resumption = rustls::client::Resumption::disabled();
    Pki { ca, server_tls, client_tls }
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

async fn quic(p: &Pki, in_flight: usize) -> Vec<Duration> {
    let server =
        transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), p.server_tls.clone(), Timing::default())
            .expect("server");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(inc) = server.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
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
        }
    });
    let client = transport::client_endpoint(addr).expect("client");
    let conn = client
        .connect_with(
            transport::client_config(p.client_tls.clone(), Timing::default()).expect("cfg"),
            addr,
            "127.0.0.1",
        )
        .expect("connect")
        .await
        .expect("handshake");
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

fn handshakes_per_second(p: &Pki) -> f64 {
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

fn idle_memory(p: &Pki, connections: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    rt.block_on(async {
        let server = transport::server_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            p.server_tls.clone(),
            Timing { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(60) },
        )
        .expect("server");
        let addr = server.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(inc) = server.accept().await {
                if let Ok(c) = inc.await {
                    let _ = tx.send(c);
                }
            }
        });
        let client = transport::client_endpoint(addr).expect("client");
        let cfg = transport::client_config(
            p.client_tls.clone(),
            Timing { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(60) },
        )
        .expect("cfg");
        // Warm up allocator and TLS state with one connection before measuring.
        let _warm = client.connect_with(cfg.clone(), addr, "127.0.0.1").expect("connect").await.expect("hs");
        let _warm_server = rx.recv().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib();
        let mut keep = Vec::new();
        let mut server_side = Vec::new();
        for _ in 0..connections {
            keep.push(client.connect_with(cfg.clone(), addr, "127.0.0.1").expect("connect").await.expect("hs"));
            server_side.push(rx.recv().await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib();
        (after.saturating_sub(before)) as f64 / connections as f64
    })
}

fn main() {
    let p = pki();
    println!("plant CA {}", &p.ca.fingerprint()[..16]);
    // SHOPFLOOR_BENCH=memory measures only the idle-connection memory.
    if std::env::var("SHOPFLOOR_BENCH").as_deref() == Ok("memory") {
        println!(
            "resident memory per idle connection at 1000 connections (both sides): {:.1} KiB",
            idle_memory(&p, 1000)
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    println!("command round trip on loopback, {REQUESTS} requests per row (p50 / p99 / p99.9)");
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
    let hs = handshakes_per_second(&p);
    println!("full mutual-TLS QUIC handshakes on one core (client and server in the same thread): {hs:.0}/s");
    let n = 1000;
    let per = idle_memory(&p, n);
    println!("resident memory per idle connection at {n} connections (client and server side together): {per:.1} KiB");
}
