//! What the endpoint's parts read and tell, and nothing more.

use std::sync::Arc;

use crate::{
    agents::{book::AgentBook, changes::Changes, observed::Observed, registry::Registry},
    metrics::Metrics,
    store::Store,
};

/// What the endpoint reads and tells: the book it checks agents against, where sessions and
/// reports go, and whom to wake when they change.
pub struct EndpointContext<S: Store> {
    pub book: Arc<AgentBook<S>>,
    pub registry: Arc<Registry>,
    pub observed: Arc<Observed>,
    pub metrics: Arc<Metrics>,
    /// Agents whose connection or reports changed what their statuses say.
    pub changes: Arc<Changes>,
    /// This replica's name, told to agents in the Welcome.
    pub replica: String,
}

impl<S: Store> std::fmt::Debug for EndpointContext<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointContext").field("replica", &self.replica).finish_non_exhaustive()
    }
}

impl<S: Store> Clone for EndpointContext<S> {
    fn clone(&self) -> Self {
        Self {
            book: self.book.clone(),
            registry: self.registry.clone(),
            observed: self.observed.clone(),
            metrics: self.metrics.clone(),
            changes: self.changes.clone(),
            replica: self.replica.clone(),
        }
    }
}
