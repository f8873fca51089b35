//! The Kubernetes adapter: the only place in the controller that names `kube` or k8s-openapi.
//! Watches become reconcile calls (`controllers`), a Lease decides which replica acts
//! (`leader`), and the `Store` port is served by the API server (`store`).

pub mod controllers;
pub mod leader;
pub mod store;
