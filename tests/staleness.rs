//! Stale responses: stale-while-revalidate, stale-if-error, revalidation with the origin,
//! soft purges and warming, through a real axum Router.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;
mod common;
use common::until;
use tower_response_cache::{CacheLayer, MemoryStore, Store};

/// A scriptable origin: what it answers, how often it was called, and a gate.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicUsize>,
    cache_control: Arc<Mutex<&'static str>>,
    failing: Arc<Mutex<Option<StatusCode>>>,
    hold: Arc<AtomicBool>,
    release: Arc<Notify>,
    conditional_requests: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Origin {
    fn new(cache_control: &'static str) -> Self {
        Origin {
            calls: Arc::default(),
            version: Arc::default(),
            cache_control: Arc::new(Mutex::new(cache_control)),
            failing: Arc::default(),
            hold: Arc::default(),
            release: Arc::default(),
            conditional_requests: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn open(&self) {
        self.hold.store(false, SeqCst);
        self.release.notify_waiters();
    }
}

/// Answers `v{version}` with an ETag of the version; 304 to a matching If-None-Match.
async fn resource(State(o): State<Origin>, headers: HeaderMap) -> Response {
    o.calls.fetch_add(1, SeqCst);
    let now = o.in_flight.fetch_add(1, SeqCst) + 1;
    o.max_in_flight.fetch_max(now, SeqCst);
    let notified = o.release.notified();
    if o.hold.load(SeqCst) {
        notified.await;
    }
    tokio::task::yield_now().await;
    o.in_flight.fetch_sub(1, SeqCst);
    if let Some(status) = *o.failing.lock().unwrap() {
        return (status, "origin down").into_response();
    }
    let version = o.version.load(SeqCst);
    let etag = format!("\"v{version}\"");
    let cache_control = *o.cache_control.lock().unwrap();
    if let Some(inm) = headers.get("if-none-match") {
        o.conditional_requests.fetch_add(1, SeqCst);
        if inm.as_bytes() == etag.as_bytes() {
            return (
                StatusCode::NOT_MODIFIED,
                [("etag", etag), ("cache-control", cache_control.to_string())],
            )
                .into_response();
        }
    }
    (
        [("etag", etag), ("cache-control", cache_control.to_string())],
        format!("v{version}"),
    )
        .into_response()
}

fn app(origin: &Origin, layer: CacheLayer<MemoryStore>) -> Router {
    Router::new()
        .route("/r", get(resource))
        .route("/r/{n}", get(resource))
        .with_state(origin.clone())
        .layer(layer)
}

struct Reply {
    status: StatusCode,
    cache_status: String,
    body: String,
}

async fn fetch(app: &Router, uri: &str, if_none_match: Option<&str>) -> Reply {
    let mut req = Request::get(uri);
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", HeaderValue::from_str(tag).unwrap());
    }
    let res = app
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let cache_status = res.headers()["cache-status"].to_str().unwrap().to_string();
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply {
        status,
        cache_status,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::new("max-age=0, stale-while-revalidate=60");
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&origin, layer.clone());
    assert_eq!(fetch(&app, "/r", None).await.body, "v0");

    // The origin now hangs: stale answers must not wait for it.
    origin.version.store(1, SeqCst);
    origin.hold.store(true, SeqCst);
    for _ in 0..10 {
        let reply = fetch(&app, "/r", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "v0");
        assert!(
            reply.cache_status.contains("hit") && reply.cache_status.contains("fwd=stale"),
            "{}",
            reply.cache_status
        );
        assert!(
            reply.cache_status.contains("detail=stale-while-revalidate"),
            "{}",
            reply.cache_status
        );
    }
    until("the background refresh to reach the origin", || origin.calls() == 2).await;
    assert_eq!(origin.calls(), 2, "exactly one background request");
    origin.open();
    until("the refreshed entry", || layer.stats().stores == 2).await;
    let stats = layer.stats();
    assert_eq!(stats.background_refreshes, 1, "{stats:?}");
    assert!(stats.stale_hits >= 10, "{stats:?}");
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.body, "v1", "the refresh replaced the entry");
}

