//! Real QUIC with mutual TLS on loopback: no transport mocks.

use std::{net::SocketAddr, time::Duration};

use shopfloor_wire::{
    codec::{DEFAULT_MAX_FRAME, FrameError, FrameReader, FrameWriter},
    identity::{self, AgentId},
    pki::{self, Ca},
    proto::{self, agent_message, command_reply, controller_message},
    tls::{self, ServerCerts},
    transport::{self, Timing},
};

struct Plant {
    ca: Ca,
    server: quinn::Endpoint,
    addr: SocketAddr,
}

fn plant() -> Plant {
    let ca = Ca::generate("plant CA", Duration::from_secs(3600)).expect("ca");
    let (cert, key) =
        ca.issue_server(&["127.0.0.1".into(), "localhost".into()], Duration::from_secs(3600)).expect("server cert");
    let certs = ServerCerts::new(vec![cert, ca.cert_der().clone()], key).expect("certs");
    let config = tls::server_config(ca.cert_der(), certs).expect("tls");
    let server =
        transport::server_endpoint("127.0.0.1:0".parse().expect("addr"), config, Timing::default()).expect("endpoint");
    let addr = server.local_addr().expect("addr");
    Plant { ca, server, addr }
}

fn agent_tls(ca: &Ca, id: &AgentId) -> rustls::ClientConfig {
    let key = pki::generate_key().expect("key");
    let cert =
        ca.sign_agent_csr(&pki::csr(&key).expect("csr"), id, "shopfloor", Duration::from_secs(600)).expect("signed");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    tls::client_config(ca.cert_der(), vec![cert], key).expect("client tls")
}

async fn dial(
    tls: rustls::ClientConfig,
    addr: SocketAddr,
    name: &str,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = transport::client_endpoint(addr).expect("client endpoint");
    let config = transport::client_config(tls, Timing::default()).expect("config");
    endpoint.connect_with(config, addr, name).expect("connect").await
}

#[tokio::test]
async fn handshake_identity_and_a_command_round_trip() {
    let p = plant();
    let id = AgentId::new("plant-a", "line-1");
    let server = p.server.clone();
    let controller = tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("handshake");
        let cert = transport::peer_certificate(&conn).expect("client certificate");
        let who = identity::agent_id(&cert, "shopfloor").expect("identity");
        // The control stream: Hello in, Welcome out.
        let (send, recv) = conn.accept_bi().await.expect("control stream");
        let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
        let hello: proto::AgentMessage = rx.next().await.expect("frame").expect("hello");
        assert!(matches!(hello.body, Some(agent_message::Body::Hello(ref h)) if h.held_revision == "r1"));
        let welcome = proto::ControllerMessage {
            body: Some(controller_message::Body::Welcome(proto::Welcome { protocol_version: 1, ..Default::default() })),
        };
        tx.send(&welcome).await.expect("welcome");
        // One command on its own stream.
        let (send, recv) = conn.open_bi().await.expect("command stream");
        let mut ctx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
        let mut crx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        ctx.send(&proto::Command {
            id: "c1".into(),
            equipment: "press".into(),
            action: "stop".into(),
            ..Default::default()
        })
        .await
        .expect("command");
        let ack: proto::CommandReply = crx.next().await.expect("frame").expect("ack");
        let result: proto::CommandReply = crx.next().await.expect("frame").expect("result");
        assert!(matches!(ack.body, Some(command_reply::Body::Ack(_))));
        let Some(command_reply::Body::Result(r)) = result.body else { panic!("result expected") };
        (who, r.code, conn.rtt())
    });
    let conn = dial(agent_tls(&p.ca, &id), p.addr, "127.0.0.1").await.expect("connected");
    let (send, recv) = conn.open_bi().await.expect("control");
    let mut tx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
    let mut rx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
    let hello = proto::AgentMessage {
        body: Some(agent_message::Body::Hello(proto::Hello {
            held_revision: "r1".into(),
            protocol_versions: vec![1],
            ..Default::default()
        })),
    };
    tx.send(&hello).await.expect("hello");
    let welcome: proto::ControllerMessage = rx.next().await.expect("frame").expect("welcome");
    assert!(matches!(welcome.body, Some(controller_message::Body::Welcome(_))));
    let (send, recv) = conn.accept_bi().await.expect("command stream");
    let mut crx = FrameReader::new(recv, DEFAULT_MAX_FRAME);
    let mut ctx = FrameWriter::new(send, DEFAULT_MAX_FRAME);
    let cmd: proto::Command = crx.next().await.expect("frame").expect("command");
    let reply = |body| proto::CommandReply { body: Some(body) };
    ctx.send(&reply(command_reply::Body::Ack(proto::CommandAck { id: cmd.id.clone(), ..Default::default() })))
        .await
        .expect("ack");
    let result = proto::CommandResult { id: cmd.id, code: proto::ResultCode::Ok as i32, ..Default::default() };
    ctx.send(&reply(command_reply::Body::Result(result))).await.expect("result");
    let (who, code, rtt) = controller.await.expect("controller");
    assert_eq!(who, id, "the identity comes from the certificate");
    assert_eq!(code, proto::ResultCode::Ok as i32);
    assert!(rtt < Duration::from_secs(1));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let p = plant();
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });
    let other = Ca::generate("someone else", Duration::from_secs(3600)).expect("ca");
    // Trusts the right CA for the server, but presents a certificate from another CA.
    let key = pki::generate_key().expect("key");
    let cert = other
        .sign_agent_csr(
            &pki::csr(&key).expect("csr"),
            &AgentId::new("plant-a", "x"),
            "shopfloor",
            Duration::from_secs(600),
        )
        .expect("cert");
    let tls = tls::client_config(
        p.ca.cert_der(),
        vec![cert],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("tls");
    // TLS 1.3: the client may finish its side before the server's verdict arrives; then the
    // connection closes right after.
    let err = match dial(tls, p.addr, "127.0.0.1").await {
        Ok(conn) => tokio::time::timeout(Duration::from_secs(3), conn.closed()).await.expect("closed by the server"),
        Err(e) => e,
    };
    let msg = transport::explain(&err, "127.0.0.1");
    assert!(msg.contains("does not accept this agent's certificate"), "{msg}");
}

