//! A Kubernetes API server in memory, served over HTTP on loopback, for running the controller
//! as a process in Kubernetes mode where no cluster is (no kube-apiserver can be built here).
//!
//! It models what the controller's correctness rests on and nothing more: list and watch (with
//! resourceVersions, field selector `metadata.name`), create (409 when present), replace with
//! optimistic concurrency (409 on a stale resourceVersion), merge, apply (as a merge) and JSON
//! patches, the status subresource (a main-resource write leaves status alone, a status write
//! leaves the rest), generation bumps on spec changes, and deletion held by finalizers. It does
//! not check schemas, CEL rules, RBAC or field ownership (the CRD tests and a real cluster do).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// Where an object lives: its API prefix (`api/v1` or `apis/<group>/<version>`), its resource
/// (plural), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    prefix: String,
    plural: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Db {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Who wrote: the field manager of every write request, as the API server names it.
    managers: BTreeMap<String, usize>,
}

/// A running mock API server.
#[derive(Debug, Clone)]
pub struct MockApi {
    pub addr: SocketAddr,
    db: Arc<Mutex<Db>>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// One parsed request path.
#[derive(Debug)]
struct Target {
    prefix: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    Some(Target { prefix, plural: plural.to_owned(), namespace, name, status })
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn query(req: &Request) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect()
}

fn kind_of(plural: &str) -> String {
    match plural {
        "edgeagents" => "EdgeAgent".into(),
        "equipment" => "Equipment".into(),
        "networkslices" => "NetworkSlice".into(),
        "controlcommands" => "ControlCommand".into(),
        "secrets" => "Secret".into(),
        "leases" => "Lease".into(),
        "events" => "Event".into(),
        "pods" => "Pod".into(),
        other => other.trim_end_matches('s').to_owned(),
    }
}

fn api_version(prefix: &str) -> String {
    prefix.strip_prefix("apis/").or_else(|| prefix.strip_prefix("api/")).unwrap_or(prefix).to_owned()
}

impl MockApi {
    /// Serves on a free loopback port until the process ends.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api = Self { addr, db: Default::default(), changed: tokio::sync::watch::channel(0).0 };
        let app = Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(api)
    }

    /// Resolves whenever something was written.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A client of this server, in this process.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("a loopback URL");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        kube::Client::try_from(config).expect("a client of the mock API")
    }

    /// A kubeconfig that points at this server, for a controller or plugin process.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: mock\n  user: {{}}\ncontexts:\n- name: mock\n  context: {{cluster: mock, user: mock, namespace: default}}\n\
             current-context: mock\n",
            self.addr
        )
    }

    /// Creates (or replaces) objects from multi-document YAML, as `kubectl apply` would.
    pub fn apply_yaml(&self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else { continue };
            if v.is_null() {
                continue;
            }
            let (prefix, plural) = match v["apiVersion"].as_str() {
                Some("v1") => {
                    ("api/v1".to_owned(), format!("{}s", v["kind"].as_str().unwrap_or_default().to_lowercase()))
                }
                Some(av) => (format!("apis/{av}"), plural_of(v["kind"].as_str().unwrap_or_default())),
                None => continue,
            };
            let key = Key {
                prefix,
                plural,
                namespace: v["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                name: v["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            };
            self.put(key, v);
        }
    }

    /// The object at `prefix/namespaces/ns/plural/name`, if present.
    pub fn get(&self, prefix: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key { prefix: prefix.into(), plural: plural.into(), namespace: namespace.into(), name: name.into() };
        self.db.lock().unwrap_or_else(|p| p.into_inner()).objects.get(&key).cloned()
    }

    /// The field managers of the writes so far, with how many each made: a request's
    /// `fieldManager`, else its User-Agent up to the first `/`, as the API server names them
    /// (`unknown` when there is neither).
    pub fn managers(&self) -> BTreeMap<String, usize> {
        self.db.lock().unwrap_or_else(|p| p.into_inner()).managers.clone()
    }

    /// Every object of `plural` (any namespace).
    pub fn list(&self, plural: &str) -> Vec<Value> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.objects.iter().filter(|(k, _)| k.plural == plural).map(|(_, v)| v.clone()).collect()
    }

    fn put(&self, key: Key, mut v: Value) {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let old = db.objects.get(&key).cloned();
        stamp(&mut v, &key, old.as_ref(), &mut db.rv);
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(&mut db, key, kind, v);
    }

    fn record(&self, db: &mut Db, key: Key, kind: &'static str, object: Value) {
        let rv = db.rv;
        if kind == "DELETED" {
            db.objects.remove(&key);
        } else {
            db.objects.insert(key.clone(), object.clone());
        }
        db.log.push(Change { rv, key, kind, object });
        self.changed.send_replace(rv);
    }
}

