//! The command engine over real QUIC with mutual TLS to an in-process agent.

use std::time::Duration;

use quinn::ConnectionError;
use rustls_pki_types::PrivateKeyDer;
use shopfloor_api::control_command::{CommandPhase, ResultCode};
use shopfloor_controller::endpoint;
use shopfloor_e2e::{
    fixtures,
    inprocess::{Plant, objects},
};
use shopfloor_wire::{
    close_code,
    codec::{DEFAULT_MAX_FRAME, FrameWriter},
    identity::{AgentId, DEFAULT_TRUST_DOMAIN},
    pki, proto, tls,
    transport::{self, Timing},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_commands_each_end_once_with_timestamps_and_latencies() {
    let world = objects(&fixtures::robot_cell_with_template("30s"));
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    let eq = plant.equipment("robot").clone();
    let n = 50;
    for i in 0..n {
        plant.core.reconcile_command(&Plant::command(&template, i), Some(&eq)).await.expect("reconcile");
    }
    for i in 0..n {
        let mut status = None;
        for _ in 0..400 {
            status = plant.finished(i);
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = status.unwrap_or_else(|| panic!("command {i} never finished: {:?}", plant.status(i)));
        assert_eq!(s.phase, Some(CommandPhase::Succeeded), "{s:?}");
        assert_eq!(s.result.as_ref().map(|r| r.code), Some(ResultCode::Ok));
        assert_eq!(s.attempts, 1);
        for (what, v) in [
            ("queue", s.latency.queue_micros),
            ("network", s.latency.network_micros),
            ("execution", s.latency.execution_micros),
            ("total", s.latency.total_micros),
        ] {
            assert!(v.is_some_and(|v| v >= 0), "{what} latency of command {i}: {v:?}");
        }
        assert!(s.timestamps.acknowledged_at.is_some() && s.timestamps.started_at.is_some() && s.trace_id.is_some());
    }
    assert!(
        plant.agent().status.as_ref().and_then(|s| s.certificate.as_ref()).is_some(),
        "the enrolled certificate is recorded"
    );
}

/// An agent whose wall clock is off by ±60 s or ±1 h: commands still run (not Expired at once,
/// not late), the latency breakdown is not thrown off by the skew (the agent reports its stamps on
/// the controller's clock), and the controller measures the skew for the EdgeAgent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_on_time_whatever_the_agent_clock_says() {
    use shopfloor_agent::clock::WallClock;
    const SECOND: i64 = 1_000_000;
    for skew in [-3600 * SECOND, -60 * SECOND, 60 * SECOND, 3600 * SECOND] {
        let world = objects(&fixtures::robot_cell_with_template("5s"));
        let template = world.commands[0].clone();
        let plant = Plant::start_with_agent_clock(world, WallClock::skewed(skew)).await;
        let key = shopfloor_controller::store::ObjectKey::new("plant-a", "line-1");
        let offset = plant.core.registry().get(&key).and_then(|c| c.clock_offset_micros).expect("offset measured");
        assert!((offset - skew).abs() < SECOND, "skew {skew} µs measured as {offset} µs");
        let eq = plant.equipment("robot").clone();
        for i in 0..3 {
            plant.core.reconcile_command(&Plant::command(&template, i), Some(&eq)).await.expect("reconcile");
        }
        for i in 0..3 {
            let s = plant.wait_finished(i, Duration::from_secs(15)).await;
            assert_eq!(s.result.as_ref().map(|r| r.code), Some(ResultCode::Ok), "skew {skew}: {s:?}");
            let network = s.latency.network_micros.expect("network latency");
            assert!((0..SECOND).contains(&network), "skew {skew}: network latency {network} µs");
            let execution = s.latency.execution_micros.expect("execution");
            assert!((0..SECOND).contains(&execution), "skew {skew}: execution {execution} µs");
        }
    }
}

/// A QUIC connection to the plant's controller with `cfg`.
async fn connect(plant: &Plant, cfg: quinn::ClientConfig) -> quinn::Connection {
    let client = transport::client_endpoint(plant.addr).expect("endpoint");
    client.connect_with(cfg, plant.addr, "127.0.0.1").expect("connect").await.expect("the TLS handshake succeeds")
}

/// A client configuration without a certificate, pinning the plant CA: the enrollment path.
async fn certificate_less(plant: &Plant) -> quinn::ClientConfig {
    let fingerprint = endpoint::ensure_ca(&**plant.core.store()).await.expect("ca").fingerprint();
    transport::client_config(tls::enrollment_client_config(&fingerprint).expect("tls"), Timing::default()).expect("cfg")
}

/// Dials the controller with a certificate the plant CA signed for `id` and says Hello; returns
/// how the controller ended the connection.
async fn dial_as(plant: &Plant, id: &AgentId) -> ConnectionError {
    dial(&**plant.core.store(), plant.addr, id, Duration::from_secs(5))
        .await
        .expect("the TLS handshake itself succeeds: the certificate chains to the plant CA")
}

/// As [`dial_as`], to the controller at `addr` whose CA `store` keeps; `None` when the handshake
/// is not answered within `patience`.
async fn dial(
    store: &impl shopfloor_controller::store::Store,
    addr: std::net::SocketAddr,
    id: &AgentId,
    patience: Duration,
) -> Option<ConnectionError> {
    let ca = endpoint::ensure_ca(store).await.expect("ca");
    let key = pki::generate_key().expect("key");
    let cert = ca
        .sign_agent_csr(&pki::csr(&key).expect("csr"), id, DEFAULT_TRUST_DOMAIN, Duration::from_secs(3600))
        .expect("cert");
    let tls =
        tls::client_config(ca.cert_der(), vec![cert], PrivateKeyDer::Pkcs8(key.serialize_der().into())).expect("tls");
    let client = transport::client_endpoint(addr).expect("endpoint");
    let connecting = client
        .connect_with(transport::client_config(tls, Timing::default()).expect("cfg"), addr, "127.0.0.1")
        .expect("connect");
    let conn = match tokio::time::timeout(patience, connecting).await {
        Err(_) => return None,
        Ok(Err(e)) => return Some(e),
        Ok(Ok(conn)) => conn,
    };
    if let Ok((send, _recv)) = conn.open_bi().await {
        let hello = proto::AgentMessage {
            body: Some(proto::agent_message::Body::Hello(proto::Hello {
                protocol_versions: vec![1],
                ..Default::default()
            })),
        };
        let _ = FrameWriter::new(send, DEFAULT_MAX_FRAME).send(&hello).await;
    }
    Some(
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("the controller closes the connection"),
    )
}

/// A controller that has not read its plant yet lets no agent in, rather than refuse agents
/// whose EdgeAgent it has not read as ones that do not exist: a restarted controller did, in the
/// moment between listening and reading its folder, and the refused agents backed off for up to
/// 30 s (at 10,000 agents, the last ones were back 20 s after the rest). Nor does it leave them
/// unanswered (they logged a network fault): it asks them to dial again shortly. Once it has
/// read the plant, it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_that_has_not_read_its_plant_turns_no_agent_away() {
    use shopfloor_controller::{reconcile::Reconciler, store::memory::MemoryStore};
    let core = Reconciler::new(std::sync::Arc::new(MemoryStore::default()), "starting", Duration::from_millis(200));
    let ca = endpoint::ensure_ca(&**core.store()).await.expect("ca");
    let listen = "127.0.0.1:0".parse().expect("addr");
    let ep = endpoint::Endpoint::bind(core.endpoint_context(), ca, listen, &["127.0.0.1".into()], endpoint::timing())
        .expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    tokio::spawn(ep.run());
    let id = AgentId::new("plant-a", "line-1");
    let early = dial(&**core.store(), addr, &id, Duration::from_secs(5)).await.expect("answered while starting");
    let reason = closed_because(&early, close_code::REDIAL);
    assert!(reason.contains("controller starting") && reason.contains("retry in 0.5 s"), "{reason}");
    core.reconcile_world(0, &objects(&fixtures::robot_cell_with_template("30s"))).await;
    let answer =
        dial(&**core.store(), addr, &id, Duration::from_secs(5)).await.expect("answered once the plant is read");
    let reason = refused_because(&answer);
    assert!(reason.contains("no certificate is recorded for EdgeAgent plant-a/line-1"), "{reason}");
}

