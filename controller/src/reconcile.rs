//! The reconciler: everything between the store and the agents, the same for the
//! Kubernetes and the standalone store. Each `reconcile_*` handles one object given a view of
//! the others; the Kubernetes controllers and the standalone loop both call them.

use std::{
    collections::BTreeSet,
    sync::{Arc, RwLock},
    time::Duration,
};

use jiff::Timestamp;
use shopfloor_api::{ControlCommand, EdgeAgent, Equipment, NetworkSlice, edge_agent::EdgeAgentStatus};

use crate::{
    agents::{
        book::AgentBook,
        changes::{Changes, Marked},
        observed::Observed,
        registry::Registry,
    },
    endpoint::EndpointContext,
    engine::Engine,
    link_budget::{self, LinkBudget},
    metrics::{AgentLabel, EquipmentLabel, KindLabel, Metrics, SliceLabel},
    planner::{self, Plans},
    status::{
        build::{self, AgentFacts},
        fail_safe, link,
    },
    store::status_writer::{Pace, StatusWriter},
    store::{ObjectEvent, ObjectKey, StatusUpdate, Store, StoreError, World},
};

/// When to look at an object again.
pub type Requeue = Option<Duration>;

/// Agents reconciled (configurations pushed) at once.
pub const FAN_OUT: usize = 64;

/// A running controller's reconciler: the handles it shares with the endpoint and the stores'
/// loops, and the plans cache. Each `reconcile_*` handles one object given a view of the others.
pub struct Reconciler<S: Store> {
    store: Arc<S>,
    registry: Arc<Registry>,
    observed: Arc<Observed>,
    metrics: Arc<Metrics>,
    book: Arc<AgentBook<S>>,
    engine: Engine<S>,
    statuses: Arc<StatusWriter>,
    /// Plans for the world version they were computed from.
    plans: RwLock<(u64, Arc<Plans>)>,
    replica: String,
    /// Agents whose statuses something outside the store changed (a connection, an applied
    /// configuration, reported values).
    changes: Arc<Changes>,
    /// The failover bound fail-safes are held to (Kubernetes mode), once set.
    failover: std::sync::OnceLock<planner::Failover>,
}

impl<S: Store> std::fmt::Debug for Reconciler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl<S: Store> Reconciler<S> {
    pub fn new(store: Arc<S>, replica: impl Into<String>, status_pace: impl Into<Pace>) -> Arc<Self> {
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(Metrics::default());
        let engine = Engine::new(store.clone(), registry.clone(), metrics.clone());
        engine.follow_connections();
        let statuses = Arc::new(StatusWriter::start(store.clone(), status_pace));
        Arc::new(Self {
            engine,
            book: Arc::new(AgentBook::new(store.clone(), statuses.clone())),
            statuses,
            store,
            registry,
            observed: Arc::default(),
            metrics,
            plans: RwLock::new((u64::MAX, Arc::default())),
            replica: replica.into(),
            changes: Arc::default(),
            failover: Default::default(),
        })
    }

    /// Holds every fail-safe to `failover` from the next plan on: one shorter than its bound is
    /// refused unless its Equipment accepts that. Set once, before the first plan (Kubernetes
    /// mode, where a standby takes over after a crash).
    pub fn hold_fail_safes_to(&self, failover: planner::Failover) {
        let _ = self.failover.set(failover);
    }

