//! The EdgeAgent controller against kube's mocked service: the exact API calls it makes for
//! the finalizer, the bootstrap token Secret and the status.

use std::{sync::Arc, time::Duration};

use http::{Request, Response, StatusCode};
use kube::{
    Client,
    client::Body,
    core::DeserializeGuard,
    runtime::{reflector, watcher},
};
use serde_json::{Value, json};
use shopfloor_api::{EdgeAgent, EdgeAgentSpec};
use shopfloor_controller::{
    kube::controllers::{AGENT_FINALIZER, Context, reconcile_agent},
    kube::store::KubeStore,
    reconcile::Reconciler,
};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn agent(finalizer: bool, deleting: bool) -> EdgeAgent {
    let mut a = EdgeAgent::new(
        "line-1",
        EdgeAgentSpec {
            site: "plant-a/line-1".into(),
            certificate: Default::default(),
            heartbeat: Default::default(),
            suspend: false,
        },
    );
    a.metadata.namespace = Some("plant-a".into());
    a.metadata.uid = Some("uid-1".into());
    a.metadata.generation = Some(1);
    a.metadata.resource_version = Some("10".into());
    if finalizer {
        a.metadata.finalizers = Some(vec![AGENT_FINALIZER.into()]);
    }
    if deleting {
        a.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
    }
    a
}

fn setup(a: &EdgeAgent) -> (Arc<Context>, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let core = Reconciler::new(
        Arc::new(KubeStore::new(client.clone(), "shopfloor-system")),
        "pod-a",
        Duration::from_millis(1),
    );
    let (agents, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(a.clone()))));
    let (equipment, _) = reflector::store();
    let (slices, _) = reflector::store();
    (Context::new(client, core, agents, equipment, slices), handle)
}

/// The next request, which must be `method path`.
async fn expect(
    handle: &mut Handle,
    method: http::Method,
    path: &str,
) -> (Request<Body>, mock::SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.unwrap_or_else(|| panic!("no request; expected {method} {path}"));
    assert_eq!((req.method(), req.uri().path()), (&method, path));
    (req, send)
}

async fn json_body(req: Request<Body>) -> Value {
    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body")).expect("json")
}

fn respond(send: mock::SendResponse<Response<Body>>, code: StatusCode, body: Value) {
    send.send_response(
        Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).expect("json"))).expect("response"),
    );
}

fn not_found() -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn a_new_agent_first_gets_the_finalizer() {
    let a = agent(false, false);
    let (ctx, mut handle) = setup(&a);
    let expected = a.clone();
    let server = tokio::spawn(async move {
        let (req, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents/line-1",
        )
        .await;
        assert_eq!(req.headers()["content-type"], "application/json-patch+json");
        let body = json_body(req).await;
        assert!(body.to_string().contains(AGENT_FINALIZER), "{body}");
        let mut with = expected;
        with.metadata.finalizers = Some(vec![AGENT_FINALIZER.into()]);
        respond(send, StatusCode::OK, serde_json::to_value(with).expect("json"));
    });
    reconcile_agent(Arc::new(DeserializeGuard(Ok(a))), ctx).await.expect("reconcile");
    server.await.expect("server");
}

/// A first reconcile racing its own earlier finalizer patch (the watch's copy is behind): the
/// API server fails the patch's test with 422. That was a WARN with a raw debug dump for each
/// new EdgeAgent at first start; it is a stale cache, retried in a second, not counted as an
/// error.
#[tokio::test]
async fn a_finalizer_patch_refused_for_a_stale_copy_is_retried_quietly() {
    let a = agent(false, false);
    let (ctx, mut handle) = setup(&a);
    let server = tokio::spawn(async move {
        let (_, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents/line-1",
        )
        .await;
        respond(
            send,
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
                   "message": "the server rejected our request due to an error in our request"}),
        );
    });
    let obj = Arc::new(DeserializeGuard(Ok(a)));
    let err = reconcile_agent(obj.clone(), ctx.clone()).await.expect_err("the patch was refused");
    server.await.expect("server");
    assert!(matches!(err, shopfloor_controller::kube::controllers::Error::Stale(_)), "{err}");
    let action = shopfloor_controller::kube::controllers::error_policy(obj, &err, ctx.clone());
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_secs(1)));
    let label = shopfloor_controller::metrics::KindLabel { kind: "EdgeAgent".into() };
    assert_eq!(ctx.core.metrics().reconcile_errors.get_or_create(&label).get(), 0, "not counted as an error");
}

