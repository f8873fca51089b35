//! The controller's core: everything between the store and the agents, the same for the
//! Kubernetes and the standalone store. Each `reconcile_*` handles one object given a view of
//! the others; the Kubernetes controllers and the standalone loop both call them.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use shopfloor_api::{
    ControlCommand, EdgeAgent, Equipment, NetworkSlice,
    edge_agent::{CertificateStatus, EdgeAgentStatus, EnrollmentStatus},
};

use crate::{
    engine::Engine,
    enrollment::{self, BootstrapToken},
    metrics::{KindLabel, Metrics},
    observed::Observed,
    planner::{self, Plans},
    registry::Registry,
    status::{self, AgentFacts},
    status_writer::StatusWriter,
    store::{ObjectKey, StatusUpdate, Store, StoreError, World},
};

/// When to look at an object again.
pub type Requeue = Option<Duration>;

/// Shared state of a running controller.
pub struct Core<S: Store> {
    pub store: Arc<S>,
    pub registry: Arc<Registry>,
    pub observed: Arc<Observed>,
    pub metrics: Arc<Metrics>,
    pub engine: Engine<S>,
    statuses: StatusWriter,
    /// Plans for the world version they were computed from.
    plans: RwLock<(u64, Arc<Plans>)>,
    /// Agents whose bootstrap token this replica already ensured, with the token's expiry.
    tokens: Mutex<BTreeMap<ObjectKey, Timestamp>>,
    pub replica: String,
    /// Poked when something the statuses depend on changed outside the store (an agent
    /// connected, applied a configuration, reported values).
    pub kick: tokio::sync::Notify,
    /// The EdgeAgents as last reconciled: the endpoint checks handshakes against these.
    agents: RwLock<BTreeMap<ObjectKey, EdgeAgent>>,
    /// Certificates issued by this controller since its start, by agent: authoritative over a
    /// status that may not have been read back yet.
    issued: RwLock<BTreeMap<ObjectKey, (CertificateStatus, Timestamp)>>,
}

impl<S: Store> std::fmt::Debug for Core<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl<S: Store> Core<S> {
    pub fn new(store: Arc<S>, replica: impl Into<String>, status_interval: Duration) -> Arc<Self> {
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::new(store.clone(), registry.clone(), metrics.clone());
        engine.follow_connections();
        Arc::new(Self {
            engine,
            statuses: StatusWriter::start(store.clone(), status_interval),
            store,
            registry,
            observed: Arc::default(),
            metrics,
            plans: RwLock::new((u64::MAX, Arc::default())),
            tokens: Mutex::default(),
            replica: replica.into(),
            kick: tokio::sync::Notify::new(),
            agents: RwLock::default(),
            issued: RwLock::default(),
        })
    }

    /// The plans for `world`, recomputed only when `version` moved.
    pub fn plans(&self, version: u64, world: &World) -> Arc<Plans> {
        {
            let cached = self.plans.read().unwrap_or_else(|p| p.into_inner());
            if cached.0 == version {
                return cached.1.clone();
            }
        }
        let plans = Arc::new(planner::plan(&world.agents, &world.equipment, &world.slices));
        *self.plans.write().unwrap_or_else(|p| p.into_inner()) = (version, plans.clone());
        plans
    }

