//! Leader election on a `coordination.k8s.io/v1` Lease: one replica reconciles and accepts
//! agents; a standby takes over once the leader has failed to renew for a lease duration.
//!
//! The decision is a pure function of the Lease, the identity and the clock
//! ([`decide`]); [`LeaderElector`] applies it with optimistic concurrency (the Lease's
//! `resourceVersion`), so two replicas can never both believe they won the same term.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

/// Lease timing. Defaults give takeover within 15 s of a leader's loss: the lease expires 10 s
/// after the last renewal and standbys retry every 2 s.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    pub duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// What a replica should do with the Lease it read.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No Lease exists: create it holding it.
    Create(LeaseSpec),
    /// Write this spec (a renewal, or a takeover of an expired lease).
    Update(LeaseSpec),
    /// Someone else holds a valid lease.
    Standby { holder: String },
}

/// Decides, for `me` at `now`, given the current Lease spec.
pub fn decide(current: Option<&LeaseSpec>, me: &str, now: Timestamp, timing: LeaseTiming) -> Decision {
    let secs = i32::try_from(timing.duration.as_secs()).unwrap_or(i32::MAX);
    let mine = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(secs),
        acquire_time: acquire.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(spec) = current else {
        return Decision::Create(mine(None, 0));
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Decision::Update(mine(spec.acquire_time.clone(), transitions)),
        Some(holder) if !holder.is_empty() => {
            let held_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(1).unsigned_abs().into());
            let expired = match &spec.renew_time {
                Some(MicroTime(renewed)) => {
                    now.duration_since(*renewed).unsigned_abs() > held_for || *renewed > now + held_for
                }
                None => true,
            };
            if expired {
                Decision::Update(mine(None, transitions + 1))
            } else {
                Decision::Standby { holder: holder.to_owned() }
            }
        }
        // Released (empty holder): take it.
        _ => Decision::Update(mine(None, transitions + 1)),
    }
}

/// Runs the election against the API server.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    me: String,
    timing: LeaseTiming,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("lease", &self.name).field("me", &self.me).finish_non_exhaustive()
    }
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, lease: &str, me: &str, timing: LeaseTiming) -> Self {
        Self { api: Api::namespaced(client, namespace), name: lease.to_owned(), me: me.to_owned(), timing }
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// One round: read the Lease, decide, write. `Ok(true)` when this replica holds the lease
    /// afterwards. A conflict (another replica wrote first) is a lost round, not an error.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.me, now, self.timing);
        let result = match decision {
            Decision::Standby { .. } => return Ok(false),
            Decision::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Decision::Update(spec) => {
                let mut lease = current.unwrap_or_default();
                lease.metadata.name = Some(self.name.clone());
                lease.spec = Some(spec);
                // replace carries the resourceVersion we read: a concurrent writer makes it 409.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up, if this replica holds it, so a standby takes over at its next retry
    /// instead of waiting for the lease to expire. Conditional on the resourceVersion read: a
    /// lease someone else already took is left alone.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(false) };
        let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(self.me.as_str())) else {
            return Ok(false);
        };
        spec.holder_identity = Some(String::new());
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits as a standby until this replica holds the lease.
    pub async fn acquire(&self) {
        use futures::StreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        // A release is seen as it happens, so a planned handover takes milliseconds, not up to
        // a retry interval; the interval still bounds the wait for an expiry, which no event
        // announces, and a watch the RBAC does not allow.
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut changes = watcher(self.api.clone(), config).default_backoff().boxed();
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            let _ = tokio::time::timeout(self.timing.retry_every, changes.next()).await;
        }
    }

    /// Renews the lease until it is lost, and says why. Gives up before the lease could expire
    /// under a leader whose renewals keep failing, so two replicas never lead at once.
    pub async fn hold(&self) -> String {
        let mut failed = 0;
        loop {
            tokio::time::sleep(self.timing.renew_every).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => failed = 0,
                Ok(false) => return "lost the leader lease to another replica".into(),
                Err(e) => {
                    failed += 1;
                    tracing::warn!("cannot renew the lease ({failed}): {e}");
                    if self.timing.renew_every * (failed + 1) >= self.timing.duration {
                        return format!("lease renewal failing ({e}); stepping down to avoid two leaders");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(t(renewed))),
            acquire_time: Some(MicroTime(t(0))),
            lease_transitions: Some(4),
            ..Default::default()
        }
    }

    #[test]
    fn first_replica_creates_the_lease() {
        assert!(
            matches!(decide(None, "a", t(0), LeaseTiming::default()), Decision::Create(s) if s.holder_identity.as_deref() == Some("a"))
        );
    }

    #[test]
    fn holder_renews_keeping_its_acquire_time() {
        let Decision::Update(s) = decide(Some(&held_by("a", 0)), "a", t(3), LeaseTiming::default()) else {
            panic!("renewal expected")
        };
        assert_eq!(s.renew_time, Some(MicroTime(t(3))));
        assert_eq!(s.acquire_time, Some(MicroTime(t(0))));
        assert_eq!(s.lease_transitions, Some(4));
    }

    #[test]
    fn standby_waits_for_a_valid_lease_and_takes_over_an_expired_one() {
        let lease = held_by("a", 0);
        assert_eq!(decide(Some(&lease), "b", t(9), LeaseTiming::default()), Decision::Standby { holder: "a".into() });
        let Decision::Update(s) = decide(Some(&lease), "b", t(11), LeaseTiming::default()) else { panic!("takeover") };
        assert_eq!(s.holder_identity.as_deref(), Some("b"));
        assert_eq!(s.lease_transitions, Some(5));
        assert_eq!(s.acquire_time, Some(MicroTime(t(11))));
    }

    #[test]
    fn takeover_happens_within_15_seconds_of_the_last_renewal() {
        let timing = LeaseTiming::default();
        // Worst case: the leader dies right after renewing; the standby polls every retry_every.
        let worst = timing.duration + timing.retry_every;
        assert!(worst <= Duration::from_secs(15), "{worst:?}");
    }
}