#[tokio::test]
async fn an_unenrolled_agent_gets_a_bootstrap_token_secret_and_a_pending_status() {
    let a = agent(true, false);
    let (ctx, mut handle) = setup(&a);
    let server = tokio::spawn(async move {
        let (_, send) = expect(
            &mut handle,
            http::Method::GET,
            "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-bootstrap-plant-a-line-1",
        )
        .await;
        respond(send, StatusCode::NOT_FOUND, not_found());

        let (req, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-bootstrap-plant-a-line-1",
        )
        .await;
        assert!(req.uri().query().unwrap_or_default().contains("fieldManager=shopfloor-controller"));
        let body = json_body(req).await;
        for key in ["token-id", "token-secret", "agent-namespace", "agent-name", "expires-at"] {
            assert!(body["data"][key].is_string(), "secret data {key}: {body}");
        }
        respond(send, StatusCode::OK, body);

        let (req, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents/line-1/status",
        )
        .await;
        let body = json_body(req).await;
        assert_eq!(body["status"]["phase"], "Pending");
        assert_eq!(body["status"]["observedGeneration"], 1);
        assert_eq!(body["status"]["enrollment"]["tokenSecretName"], "shopfloor-bootstrap-plant-a-line-1");
        let ready = &body["status"]["conditions"][0];
        assert_eq!(
            (ready["type"].as_str(), ready["status"].as_str(), ready["reason"].as_str()),
            (Some("Ready"), Some("False"), Some("NotEnrolled"))
        );
        respond(
            send,
            StatusCode::OK,
            json!({"apiVersion": "shopfloor.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": "line-1"}, "spec": {"site": "plant-a/line-1"}}),
        );
    });
    // The status goes through the coalescing writer in the background: keep the context alive.
    reconcile_agent(Arc::new(DeserializeGuard(Ok(a))), ctx.clone()).await.expect("reconcile");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("all requests made").expect("server");
    drop(ctx);
}

#[tokio::test]
async fn deleting_an_agent_removes_its_token_then_the_finalizer() {
    let a = agent(true, true);
    let (ctx, mut handle) = setup(&a);
    let server = tokio::spawn(async move {
        let (_, send) = expect(
            &mut handle,
            http::Method::DELETE,
            "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-bootstrap-plant-a-line-1",
        )
        .await;
        respond(send, StatusCode::NOT_FOUND, not_found());
        let (req, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents/line-1",
        )
        .await;
        let body = json_body(req).await;
        assert!(body.to_string().contains("remove") || body.to_string().contains("replace"), "{body}");
        respond(
            send,
            StatusCode::OK,
            json!({"apiVersion": "shopfloor.io/v1alpha1", "kind": "EdgeAgent", "metadata": {"name": "line-1", "namespace": "plant-a"}, "spec": {"site": "plant-a/line-1"}}),
        );
    });
    reconcile_agent(Arc::new(DeserializeGuard(Ok(a))), ctx).await.expect("reconcile");
    server.await.expect("server");
}

#[tokio::test]
async fn an_unreadable_object_is_skipped_without_breaking_the_others() {
    use shopfloor_api::Equipment;
    use shopfloor_controller::kube::controllers::reconcile_equipment;
    // As a watch event would carry it: a field this controller's types refuse.
    let raw = json!({
        "apiVersion": "shopfloor.io/v1alpha1", "kind": "Equipment",
        "metadata": {"name": "future", "namespace": "plant-a", "uid": "u"},
        "spec": {"agentRef": {"name": "line-1"}, "simulated": {}, "fieldFromANewerVersion": 1},
    });
    let guard: DeserializeGuard<Equipment> = serde_json::from_value(raw).expect("the event itself still parses");
    let invalid = guard.0.as_ref().expect_err("the object does not");
    assert!(invalid.error.contains("fieldFromANewerVersion"), "{}", invalid.error);
    let (ctx, mut handle) = setup(&agent(true, false));
    let action = reconcile_equipment(Arc::new(guard), ctx.clone()).await.expect("no error");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await.is_err(),
        "no API call for it"
    );
    drop(ctx);
}

