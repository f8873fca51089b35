//! The HTTP endpoint both binaries serve their Prometheus metrics on: one content type, one
//! rendering, one way to bind and run it. Each binary adds its own health routes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, response::IntoResponse, routing::get};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// What `/metrics` answers with: prometheus-client writes OpenMetrics text (ending in `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `registry` in the OpenMetrics text format.
pub fn render(registry: &Mutex<Registry>) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry.lock().unwrap_or_else(|p| p.into_inner()));
    out
}

/// A router with `/metrics` answered by `scrape` (which renders, after refreshing whatever
/// gauges it reads at scrape time).
pub fn router(scrape: Arc<dyn Fn() -> String + Send + Sync>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let scrape = scrape.clone();
            async move { ([("content-type", CONTENT_TYPE)], scrape()).into_response() }
        }),
    )
}

/// Serves `app` on `addr` until the returned task is dropped or aborted; returns the bound
/// address (`addr` may ask for port 0).
pub async fn serve(addr: SocketAddr, app: Router) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics endpoint stopped: {e}");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let hits = Counter::<u64>::default();
        registry.lock().expect("lock").register("hits", "Scrapes seen", hits.clone());
        let scraped = registry.clone();
        let app = router(Arc::new(move || {
            hits.inc();
            render(&scraped)
        }));
        let (addr, task) = serve("127.0.0.1:0".parse().expect("addr"), app).await.expect("bound");
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("request");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("answer");
        task.abort();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains(&format!("content-type: {CONTENT_TYPE}")), "{answer}");
        assert!(answer.contains("hits_total 1"), "the scrape hook ran before rendering: {answer}");
        assert!(answer.trim_end().ends_with("# EOF"), "{answer}");
    }
}