#[tokio::test]
async fn dialling_a_name_outside_the_server_certificate_says_so() {
    let p = plant();
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });
    let err = dial(agent_tls(&p.ca, &AgentId::new("plant-a", "line-1")), p.addr, "controller.plant.example")
        .await
        .expect_err("wrong name");
    let msg = transport::explain(&err, "controller.plant.example");
    assert!(msg.contains("not valid for `controller.plant.example`"), "{msg}");
    assert!(msg.contains("--server-name"), "{msg}");
}

#[tokio::test]
async fn enrollment_trusts_only_the_pinned_ca() {
    let p = plant();
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            if let Ok(conn) = incoming.await {
                assert!(transport::peer_certificate(&conn).is_none(), "enrollment has no client certificate");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let ok = dial(tls::enrollment_client_config(&p.ca.fingerprint()).expect("tls"), p.addr, "127.0.0.1").await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let wrong = "0".repeat(64);
    let err =
        dial(tls::enrollment_client_config(&wrong).expect("tls"), p.addr, "127.0.0.1").await.expect_err("pin mismatch");
    let msg = transport::explain(&err, "127.0.0.1");
    assert!(msg.contains("does not match the pinned --ca-sha256"), "{msg}");
}

#[tokio::test]
async fn an_oversized_frame_is_refused_without_reading_it() {
    let p = plant();
    let server = p.server.clone();
    let controller = tokio::spawn(async move {
        let conn = server.accept().await.expect("incoming").await.expect("handshake");
        let (_send, recv) = conn.accept_bi().await.expect("stream");
        let mut rx = FrameReader::new(recv, 1024);
        let r: Result<Option<proto::AgentMessage>, FrameError> = rx.next().await;
        r.err()
    });
    let conn =
        dial(agent_tls(&p.ca, &AgentId::new("plant-a", "line-1")), p.addr, "127.0.0.1").await.expect("connected");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(&(10_000_000u32).to_be_bytes()).await.expect("header");
    send.write_all(&[0u8; 2048]).await.expect("body");
    let err = controller.await.expect("controller").expect("an error");
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    assert!(err.is_protocol_violation());
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_with_a_message_that_says_so() {
    let p = plant();
    let server = p.server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.await;
        }
    });
    let key = pki::generate_key().expect("key");
    // Valid from five minutes ago until now: expired by the time it is presented.
    let cert = p
        .ca
        .sign_agent_csr(&pki::csr(&key).expect("csr"), &AgentId::new("plant-a", "line-1"), "shopfloor", Duration::ZERO)
        .expect("cert");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tls = tls::client_config(
        p.ca.cert_der(),
        vec![cert],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("tls");
    let err = match dial(tls, p.addr, "127.0.0.1").await {
        Ok(conn) => tokio::time::timeout(Duration::from_secs(3), conn.closed()).await.expect("closed by the server"),
        Err(e) => e,
    };
    let msg = transport::explain(&err, "127.0.0.1");
    assert!(msg.contains("expired") && msg.contains("re-enroll"), "{msg}");
}