#[tokio::test]
async fn a_failed_background_refresh_keeps_the_stale_entry() {
    let origin = Origin::new("max-age=0, stale-while-revalidate=60");
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    *origin.failing.lock().unwrap() = Some(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(fetch(&app, "/r", None).await.body, "v0");
    until("the failed refresh", || origin.calls() == 2).await;
    // A new refresh can only start once the failed one has ended; every answer meanwhile,
    // and after, is still the stale entry.
    let keeps_serving = async {
        while origin.calls() < 3 {
            assert_eq!(fetch(&app, "/r", None).await.body, "v0");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), keeps_serving)
        .await
        .expect("a second refresh");
    assert_eq!(fetch(&app, "/r", None).await.body, "v0");
    assert!(layer.stats().background_refreshes >= 2);
}

#[tokio::test]
async fn stale_if_error_answers_from_the_stale_entry_when_the_origin_fails() {
    let origin = Origin::new("max-age=0, stale-if-error=60");
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&origin, layer.clone());
    assert_eq!(fetch(&app, "/r", None).await.body, "v0");
    origin.version.store(1, SeqCst);

    *origin.failing.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "v0");
    assert!(
        reply.cache_status.contains("fwd-status=503") && reply.cache_status.contains("detail=stale-if-error"),
        "{}",
        reply.cache_status
    );

    // The 503 did not replace the entry: once the origin is back, it revalidates and refreshes.
    *origin.failing.lock().unwrap() = None;
    assert_eq!(fetch(&app, "/r", None).await.body, "v1");
    assert_eq!(layer.stats().errors_absorbed, 1);
}

#[tokio::test]
async fn a_5xx_never_overwrites_a_stored_entry() {
    // No stale-if-error window: the 5xx goes to the client but is not stored.
    let origin = Origin::new("max-age=0, stale-while-revalidate=0");
    let layer = CacheLayer::builder(MemoryStore::new())
        .cacheable_statuses([StatusCode::OK, StatusCode::NOT_IMPLEMENTED])
        .build();
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    *origin.failing.lock().unwrap() = Some(StatusCode::NOT_IMPLEMENTED);
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
    assert!(!reply.cache_status.contains("stored"), "{}", reply.cache_status);
    *origin.failing.lock().unwrap() = None;
    origin.cache_control.lock().unwrap().clone_from(&"max-age=60");
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.cache_status.contains("detail=revalidated"),
        "the old entry was still there: {}",
        reply.cache_status
    );
}

#[tokio::test]
async fn stale_if_error_covers_timeouts_and_inner_errors() {
    let origin = Origin::new("max-age=0");
    let layer = CacheLayer::builder(MemoryStore::new())
        .stale_if_error(Duration::from_secs(60))
        .origin_timeout(Duration::from_millis(50))
        .build();
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    origin.hold.store(true, SeqCst);
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.body, "v0");
    assert!(
        reply.cache_status.contains("detail=origin-timeout"),
        "{}",
        reply.cache_status
    );
    origin.open();

    // An inner service that errors.
    let store = MemoryStore::new();
    let layer = CacheLayer::builder(store.clone())
        .stale_if_error(Duration::from_secs(60))
        .build();
    let healthy = Arc::new(AtomicBool::new(true));
    let svc = {
        let healthy = healthy.clone();
        tower::service_fn(move |_req: Request<axum::body::Body>| {
            let healthy = healthy.load(SeqCst);
            async move {
                if healthy {
                    Ok(http::Response::builder()
                        .header("cache-control", "max-age=0")
                        .body(axum::body::Body::from("good"))
                        .unwrap())
                } else {
                    Err(std::io::Error::other("connection refused"))
                }
            }
        })
    };
    let svc = tower::ServiceBuilder::new().layer(layer.clone()).service(svc);
    let req = || Request::get("/x").body(axum::body::Body::empty()).unwrap();
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), StatusCode::OK);
    healthy.store(false, SeqCst);
    let res = svc
        .clone()
        .oneshot(req())
        .await
        .expect("the stale entry answers instead of the error");
    assert!(res.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("stale-if-error"));
    assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], b"good");
    assert_eq!(layer.stats().errors_absorbed, 1);
}

