//! One bounded request through a Router, and namespaces no other test uses, for the tests
//! that run against real `redis-server` processes. Include with
//! `#[path = "common/exchange.rs"] mod exchange;`.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tower::ServiceExt;

/// Sends a request (failing the test past 10 s); returns its status, `Cache-Status` and body.
pub async fn exchange(app: &Router, method: &str, uri: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .expect("a request hung")
        .unwrap();
    let status = res.status();
    let cache_status = res
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, cache_status, String::from_utf8(body.to_vec()).unwrap())
}

/// A Redis namespace no other test of this process uses.
pub fn fresh_namespace(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}-{}", std::process::id(), NEXT.fetch_add(1, SeqCst))
}
