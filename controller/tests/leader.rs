//! Leader election against kube's mocked service.

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use shopfloor_controller::kube::leader::{LeaderElector, LeaseTiming};
use tower_test::mock;

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"),
    );
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/shopfloor-system/leases/shopfloor-controller";

#[tokio::test]
async fn absent_lease_is_created_holding_it() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(service, "default"),
        "shopfloor-system",
        "shopfloor-controller",
        "pod-a",
        LeaseTiming::default(),
    );
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("get");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", LEASE_PATH));
        respond(
            send,
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound", "message": "not found", "status": "Failure"}),
        );
        let (req, send) = handle.next_request().await.expect("create");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/apis/coordination.k8s.io/v1/namespaces/shopfloor-system/leases");
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 10);
        respond(send, StatusCode::CREATED, body);
    });
    assert!(elector.try_acquire_or_renew().await.expect("round"));
    server.await.expect("server");
}

#[tokio::test]
async fn a_lease_held_by_a_live_leader_keeps_us_standby_without_writing() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(service, "default"),
        "shopfloor-system",
        "shopfloor-controller",
        "pod-b",
        LeaseTiming::default(),
    );
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("get");
        let now = jiff::Timestamp::now();
        respond(
            send,
            StatusCode::OK,
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "shopfloor-controller", "namespace": "shopfloor-system", "resourceVersion": "7"},
                "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 10, "renewTime": now.to_string()},
            }),
        );
        // Nothing else may be sent: the mock would hang the next call, so check there is none.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request()).await.is_err());
    });
    assert!(!elector.try_acquire_or_renew().await.expect("round"));
    server.await.expect("server");
}

#[tokio::test]
async fn losing_a_write_race_is_standby_not_an_error() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let elector = LeaderElector::new(
        Client::new(service, "default"),
        "shopfloor-system",
        "shopfloor-controller",
        "pod-b",
        LeaseTiming::default(),
    );
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("get");
        respond(
            send,
            StatusCode::OK,
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "shopfloor-controller", "namespace": "shopfloor-system", "resourceVersion": "7"},
                "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 10, "renewTime": "2020-01-01T00:00:00.000000Z"},
            }),
        );
        let (req, send) = handle.next_request().await.expect("replace");
        assert_eq!((req.method().as_str(), req.uri().path()), ("PUT", LEASE_PATH));
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
        assert_eq!(body["metadata"]["resourceVersion"], "7", "optimistic concurrency on the version read");
        assert_eq!(body["spec"]["holderIdentity"], "pod-b");
        respond(
            send,
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "code": 409, "reason": "Conflict", "message": "conflict", "status": "Failure"}),
        );
    });
    assert!(!elector.try_acquire_or_renew().await.expect("round"));
    server.await.expect("server");
}

/// A minimal Lease API with the API server's optimistic concurrency: a create of an existing
/// Lease and a replace carrying a stale resourceVersion are refused with 409.
#[derive(Clone, Default)]
struct LeaseServer {
    lease: std::sync::Arc<std::sync::Mutex<Option<Value>>>,
}

impl LeaseServer {
    fn client(&self) -> Client {
        let state = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(state.handle(req).await) }
        });
        Client::new(service, "default")
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body: Value =
            serde_json::from_slice(&body.collect_bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "code": 409, "reason": "Conflict", "message": "conflict", "status": "Failure"});
        let mut lease = self.lease.lock().unwrap();
        let version = |l: &Value| l["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse::<u64>().ok());
        let (code, out) = match (parts.method.as_str(), lease.as_ref()) {
            ("GET", None) => (
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "code": 404, "reason": "NotFound", "message": "not found", "status": "Failure"}),
            ),
            ("GET", Some(l)) => (StatusCode::OK, l.clone()),
            ("POST", Some(_)) => (StatusCode::CONFLICT, conflict),
            ("PUT", Some(l)) if version(&body) != version(l) => (StatusCode::CONFLICT, conflict),
            ("POST", None) | ("PUT", Some(_)) => {
                let next = lease.as_ref().and_then(version).unwrap_or(0) + 1;
                let mut stored = body;
                stored["apiVersion"] = json!("coordination.k8s.io/v1");
                stored["kind"] = json!("Lease");
                stored["metadata"]["resourceVersion"] = json!(next.to_string());
                *lease = Some(stored.clone());
                (StatusCode::OK, stored)
            }
            _ => (StatusCode::METHOD_NOT_ALLOWED, json!({})),
        };
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&out).expect("json"))).expect("response")
    }
}