#[tokio::test]
async fn revalidation_with_304_refreshes_the_entry() {
    let origin = Origin::new("max-age=0");
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&origin, layer.clone());
    assert_eq!(fetch(&app, "/r", None).await.body, "v0");

    // Stale with an ETag: the cache asks the origin conditionally; 304 makes it fresh again.
    *origin.cache_control.lock().unwrap() = "max-age=60";
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "v0", "the client gets the full cached response");
    assert!(
        reply.cache_status.contains("fwd-status=304") && reply.cache_status.contains("detail=revalidated"),
        "{}",
        reply.cache_status
    );
    assert_eq!(origin.conditional_requests.load(SeqCst), 1);

    let reply = fetch(&app, "/r", None).await;
    assert!(
        reply.cache_status.contains("; hit"),
        "the 304's max-age=60 now applies: {}",
        reply.cache_status
    );
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.stats().revalidations, 1);
}

#[tokio::test]
async fn a_client_conditional_is_answered_after_revalidation() {
    let origin = Origin::new("no-cache");
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    // no-cache: stored but never served without asking the origin.
    for _ in 0..3 {
        let reply = fetch(&app, "/r", Some("\"v0\"")).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
        assert!(reply.cache_status.contains("revalidated"), "{}", reply.cache_status);
    }
    assert_eq!(origin.calls(), 4);
    assert_eq!(origin.conditional_requests.load(SeqCst), 3);
    // A changed resource comes back whole.
    origin.version.store(1, SeqCst);
    let reply = fetch(&app, "/r", Some("\"v0\"")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "v1"));
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale() {
    let origin = Origin::new("max-age=0, must-revalidate");
    let layer = CacheLayer::builder(MemoryStore::new())
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(60))
        .build();
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    *origin.failing.lock().unwrap() = Some(StatusCode::SERVICE_UNAVAILABLE);
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.cache_status);
    assert_eq!(layer.stats().stale_hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_purge_serves_stale_while_one_refresh_runs() {
    let origin = Origin::new("max-age=300");
    let store = MemoryStore::new();
    let layer = CacheLayer::builder(store.clone())
        .stale_while_revalidate(Duration::from_secs(30))
        .build();
    let app = app(&origin, layer.clone());
    fetch(&app, "/r", None).await;
    origin.version.store(1, SeqCst);
    store.soft_purge_tags(["path:/r"]).await.unwrap();

    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.body, "v0", "served stale at once");
    assert!(reply.cache_status.contains("fwd=stale"), "{}", reply.cache_status);
    until("the refresh", || layer.stats().stores == 2).await;
    let reply = fetch(&app, "/r", None).await;
    assert_eq!(reply.body, "v1");
    assert!(reply.cache_status.contains("; hit"), "{}", reply.cache_status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_fills_the_cache_with_bounded_concurrency() {
    let origin = Origin::new("max-age=60");
    let layer = CacheLayer::new(MemoryStore::new());
    let inner = Router::new().route("/r/{n}", get(resource)).with_state(origin.clone());
    let requests = (0..40).map(|n| Request::get(format!("/r/{n}")).body(axum::body::Body::empty()).unwrap());
    let report = layer.warm(inner, requests, 4).await;
    assert_eq!((report.requested, report.stored, report.failed), (40, 40, 0));
    assert!(
        origin.max_in_flight.load(SeqCst) <= 4,
        "{}",
        origin.max_in_flight.load(SeqCst)
    );

    let app = app(&origin, layer.clone());
    for n in 0..40 {
        assert!(fetch(&app, &format!("/r/{n}"), None)
            .await
            .cache_status
            .contains("; hit"));
    }
    let inner = Router::new().route("/r/{n}", get(resource)).with_state(origin.clone());
    let again = layer
        .warm(
            inner,
            (0..2).map(|n| Request::get(format!("/r/{n}")).body(axum::body::Body::empty()).unwrap()),
            2,
        )
        .await;
    assert_eq!(again.already_fresh, 2);
}