fn plural_of(kind: &str) -> String {
    match kind {
        "Equipment" => "equipment".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// Sets what the server owns on a write: resourceVersion, uid, creation time, namespace and
/// name, and the generation (bumped when the spec changed).
fn stamp(v: &mut Value, key: &Key, old: Option<&Value>, rv: &mut u64) {
    *rv += 1;
    let spec_changed = old.is_none_or(|o| o.get("spec") != v.get("spec"));
    let meta = &mut v["metadata"];
    meta["resourceVersion"] = json!(rv.to_string());
    meta["name"] = json!(key.name);
    if !key.namespace.is_empty() {
        meta["namespace"] = json!(key.namespace);
    }
    let old_meta = old.map(|o| &o["metadata"]);
    meta["uid"] = old_meta.and_then(|m| m.get("uid").cloned()).unwrap_or_else(|| json!(format!("uid-{rv}")));
    meta["creationTimestamp"] = old_meta
        .and_then(|m| m.get("creationTimestamp").cloned())
        .unwrap_or_else(|| json!(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default().to_string()));
    let generation = old_meta.and_then(|m| m["generation"].as_i64()).unwrap_or(0);
    meta["generation"] = json!(if spec_changed { generation + 1 } else { generation.max(1) });
}

async fn handle(State(api): State<MockApi>, req: Request) -> Response {
    let Some(t) = parse(req.uri().path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no route {}", req.uri().path()));
    };
    let q = query(&req);
    let method = req.method().clone();
    if method != Method::GET {
        let agent = req.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let manager = q
            .get("fieldManager")
            .cloned()
            .or_else(|| agent.split('/').next().filter(|a| !a.is_empty()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        *api.db.lock().unwrap_or_else(|p| p.into_inner()).managers.entry(manager).or_default() += 1;
    }
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    match (method, &t.name) {
        (Method::GET, None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => watch(api, t, q),
        (Method::GET, None) => list(&api, &t, &q),
        (Method::GET, Some(name)) => {
            let key = key(&t, name);
            match api.db.lock().unwrap_or_else(|p| p.into_inner()).objects.get(&key) {
                Some(v) => ok(StatusCode::OK, v),
                None => not_found(&t, name),
            }
        }
        (Method::POST, None) => create(&api, &t, &body),
        (Method::PUT, Some(name)) => replace(&api, &t, name, &body),
        (Method::PATCH, Some(name)) => patch(&api, &t, name, &content_type, &body),
        (Method::DELETE, Some(name)) => delete(&api, &t, name),
        (m, _) => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} {}", t.plural)),
    }
}

fn key(t: &Target, name: &str) -> Key {
    Key {
        prefix: t.prefix.clone(),
        plural: t.plural.clone(),
        namespace: t.namespace.clone().unwrap_or_default(),
        name: name.to_owned(),
    }
}

fn not_found(t: &Target, name: &str) -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.plural))
}

/// Whether `k` is in the collection `t` asks for, with the field selector of `q`.
fn selects(t: &Target, q: &BTreeMap<String, String>, k: &Key) -> bool {
    let name = q.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name="));
    k.prefix == t.prefix
        && k.plural == t.plural
        && t.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
        && name.is_none_or(|n| n == k.name)
}

fn list(api: &MockApi, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let db = api.db.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> = db.objects.iter().filter(|(k, _)| selects(t, q, k)).map(|(_, v)| v.clone()).collect();
    let kind = format!("{}List", kind_of(&t.plural));
    ok(
        StatusCode::OK,
        &json!({"apiVersion": api_version(&t.prefix), "kind": kind, "metadata": {"resourceVersion": db.rv.to_string()}, "items": items}),
    )
}

fn watch(api: MockApi, t: Target, q: BTreeMap<String, String>) -> Response {
    let mut from: u64 = q.get("resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
    let mut changed = api.changed.subscribe();
    let stream = async_stream(move |tx: tokio::sync::mpsc::Sender<Bytes>| async move {
        loop {
            let lines: Vec<Bytes> = {
                let db = api.db.lock().unwrap_or_else(|p| p.into_inner());
                let start = db.log.partition_point(|c| c.rv <= from);
                let lines = db.log[start..]
                    .iter()
                    .filter(|c| selects(&t, &q, &c.key))
                    .map(|c| Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object}))))
                    .collect();
                from = db.rv;
                lines
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(stream)
        .unwrap_or_else(|e| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

/// A streamed body fed by `f` through a channel; it ends when `f` returns or the client goes.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(f(tx));
    let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, std::io::Error>)));
    Body::from_stream(s)
}

fn parse_body(body: &Bytes) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body)
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string())
}

fn create(api: &MockApi, t: &Target, body: &Bytes) -> Response {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let name = v["metadata"]["name"].as_str().map(str::to_owned).or_else(|| {
        v["metadata"]["generateName"]
            .as_str()
            .map(|g| format!("{g}{}", api.db.lock().unwrap_or_else(|p| p.into_inner()).rv + 1))
    });
    let Some(name) = name else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value".into());
    };
    let key = key(t, &name);
    let mut db = api.db.lock().unwrap_or_else(|p| p.into_inner());
    if db.objects.contains_key(&key) {
        return status(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", t.plural));
    }
    let mut v = v;
    stamp(&mut v, &key, None, &mut db.rv);
    api.record(&mut db, key, "ADDED", v.clone());
    ok(StatusCode::CREATED, &v)
}