fn refused_because(e: &ConnectionError) -> String {
    closed_because(e, close_code::UNAUTHORIZED)
}

fn closed_because(e: &ConnectionError, code: u32) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), u64::from(code), "{c:?}");
            String::from_utf8_lossy(&c.reason).into_owned()
        }
        other => panic!("expected a close with code {code}, got {other}"),
    }
}

/// Revocation at the handshake: a certificate signed by the plant CA for the right identity but
/// not the one recorded for it (as after a re-enrollment) is refused, and so is a certificate
/// of an EdgeAgent that does not exist (deleted), each with the reason; the enrolled agent's
/// own session is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_identity_is_refused_with_the_reason() {
    let plant = Plant::start(objects(&fixtures::robot_cell_with_template("30s"))).await;
    let stale = refused_because(&dial_as(&plant, &AgentId::new("plant-a", "line-1")).await);
    assert!(stale.contains("not the certificate recorded for EdgeAgent plant-a/line-1"), "{stale}");
    assert!(stale.contains("re-enroll"), "{stale}");
    let gone = refused_because(&dial_as(&plant, &AgentId::new("plant-a", "deleted-line")).await);
    assert!(gone.contains("EdgeAgent plant-a/deleted-line does not exist"), "{gone}");
    let key = shopfloor_controller::store::ObjectKey::new("plant-a", "line-1");
    assert!(plant.core.registry().get(&key).is_some(), "the enrolled agent stays connected");
}

