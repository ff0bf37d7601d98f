//! Redis evicting under memory pressure never brings purged data back: a real `redis-server`
//! with a small `maxmemory` and each eviction policy; fill, purge, pressure, read.
//!
//! Under `noeviction` and every `volatile-*` policy no purged entry is served, neither one
//! stored before the purge nor a slow response whose request started before it and that is
//! written after the pressure. Under `allkeys-lru` the store reports the policy as unsafe;
//! what it then serves is printed, for contrast, not asserted. Requests go over loopback HTTP.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::Served;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::StreamExt;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_response_cache::store::{MaxmemoryPolicy, RedisStore};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer};

const ITEMS: usize = 1000;
const SLOW: usize = 50;
/// Filler responses per pressure round: 1,500 × 4 KiB, past `maxmemory`.
const FILLER: usize = 1500;
const MAXMEMORY: &str = "6mb";

#[derive(Clone)]
struct Catalogue {
    items: Arc<Vec<AtomicU64>>,
    slow: Arc<Vec<AtomicU64>>,
    /// Slow requests that have read their version and wait for the gate.
    waiting: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
}

async fn item(State(c): State<Catalogue>, Path(i): Path<usize>) -> (Extension<CacheTags>, String) {
    let v = c.items[i].load(SeqCst);
    (
        Extension(CacheTags::new([format!("item:{i}")])),
        format!("item {i} v{v} {}", ".".repeat(400)),
    )
}

async fn update_item(State(c): State<Catalogue>, Path(i): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    c.items[i].fetch_add(1, SeqCst);
    (StatusCode::OK, Extension(Invalidate::tags([format!("item:{i}")])))
}

/// Reads its version, then waits for the gate: a response in flight across purge and pressure.
async fn slow(State(c): State<Catalogue>, Path(i): Path<usize>) -> (Extension<CacheTags>, String) {
    let v = c.slow[i].load(SeqCst);
    let mut gate = c.gate.clone();
    c.waiting.fetch_add(1, SeqCst);
    let _ = gate.wait_for(|open| *open).await;
    (
        Extension(CacheTags::new([format!("slow:{i}")])),
        format!("slow {i} v{v}"),
    )
}

async fn update_slow(State(c): State<Catalogue>, Path(i): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    c.slow[i].fetch_add(1, SeqCst);
    (StatusCode::OK, Extension(Invalidate::tags([format!("slow:{i}")])))
}

async fn filler(Path(j): Path<usize>) -> (Extension<CacheTags>, String) {
    (
        Extension(CacheTags::new(["filler"])),
        format!("{j} {}", "f".repeat(4096)),
    )
}

async fn send(app: &Served, method: &str, uri: String) -> (StatusCode, String) {
    let (status, _, body) = app.exchange_within(method, &uri, Duration::from_secs(30)).await;
    (status, body)
}

/// Sends `uris` with 16 in flight; returns the answers in order.
async fn send_all(app: &Served, method: &'static str, uris: Vec<String>) -> Vec<(StatusCode, String)> {
    futures_util::stream::iter(uris)
        .map(|uri| send(app, method, uri))
        .buffered(16)
        .collect()
        .await
}