/// Writes `new` over `old` at `key`: a status write keeps everything but the status, a main
/// write keeps the status; a deleting object whose last finalizer went is removed.
fn write(api: &MockApi, db: &mut Db, key: Key, old: &Value, new: Value, status_only: bool) -> Value {
    let mut v = if status_only {
        let mut v = old.clone();
        v["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        v
    } else {
        let mut v = new;
        match old.get("status") {
            Some(s) => v["status"] = s.clone(),
            None => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        // Metadata the server owns is not the client's to change.
        v["metadata"]["deletionTimestamp"] = old["metadata"].get("deletionTimestamp").cloned().unwrap_or(Value::Null);
        if v["metadata"]["deletionTimestamp"].is_null()
            && let Some(m) = v["metadata"].as_object_mut()
        {
            m.remove("deletionTimestamp");
        }
        v
    };
    stamp(&mut v, &key, Some(old), &mut db.rv);
    let deleting = v["metadata"].get("deletionTimestamp").is_some_and(|d| !d.is_null());
    let finalizers = v["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    let kind = if deleting && !finalizers { "DELETED" } else { "MODIFIED" };
    api.record(db, key, kind, v.clone());
    v
}

fn replace(api: &MockApi, t: &Target, name: &str, body: &Bytes) -> Response {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let key = key(t, name);
    let mut db = api.db.lock().unwrap_or_else(|p| p.into_inner());
    let Some(old) = db.objects.get(&key).cloned() else { return not_found(t, name) };
    if let Some(rv) = v["metadata"]["resourceVersion"].as_str()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                t.plural
            ),
        );
    }
    let v = write(api, &mut db, key, &old, v, t.status);
    ok(StatusCode::OK, &v)
}

fn patch(api: &MockApi, t: &Target, name: &str, content_type: &str, body: &Bytes) -> Response {
    let key = key(t, name);
    let mut db = api.db.lock().unwrap_or_else(|p| p.into_inner());
    let old = db.objects.get(&key).cloned();
    let apply = content_type.starts_with("application/apply-patch");
    let Some(old) = old.or_else(|| apply.then(|| json!({"metadata": {"name": name}}))) else {
        return not_found(t, name);
    };
    let mut v = old.clone();
    if content_type.starts_with("application/json-patch") {
        // The API server's JSON patch (evanphx/json-patch) passes a test for null on a path
        // that is absent, which kube's finalizer helper relies on; json_patch does not.
        let ops = match parse_body(body) {
            Ok(Value::Array(ops)) => ops,
            Ok(_) => return bad_request("a JSON patch is an array"),
            Err(e) => return bad_request(e),
        };
        let ops: Vec<Value> = ops
            .into_iter()
            .filter(|op| {
                !(op["op"] == "test"
                    && op["value"].is_null()
                    && v.pointer(op["path"].as_str().unwrap_or_default()).is_none())
            })
            .collect();
        let p: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
        };
        if let Err(e) = json_patch::patch(&mut v, &p) {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
        }
    } else {
        // Merge, strategic merge and server-side apply, all as a JSON merge patch: enough for
        // the controller's status and metadata writes (no lists of objects are merged by key).
        let p = match parse_body(body) {
            Ok(p) => p,
            Err(e) => return bad_request(e),
        };
        json_patch::merge(&mut v, &p);
    }
    if !db.objects.contains_key(&key) {
        stamp(&mut v, &key, None, &mut db.rv);
        api.record(&mut db, key, "ADDED", v.clone());
        return ok(StatusCode::CREATED, &v);
    }
    let v = write(api, &mut db, key, &old, v, t.status);
    ok(StatusCode::OK, &v)
}

fn delete(api: &MockApi, t: &Target, name: &str) -> Response {
    let key = key(t, name);
    let mut db = api.db.lock().unwrap_or_else(|p| p.into_inner());
    let Some(old) = db.objects.get(&key).cloned() else { return not_found(t, name) };
    if old["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
        if old["metadata"].get("deletionTimestamp").is_some() {
            return ok(StatusCode::ACCEPTED, &old);
        }
        let mut v = old.clone();
        v["metadata"]["deletionTimestamp"] =
            json!(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_default().to_string());
        db.rv += 1;
        v["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        api.record(&mut db, key, "MODIFIED", v.clone());
        return ok(StatusCode::ACCEPTED, &v);
    }
    db.rv += 1;
    let mut v = old;
    v["metadata"]["resourceVersion"] = json!(db.rv.to_string());
    api.record(&mut db, key, "DELETED", v.clone());
    ok(StatusCode::OK, &v)
}