/// A plant with its enrolled agent line-1, and what a second enrollment of line-1 needs.
struct Enrolling {
    plant: Plant,
    key: shopfloor_controller::store::ObjectKey,
    secret_name: String,
    fingerprint: String,
    addr: String,
    id: AgentId,
    dir: tempfile::TempDir,
}

async fn enrolling() -> Enrolling {
    let plant = Plant::start(objects(&fixtures::robot_cell_with_template("30s"))).await;
    let key = shopfloor_controller::store::ObjectKey::new("plant-a", "line-1");
    Enrolling {
        secret_name: shopfloor_controller::enrollment::token_secret_name(&key),
        fingerprint: endpoint::ensure_ca(&**plant.core.store()).await.expect("ca").fingerprint(),
        addr: plant.addr.to_string(),
        id: AgentId::new("plant-a", "line-1"),
        dir: tempfile::tempdir().expect("tmp"),
        key,
        plant,
    }
}

/// Enrollment over real QUIC: a used token and an expired one are refused with a message that
/// says which and what to do, and the agent's state directory stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refuses_a_used_and_an_expired_token_and_writes_nothing() {
    use jiff::Timestamp;
    use shopfloor_agent::{link::enroll, state::StateDir};
    use shopfloor_controller::{enrollment::BootstrapToken, store::Store};
    let Enrolling { plant, key, secret_name, fingerprint, addr, id, dir } = enrolling().await;
    let empty = |d: &std::path::Path| std::fs::read_dir(d).map(|r| r.count() == 0).unwrap_or(true);

    // The plant's agent enrolled with line-1's token: it is spent.
    let used = plant.core.store().read_secret(&secret_name).await.expect("read").expect("token secret");
    let used = BootstrapToken::from_secret(&used).expect("token").token();
    let state = StateDir::open(dir.path().join("reused")).expect("state");
    let err = enroll::enroll(&state, &addr, None, &used, &fingerprint, &id).await.expect_err("refused").to_string();
    assert!(err.contains("already used") && err.contains("kubectl shopfloor enroll"), "{err}");
    assert!(empty(&dir.path().join("reused")), "nothing written after a refused enrollment");

    // A token that expired before it was used.
    let stale = BootstrapToken::generate(
        key.clone(),
        Timestamp::now() - Duration::from_secs(2 * 86400),
        Duration::from_secs(86400),
    )
    .expect("token");
    plant.core.store().write_secret(&secret_name, stale.to_secret()).await.expect("write");
    let state = StateDir::open(dir.path().join("expired")).expect("state");
    let err =
        enroll::enroll(&state, &addr, None, &stale.token(), &fingerprint, &id).await.expect_err("refused").to_string();
    assert!(err.contains("expired"), "{err}");
    assert!(empty(&dir.path().join("expired")), "nothing written after a refused enrollment");
}

/// Two enrollments racing for one fresh token over real QUIC: exactly one gets a certificate,
/// every round (the token was redeemed twice in 2 rounds of 20 before redemption became a
/// compare-and-swap on the Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_raced_by_two_enrollments_is_redeemed_once() {
    use jiff::Timestamp;
    use shopfloor_agent::{link::enroll, state::StateDir};
    use shopfloor_controller::{enrollment::BootstrapToken, store::Store};
    let Enrolling { plant, key, secret_name, fingerprint, addr, id, dir } = enrolling().await;
    for round in 0..20 {
        let fresh = BootstrapToken::generate(key.clone(), Timestamp::now(), Duration::from_secs(3600)).expect("token");
        plant.core.store().write_secret(&secret_name, fresh.to_secret()).await.expect("write");
        let token = fresh.token();
        let (a, b) = (
            StateDir::open(dir.path().join(format!("{round}-a"))).expect("state"),
            StateDir::open(dir.path().join(format!("{round}-b"))).expect("state"),
        );
        let (ra, rb) = tokio::join!(
            enroll::enroll(&a, &addr, None, &token, &fingerprint, &id),
            enroll::enroll(&b, &addr, None, &token, &fingerprint, &id)
        );
        let refused = [&ra, &rb].iter().filter_map(|r| r.as_ref().err().map(ToString::to_string)).collect::<Vec<_>>();
        assert_eq!(refused.len(), 1, "round {round}: exactly one enrollment wins, refused: {refused:?}");
        assert!(refused[0].contains("single-use"), "round {round}: {}", refused[0]);
    }
}

