//! The Kubernetes store: status through server-side apply on the status subresource with one
//! field manager, Secrets created with create-if-absent semantics. Every request it makes first
//! takes a token from one [`WriteBudget`] shared by all its clones, command writes first.

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use shopfloor_api::{API_VERSION, ControlCommand, EdgeAgent, Equipment, NetworkSlice};

use crate::store::{
    ObjectKey, SecretData, StatusUpdate, Store, StoreError,
    write_budget::{Priority, WriteBudget, WriteRate},
};

/// The one field manager every status write uses.
pub const FIELD_MANAGER: &str = "shopfloor-controller";

/// Label on every Secret the controller creates, so they can be listed and audited.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "shopfloor-controller");

/// Reads and writes through a Kubernetes API server. Secrets live in `namespace` (the
/// controller's own).
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    namespace: String,
    recorder: kube::runtime::events::Recorder,
    throttle: Throttle,
}

/// The store's share of the API server: one budget for every clone of the store.
#[derive(Clone)]
struct Throttle {
    budget: std::sync::Arc<std::sync::Mutex<WriteBudget>>,
    origin: tokio::time::Instant,
}

/// Marks a command write as waiting for as long as it waits (dropped on cancellation too).
struct CommandWaiting<'a>(&'a std::sync::Mutex<WriteBudget>);

impl<'a> CommandWaiting<'a> {
    fn new(budget: &'a std::sync::Mutex<WriteBudget>) -> Self {
        budget.lock().unwrap_or_else(|p| p.into_inner()).command_waiting();
        Self(budget)
    }
}

impl Drop for CommandWaiting<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).command_done();
    }
}

impl Throttle {
    fn new(rate: WriteRate) -> Self {
        let origin = tokio::time::Instant::now();
        Self { budget: std::sync::Arc::new(std::sync::Mutex::new(WriteBudget::new(rate, Default::default()))), origin }
    }

