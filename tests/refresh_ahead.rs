//! Refresh-ahead: a key read all the time is refreshed in the background before it expires
//! and never misses; a key read rarely is left to expire; a HEAD never refreshes; a
//! validator turns the refresh into a revalidation.

#[path = "common/exchange.rs"]
mod exchange;
use exchange::exchange;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_response_cache::{CacheLayer, MemoryStore, RefreshAhead};

/// An origin answering `max-age=1`, counting its calls; calls after the first take `slow`.
fn app(calls: Arc<AtomicUsize>, slow: Duration, ahead: Option<RefreshAhead>) -> (Router, CacheLayer<MemoryStore>) {
    let mut layer = CacheLayer::builder(MemoryStore::new());
    if let Some(ahead) = ahead {
        layer = layer.refresh_ahead(ahead);
    }
    let layer = layer.build();
    let router = Router::new()
        .route(
            "/hot",
            get(move || {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, SeqCst) > 0 {
                        tokio::time::sleep(slow).await;
                    }
                    ([("cache-control", "max-age=1")], "hot")
                }
            }),
        )
        .layer(layer.clone());
    (router, layer)
}

async fn send(app: &Router, method: &str) -> (StatusCode, String) {
    let (status, cache_status, body) = exchange(app, method, "/hot").await;
    if method == "GET" {
        assert_eq!(body, "hot");
    }
    (status, cache_status)
}