/// An EdgeAgent as a watch event would carry it when this controller's types refuse it.
fn unreadable_agent(deleting: bool) -> DeserializeGuard<EdgeAgent> {
    let mut raw = json!({
        "apiVersion": "shopfloor.io/v1alpha1", "kind": "EdgeAgent",
        "metadata": {"name": "line-1", "namespace": "plant-a", "uid": "uid-1",
                     "finalizers": ["example.com/other", AGENT_FINALIZER]},
        "spec": {"site": 42},
    });
    if deleting {
        raw["metadata"]["deletionTimestamp"] = json!("2026-11-24T08:00:00Z");
    }
    let guard: DeserializeGuard<EdgeAgent> = serde_json::from_value(raw).expect("the event itself parses");
    assert!(guard.0.is_err(), "the object does not");
    guard
}

#[tokio::test]
async fn an_unreadable_agent_is_skipped_until_it_changes() {
    let (ctx, mut handle) = setup(&agent(true, false));
    let action = reconcile_agent(Arc::new(unreadable_agent(false)), ctx.clone()).await.expect("no error");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    assert!(
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await.is_err(),
        "no API call for it"
    );
    drop(ctx);
}

#[tokio::test]
async fn an_unreadable_agent_being_deleted_is_released_and_loses_only_our_finalizer() {
    let (ctx, mut handle) = setup(&agent(true, false));
    let server = tokio::spawn(async move {
        let (_, send) = expect(
            &mut handle,
            http::Method::DELETE,
            "/api/v1/namespaces/shopfloor-system/secrets/shopfloor-bootstrap-plant-a-line-1",
        )
        .await;
        respond(send, StatusCode::NOT_FOUND, not_found());
        let (req, send) = expect(
            &mut handle,
            http::Method::PATCH,
            "/apis/shopfloor.io/v1alpha1/namespaces/plant-a/edgeagents/line-1",
        )
        .await;
        assert_eq!(req.headers()["content-type"], "application/json-patch+json");
        let body = json_body(req).await;
        assert_eq!(
            body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": AGENT_FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        respond(
            send,
            StatusCode::OK,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": "line-1", "namespace": "plant-a", "finalizers": ["example.com/other"]}}),
        );
    });
    let action = reconcile_agent(Arc::new(unreadable_agent(true)), ctx.clone()).await.expect("released");
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("all requests made").expect("server");
    drop(ctx);
}

/// With `--namespaces`, every list and watch the controllers make is in one of those namespaces:
/// nothing cluster-wide, so Roles in those namespaces are all the controller needs.
#[tokio::test]
async fn a_namespace_scoped_controller_lists_and_watches_only_its_namespaces() {
    use shopfloor_controller::kube::controllers::{Scope, run};
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let core =
        Reconciler::new(Arc::new(KubeStore::new(client.clone(), "shopfloor-system")), "pod-a", Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let scope = Scope::Namespaces(vec!["plant-a".into(), "plant-b".into()]);
    let controllers = tokio::spawn(run(client, core, scope, stopped));
    let mut seen = std::collections::BTreeSet::new();
    let mut pending = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 8 {
        let next = tokio::time::timeout_at(deadline, handle.next_request()).await;
        let Ok(Some((req, send))) = next else { break };
        let path = req.uri().path().to_owned();
        let watch = req.uri().query().unwrap_or_default().contains("watch=true");
        seen.insert(path.clone());
        if watch {
            // Held open, as a watch is.
            pending.push(send);
            continue;
        }
        let kind = path.rsplit('/').next().unwrap_or_default().to_owned();
        respond(
            send,
            StatusCode::OK,
            json!({"apiVersion": "shopfloor.io/v1alpha1", "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "1"}, "items": []}),
        );
    }
    let _ = stop.send(true);
    controllers.abort();
    let mut want = std::collections::BTreeSet::new();
    for ns in ["plant-a", "plant-b"] {
        for kind in ["edgeagents", "equipment", "networkslices", "controlcommands"] {
            want.insert(format!("/apis/shopfloor.io/v1alpha1/namespaces/{ns}/{kind}"));
        }
    }
    assert_eq!(seen, want, "only the two namespaces, every kind in each");
}
