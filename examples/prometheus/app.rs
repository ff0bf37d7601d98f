//! The application of the `prometheus` example, shared with `tests/metrics.rs`: a small
//! cached book service, and its metrics rendered on `/metrics`.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;
use tower_response_cache::{CacheLayer, CacheStatusName, Invalidate, InvalidateLayer, MemoryStore};

/// The cache's name: its `Cache-Status` name, and the `cache` label of its metrics.
pub const CACHE_NAME: &str = "books";

/// Installs the process's Prometheus recorder. Layers register their metrics when they are
/// built, so this comes first.
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    // Buckets make the durations Prometheus histograms (rather than summaries), which can be
    // aggregated across instances.
    let buckets = [0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .install_recorder()
}

/// The application: `GET /books/{id}` is cached for a minute, `POST /books/{id}` purges the
/// book, `GET /account` says `no-store`, and `GET /metrics` (outside the cache) renders the
/// recorder.
pub fn app(metrics: PrometheusHandle) -> Router {
    let store = MemoryStore::new();
    let name = CacheStatusName::new(CACHE_NAME).expect("a token");
    let cached = Router::new()
        .route("/books/{id}", get(book).post(edit_book))
        .route("/account", get(account))
        .layer(InvalidateLayer::new(store.clone()))
        .layer(
            CacheLayer::builder(store)
                .default_ttl(Duration::from_secs(60))
                .cache_status_name(name)
                .build(),
        );
    // Routes added after `layer` are not behind it: a scrape is never cached, nor counted.
    cached.route("/metrics", get(move || std::future::ready(metrics.render())))
}

async fn book(Path(id): Path<u32>) -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "max-age=60")], format!("book {id}"))
}

async fn edit_book(Path(id): Path<u32>) -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        Extension(Invalidate::tags([format!("book:{id}")])),
    )
}

async fn account() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "your account")
}