    /// What the QUIC endpoint needs, and nothing more.
    pub fn endpoint_context(&self) -> EndpointContext<S> {
        EndpointContext {
            book: self.book.clone(),
            registry: self.registry.clone(),
            observed: self.observed.clone(),
            metrics: self.metrics.clone(),
            changes: self.changes.clone(),
            replica: self.replica.clone(),
        }
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn observed(&self) -> &Arc<Observed> {
        &self.observed
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn engine(&self) -> &Engine<S> {
        &self.engine
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn book(&self) -> &Arc<AgentBook<S>> {
        &self.book
    }

    /// Agents whose connection or reports changed what their statuses say.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    /// The plans for `world`, recomputed only when `version` moved.
    pub fn plans(&self, version: u64, world: &World) -> Arc<Plans> {
        self.plans_from(version, || world)
    }

    /// The plans for version `version`; `world` is called for the objects only when it moved.
    pub fn plans_from<W: std::borrow::Borrow<World>>(&self, version: u64, world: impl FnOnce() -> W) -> Arc<Plans> {
        {
            let cached = self.plans.read().unwrap_or_else(|p| p.into_inner());
            if cached.0 == version {
                return cached.1.clone();
            }
        }
        let world = world();
        let world = world.borrow();
        let plans =
            Arc::new(planner::plan_with(&world.agents, &world.equipment, &world.slices, self.failover.get().copied()));
        self.engine.set_link_budgets(link_budget::budgets(&plans));
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

    /// Everything, once: what the standalone loop runs after each change of the folder.
    pub async fn reconcile_world(&self, version: u64, world: &World) -> Requeue {
        let plans = self.plans(version, world);
        let present: BTreeSet<ObjectKey> = world.agents.iter().map(|a| ObjectKey::of(&a.metadata)).collect();
        for gone in self.registry.connected().into_iter().filter(|k| !present.contains(k)) {
            self.registry.evict(&gone, "the EdgeAgent was deleted");
            tracing::info!(agent = %gone, "deleted: connection closed");
        }
        self.book.remember_only(&world.agents);
        let mut next: Requeue = None;
        let mut soonest = |r: Requeue| {
            if let Some(d) = r {
                next = Some(next.map_or(d, |n: Duration| n.min(d)));
            }
        };
        let agents: Vec<&EdgeAgent> = world.agents.iter().collect();
        soonest(self.reconcile_agents(&agents, &plans).await);
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
            let eq = world.equipment(&ObjectKey::new(
                c.metadata.namespace.clone().unwrap_or_default(),
                c.spec.equipment_ref.name.clone(),
            ));
            match self.reconcile_command(c, eq).await {
                Ok(r) => soonest(r),
                Err(e) => self.error("ControlCommand", &ObjectKey::of(&c.metadata), &e),
            }
        }
        next
    }

    /// Only what `marked` touches: the equipment of every marked agent, and the agents whose
    /// session or configuration changed with the slices selecting them — the pass after an
    /// agent's report, whatever the size of the fleet.
    /// `world` holds at least the marked agents and their equipment, and the slices.
    pub async fn reconcile_changed(&self, plans: &Plans, world: &World, marked: &Marked) {
        if marked.is_empty() {
            return;
        }
        let mut agents: Vec<&EdgeAgent> = Vec::with_capacity(marked.agents.len());
        let mut equipment: Vec<&Equipment> = Vec::new();
        for key in &marked.agents {
            let (agent, its_equipment) = world.agent_objects(key);
            // Readings show in the equipment's statuses only; the EdgeAgent's changes with its
            // session (its `lastSeen` waits for the next full pass, as for an idle agent).
            if marked.sessions.contains(key) {
                agents.extend(agent);
            }
            equipment.extend(its_equipment);
        }
        self.reconcile_agents(&agents, plans).await;
        for e in equipment {
            self.reconcile_equipment(e, plans);
        }
        if marked.sessions.is_empty() {
            return;
        }
        // A slice's status counts every agent it selects: recounted only after a session change.
        for s in &world.slices {
            let selected = plans.slice_agents.get(&ObjectKey::of(&s.metadata));
            if selected.is_some_and(|agents| agents.iter().any(|a| marked.sessions.contains(a))) {
                self.reconcile_slice(s, plans);
            }
        }
    }

    /// Reconciles `agents` side by side, at most [`FAN_OUT`] at once: a change every agent must
    /// receive goes out in parallel, not one agent after another. The soonest requeue wins.
    pub async fn reconcile_agents(&self, agents: &[&EdgeAgent], plans: &Plans) -> Requeue {
        use futures::StreamExt;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut waiting = agents.iter();
        let mut next: Requeue = None;
        loop {
            while in_flight.len() < FAN_OUT {
                let Some(a) = waiting.next() else { break };
                in_flight.push(self.reconcile_agent_keyed(a, plans));
            }
            let Some((key, r)) = in_flight.next().await else { break };
            match r {
                Ok(Some(d)) => next = Some(next.map_or(d, |n: Duration| n.min(d))),
                Ok(None) => {}
                Err(e) => self.error("EdgeAgent", &key, &e),
            }
        }
        next
    }

    async fn reconcile_agent_keyed(
        &self,
        agent: &EdgeAgent,
        plans: &Plans,
    ) -> (ObjectKey, Result<Requeue, StoreError>) {
        (ObjectKey::of(&agent.metadata), self.reconcile_agent(agent, plans).await)
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
        let mut agent = self.book.remember(agent);
        let mut requeue = None;
        let enrolled = agent.status.as_ref().and_then(|s| s.certificate.as_ref()).is_some_and(|c| c.serial.is_some());
        if !enrolled {
            let status = agent.status.get_or_insert_with(EdgeAgentStatus::default);
            let expires = self.book.ensure_token(&key, status).await?;
            requeue = Some(Timestamp::now().duration_until(expires).unsigned_abs());
        }
        let plan = plans.agents.get(&key);
        let connected = self.registry.get(&key);
        if let (Some(c), Some(plan)) = (&connected, plan)
            && c.held_revision.as_deref() != Some(plan.revision())
            && !agent.spec.suspend
            && self.registry.claim_push(&key, c.connection_id, plan.revision())
        {
            let plan = Arc::new(plan.clone());
            match c.session.push_config(plan.clone()).await {
                Ok(()) => {
                    self.metrics.plans_pushed.inc();
                    // Marked as held once the agent confirms with ConfigApplied; until then the
                    // desired and applied revisions differ in the status.
                    tracing::info!(agent = %key, revision = plan.revision(), "configuration pushed");
                }
                Err(e) => {
                    self.registry.release_push(&key, c.connection_id);
                    tracing::warn!(agent = %key, "configuration push failed: {e}")
                }
            }
        }
        let applied = self.observed.applied(&key);
        let facts = AgentFacts {
            connected: connected.as_ref(),
            desired_revision: plan.map(|p| p.revision()),
            applied: applied.as_ref(),
            replica: &self.replica,
        };
        let now = Timestamp::now();
        let mut status = build::edge_agent(&agent, &facts, now);
        let budgets: Vec<LinkBudget> =
            plan.map(|p| link_budget::of_plan(&key, p).map(|(_, b)| b).collect()).unwrap_or_default();
        let rtt = connected.as_ref().map(|c| c.session.rtt());
        link::set(&mut status.conditions, &budgets, rtt, agent.metadata.generation, now);
        self.agent_gauges(&key, agent.spec.suspend, connected.is_some(), plan.map(|p| p.revision()), &status);
        if agent.status.as_ref() != Some(&status) {
            self.statuses.submit(StatusUpdate::EdgeAgent(key, status));
        }
        Ok(requeue)
    }

    /// The per-agent series the alerts watch: connected, configuration drift, certificate
    /// expiry. A suspended agent is expected to be away and has none.
    fn agent_gauges(
        &self,
        key: &ObjectKey,
        suspended: bool,
        connected: bool,
        desired: Option<&str>,
        status: &EdgeAgentStatus,
    ) {
        let label = AgentLabel { namespace: key.namespace.clone(), agent: key.name.clone() };
        let m = &self.metrics;
        if suspended {
            m.agent_connected.remove(&label);
            m.agent_config_drift.remove(&label);
            m.agent_certificate_expiry.remove(&label);
            return;
        }
        m.agent_connected.get_or_create(&label).set(i64::from(connected));
        let applied = status.config.as_ref().and_then(|c| c.applied_revision.as_deref());
        m.agent_config_drift.get_or_create(&label).set(i64::from(desired.is_some() && desired != applied));
        match status.certificate.as_ref().and_then(|c| c.not_after.as_ref()) {
            Some(t) => {
                m.agent_certificate_expiry.get_or_create(&label).set(t.0.as_second());
            }
            None => {
                m.agent_certificate_expiry.remove(&label);
            }
        }
    }

    /// Forgets a deleted EdgeAgent: its certificate no longer passes the handshake check.
    pub fn forget_agent(&self, key: &ObjectKey) {
        self.book.forget(key);
        self.observed.forget_agent(key);
        self.agent_gauges(key, true, false, None, &EdgeAgentStatus::default());
    }

    /// One Equipment: its status.
    pub fn reconcile_equipment(&self, eq: &Equipment, plans: &Plans) {
        self.count("Equipment");
        let key = ObjectKey::of(&eq.metadata);
        let problems: Vec<_> = plans.problems_of("Equipment", &key).collect();
        let agent = ObjectKey::new(key.namespace.clone(), eq.spec.agent_ref.name.clone());
        let applied = self.observed.applied(&agent);
        let readings = self.observed.readings(&key);
        let session = self.registry.get(&agent);
        let connected = session.is_some();
        let desired = plans.agents.get(&agent).filter(|p| p.equipment.contains_key(&key.name)).map(|p| p.revision());
        let now = Timestamp::now();
        let mut status = build::equipment(eq, &problems, connected, desired, applied.as_ref(), &readings, now);
        let budget: Vec<LinkBudget> = plans
            .agents
            .get(&agent)
            .into_iter()
            .flat_map(|p| link_budget::of_plan(&agent, p))
            .filter(|(k, _)| *k == key)
            .map(|(_, b)| b)
            .collect();
        let rtt = session.map(|c| c.session.rtt());
        link::set(&mut status.conditions, &budget, rtt, eq.metadata.generation, now);
        let reported = self.observed.fail_safe(&agent, &key.name);
        fail_safe::set(
            &mut status.conditions,
            &key.name,
            eq.spec.fail_safe.as_ref(),
            reported.as_ref(),
            connected,
            eq.metadata.generation,
            now,
        );
        let label = EquipmentLabel { namespace: key.namespace.clone(), equipment: key.name.clone() };
        match reported {
            Some(r) => {
                self.metrics.fail_safe_engaged.get_or_create(&label).set(i64::from(r.engaged));
                self.metrics.fail_safe_unconfirmed.get_or_create(&label).set(i64::from(r.unconfirmed));
            }
            None => {
                self.metrics.fail_safe_engaged.remove(&label);
                self.metrics.fail_safe_unconfirmed.remove(&label);
            }
        }
        let before = eq.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        for notice in crate::status::events::equipment(before, &status.conditions) {
            let event = ObjectEvent {
                kind: "Equipment",
                key: key.clone(),
                uid: eq.metadata.uid.clone(),
                warning: notice.warning,
                reason: notice.reason,
                note: notice.note,
            };
            let store = self.store.clone();
            tokio::spawn(async move { store.publish_event(event).await });
        }
        if eq.status.as_ref() != Some(&status) {
            self.statuses.submit(StatusUpdate::Equipment(key, status));
        }
    }

    /// One NetworkSlice: its status.
    pub fn reconcile_slice(&self, slice: &NetworkSlice, plans: &Plans) {
        self.count("NetworkSlice");
        let key = ObjectKey::of(&slice.metadata);
        let problems: Vec<_> = plans.problems_of("NetworkSlice", &key).collect();
        let selected = plans.slice_agents.get(&key).map(Vec::as_slice).unwrap_or_default();
        let now = Timestamp::now();
        let status = self.observed.with_applied(|applied| {
            // Only reports of the revision planned now count: an older one says nothing of this slice.
            let current = |a: &ObjectKey| {
                applied.get(a).filter(|r| plans.agents.get(a).is_some_and(|p| p.revision() == r.revision))
            };
            build::network_slice(slice, &problems, selected, current, now)
        });
        let label = SliceLabel { namespace: key.namespace.clone(), slice: key.name.clone() };
        match &slice.spec.qos.packet_delay_budget {
            Some(b) => {
                let b: Duration = (*b).into();
                self.metrics.slice_delay_budget.get_or_create(&label).set(b.as_secs_f64());
            }
            None => {
                self.metrics.slice_delay_budget.remove(&label);
            }
        }
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