    /// The most recent plans, whatever world they came from.
    pub fn current_plans(&self) -> Arc<Plans> {
        self.plans.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    fn count(&self, kind: &str) {
        self.metrics.reconciliations.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// Publishes an event on EdgeAgent `key`, without waiting for it.
    pub fn agent_event(&self, key: &ObjectKey, warning: bool, reason: &'static str, note: String) {
        let event = crate::store::ObjectEvent {
            kind: "EdgeAgent",
            key: key.clone(),
            uid: self.agent(key).and_then(|a| a.metadata.uid),
            warning,
            reason,
            note,
        };
        let store = self.store.clone();
        tokio::spawn(async move { store.publish_event(event).await });
    }

    /// Everything, once: what the standalone loop runs after each change of the folder.
    pub async fn reconcile_world(&self, version: u64, world: &World) -> Requeue {
        let plans = self.plans(version, world);
        let present: BTreeMap<ObjectKey, EdgeAgent> =
            world.agents.iter().map(|a| (ObjectKey::of(&a.metadata), a.clone())).collect();
        for gone in self.registry.connected().into_iter().filter(|k| !present.contains_key(k)) {
            self.registry.evict(&gone, "the EdgeAgent was deleted");
            tracing::info!(agent = %gone, "deleted: connection closed");
        }
        *self.agents.write().unwrap_or_else(|p| p.into_inner()) = present;
        let mut next: Requeue = None;
        let mut soonest = |r: Requeue| {
            if let Some(d) = r {
                next = Some(next.map_or(d, |n: Duration| n.min(d)));
            }
        };
        for a in &world.agents {
            match self.reconcile_agent(a, &plans).await {
                Ok(r) => soonest(r),
                Err(e) => self.error("EdgeAgent", &ObjectKey::of(&a.metadata), &e),
            }
        }
        for e in &world.equipment {
            self.reconcile_equipment(e, &plans);
        }
        for s in &world.slices {
            self.reconcile_slice(s, &plans);
        }
        let present: std::collections::HashSet<String> =
            world.commands.iter().filter_map(|c| c.metadata.uid.clone()).collect();
        self.engine.retain(&present);
        for c in &world.commands {
            let eq = world.equipment.iter().find(|e| {
                e.metadata.name.as_deref() == Some(c.spec.equipment_ref.name.as_str())
                    && e.metadata.namespace == c.metadata.namespace
            });
            match self.reconcile_command(c, eq).await {
                Ok(r) => soonest(r),
                Err(e) => self.error("ControlCommand", &ObjectKey::of(&c.metadata), &e),
            }
        }
        next
    }

    fn error(&self, kind: &str, key: &ObjectKey, e: &StoreError) {
        self.metrics.reconcile_errors.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
        tracing::warn!(kind, object = %key, "reconcile failed: {e}");
    }

    /// One EdgeAgent: suspension, bootstrap token, configuration push, status.
    pub async fn reconcile_agent(&self, agent: &EdgeAgent, plans: &Plans) -> Result<Requeue, StoreError> {
        self.count("EdgeAgent");
        let key = ObjectKey::of(&agent.metadata);
        if agent.spec.suspend && self.registry.evict(&key, "the EdgeAgent is suspended (spec.suspend: true)") {
            tracing::info!(agent = %key, "suspended: connection closed");
        }
        let mut agent = agent.clone();
        if let Some((cert, at)) = self.issued.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() {
            let status = agent.status.get_or_insert_with(EdgeAgentStatus::default);
            status.certificate = Some(cert);
            if let Some(e) = status.enrollment.as_mut() {
                e.enrolled_at.get_or_insert(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at));
            }
        }
        self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), agent.clone());
        let mut requeue = None;
        let enrolled = agent.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| c.serial.is_some());
        if !enrolled {
            let expires = self.ensure_token(&key).await?;
            let status = agent.status.get_or_insert_with(EdgeAgentStatus::default);
            let enrollment = status.enrollment.get_or_insert(EnrollmentStatus {
                token_secret_name: None,
                token_expires_at: None,
                enrolled_at: None,
            });
            enrollment.token_secret_name = Some(enrollment::token_secret_name(&key));
            enrollment.token_expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(expires));
            requeue = Some(Timestamp::now().duration_until(expires).unsigned_abs());
        }
        let plan = plans.agents.get(&key);
        let connected = self.registry.get(&key);
        if let (Some(c), Some(plan)) = (&connected, plan)
            && c.held_revision.as_deref() != Some(plan.revision())
            && !agent.spec.suspend
        {
            let plan = Arc::new(plan.clone());
            match c.session.push_config(plan.clone()).await {
                Ok(()) => {
                    self.metrics.plans_pushed.inc();
                    // Marked as held once the agent confirms with ConfigApplied; until then the
                    // desired and applied revisions differ in the status.
                    tracing::info!(agent = %key, revision = plan.revision(), "configuration pushed");
                }
                Err(e) => tracing::warn!(agent = %key, "configuration push failed: {e}"),
            }
        }
        let applied = self.observed.applied(&key);
        let facts = AgentFacts {
            connected: connected.as_ref(),
            desired_revision: plan.map(|p| p.revision()),
            applied: applied.as_ref(),
            replica: &self.replica,
        };
        let status = status::edge_agent(&agent, &facts, Timestamp::now());
        if agent.status.as_ref() != Some(&status) {
            self.statuses.submit(StatusUpdate::EdgeAgent(key, status));
        }
        Ok(requeue)
    }

    /// Forgets a deleted EdgeAgent: its certificate no longer passes the handshake check.
    pub fn forget_agent(&self, key: &ObjectKey) {
        self.agents.write().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.issued.write().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.observed.forget_agent(key);
    }

    /// The EdgeAgent as last reconciled, with the certificate this controller issued it.
    pub fn agent(&self, key: &ObjectKey) -> Option<EdgeAgent> {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Records a certificate issued to `key` and writes it into the EdgeAgent's status before
    /// returning: a handshake with it must find it recorded.
    pub async fn record_certificate(
        &self,
        key: &ObjectKey,
        cert: CertificateStatus,
        enrolled: bool,
    ) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let at = self.issued.read().unwrap_or_else(|p| p.into_inner()).get(key).map(|(_, t)| *t).unwrap_or(now);
        self.issued.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), (cert.clone(), at));
        let Some(mut agent) = self.agent(key) else {
            return Err(StoreError::Gone { kind: "EdgeAgent", key: key.clone() });
        };
        let status = agent.status.get_or_insert_with(EdgeAgentStatus::default);
        status.certificate = Some(cert);
        if enrolled {
            let e = status.enrollment.get_or_insert(EnrollmentStatus {
                token_secret_name: None,
                token_expires_at: None,
                enrolled_at: None,
            });
            e.enrolled_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(now.as_second()).unwrap_or(now),
            ));
        }
        self.store.write_status(StatusUpdate::EdgeAgent(key.clone(), status.clone())).await?;
        // Supersede any older status still queued in the coalescing writer.
        self.statuses.submit(StatusUpdate::EdgeAgent(key.clone(), status.clone()));
        self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), agent);
        Ok(())
    }

    /// Creates the agent's bootstrap token unless a usable one exists; returns its expiry.
    async fn ensure_token(&self, key: &ObjectKey) -> Result<Timestamp, StoreError> {
        let now = Timestamp::now();
        if let Some(exp) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied()
            && exp > now
        {
            return Ok(exp);
        }
        let name = enrollment::token_secret_name(key);
        let existing = self.store.read_secret(&name).await?.and_then(|d| BootstrapToken::from_secret(&d));
        let token = match existing {
            Some(t) if t.expires_at > now && t.used_at.is_none() => t,
            _ => {
                let fresh = BootstrapToken::generate(key.clone(), now, enrollment::TOKEN_TTL)
                    .map_err(|e| StoreError::Corrupt { what: name.clone(), message: e.to_string() })?;
                self.store.write_secret(&name, fresh.to_secret()).await?;
                tracing::info!(agent = %key, secret = %name, expires = %fresh.expires_at, "bootstrap token created");
                fresh
            }
        };
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), token.expires_at);
        Ok(token.expires_at)
    }

    /// One Equipment: its status.
    pub fn reconcile_equipment(&self, eq: &Equipment, plans: &Plans) {
        self.count("Equipment");
        let key = ObjectKey::of(&eq.metadata);
        let problems: Vec<_> = plans.problems_of("Equipment", &key).collect();
        let agent = ObjectKey::new(key.namespace.clone(), eq.spec.agent_ref.name.clone());
        let applied = self.observed.applied(&agent);
        let readings = self.observed.readings(&key);
        let connected = self.registry.get(&agent).is_some();
        let desired = plans.agents.get(&agent).filter(|p| p.equipment.contains_key(&key.name)).map(|p| p.revision());
        let status =
            status::equipment(eq, &problems, connected, desired, applied.as_ref(), &readings, Timestamp::now());
        if eq.status.as_ref() != Some(&status) {
            self.statuses.submit(StatusUpdate::Equipment(key, status));
        }
    }

    /// One NetworkSlice: its status.
    pub fn reconcile_slice(&self, slice: &NetworkSlice, plans: &Plans) {
        self.count("NetworkSlice");
        let key = ObjectKey::of(&slice.metadata);
        let problems: Vec<_> = plans.problems_of("NetworkSlice", &key).collect();
        let selected = plans.slice_agents.get(&key).cloned().unwrap_or_default();
        let reports: BTreeMap<ObjectKey, _> = selected
            .iter()
            .filter_map(|a| self.observed.applied(a).map(|r| (a.clone(), r)))
            .filter(|(a, r)| plans.agents.get(a).is_some_and(|p| p.revision() == r.revision))
            .collect();
        let status = status::network_slice(slice, &problems, &selected, |a| reports.get(a), Timestamp::now());
        if slice.status.as_ref() != Some(&status) {
            self.statuses.submit(StatusUpdate::NetworkSlice(key, status));
        }
    }

    /// One ControlCommand: the engine.
    pub async fn reconcile_command(
        &self,
        cmd: &ControlCommand,
        equipment: Option<&Equipment>,
    ) -> Result<Requeue, StoreError> {
        self.count("ControlCommand");
        self.engine.reconcile(cmd, equipment).await
    }
}