fn used_memory(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn evicted(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

struct Outcome {
    stale_items: usize,
    stale_slow: usize,
    evicted: u64,
}

async fn scenario(policy: &str, expected: MaxmemoryPolicy) -> Option<Outcome> {
    if !redis_server::available() {
        return None;
    }
    let server = RedisServer::start_with(&["--maxmemory", MAXMEMORY, "--maxmemory-policy", policy]);
    let store = RedisStore::builder(server.url())
        .namespace("evict")
        .clock_skew_margin(Duration::ZERO)
        .purge_filter_bytes(256 << 10)
        .connect()
        .await
        .expect("connect");
    let stats = store.stats();
    assert_eq!(stats.maxmemory_policy, expected, "{policy}");
    assert_eq!(stats.stamps_evictable, policy.starts_with("allkeys-"), "{policy}");

    let (open, gate) = watch::channel(false);
    let catalogue = Catalogue {
        items: Arc::new((0..ITEMS).map(|_| AtomicU64::new(0)).collect()),
        slow: Arc::new((0..SLOW).map(|_| AtomicU64::new(0)).collect()),
        waiting: Arc::new(AtomicUsize::new(0)),
        gate,
    };
    let app = exchange::serve(
        Router::new()
            .route("/items/{i}", get(item).post(update_item))
            .route("/slow/{i}", get(slow).post(update_slow))
            .route("/filler/{j}", get(filler))
            .with_state(catalogue.clone())
            .layer(InvalidateLayer::new(store.clone()))
            .layer(CacheLayer::new(store.clone())),
    );

    // Fill.
    send_all(&app, "GET", (0..ITEMS).map(|i| format!("/items/{i}")).collect()).await;
    let cached = send_all(&app, "GET", (0..ITEMS).map(|i| format!("/items/{i}")).collect()).await;
    assert!(cached.iter().all(|(s, b)| *s == StatusCode::OK && b.contains(" v0 ")));
    // Slow requests that read v0 now and are written at the end.
    let slow_requests: Vec<_> = (0..SLOW)
        .map(|i| {
            tokio::spawn({
                let app = app.clone();
                async move { send(&app, "GET", format!("/slow/{i}")).await }
            })
        })
        .collect();
    while catalogue.waiting.load(SeqCst) < SLOW {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Pressure, so that Redis is at its limit when the purges come.
    send_all(&app, "GET", (0..FILLER).map(|j| format!("/filler/{j}")).collect()).await;
    // Purge every item and every slow tag.
    let purged = send_all(&app, "POST", (0..ITEMS).map(|i| format!("/items/{i}")).collect()).await;
    assert!(purged.iter().all(|(s, _)| *s == StatusCode::OK));
    let purged = send_all(&app, "POST", (0..SLOW).map(|i| format!("/slow/{i}")).collect()).await;
    assert!(purged.iter().all(|(s, _)| *s == StatusCode::OK));
    let errors_after_purges = store.stats().errors;
    // More pressure: Redis evicts whatever its policy lets it.
    send_all(
        &app,
        "GET",
        (FILLER..2 * FILLER).map(|j| format!("/filler/{j}")).collect(),
    )
    .await;
    // The slow responses finish and are offered to the store.
    open.send(true).unwrap();
    for request in slow_requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with(" v0"), "{body}");
    }

    // Read.
    let items = send_all(&app, "GET", (0..ITEMS).map(|i| format!("/items/{i}")).collect()).await;
    let slows = send_all(&app, "GET", (0..SLOW).map(|i| format!("/slow/{i}")).collect()).await;
    let stale_items = items.iter().filter(|(_, b)| b.contains(" v0 ")).count();
    let stale_slow = slows.iter().filter(|(_, b)| b.ends_with(" v0")).count();
    let stats = store.stats();
    let outcome = Outcome {
        stale_items,
        stale_slow,
        evicted: evicted(&server),
    };
    eprintln!(
        "{policy}: {} of {ITEMS} purged entries served, {} of {SLOW} slow pre-purge responses served; \
         {} keys evicted, used_memory {} B, {} writes refused for memory, {} store errors ({} by the end of the purges)",
        outcome.stale_items,
        outcome.stale_slow,
        outcome.evicted,
        used_memory(&server),
        stats.out_of_memory,
        stats.errors,
        errors_after_purges,
    );
    if policy != "noeviction" {
        assert!(outcome.evicted > 0, "{policy}: the pressure must make Redis evict");
    }
    Some(outcome)
}

async fn holds(policy: &str, expected: MaxmemoryPolicy) {
    let Some(outcome) = scenario(policy, expected).await else {
        return;
    };
    assert_eq!(outcome.stale_items, 0, "{policy}: purged entries served after eviction");
    assert_eq!(
        outcome.stale_slow, 0,
        "{policy}: slow responses started before their purge served"
    );
}

#[tokio::test]
async fn volatile_lru_never_resurrects() {
    holds("volatile-lru", MaxmemoryPolicy::VolatileLru).await;
}

#[tokio::test]
async fn volatile_lfu_never_resurrects() {
    holds("volatile-lfu", MaxmemoryPolicy::VolatileLfu).await;
}

#[tokio::test]
async fn volatile_random_never_resurrects() {
    holds("volatile-random", MaxmemoryPolicy::VolatileRandom).await;
}

#[tokio::test]
async fn volatile_ttl_never_resurrects() {
    holds("volatile-ttl", MaxmemoryPolicy::VolatileTtl).await;
}

#[tokio::test]
async fn noeviction_never_resurrects_and_purges_land_when_memory_is_full() {
    let Some(outcome) = scenario("noeviction", MaxmemoryPolicy::NoEviction).await else {
        return;
    };
    assert_eq!(outcome.stale_items, 0);
    assert_eq!(outcome.stale_slow, 0);
}

#[tokio::test]
async fn allkeys_lru_is_reported_as_unsafe() {
    // Reported (stats and an error log), and measured for contrast: not a guarantee.
    scenario("allkeys-lru", MaxmemoryPolicy::AllKeysLru).await;
}

#[tokio::test]
async fn a_redis_that_refuses_config_get_is_used_all_the_same() {
    if !redis_server::available() {
        return;
    }
    // As managed services do: CONFIG is renamed away.
    let server = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let store = RedisStore::builder(server.url())
        .namespace("managed")
        .connect()
        .await
        .expect("connect despite CONFIG GET refused");
    assert_eq!(store.stats().maxmemory_policy, MaxmemoryPolicy::Unknown);
    assert!(!store.stats().stamps_evictable);
    let app = exchange::serve(
        Router::new()
            .route("/x", get(|| async { "x" }))
            .layer(CacheLayer::new(store.clone())),
    );
    send(&app, "GET", "/x".into()).await;
    let (_, status, _) = exchange::exchange(&app, "GET", "/x").await;
    assert!(status.contains("; hit"), "{status}");
}

#[tokio::test]
async fn the_policy_is_read_once_redis_answers() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lfu"]);
    server.kill();
    let store = RedisStore::builder(server.url())
        .namespace("late")
        .connect()
        .await
        .expect("a standalone store connects lazily");
    assert_eq!(store.stats().maxmemory_policy, MaxmemoryPolicy::Unknown);
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().maxmemory_policy == MaxmemoryPolicy::Unknown {
        assert!(tokio::time::Instant::now() < deadline, "policy never read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.stats().maxmemory_policy, MaxmemoryPolicy::AllKeysLfu);
    assert!(store.stats().stamps_evictable);
}

/// Counts the crate's error-level events on the thread it is the default subscriber of.
struct ErrorEvents(Arc<AtomicUsize>);

impl tracing::Subscriber for ErrorEvents {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::ERROR && meta.target().starts_with("tower_response_cache") {
            self.0.fetch_add(1, SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// An `allkeys-*` policy is logged at error level when the store connects; a `volatile-*`
/// one is not.
#[tokio::test]
async fn an_unsafe_policy_is_logged_at_error_level_on_connect() {
    if !redis_server::available() {
        return;
    }
    for (policy, errors) in [("allkeys-lru", 1), ("volatile-lru", 0)] {
        let count = Arc::new(AtomicUsize::new(0));
        let _default = tracing::subscriber::set_default(ErrorEvents(count.clone()));
        let server = RedisServer::start_with(&["--maxmemory-policy", policy]);
        let store = RedisStore::builder(server.url())
            .namespace("logged")
            .connect()
            .await
            .expect("connect");
        assert_eq!(store.stats().stamps_evictable, errors == 1, "{policy}");
        assert_eq!(count.load(SeqCst), errors, "error-level events under {policy}");
    }
}