/// A connection without a client certificate (the enrollment path) can do nothing but enroll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_certificate_may_only_enroll() {
    let plant = Plant::start(objects(&fixtures::robot_cell_with_template("30s"))).await;
    let conn = connect(&plant, certificate_less(&plant).await).await;
    let (send, _recv) = conn.open_bi().await.expect("stream");
    let hello = proto::AgentMessage {
        body: Some(proto::agent_message::Body::Hello(proto::Hello {
            protocol_versions: vec![1],
            ..Default::default()
        })),
    };
    FrameWriter::new(send, DEFAULT_MAX_FRAME).send(&hello).await.expect("send");
    let e = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("closed");
    let reason = refused_because(&e);
    assert!(reason.contains("may only enroll"), "{reason}");
}

/// Opens a certificate-less connection and writes `bytes` raw on a new stream; returns how the
/// controller ended the connection.
async fn send_raw(plant: &Plant, bytes: &[u8]) -> ConnectionError {
    let conn = connect(plant, certificate_less(plant).await).await;
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    send.write_all(bytes).await.expect("write");
    tokio::time::timeout(Duration::from_secs(5), conn.closed()).await.expect("closed")
}

fn closed_with(e: &ConnectionError) -> (u64, String) {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            (c.error_code.into_inner(), String::from_utf8_lossy(&c.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// A peer sending garbage or an oversized frame is closed with the code that says which; it
/// costs the endpoint nothing else — the connected agent keeps running commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_frame_closes_only_that_connection() {
    let world = objects(&fixtures::robot_cell_with_template("30s"));
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    // A length of 64 bytes followed by bytes that are no protobuf message.
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 64]);
    let (code, reason) = closed_with(&send_raw(&plant, &garbage).await);
    assert_eq!(code, u64::from(close_code::PROTOCOL_VIOLATION), "{reason}");
    assert!(reason.contains("malformed"), "{reason}");
    // A length far above the 1 MiB limit: refused before any of the body is read.
    let (code, reason) = closed_with(&send_raw(&plant, &u32::MAX.to_be_bytes()).await);
    assert_eq!(code, u64::from(close_code::FRAME_TOO_LARGE), "{reason}");

    let key = shopfloor_controller::store::ObjectKey::new("plant-a", "line-1");
    assert!(plant.core.registry().get(&key).is_some(), "the agent stays connected");
    let eq = plant.equipment("robot").clone();
    plant.core.reconcile_command(&Plant::command(&template, 0), Some(&eq)).await.expect("reconcile");
    for _ in 0..100 {
        if let Some(s) = plant.finished(0) {
            assert_eq!(s.phase, Some(CommandPhase::Succeeded), "{s:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the command did not finish");
}

/// The controller's certificate is replaced while an agent is connected: the agent keeps its
/// connection (same connection id) and its commands run; new connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_replaced_without_dropping_live_connections() {
    let world = objects(&fixtures::robot_cell_with_template("30s"));
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    let key = shopfloor_controller::store::ObjectKey::new("plant-a", "line-1");
    let before = plant.core.registry().get(&key).expect("connected").connection_id;
    let server_cert = || async {
        let conn = connect(&plant, certificate_less(&plant).await).await;
        let cert = transport::peer_certificate(&conn).expect("server certificate");
        conn.close(0u32.into(), b"");
        cert
    };
    let old = server_cert().await;
    plant.endpoint.rotate_server_certificate(&["127.0.0.1".into()]).expect("rotate");
    assert_ne!(server_cert().await, old, "new connections get the new certificate");

    let eq = plant.equipment("robot").clone();
    plant.core.reconcile_command(&Plant::command(&template, 0), Some(&eq)).await.expect("reconcile");
    let mut done = None;
    for _ in 0..100 {
        done = plant.finished(0);
        if done.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done.and_then(|s| s.phase), Some(CommandPhase::Succeeded));
    let after = plant.core.registry().get(&key).expect("still connected").connection_id;
    assert_eq!(before, after, "the live connection was not dropped");
}

/// A flood of half-open handshakes: at most the cap is ever in progress, the abandoned ones are
/// counted (not logged one by one), the connected agent keeps working through it, and an
/// enrollment connection that never sends its request is closed instead of held forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_stays_bounded_and_the_plant_keeps_working() {
    let world = objects(&fixtures::robot_cell_with_template("30s"));
    let template = world.commands[0].clone();
    let plant = Plant::start(world).await;
    let metrics = plant.core.metrics().clone();
    let idle_enrollment = connect(&plant, certificate_less(&plant).await).await;
    let sent = shopfloor_e2e::flood::half_open_handshakes(plant.addr, 3_000).await.expect("flood");
    assert_eq!(sent, 3_000);
    let mut peak = 0;
    for i in 0..20 {
        peak = peak.max(metrics.handshakes_in_progress.get());
        plant
            .core
            .reconcile_command(&Plant::command(&template, i), Some(&plant.equipment("robot").clone()))
            .await
            .expect("reconcile");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(peak <= endpoint::MAX_HANDSHAKES as i64, "{peak} handshakes in progress");
    for i in 0..20 {
        // A bound on liveness, not a latency figure: the machine is busy with the flood.
        let s = plant.wait_finished(i, Duration::from_secs(30)).await;
        assert_eq!(s.result.map(|r| r.code), Some(ResultCode::Ok), "command {i} during the flood");
    }
    // The enrollment connection that never asked anything is closed by the controller.
    let closed = tokio::time::timeout(Duration::from_secs(15), idle_enrollment.closed()).await;
    let reason = closed.expect("closed within the enrollment timeout");
    assert!(reason.to_string().contains("no enrollment request in time"), "{reason}");
    let failed = metrics.handshakes_failed.get();
    assert!(failed >= peak as u64, "abandoned handshakes and the idle enrollment are counted: {failed}");
    println!(
        "flood of {sent}: peak {peak} handshakes in progress (cap {}), {failed} failed, {} refused",
        endpoint::MAX_HANDSHAKES,
        metrics.handshakes_refused.get()
    );
}

/// An enrollment whose answer was lost (the controller redeemed the token, the host timed out)
/// is retried with the key kept in the state directory: the controller answers that key again,
/// and still refuses any other key. At 5,000 agents the fleet benchmark's retries after lost
/// answers found every token spent, and those hosts could never enroll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_retried_with_the_same_key_after_a_lost_answer_is_answered_again() {
    use jiff::Timestamp;
    use shopfloor_agent::{
        link::enroll::{self, ENROLL_KEY},
        state::StateDir,
    };
    use shopfloor_controller::{enrollment::BootstrapToken, store::Store};
    let Enrolling { plant, key, secret_name, fingerprint, addr, id, dir } = enrolling().await;
    let fresh = BootstrapToken::generate(key.clone(), Timestamp::now(), Duration::from_secs(3600)).expect("token");
    plant.core.store().write_secret(&secret_name, fresh.to_secret()).await.expect("write");
    let token = fresh.token();
    // The same host's key, as the first attempt left it in the state directory.
    let kept = pki::generate_key().expect("key").serialize_pem();
    let first = StateDir::open(dir.path().join("first")).expect("state");
    first.write(ENROLL_KEY, kept.as_bytes(), 0o600).expect("key");
    enroll::enroll(&first, &addr, None, &token, &fingerprint, &id).await.expect("the first attempt redeems it");
    assert!(first.read(ENROLL_KEY).expect("read").is_none(), "an answered enrollment keeps no pending key");

    let retry = StateDir::open(dir.path().join("retry")).expect("state");
    retry.write(ENROLL_KEY, kept.as_bytes(), 0o600).expect("key");
    let again = enroll::enroll(&retry, &addr, None, &token, &fingerprint, &id).await;
    assert!(again.is_ok(), "the same key is answered again: {again:?}");
    assert!(retry.read("agent.pem").expect("read").is_some(), "the retry got its certificate");

    let other = StateDir::open(dir.path().join("other")).expect("state");
    let err =
        enroll::enroll(&other, &addr, None, &token, &fingerprint, &id).await.expect_err("another key").to_string();
    assert!(err.contains("single-use"), "{err}");
    assert!(other.read(ENROLL_KEY).expect("read").is_none(), "a refused enrollment leaves no key behind");
}
