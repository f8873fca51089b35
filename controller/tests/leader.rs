//! Leader election against kube's mocked service.

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use shopfloor_controller::leader::{LeaderElector, LeaseTiming};
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
        let now = k8s_openapi::jiff::Timestamp::now();
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
