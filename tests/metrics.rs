//! The `metrics` feature seen as Prometheus sees it: the `prometheus` example's application
//! on a loopback port, a scripted client, and `/metrics` scraped over HTTP.
#![cfg(feature = "metrics")]

#[path = "../examples/prometheus/app.rs"]
mod app;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The longest any network step may take.
const WAIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("the network answered in time")
}

/// Sends one request and reads its whole body.
async fn call(client: &Client<HttpConnector, Empty<Bytes>>, method: Method, url: &str) -> (StatusCode, String) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::new())
        .expect("a valid request");
    let response = within(client.request(request)).await.expect("the request succeeded");
    let status = response.status();
    let body = within(response.into_body().collect()).await.expect("the body arrived");
    (
        status,
        String::from_utf8(body.to_bytes().to_vec()).expect("a text body"),
    )
}

/// The samples of a Prometheus text exposition, by series (name and labels as rendered).
fn samples(exposition: &str) -> BTreeMap<&str, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series, value.parse().expect("a numeric sample"))
        })
        .collect()
}

// One test: the recorder is the process's global one and can be installed once.
#[tokio::test]
async fn a_scrape_counts_what_the_cache_did() {
    let handle = app::install_recorder().expect("the recorder installs");
    let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let server = tokio::spawn(async move { axum::serve(listener, app::app(handle)).await });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let url = |path: &str| format!("http://{addr}{path}");

    let book = url("/books/1");
    assert_eq!(
        call(&client, Method::GET, &book).await,
        (StatusCode::OK, "book 1".into())
    );
    assert_eq!(
        call(&client, Method::GET, &book).await,
        (StatusCode::OK, "book 1".into())
    );
    assert_eq!(call(&client, Method::POST, &book).await.0, StatusCode::NO_CONTENT);
    // A failed mutation (no such book id) purges nothing.
    assert_eq!(
        call(&client, Method::POST, &url("/books/x")).await.0,
        StatusCode::BAD_REQUEST
    );
    let account = call(&client, Method::GET, &url("/account")).await;
    assert_eq!(account, (StatusCode::OK, "your account".into()));

    let (status, exposition) = call(&client, Method::GET, &url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let samples = samples(&exposition);
    let named = |series: &str| series.replace("CACHE", app::CACHE_NAME);
    let value = |series: &str| {
        *samples
            .get(named(series).as_str())
            .unwrap_or_else(|| panic!("no {} in\n{exposition}", named(series)))
    };
    let expected = [
        (r#"tower_response_cache_hits_total{cache="CACHE"}"#, 1.0),
        (r#"tower_response_cache_misses_total{cache="CACHE",kind="miss"}"#, 2.0),
        (
            r#"tower_response_cache_misses_total{cache="CACHE",kind="invalidated"}"#,
            0.0,
        ),
        (r#"tower_response_cache_stores_total{cache="CACHE"}"#, 1.0),
        (
            r#"tower_response_cache_bypasses_total{cache="CACHE",reason="method"}"#,
            2.0,
        ),
        (
            r#"tower_response_cache_not_stored_total{cache="CACHE",reason="no-store"}"#,
            1.0,
        ),
        (
            r#"tower_response_cache_not_stored_total{cache="CACHE",reason="method"}"#,
            0.0,
        ),
        (r#"tower_response_cache_stale_hits_total{cache="CACHE"}"#, 0.0),
        (r#"tower_response_cache_store_errors_total{cache="CACHE"}"#, 0.0),
        ("tower_response_cache_purges_total", 1.0),
        ("tower_response_cache_purges_skipped_total", 1.0),
        // The same purge, as the memory store applied it.
        (r#"tower_response_cache_memory_purges_total{kind="tags"}"#, 1.0),
        // The edited book's tag and its path.
        ("tower_response_cache_purged_tags_total", 2.0),
        // One origin call per miss; the bypass went around the cache.
        (
            r#"tower_response_cache_origin_duration_seconds_count{cache="CACHE"}"#,
            2.0,
        ),
        (
            r#"tower_response_cache_store_duration_seconds_count{cache="CACHE",op="put"}"#,
            1.0,
        ),
    ];
    for (series, expected) in expected {
        assert_eq!(value(series), expected, "{} in\n{exposition}", named(series));
    }
    // A `MemoryStore` answers its reads at once (`Store::get_now`): they are not timed.
    let gets = value(r#"tower_response_cache_store_duration_seconds_count{cache="CACHE",op="get"}"#);
    assert_eq!(gets, 0.0, "store reads timed in\n{exposition}");
    let origin_seconds = value(r#"tower_response_cache_origin_duration_seconds_sum{cache="CACHE"}"#);
    assert!(origin_seconds > 0.0 && origin_seconds < WAIT.as_secs_f64());
    assert!(
        exposition.contains("# TYPE tower_response_cache_hits_total counter")
            && exposition.contains("# TYPE tower_response_cache_store_duration_seconds histogram"),
        "typed series in\n{exposition}"
    );
    // No URL, key or tag is ever a label.
    assert!(!exposition.contains("/books/1") && !exposition.contains("book:1"));
    server.abort();
}
