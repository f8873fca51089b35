//! The Kubernetes shell: one kube-rs controller per kind, in the controller-rs style
//! (`reconcile` + `error_policy` + a shared [`Context`]). Each reconcile hands its object to the
//! shared [`Reconciler`] steps with a view of the other objects from the controllers' reflectors.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, error_boundary::InvalidObject},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store as Reader},
        watcher,
    },
};
use shopfloor_api::{ControlCommand, EdgeAgent, Equipment, NetworkSlice};

use crate::{
    enrollment,
    kube::store::KubeStore,
    planner::Plans,
    reconcile::Reconciler,
    store::{ObjectKey, Store, StoreError, World},
};

/// The finalizer that lets the controller close a deleted agent's connection and remove its
/// bootstrap token before the EdgeAgent disappears.
pub const AGENT_FINALIZER: &str = "shopfloor.io/agent-connection";

/// Which namespaces the controller watches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    #[default]
    Cluster,
    /// Only these (Roles in each; `--namespaces`).
    Namespaces(Vec<String>),
}

impl Scope {
    fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::Cluster => vec![Api::all(client.clone())],
            Scope::Namespaces(ns) => ns.iter().map(|n| Api::namespaced(client.clone(), n)).collect(),
        }
    }
}

/// The reflector stores of one kind, one per watched namespace (or one for the cluster), and
/// whether each has listed its objects once.
///
/// Readiness is our own signal, set when the reflector passes its `InitDone`, not
/// `Store::wait_until_ready`: that is one shared oneshot receiver with a single waker slot, and
/// kube-runtime's `Controller` waits on it too, so a second waiter loses its wakeup (the gate then
/// opened only at its 60 s patience on every start and takeover).
#[derive(Clone)]
pub struct Readers<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Reader<K>>,
    listed: Vec<tokio::sync::watch::Receiver<bool>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> std::fmt::Debug for Readers<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("scopes", &self.stores.len()).finish()
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Readers<K> {
    fn state(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(Reader::state).collect()
    }

    fn get(&self, r: &ObjectRef<K>) -> Option<Arc<K>> {
        self.stores.iter().find_map(|s| s.get(r))
    }

    /// Waits until every scope's watch has listed its objects once; `false` if one never will
    /// (its watch ended).
    async fn synced(&self) -> bool {
        for listed in &self.listed {
            if listed.clone().wait_for(|l| *l).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// One scope's watch of `K`: the reflector store, the stream that fills it (which a
/// `Controller` drives), and the store's listing signal. Anything may wait on the signal, as
/// many times as it likes, beside the `Controller`.
pub struct Watch<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub store: Reader<K>,
    pub listed: tokio::sync::watch::Receiver<bool>,
    pub objects: futures::stream::BoxStream<'static, Result<K, watcher::Error>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> std::fmt::Debug for Watch<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("listed", &*self.listed.borrow()).finish_non_exhaustive()
    }
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    /// A watch of whatever `events` yields (a `watcher`, or a test's own events).
    pub fn of(events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static) -> Self {
        use kube::runtime::WatchStreamExt as _;
        let (store, writer) = kube::runtime::reflector::store();
        let (listed_tx, listed) = tokio::sync::watch::channel(false);
        // After the reflector: the store holds the whole list when InitDone comes out.
        let objects = kube::runtime::reflector(writer, events)
            .inspect(move |e| {
                if let Ok(watcher::Event::InitDone) = e {
                    listed_tx.send_replace(true);
                }
            })
            .applied_objects()
            .boxed();
        Self { store, listed, objects }
    }

    /// The watch of `api` the controller runs.
    pub fn api(api: Api<K>, wc: watcher::Config) -> Self
    where
        K: serde::de::DeserializeOwned,
    {
        Self::of(watcher(api, wc))
    }
}

/// A store its owner fills (a test's fixture), taken as listed.
impl<K: Resource<DynamicType = ()> + Clone + 'static> From<Reader<K>> for Readers<K> {
    fn from(store: Reader<K>) -> Self {
        Self { stores: vec![store], listed: vec![tokio::sync::watch::channel(true).1] }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> FromIterator<(Reader<K>, tokio::sync::watch::Receiver<bool>)>
    for Readers<K>
{
    fn from_iter<I: IntoIterator<Item = (Reader<K>, tokio::sync::watch::Receiver<bool>)>>(iter: I) -> Self {
        let (stores, listed) = iter.into_iter().unzip();
        Self { stores, listed }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub core: Arc<Reconciler<KubeStore>>,
    pub client: Client,
    pub recorder: Recorder,
    agents: Readers<DeserializeGuard<EdgeAgent>>,
    equipment: Readers<DeserializeGuard<Equipment>>,
    slices: Readers<DeserializeGuard<NetworkSlice>>,
    /// Consecutive failures per object, for error_policy's backoff.
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Errors of a reconcile; every one is retried with backoff by `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The finalizer patch's test failed (422) or conflicted (409): the watch's copy of the
    /// object is behind the API server (typically a first reconcile racing its own previous
    /// write). Retried at once when the watch catches up; nothing is wrong.
    #[error("the cached object is behind the API server: {0}")]
    Stale(String),
}

impl Context {
    /// A context over the given reflector stores (the controllers' own, or test fixtures).
    pub fn new(
        client: Client,
        core: Arc<Reconciler<KubeStore>>,
        agents: impl Into<Readers<DeserializeGuard<EdgeAgent>>>,
        equipment: impl Into<Readers<DeserializeGuard<Equipment>>>,
        slices: impl Into<Readers<DeserializeGuard<NetworkSlice>>>,
    ) -> Arc<Self> {
        let reporter =
            Reporter { controller: "shopfloor-controller".into(), instance: Some(core.replica().to_owned()) };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            agents: agents.into(),
            equipment: equipment.into(),
            slices: slices.into(),
            core,
            failures: Default::default(),
        })
    }

    /// A version of what the plans depend on: the specs (generations) of every object and the
    /// agents' labels. Not resourceVersions: every status write moves those, and each one then
    /// recomputed every agent's plan.
    fn version(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for a in self.agents.state() {
            let m = a.meta();
            (m.uid.as_deref(), m.generation, &m.labels, m.deletion_timestamp.is_some()).hash(&mut h);
        }
        for e in self.equipment.state() {
            (e.meta().uid.as_deref(), e.meta().generation).hash(&mut h);
        }
        for s in self.slices.state() {
            (s.meta().uid.as_deref(), s.meta().generation).hash(&mut h);
        }
        h.finish()
    }

    /// The plans, recomputed (from a copy of every object) only when the version moved.
    fn plans(&self) -> Arc<Plans> {
        self.core.plans_from(self.version(), || World {
            agents: self.agents.state().iter().filter_map(|a| a.0.as_ref().ok().cloned()).collect(),
            equipment: self.equipment.state().iter().filter_map(|e| e.0.as_ref().ok().cloned()).collect(),
            slices: self.slices.state().iter().filter_map(|s| s.0.as_ref().ok().cloned()).collect(),
            ..Default::default()
        })
    }

    /// The objects of `agents` only (and the slices, few): what a pass after their reports reads,
    /// copied from the caches without copying the plant.
    fn objects_of(&self, agents: &std::collections::BTreeSet<ObjectKey>) -> World {
        let names: std::collections::HashSet<(&str, &str)> =
            agents.iter().map(|k| (k.namespace.as_str(), k.name.as_str())).collect();
        World {
            agents: agents
                .iter()
                .filter_map(|k| self.agents.get(&ObjectRef::new(&k.name).within(&k.namespace)))
                .filter_map(|a| a.0.as_ref().ok().filter(|a| a.metadata.deletion_timestamp.is_none()).cloned())
                .collect(),
            equipment: self
                .equipment
                .state()
                .iter()
                .filter_map(|e| e.0.as_ref().ok())
                .filter(|e| {
                    names.contains(&(e.metadata.namespace.as_deref().unwrap_or_default(), &e.spec.agent_ref.name))
                })
                .cloned()
                .collect(),
            slices: self.slices.state().iter().filter_map(|s| s.0.as_ref().ok().cloned()).collect(),
            ..Default::default()
        }
    }

    async fn event<R: Resource<DynamicType = ()>>(&self, obj: &R, type_: EventType, reason: &str, note: String) {
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(
                "cannot publish the {reason} event: {e} (does the controller's RBAC allow creating events.k8s.io Events?)"
            );
        }
    }
}

fn requeue(r: Option<Duration>) -> Action {
    // Status freshness (last seen, RTT) wants a periodic pass even without events.
    Action::requeue(r.unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(30)))
}

pub async fn reconcile_agent(agent: Arc<DeserializeGuard<EdgeAgent>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let agent = match &agent.0 {
        Ok(a) => Arc::new(a.clone()),
        Err(invalid) => return release_unreadable_agent(invalid, &ctx).await,
    };
    let ns = agent.namespace().unwrap_or_default();
    let api: Api<EdgeAgent> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, AGENT_FINALIZER, agent, |event| async {
        match event {
            Finalizer::Apply(agent) => {
                let was_connected = ctx.core.registry().get(&ObjectKey::of(&agent.metadata)).is_some();
                let r = ctx.core.reconcile_agent(&agent, &ctx.plans()).await?;
                succeeded(&ctx, &*agent);
                if agent.spec.suspend && was_connected {
                    ctx.event(
                        &*agent,
                        EventType::Normal,
                        "Suspended",
                        "connection closed: spec.suspend is true".into(),
                    )
                    .await;
                }
                Ok(requeue(r))
            }
            Finalizer::Cleanup(agent) => {
                release_agent(&ObjectKey::of(&agent.metadata), &ctx).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await;
    result.map_err(|e| {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
                if s.code == 409 || s.code == 422 =>
            {
                Error::Stale(s.message)
            }
            other => Error::Finalizer(other.to_string()),
        }
    })
}

/// What the finalizer guards: the agent's live connection and its bootstrap token.
async fn release_agent(key: &ObjectKey, ctx: &Context) -> Result<(), Error> {
    ctx.core.forget_agent(key);
    ctx.core.registry().evict(key, "the EdgeAgent was deleted");
    ctx.core.store().delete_secret(&enrollment::token_secret_name(key)).await?;
    Ok(())
}

/// An EdgeAgent the controller cannot read is skipped like any unreadable object — except when
/// it is being deleted with our finalizer: its connection and token are released from its
/// metadata alone and the finalizer removed, so an unreadable object can never block deletion.
async fn release_unreadable_agent(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let finalizers = meta.finalizers.as_deref().unwrap_or_default();
    let Some(index) = finalizers.iter().position(|f| f == AGENT_FINALIZER) else {
        return Ok(unreadable("EdgeAgent", invalid));
    };
    if meta.deletion_timestamp.is_none() {
        return Ok(unreadable("EdgeAgent", invalid));
    }
    release_agent(&ObjectKey::of(meta), ctx).await?;
    let api: Api<EdgeAgent> = Api::namespaced(ctx.client.clone(), meta.namespace.as_deref().unwrap_or_default());
    // Test-then-remove, as kube's finalizer helper does: never removes another controller's entry.
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": AGENT_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]))
    .map_err(|e| Error::Finalizer(e.to_string()))?;
    api.patch_metadata(
        meta.name.as_deref().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::<()>::Json(patch),
    )
    .await
    .map_err(|e| Error::Finalizer(format!("cannot remove the finalizer of an unreadable EdgeAgent: {e}")))?;
    Ok(Action::await_change())
}

/// An object the controller cannot read (e.g. written against a newer CRD) is logged and left
/// alone until it changes; it never stops the watch of the others.
fn unreadable(kind: &str, invalid: &InvalidObject) -> Action {
    tracing::warn!(
        kind,
        name = invalid.metadata.name.as_deref().unwrap_or_default(),
        namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
        "cannot read the object, skipping it until it changes: {}",
        invalid.error
    );
    Action::await_change()
}

pub async fn reconcile_equipment(eq: Arc<DeserializeGuard<Equipment>>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &eq.0 {
        Ok(eq) => {
            ctx.core.reconcile_equipment(eq, &ctx.plans());
            Ok(requeue(None))
        }
        Err(invalid) => Ok(unreadable("Equipment", invalid)),
    }
}

pub async fn reconcile_slice(slice: Arc<DeserializeGuard<NetworkSlice>>, ctx: Arc<Context>) -> Result<Action, Error> {
    match &slice.0 {
        Ok(slice) => {
            ctx.core.reconcile_slice(slice, &ctx.plans());
            Ok(requeue(None))
        }
        Err(invalid) => Ok(unreadable("NetworkSlice", invalid)),
    }
}

pub async fn reconcile_command(cmd: Arc<DeserializeGuard<ControlCommand>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let cmd = match &cmd.0 {
        Ok(c) => c,
        Err(invalid) => return Ok(unreadable("ControlCommand", invalid)),
    };
    let ns = cmd.namespace();
    let eq = ctx.equipment.get(&ObjectRef::new(&cmd.spec.equipment_ref.name).within(ns.as_deref().unwrap_or_default()));
    let eq = eq.as_deref().and_then(|g| g.0.as_ref().ok());
    let before = cmd.status.as_ref().and_then(|s| s.phase);
    let r = ctx.core.reconcile_command(cmd, eq).await?;
    succeeded(&ctx, cmd);
    if before.is_none() && cmd.spec.dry_run {
        ctx.event(cmd, EventType::Normal, "DryRun", "validated without writing".into()).await;
    }
    Ok(match r {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn failure_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The delay before retry number `n` (1-based): 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn retry_delay(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300))
}

/// Transient failures are retried with exponential backoff per object; a success resets it.
pub fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&()).to_string();
    if let Error::Stale(why) = error {
        tracing::debug!(kind, name = obj.meta().name.as_deref().unwrap_or_default(), "retrying: {why}");
        return Action::requeue(Duration::from_secs(1));
    }
    ctx.core.metrics().reconcile_errors.get_or_create(&crate::metrics::KindLabel { kind: kind.clone() }).inc();
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(failure_key(&*obj)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = retry_delay(n);
    tracing::warn!(
        kind,
        name = obj.meta().name.as_deref().unwrap_or_default(),
        attempt = n,
        "reconcile failed, retrying in {delay:?}: {error}"
    );
    Action::requeue(delay)
}

fn succeeded<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K) {
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&failure_key(obj));
}

/// How long the endpoint waits for every watched namespace's EdgeAgents to be listed before it
/// lets in the agents of those listed.
const LISTING_PATIENCE: Duration = Duration::from_secs(60);

/// Fills the agent book with every EdgeAgent once the watches have listed them (or `patience`
/// has passed: one namespace whose watch cannot list, a Role missing there, must not keep every
/// agent out; an agent of that namespace is then refused by name), which opens the endpoint.
/// EdgeAgents being deleted are left out.
async fn let_agents_in(ctx: Arc<Context>, patience: Duration) {
    match tokio::time::timeout(patience, ctx.agents.synced()).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => tracing::warn!(
            "the EdgeAgents of a watched namespace are still not listed after {patience:?} (check the controller's RBAC there): letting in the agents of those listed"
        ),
    }
    let agents: Vec<EdgeAgent> = ctx
        .agents
        .state()
        .iter()
        .filter_map(|a| a.0.as_ref().ok().filter(|a| a.metadata.deletion_timestamp.is_none()).cloned())
        .collect();
    ctx.core.book().remember_only(&agents);
    tracing::info!(agents = agents.len(), "EdgeAgents read: agents are let in");
}

fn watches<K>(apis: Vec<Api<K>>, wc: &watcher::Config) -> Vec<Watch<K>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    apis.into_iter().map(|api| Watch::api(api, wc.clone())).collect()
}

fn readers<K: Resource<DynamicType = ()> + Clone + 'static>(watches: &[Watch<K>]) -> Readers<K> {
    watches.iter().map(|w| (w.store.clone(), w.listed.clone())).collect()
}

fn controllers<K>(watches: Vec<Watch<K>>) -> Vec<Controller<K>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    watches.into_iter().map(|w| Controller::for_stream(w.objects, w.store)).collect()
}

/// Runs the four controllers over `scope` until `shutdown` resolves: one set per namespace when
/// scoped, sharing one context so plans see every watched object.
pub async fn run(
    client: Client,
    core: Arc<Reconciler<KubeStore>>,
    scope: Scope,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let on_shutdown = || {
        let mut rx = shutdown.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let wc = watcher::Config::default().any_semantic();
    let equipment_apis = scope.apis::<DeserializeGuard<Equipment>>(&client);
    let agents = watches(scope.apis::<DeserializeGuard<EdgeAgent>>(&client), &wc);
    let equipment = watches(equipment_apis.clone(), &wc);
    let slices = watches(scope.apis::<DeserializeGuard<NetworkSlice>>(&client), &wc);
    let commands = watches(scope.apis::<DeserializeGuard<ControlCommand>>(&client), &wc);
    let ctx = Context::new(client.clone(), core, readers(&agents), readers(&equipment), readers(&slices));
    let (agents, equipment, slices, commands) =
        (controllers(agents), controllers(equipment), controllers(slices), controllers(commands));
    // The endpoint admits agents once the book holds every EdgeAgent: a leader taking over
    // would otherwise refuse the agents that dial it first as ones that do not exist.
    let synced = tokio::spawn(let_agents_in(ctx.clone(), LISTING_PATIENCE));
    // Agent reports (connections, applied configurations, readings) change statuses without any
    // API event: refresh the agents they came from (their equipment and slices with them), at
    // most twice a second.
    let refresh = {
        let ctx = ctx.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = ctx.core.changes().wait() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let changed = ctx.core.changes().take();
                let plans = ctx.plans();
                let world = ctx.objects_of(&changed.agents);
                ctx.core.reconcile_changed(&plans, &world, &changed).await;
            }
        })
    };
    // An Equipment change moves its agent's plan. Commands need no such trigger: the engine
    // re-drives them itself when their agent connects.
    let mut runs: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
    for (controller, eq_api) in agents.into_iter().zip(equipment_apis) {
        let run = controller
            .watches(eq_api, wc.clone(), |eq: DeserializeGuard<Equipment>| {
                let eq = eq.0.ok()?;
                let ns = eq.namespace().unwrap_or_default();
                Some(ObjectRef::<DeserializeGuard<EdgeAgent>>::new(&eq.spec.agent_ref.name).within(&ns))
            })
            .graceful_shutdown_on(on_shutdown())
            .run(reconcile_agent, error_policy, ctx.clone())
            .for_each(log);
        runs.push(Box::pin(run));
    }
    for c in equipment {
        runs.push(Box::pin(
            c.graceful_shutdown_on(on_shutdown()).run(reconcile_equipment, error_policy, ctx.clone()).for_each(log),
        ));
    }
    for c in slices {
        runs.push(Box::pin(
            c.graceful_shutdown_on(on_shutdown()).run(reconcile_slice, error_policy, ctx.clone()).for_each(log),
        ));
    }
    for c in commands {
        runs.push(Box::pin(
            c.graceful_shutdown_on(on_shutdown()).run(reconcile_command, error_policy, ctx.clone()).for_each(log),
        ));
    }
    futures::future::join_all(runs).await;
    refresh.abort();
    synced.abort();
}

/// What a controller's stream reports beside its reconciles. A failed reconcile was logged by
/// `error_policy` already; an object gone from the watch between its trigger and its turn
/// (deleted meanwhile) is nothing to warn about.
async fn log<T>(r: Result<T, kube::runtime::controller::Error<Error, watcher::Error>>) {
    use kube::runtime::controller::Error as C;
    match r {
        Ok(_) => {}
        Err(C::ObjectNotFound(obj)) => tracing::debug!("{obj} is gone: nothing to reconcile"),
        Err(C::ReconcilerFailed(..)) => {}
        Err(e) => tracing::warn!("controller stream: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use kube::runtime::reflector;

    /// A context over reflector stores filled by the test, with a mocked API nobody answers.
    fn context(
        agents: impl Into<Readers<DeserializeGuard<EdgeAgent>>>,
        equipment: impl Into<Readers<DeserializeGuard<Equipment>>>,
    ) -> Arc<Context> {
        let (service, _api) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let core = Reconciler::new(
            Arc::new(KubeStore::new(client.clone(), "shopfloor-system")),
            "pod-a",
            Duration::from_millis(1),
        );
        Context::new(client, core, agents, equipment, reflector::store().0)
    }

    fn agent(name: &str) -> EdgeAgent {
        let mut a: EdgeAgent = serde_yaml::from_str(&format!(
            "apiVersion: shopfloor.io/v1alpha1\nkind: EdgeAgent\nmetadata: {{name: {name}, namespace: plant-a}}\nspec: {{site: plant-a/{name}}}\n"
        ))
        .expect("agent");
        a.metadata.uid = Some(format!("uid-{name}"));
        a.metadata.generation = Some(1);
        a.metadata.resource_version = Some("10".into());
        a
    }

    /// A status write moves an object's resourceVersion, not its generation: the plans must stay
    /// (hashing resourceVersions recomputed every agent's plan after every status write).
    #[tokio::test]
    async fn the_plans_follow_specs_and_labels_not_status_writes() {
        use shopfloor_api::edge_agent::{AgentPhase, EdgeAgentStatus};
        let mut a = agent("line-1");
        let (agents, mut writer) = reflector::store();
        let mut apply =
            |a: &EdgeAgent| writer.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(a.clone()))));
        apply(&a);
        let ctx = context(agents, reflector::store().0);
        let (version, plans) = (ctx.version(), ctx.plans());

        a.metadata.resource_version = Some("11".into());
        a.status = Some(EdgeAgentStatus { phase: Some(AgentPhase::Connected), ..Default::default() });
        apply(&a);
        assert_eq!(ctx.version(), version, "a status write is not a change of what the plans read");
        assert!(Arc::ptr_eq(&ctx.plans(), &plans), "the plans were not recomputed");

        a.metadata.labels = Some([("line".to_owned(), "1".to_owned())].into());
        apply(&a);
        assert_ne!(ctx.version(), version, "slices select agents by label");
        let labelled = ctx.version();
        a.spec.suspend = true;
        a.metadata.generation = Some(2);
        apply(&a);
        assert_ne!(ctx.version(), labelled, "a spec change");
    }

    /// A leader taking over lets no agent in before its watches have listed the EdgeAgents (it
    /// refused the first agents back as ones that do not exist, and they backed off for up to
    /// 30 s); then its book holds every listed EdgeAgent but those being deleted. kube-runtime's
    /// `Controller` runs on the same watch, as in `run`: when the gate waited on the store's
    /// readiness future as well, the Controller took its only waker slot and the gate opened
    /// only at its 60 s patience.
    #[tokio::test]
    async fn agents_are_let_in_once_the_edge_agents_are_listed_beside_a_controller() {
        let (events, rx) = futures::channel::mpsc::unbounded();
        let watch = Watch::of(rx.map(Ok));
        let ctx = context(readers(std::slice::from_ref(&watch)), reflector::store().0);
        let opening = tokio::spawn(let_agents_in(ctx.clone(), Duration::from_secs(60)));
        tokio::task::yield_now().await;
        let reconciled = Arc::new(tokio::sync::Notify::new());
        let controller = {
            let reconciled = reconciled.clone();
            Controller::for_stream(watch.objects, watch.store)
                .run(
                    |_, n: Arc<tokio::sync::Notify>| async move {
                        n.notify_one();
                        Ok::<_, Error>(Action::await_change())
                    },
                    |_, _, _| Action::await_change(),
                    reconciled,
                )
                .for_each(|_| async {})
        };
        let controller = tokio::spawn(controller);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ctx.core.book().is_complete(), "closed before the list");
        let mut deleting = agent("line-2");
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::from_second(1_800_000_000).expect("time"),
        ));
        let send = |e| events.unbounded_send(e).expect("send");
        send(watcher::Event::Init);
        for a in [agent("line-1"), deleting] {
            send(watcher::Event::InitApply(DeserializeGuard(Ok(a))));
        }
        send(watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(1), opening)
            .await
            .expect("open within 1 s of the list")
            .expect("task");
        tokio::time::timeout(Duration::from_secs(5), reconciled.notified()).await.expect("the Controller ran too");
        assert!(ctx.core.book().is_complete());
        assert!(ctx.core.book().agent(&ObjectKey::new("plant-a", "line-1")).is_some(), "a listed agent is known");
        assert!(ctx.core.book().agent(&ObjectKey::new("plant-a", "line-2")).is_none(), "one being deleted is not");
        controller.abort();
    }

    /// A watch that never lists (a namespace without the controller's Role) keeps no one out
    /// for good: after the patience the agents listed elsewhere are let in.
    #[tokio::test(start_paused = true)]
    async fn a_namespace_that_never_lists_keeps_no_one_out_for_good() {
        let never = Watch::<DeserializeGuard<EdgeAgent>>::of(futures::stream::pending());
        let ctx = context(readers(std::slice::from_ref(&never)), reflector::store().0);
        let_agents_in(ctx.clone(), Duration::from_secs(60)).await;
        assert!(ctx.core.book().is_complete());
    }

    /// The refresh after agents' reports reads the marked agents and their equipment, not the
    /// plant (it copied every object twice a second).
    #[tokio::test]
    async fn a_refresh_copies_the_marked_agents_objects_only() {
        let (agents, mut agents_in) = reflector::store();
        let (equipment, mut equipment_in) = reflector::store();
        for name in ["line-1", "line-2", "line-3"] {
            agents_in.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(agent(name)))));
            let eq: Equipment = serde_yaml::from_str(&format!(
                "apiVersion: shopfloor.io/v1alpha1\nkind: Equipment\nmetadata: {{name: {name}-fan, namespace: plant-a}}\n\
                 spec:\n  agentRef: {{name: {name}}}\n  simulated: {{}}\n  properties: [{{name: on, type: Bool, access: ReadWrite}}]\n"
            ))
            .expect("equipment");
            equipment_in.apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(eq))));
        }
        let ctx = context(agents, equipment);
        let marked = [ObjectKey::new("plant-a", "line-2"), ObjectKey::new("plant-a", "gone")].into();
        let world = ctx.objects_of(&marked);
        let names = |metas: Vec<&shopfloor_api::common::ObjectMeta>| -> Vec<String> {
            metas.into_iter().map(|m| ObjectKey::of(m).to_string()).collect()
        };
        assert_eq!(names(world.agents.iter().map(|a| &a.metadata).collect()), ["plant-a/line-2"]);
        assert_eq!(names(world.equipment.iter().map(|e| &e.metadata).collect()), ["plant-a/line-2-fan"]);
    }

    #[test]
    fn retries_back_off_exponentially_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
