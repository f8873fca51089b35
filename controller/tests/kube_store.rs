//! The Kubernetes store against kube's mocked service: the exact requests it makes.

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use shopfloor_api::control_command::{CommandPhase, ControlCommandStatus};
use shopfloor_controller::{
    kube::store::KubeStore,
    store::{ObjectKey, StatusUpdate, Store, StoreError},
};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (KubeStore::new(Client::new(service, "shopfloor-system"), "shopfloor-system"), handle)
}

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"),
    );
}

fn api_status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

#[tokio::test]
async fn status_is_written_with_server_side_apply_and_one_field_manager() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("request");
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            req.uri().path(),
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/controlcommands/start-infeed/status"
        );
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert!(query.contains("fieldManager=shopfloor-controller"), "{query}");
        assert!(query.contains("force=true"), "{query}");
        assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
        let body = body_json(req).await;
        assert_eq!(body["apiVersion"], "shopfloor.io/v1alpha1");
        assert_eq!(body["kind"], "ControlCommand");
        assert_eq!(body["status"]["phase"], "Dispatched");
        assert_eq!(body["status"]["attempts"], 1);
        assert!(body.get("spec").is_none(), "a status write never touches the spec");
        respond(
            send,
            StatusCode::OK,
            json!({
                "apiVersion": "shopfloor.io/v1alpha1", "kind": "ControlCommand",
                "metadata": {"name": "start-infeed", "namespace": "plant-a"},
                "spec": {"equipmentRef": {"name": "infeed-conveyor"}, "action": "stop"},
                "status": body["status"].clone(),
            }),
        );
    });
    let status = ControlCommandStatus { phase: Some(CommandPhase::Dispatched), attempts: 1, ..Default::default() };
    store
        .write_status(StatusUpdate::ControlCommand(ObjectKey::new("plant-a", "start-infeed"), status))
        .await
        .expect("written");
    server.await.expect("server");
}

#[tokio::test]
async fn status_of_a_deleted_object_is_gone_not_retried() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("request");
        respond(send, StatusCode::NOT_FOUND, api_status(404, "NotFound"));
    });
    let err = store
        .write_status(StatusUpdate::ControlCommand(ObjectKey::new("plant-a", "gone"), ControlCommandStatus::default()))
        .await
        .expect_err("gone");
    assert!(matches!(err, StoreError::Gone { .. }), "{err}");
    assert!(!err.is_transient());
    server.await.expect("server");
}

#[tokio::test]
async fn secret_creation_never_overwrites_an_existing_secret() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("create");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri().path(), "/api/v1/namespaces/shopfloor-system/secrets");
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["name"], "shopfloor-ca");
        assert_eq!(body["metadata"]["labels"]["app.kubernetes.io/managed-by"], "shopfloor-controller");
        respond(send, StatusCode::CONFLICT, api_status(409, "AlreadyExists"));
        let (req, send) = handle.next_request().await.expect("read the winner");
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-ca");
        respond(
            send,
            StatusCode::OK,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "shopfloor-ca", "namespace": "shopfloor-system"},
                "data": {"ca.crt": "d2lubmVy"}, // "winner"
            }),
        );
    });
    let mine = [("ca.crt".to_owned(), b"loser".to_vec())].into_iter().collect();
    let stored = store.create_secret_if_absent("shopfloor-ca", mine).await.expect("resolved");
    assert_eq!(stored.get("ca.crt").map(Vec::as_slice), Some(&b"winner"[..]));
    server.await.expect("server");
}

#[tokio::test]
async fn finished_commands_are_deleted_and_a_missing_one_is_fine() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("delete");
        assert_eq!(req.method(), http::Method::DELETE);
        assert_eq!(req.uri().path(), "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/controlcommands/old");
        respond(send, StatusCode::NOT_FOUND, api_status(404, "NotFound"));
    });
    store.delete_command(&ObjectKey::new("plant-a", "old")).await.expect("idempotent");
    server.await.expect("server");
}

/// Redeeming a token replaces its Secret with the resourceVersion just read, so a concurrent
/// redemption makes the API server answer 409 and this one loses instead of redeeming twice.
#[tokio::test]
async fn a_secret_is_replaced_only_at_the_resource_version_read() {
    let (store, mut handle) = store();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.expect("read");
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-token-a");
        respond(
            send,
            StatusCode::OK,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "shopfloor-token-a", "namespace": "shopfloor-system", "resourceVersion": "41"},
                "data": {"token": "dW51c2Vk"}, // "unused"
            }),
        );
        let (req, send) = handle.next_request().await.expect("replace");
        assert_eq!(req.method(), http::Method::PUT);
        assert_eq!(req.uri().path(), "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-token-a");
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41", "the precondition the API server enforces");
        assert_eq!(body["data"]["token"], "dXNlZA=="); // "used"
        respond(send, StatusCode::CONFLICT, api_status(409, "Conflict"));
    });
    let unused = [("token".to_owned(), b"unused".to_vec())].into_iter().collect();
    let used = [("token".to_owned(), b"used".to_vec())].into_iter().collect();
    let won = store.replace_secret_if("shopfloor-token-a", &unused, used).await.expect("answered");
    assert!(!won, "a 409 means another writer was first");
    server.await.expect("server");
}

/// A fleet-wide change queues thousands of status writes; a command's phase must not wait
/// behind them, and the API server must see the configured rate, not the burst.
#[tokio::test(start_paused = true)]
async fn requests_keep_to_the_write_rate_and_a_commands_phase_goes_before_waiting_statuses() {
    use shopfloor_api::equipment::EquipmentStatus;
    use shopfloor_controller::store::write_budget::WriteRate;
    use std::{sync::Arc, time::Duration};
    use tokio::time::Instant;

    let (store, mut handle) = store();
    let store = Arc::new(store.with_write_rate(WriteRate { per_second: 2, burst: 1 }));
    let start = Instant::now();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            seen.push((start.elapsed(), req.uri().path().rsplit('/').nth(1).unwrap_or_default().to_owned()));
            respond(send, StatusCode::NOT_FOUND, api_status(404, "NotFound"));
            if seen.len() == 5 {
                break;
            }
        }
        seen
    });
    let equipment = |name: &str| StatusUpdate::Equipment(ObjectKey::new("plant-a", name), EquipmentStatus::default());
    let write = |update: StatusUpdate| {
        let store = store.clone();
        tokio::spawn(async move { store.write_status(update).await })
    };
    // The burst goes to m0; m1 and m2 wait for tokens, then the command, then m3: statuses both
    // ahead of it and behind it wait for the same next token.
    let mut writes = vec![write(equipment("m0"))];
    tokio::time::sleep(Duration::from_millis(10)).await;
    writes.extend([write(equipment("m1")), write(equipment("m2"))]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = ControlCommandStatus { phase: Some(CommandPhase::Dispatched), attempts: 1, ..Default::default() };
    let command = write(StatusUpdate::ControlCommand(ObjectKey::new("plant-a", "stop-line"), status));
    tokio::time::sleep(Duration::from_millis(100)).await;
    writes.push(write(equipment("m3")));
    assert!(matches!(command.await.expect("write"), Err(StoreError::Gone { .. })));
    for w in writes {
        assert!(matches!(w.await.expect("write"), Err(StoreError::Gone { .. })));
    }
    let seen = server.await.expect("server");
    let order: Vec<&str> = seen.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(order[0], "m0");
    assert_eq!(order[1], "stop-line", "the command's phase takes the next token: {seen:?}");
    assert_eq!(order[2..].iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 3, "{seen:?}");
    for pair in seen.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= Duration::from_millis(490), "two a second at most: {seen:?}");
    }
}