    /// Waits for a token.
    async fn admit(&self, priority: Priority) {
        let _waiting = (priority == Priority::Command).then(|| CommandWaiting::new(&self.budget));
        loop {
            let taken = self.budget.lock().unwrap_or_else(|p| p.into_inner()).take(priority, self.origin.elapsed());
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

fn api_error(e: kube::Error) -> StoreError {
    StoreError::Api(e.to_string())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl KubeStore {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self::with_instance(client, namespace, None)
    }

    /// A store whose Events name this controller replica as their reporting instance.
    pub fn with_instance(client: Client, namespace: impl Into<String>, instance: Option<String>) -> Self {
        let reporter = kube::runtime::events::Reporter { controller: "shopfloor-controller".into(), instance };
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
        Self { client, namespace: namespace.into(), recorder, throttle: Throttle::new(WriteRate::DEFAULT) }
    }

    /// The same store with its own budget of API requests (default [`WriteRate::DEFAULT`]).
    pub fn with_write_rate(self, rate: WriteRate) -> Self {
        Self { throttle: Throttle::new(rate), ..self }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn apply_status<K>(
        &self,
        key: &ObjectKey,
        kind: &'static str,
        status: serde_json::Value,
    ) -> Result<(), StoreError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = json!({ "apiVersion": API_VERSION, "kind": kind, "status": status });
        // Controllers own their status fields outright: force resolves conflicts with stale
        // managers (e.g. a previous controller version) instead of failing the write.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let priority = if kind == "ControlCommand" { Priority::Command } else { Priority::Status };
        self.throttle.admit(priority).await;
        match api.patch_status(&key.name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(StoreError::Gone { kind, key: key.clone() }),
            Err(e) => Err(api_error(e)),
        }
    }
}

fn to_secret_data(data: &SecretData) -> std::collections::BTreeMap<String, ByteString> {
    data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()
}

fn from_secret(secret: Secret) -> SecretData {
    secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
}

impl Store for KubeStore {
    async fn publish_event(&self, e: crate::store::ObjectEvent) {
        use kube::runtime::events::{Event, EventType};
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(API_VERSION.to_owned()),
            kind: Some(e.kind.to_owned()),
            namespace: Some(e.key.namespace.clone()),
            name: Some(e.key.name.clone()),
            uid: e.uid.clone(),
            ..Default::default()
        };
        let event = Event {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.to_owned(),
            note: Some(e.note.clone()),
            action: e.reason.to_owned(),
            secondary: None,
        };
        self.throttle.admit(Priority::Status).await;
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(
                object = %e.key,
                reason = e.reason,
                "cannot publish the {} event on {} {}: {err} (does the controller's RBAC allow creating events.k8s.io Events in that namespace?)",
                e.reason,
                e.kind,
                e.key
            );
        }
    }

    async fn write_status(&self, update: StatusUpdate) -> Result<(), StoreError> {
        let to_json = |v: Result<serde_json::Value, serde_json::Error>| v.expect("status always serializes");
        match &update {
            StatusUpdate::EdgeAgent(k, s) => {
                self.apply_status::<EdgeAgent>(k, "EdgeAgent", to_json(serde_json::to_value(s))).await
            }
            StatusUpdate::Equipment(k, s) => {
                self.apply_status::<Equipment>(k, "Equipment", to_json(serde_json::to_value(s))).await
            }
            StatusUpdate::NetworkSlice(k, s) => {
                self.apply_status::<NetworkSlice>(k, "NetworkSlice", to_json(serde_json::to_value(s))).await
            }
            StatusUpdate::ControlCommand(k, s) => {
                self.apply_status::<ControlCommand>(k, "ControlCommand", to_json(serde_json::to_value(s))).await
            }
        }
    }

    async fn delete_command(&self, key: &ObjectKey) -> Result<(), StoreError> {
        let api: Api<ControlCommand> = Api::namespaced(self.client.clone(), &key.namespace);
        self.throttle.admit(Priority::Status).await;
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn create_secret_if_absent(&self, name: &str, data: SecretData) -> Result<SecretData, StoreError> {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.namespace.clone()),
                labels: Some([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into_iter().collect()),
                ..Default::default()
            },
            data: Some(to_secret_data(&data)),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        // POST fails with 409 if the name is taken: whoever created it first wins, and every
        // other replica reads the winner's data instead of overwriting it.
        self.throttle.admit(Priority::Command).await;
        match self.secrets().create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(data),
            Err(e) if is_status(&e, 409) => {
                self.throttle.admit(Priority::Command).await;
                self.secrets().get(name).await.map(from_secret).map_err(api_error)
            }
            Err(e) => Err(api_error(e)),
        }
    }

    async fn read_secret(&self, name: &str) -> Result<Option<SecretData>, StoreError> {
        self.throttle.admit(Priority::Command).await;
        self.secrets().get_opt(name).await.map(|s| s.map(from_secret)).map_err(api_error)
    }

    async fn replace_secret_if(&self, name: &str, expected: &SecretData, data: SecretData) -> Result<bool, StoreError> {
        self.throttle.admit(Priority::Command).await;
        let Some(mut secret) = self.secrets().get_opt(name).await.map_err(api_error)? else { return Ok(false) };
        if &from_secret(secret.clone()) != expected {
            return Ok(false);
        }
        // The PUT carries the resourceVersion just read: the API server refuses it with 409
        // Conflict if anyone wrote the Secret in between.
        secret.data = Some(to_secret_data(&data));
        self.throttle.admit(Priority::Command).await;
        match self.secrets().replace(name, &PostParams::default(), &secret).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn write_secret(&self, name: &str, data: SecretData) -> Result<(), StoreError> {
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": name, "labels": { MANAGED_BY.0: MANAGED_BY.1 } },
            "type": "Opaque",
            "data": to_secret_data(&data),
        });
        self.throttle.admit(Priority::Command).await;
        self.secrets()
            .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map(|_| ())
            .map_err(api_error)
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.throttle.admit(Priority::Command).await;
        match self.secrets().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }
}
