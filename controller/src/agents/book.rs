//! The book of EdgeAgents: each as last reconciled, with the certificate this controller issued
//! it and its bootstrap token. The endpoint checks handshakes and enrollments against it; the
//! reconciler keeps it current. It is the one holder of an agent's certificate between issuing it
//! and reading the status back.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use jiff::Timestamp;
use shopfloor_api::{
    EdgeAgent,
    common::Time,
    edge_agent::{CertificateStatus, EdgeAgentStatus, EnrollmentStatus},
};

use crate::{
    enrollment::{self, BootstrapToken},
    store::status_writer::StatusWriter,
    store::{ObjectEvent, ObjectKey, StatusUpdate, Store, StoreError},
};

/// EdgeAgents with their certificates and tokens.
pub struct AgentBook<S: Store> {
    store: Arc<S>,
    statuses: Arc<StatusWriter>,
    agents: RwLock<BTreeMap<ObjectKey, EdgeAgent>>,
    /// Certificates issued by this controller since its start, by agent: authoritative over a
    /// status that may not have been read back yet.
    issued: RwLock<BTreeMap<ObjectKey, (CertificateStatus, Timestamp)>>,
    /// Agents whose bootstrap token this replica already ensured, with the token's expiry.
    tokens: Mutex<BTreeMap<ObjectKey, Timestamp>>,
    /// Whether the book has held the whole plant's EdgeAgents once ([`AgentBook::remember_only`]).
    complete: std::sync::atomic::AtomicBool,
}

impl<S: Store> std::fmt::Debug for AgentBook<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBook").finish_non_exhaustive()
    }
}

fn enrollment_of(status: &mut EdgeAgentStatus) -> &mut EnrollmentStatus {
    status.enrollment.get_or_insert(EnrollmentStatus {
        token_secret_name: None,
        token_expires_at: None,
        enrolled_at: None,
    })
}

impl<S: Store> AgentBook<S> {
    pub fn new(store: Arc<S>, statuses: Arc<StatusWriter>) -> Self {
        Self {
            store,
            statuses,
            agents: RwLock::default(),
            issued: RwLock::default(),
            tokens: Mutex::default(),
            complete: Default::default(),
        }
    }

    /// Whether the book knows every EdgeAgent of the plant: until then an agent it does not
    /// know may exist all the same (the controller is starting, or taking over as leader), and
    /// the endpoint admits no one rather than refuse agents that do exist.
    pub fn is_complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The EdgeAgent as last reconciled, with the certificate this controller issued it.
    pub fn agent(&self, key: &ObjectKey) -> Option<EdgeAgent> {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Records `agent` as it is now, with the certificate issued to it laid over its status;
    /// returns that view.
    pub fn remember(&self, agent: &EdgeAgent) -> EdgeAgent {
        let key = ObjectKey::of(&agent.metadata);
        let mut agent = agent.clone();
        if let Some((cert, at)) = self.issued.read().unwrap_or_else(|p| p.into_inner()).get(&key).cloned() {
            let status = agent.status.get_or_insert_with(EdgeAgentStatus::default);
            status.certificate = Some(cert);
            if let Some(e) = status.enrollment.as_mut() {
                e.enrolled_at.get_or_insert(Time(at));
            }
        }
        self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(key, agent.clone());
        agent
    }

    /// Keeps only the agents in `present`, recording each: the whole plant, as the standalone
    /// store's full pass or the Kubernetes watches once synced see it. The book is complete from
    /// then on.
    pub fn remember_only(&self, present: &[EdgeAgent]) {
        let keep: std::collections::BTreeSet<ObjectKey> = present.iter().map(|a| ObjectKey::of(&a.metadata)).collect();
        self.agents.write().unwrap_or_else(|p| p.into_inner()).retain(|k, _| keep.contains(k));
        for a in present {
            self.remember(a);
        }
        self.complete.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Forgets a deleted EdgeAgent: its certificate no longer passes the handshake check.
    pub fn forget(&self, key: &ObjectKey) {
        self.agents.write().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.issued.write().unwrap_or_else(|p| p.into_inner()).remove(key);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
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
            enrollment_of(status).enrolled_at = Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
        }
        self.store.write_status(StatusUpdate::EdgeAgent(key.clone(), status.clone())).await?;
        // Supersede any older status still queued in the coalescing writer.
        self.statuses.submit(StatusUpdate::EdgeAgent(key.clone(), status.clone()));
        self.agents.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), agent);
        Ok(())
    }

    /// Makes sure an agent not yet enrolled has a usable bootstrap token, and shows it in
    /// `status` (Secret name, expiry). Returns the token's expiry.
    pub async fn ensure_token(&self, key: &ObjectKey, status: &mut EdgeAgentStatus) -> Result<Timestamp, StoreError> {
        let expires = self.token_expiry(key).await?;
        let enrollment = enrollment_of(status);
        enrollment.token_secret_name = Some(enrollment::token_secret_name(key));
        enrollment.token_expires_at = Some(Time(expires));
        Ok(expires)
    }

    /// Creates the agent's bootstrap token unless a usable one exists; returns its expiry.
    async fn token_expiry(&self, key: &ObjectKey) -> Result<Timestamp, StoreError> {
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

    /// Spends `token` for `key` if it is the agent's valid, unused bootstrap token. Single use:
    /// it is marked used before anything is issued, and only if nobody else did since it was
    /// read — of two enrollments racing for one token, exactly one wins.
    pub async fn redeem_token(&self, key: &ObjectKey, presented: &str, public_key: &str) -> Result<(), String> {
        let name = enrollment::token_secret_name(key);
        let data = self.store.read_secret(&name).await.map_err(|e| e.to_string())?;
        let mut token = data.as_ref().and_then(BootstrapToken::from_secret).ok_or_else(|| {
            format!(
                "no bootstrap token exists for EdgeAgent {key}: does it exist? `kubectl shopfloor enroll {}` shows its token",
                key.name
            )
        })?;
        let redemption = token.check(presented, key, Timestamp::now(), public_key).map_err(|e| e.to_string())?;
        let agent = self.agent(key).ok_or_else(|| format!("EdgeAgent {key} does not exist"))?;
        if agent.spec.suspend {
            return Err(format!("EdgeAgent {key} is suspended"));
        }
        if redemption == enrollment::Redemption::Again {
            tracing::info!(agent = %key, "enrollment retried with the key that redeemed the token; answering again");
            return Ok(());
        }
        let read = data.unwrap_or_default();
        token.used_at = Some(Timestamp::now());
        token.used_by = Some(public_key.to_owned());
        if !self.store.replace_secret_if(&name, &read, token.to_secret()).await.map_err(|e| e.to_string())? {
            return Err(format!(
                "bootstrap token {} was redeemed by another enrollment at the same moment; tokens are single-use",
                token.id
            ));
        }
        Ok(())
    }

    /// Publishes an event on EdgeAgent `key`, without waiting for it.
    pub fn event(&self, key: &ObjectKey, warning: bool, reason: &'static str, note: String) {
        let event = ObjectEvent {
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
}