/// Two replicas against one API: exactly one leads; when it dies without a word (no more
/// renewals), the other takes over once the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use std::time::{Duration, Instant};
    let api = LeaseServer::default();
    let timing = LeaseTiming {
        duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(400),
        retry_every: Duration::from_millis(200),
    };
    let replica = |name: &'static str| {
        let elector = LeaderElector::new(api.client(), "shopfloor-system", "shopfloor-controller", name, timing);
        let leading = Arc::new(AtomicBool::new(false));
        let flag = leading.clone();
        let task = tokio::spawn(async move {
            elector.acquire().await;
            flag.store(true, Ordering::SeqCst);
            let why = elector.hold().await;
            flag.store(false, Ordering::SeqCst);
            why
        });
        (leading, task)
    };
    let (a, a_task) = replica("pod-a");
    let (b, b_task) = replica("pod-b");
    let start = Instant::now();
    while !a.load(Ordering::SeqCst) && !b.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(5), "nobody acquired the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // For several renewal periods, never both.
    for _ in 0..60 {
        let (la, lb) = (a.load(Ordering::SeqCst), b.load(Ordering::SeqCst));
        assert!(la ^ lb, "exactly one leader (a: {la}, b: {lb})");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (standby, standby_name, leader_task, standby_task) =
        if a.load(Ordering::SeqCst) { (b, "pod-b", a_task, b_task) } else { (a, "pod-a", b_task, a_task) };
    leader_task.abort();
    let died = Instant::now();
    while !standby.load(Ordering::SeqCst) {
        assert!(died.elapsed() < Duration::from_secs(10), "the standby never took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = died.elapsed();
    println!("standby took over {took:?} after the leader's last chance to renew");
    // Not before the dead leader's lease could have expired (its last renewal was about one
    // renewal period before it died; half the lease leaves room for a slow scheduler), and no
    // later than a retry after expiry (with room for the same).
    assert!(took >= timing.duration / 2, "took over a live lease after {took:?}");
    let bound = timing.duration + timing.retry_every + Duration::from_secs(2);
    assert!(took <= bound, "took over after {took:?}, expected within {bound:?}");
    assert_eq!(api.lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"], standby_name);
    standby_task.abort();
}

/// On SIGTERM the leader gives its lease up (holder emptied, at the resourceVersion it read), so
/// a standby takes over at its next retry instead of waiting for the lease to expire.
#[tokio::test]
async fn the_leader_releases_its_lease_and_a_standby_takes_it_at_once() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let leader =
        LeaderElector::new(client.clone(), "shopfloor-system", "shopfloor-controller", "pod-a", LeaseTiming::default());
    let standby =
        LeaderElector::new(client, "shopfloor-system", "shopfloor-controller", "pod-b", LeaseTiming::default());
    let server = tokio::spawn(async move {
        let now = jiff::Timestamp::now().to_string();
        let held = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "shopfloor-controller", "namespace": "shopfloor-system", "resourceVersion": "17"},
            "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 10, "renewTime": now, "leaseTransitions": 2},
        });
        let (req, send) = handle.next_request().await.expect("get");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", LEASE_PATH));
        respond(send, StatusCode::OK, held);
        let (req, send) = handle.next_request().await.expect("release");
        assert_eq!((req.method().as_str(), req.uri().path()), ("PUT", LEASE_PATH));
        let released: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
        assert_eq!(released["metadata"]["resourceVersion"], "17", "conditional on what was read");
        assert_eq!(released["spec"]["holderIdentity"], "");
        respond(send, StatusCode::OK, released.clone());
        // The standby reads the released lease and takes it in the same round.
        let (_, send) = handle.next_request().await.expect("standby get");
        respond(send, StatusCode::OK, released);
        let (req, send) = handle.next_request().await.expect("takeover");
        assert_eq!(req.method().as_str(), "PUT");
        let taken: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json");
        assert_eq!(taken["spec"]["holderIdentity"], "pod-b");
        assert_eq!(taken["spec"]["leaseTransitions"], 3);
        respond(send, StatusCode::OK, taken);
    });
    assert!(leader.release().await.expect("release"));
    assert!(standby.try_acquire_or_renew().await.expect("round"), "a released lease is taken without waiting");
    server.await.expect("server");
}