/// Reads `/hot` every 5 ms for `run`; returns the reads that were not hits.
async fn steady_load(app: &Router, run: Duration) -> usize {
    let started = Instant::now();
    let mut not_hits = 0;
    while started.elapsed() < run {
        let (status, cache_status) = send(app, "GET").await;
        assert_eq!(status, StatusCode::OK);
        if !cache_status.contains("hit") {
            not_hits += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    not_hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_before_each_expiry_and_never_misses() {
    // A refresh takes 100 ms, and every read in the window while it runs is due: one refresh
    // at a time still runs, one per lifetime.
    let calls = Arc::new(AtomicUsize::new(0));
    let ahead = RefreshAhead::new().window(0.5).min_reads(3);
    let (router, layer) = app(calls.clone(), Duration::from_millis(100), Some(ahead));
    let run = Duration::from_millis(3_300);
    let not_hits = steady_load(&router, run).await;
    let stats = layer.stats();
    let refreshes = calls.load(SeqCst) - 1;
    eprintln!("refresh-ahead: {not_hits} reads not hits, {refreshes} refreshes, {stats:?}");
    assert_eq!(not_hits, 1, "only the first read misses");
    assert_eq!(stats.misses, 1);
    // Each lifetime (1 s) is refreshed once, at least half-way through: over 3.3 s, 3 to 6.
    assert!((3..=6).contains(&refreshes), "{refreshes} refreshes");
    assert_eq!(stats.background_refreshes as usize, refreshes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_ahead_the_same_load_misses_at_every_expiry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (router, layer) = app(calls.clone(), Duration::from_millis(100), None);
    let not_hits = steady_load(&router, Duration::from_millis(2_300)).await;
    assert!(not_hits >= 3, "{not_hits} reads not hits");
    assert_eq!(layer.stats().background_refreshes, 0);
}

#[tokio::test]
async fn a_key_read_fewer_times_than_the_minimum_in_its_window_is_not_refreshed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ahead = RefreshAhead::new().window(0.5).min_reads(3);
    let (router, layer) = app(calls.clone(), Duration::ZERO, Some(ahead));
    assert!(send(&router, "GET").await.1.contains("fwd=miss"));
    // Two reads in the window [0.5 s, 1 s): fewer than 3.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&router, "GET").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    send(&router, "GET").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, cache_status) = send(&router, "GET").await;
    let stats = layer.stats();
    assert_eq!(stats.background_refreshes, 0, "{stats:?}");
    assert!(
        cache_status.contains("fwd=miss"),
        "expired, then a miss: {cache_status}"
    );
    assert_eq!(calls.load(SeqCst) as u64, stats.misses, "every origin call was a miss");
}

#[tokio::test]
async fn a_head_request_never_refreshes_ahead() {
    let calls = Arc::new(AtomicUsize::new(0));
    let ahead = RefreshAhead::new().window(1.0).min_reads(1);
    let (router, layer) = app(calls.clone(), Duration::ZERO, Some(ahead));
    send(&router, "GET").await;
    // The whole lifetime is the window, and one read is enough: a GET would be due soon.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..200 {
        assert_eq!(send(&router, "HEAD").await.0, StatusCode::OK);
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.stats().background_refreshes, 0);
    assert_eq!(calls.load(SeqCst), 1);
    // The same reads as GETs refresh (at least once; a draw decides which read).
    for _ in 0..200 {
        send(&router, "GET").await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(layer.stats().background_refreshes >= 1);
}

#[tokio::test]
async fn a_refresh_ahead_of_an_entry_with_a_validator_is_a_revalidation() {
    let calls = Arc::new(AtomicUsize::new(0));
    let revalidated = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder(MemoryStore::new())
        .refresh_ahead(RefreshAhead::new().window(1.0).min_reads(1))
        .build();
    let (c, r) = (calls.clone(), revalidated.clone());
    let router = Router::new()
        .route(
            "/hot",
            get(move |headers: HeaderMap| {
                let (calls, revalidated) = (c.clone(), r.clone());
                async move {
                    calls.fetch_add(1, SeqCst);
                    let cache = [("cache-control", "max-age=1"), ("etag", "\"v1\"")];
                    if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                        revalidated.fetch_add(1, SeqCst);
                        return (StatusCode::NOT_MODIFIED, cache, "");
                    }
                    (StatusCode::OK, cache, "hot")
                }
            }),
        )
        .layer(layer.clone());
    send(&router, "GET").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while revalidated.load(SeqCst) == 0 && Instant::now() < deadline {
        let (status, cache_status) = send(&router, "GET").await;
        assert_eq!(status, StatusCode::OK);
        assert!(cache_status.contains("hit"), "{cache_status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        revalidated.load(SeqCst),
        1,
        "the refresh asked with the entry's validator"
    );
    // The 304 is applied once the background task reads it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while layer.stats().revalidations == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.revalidations), (1, 1), "{stats:?}");
}

/// A layer over an origin answering `answer(call)` for `/hot` (call 0 first), with
/// refresh-ahead over the last half of the lifetime after 3 reads, identities from `x-user`.
fn scripted<F>(calls: Arc<AtomicUsize>, answer: F) -> (Router, CacheLayer<MemoryStore>)
where
    F: Fn(usize, &HeaderMap) -> (StatusCode, Vec<(&'static str, &'static str)>) + Clone + Send + Sync + 'static,
{
    let layer = CacheLayer::builder(MemoryStore::new())
        .refresh_ahead(RefreshAhead::new().window(0.5).min_reads(3))
        .vary_by_identity(|parts| parts.headers.get("x-user")?.to_str().ok().map(str::to_owned))
        .build();
    let router = Router::new()
        .route(
            "/hot",
            get(move |headers: HeaderMap| {
                let (calls, answer) = (calls.clone(), answer.clone());
                async move {
                    let (status, headers) = answer(calls.fetch_add(1, SeqCst), &headers);
                    let mut map = HeaderMap::new();
                    for (name, value) in headers {
                        map.insert(name, value.parse().unwrap());
                    }
                    (status, map, "hot")
                }
            }),
        )
        .layer(layer.clone());
    (router, layer)
}

/// Reads `/hot` as `user` (or anonymously) every 5 ms for `run`; every read must be a hit
/// after the first.
async fn read_for(app: &Router, user: Option<&str>, run: Duration) {
    let started = Instant::now();
    while started.elapsed() < run {
        let mut req = axum::http::Request::get("/hot");
        if let Some(user) = user {
            req = req
                .header("x-user", user)
                .header("authorization", format!("Bearer {user}"));
        }
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            app.clone().oneshot(req.body(axum::body::Body::empty()).unwrap()),
        )
        .await
        .expect("answered")
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_ahead_is_not_made_again_for_the_same_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (router, layer) = scripted(calls.clone(), |call, _| match call {
        0 => (StatusCode::OK, vec![("cache-control", "max-age=1")]),
        _ => (StatusCode::SERVICE_UNAVAILABLE, vec![]),
    });
    // The whole fresh life of the entry, its window (the last 500 ms) included.
    read_for(&router, None, Duration::from_millis(950)).await;
    let stats = layer.stats();
    assert_eq!(calls.load(SeqCst), 2, "one fill, one refresh attempt: {stats:?}");
    assert_eq!(stats.misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_arrives_old_is_refreshed_in_the_window_of_what_was_left() {
    // max-age=10 with Age: 9 is fresh for 1 s here: its window is the last 500 ms of that
    // second, not the last 5 s of the ten, which it was born in.
    let calls = Arc::new(AtomicUsize::new(0));
    let (router, layer) = scripted(calls.clone(), |_, _| {
        (StatusCode::OK, vec![("cache-control", "max-age=10"), ("age", "9")])
    });
    read_for(&router, None, Duration::from_millis(900)).await;
    let refreshes = layer.stats().background_refreshes;
    assert!(refreshes <= 1, "{refreshes} refreshes in the first 900 ms");
    assert!(calls.load(SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_reader_never_refreshes_a_shared_entry_ahead() {
    // Anonymous readers get a public page; signed-in ones a private answer of their own,
    // which a refresh made with their request would put in the shared entry's place.
    let calls = Arc::new(AtomicUsize::new(0));
    let (router, layer) = scripted(calls.clone(), |_, headers| {
        if headers.contains_key("x-user") {
            (StatusCode::OK, vec![("cache-control", "private, max-age=2")])
        } else {
            (StatusCode::OK, vec![("cache-control", "public, max-age=2")])
        }
    });
    read_for(&router, None, Duration::from_millis(1)).await;
    // Alice reads the shared entry all through its window.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    read_for(&router, Some("alice"), Duration::from_millis(700)).await;
    assert_eq!(layer.stats().background_refreshes, 0);
    assert_eq!(calls.load(SeqCst), 1, "alice read the shared entry, never the origin");
    let (_, cache_status) = send(&router, "GET").await;
    assert!(
        cache_status.contains("hit"),
        "the shared entry is still there: {cache_status}"
    );
}
