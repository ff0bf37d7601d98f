//! The tiered store's memory tier answers only while its invalidation feed is proven live:
//! two `TieredStore` instances over one real `redis-server`, one of them behind a TCP proxy
//! the test black-holes. Each scenario counts the reads on one instance that returned data
//! older than the other instance's completed purge. Requests go over loopback HTTP.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::{exchange, Served};

#[path = "common/proxy.rs"]
mod proxy;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use proxy::Proxy;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

fn fresh_namespace() -> String {
    exchange::fresh_namespace("coherence")
}

/// A tiered instance with default settings, except no clock-skew margin (the instances share
/// the machine's clock with Redis).
async fn tiered(url: String, namespace: &str) -> TieredStore {
    let l2 = RedisStore::builder(url)
        .namespace(namespace)
        .clock_skew_margin(Duration::ZERO)
        .connect()
        .await
        .expect("connect");
    TieredStore::new(MemoryStore::new(), l2)
}

/// Polls `done` every 5 ms until it holds, failing after `within`.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The versioned origin: each book has a version that mutations bump (and purge its tag).
#[derive(Clone, Default)]
struct Books {
    versions: Arc<[AtomicU64; 4]>,
    failing: Arc<AtomicBool>,
}

async fn book(State(b): State<Books>, Path(id): Path<usize>) -> Result<(Extension<CacheTags>, String), StatusCode> {
    if b.failing.load(SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let v = b.versions[id].load(SeqCst);
    Ok((Extension(CacheTags::new([format!("book:{id}")])), format!("v{v}")))
}

async fn review(State(b): State<Books>, Path(id): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    b.versions[id].fetch_add(1, SeqCst);
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

fn instance(books: &Books, store: TieredStore) -> Served {
    exchange::serve(router(books, store))
}

/// The instance's Router, in process (its requests carry no `Host`, as a key built from
/// a bare request has none).
fn router(books: &Books, store: TieredStore) -> Router {
    Router::new()
        .route("/books/{id}", get(book))
        .route("/books/{id}/reviews", post(review))
        .with_state(books.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(
            CacheLayer::builder(store)
                .stale_if_error(Duration::from_secs(300))
                .build(),
        )
}

/// Sends a request; returns the status, `Cache-Status` and the version in the body.
async fn send(app: &Served, method: &str, uri: &str) -> (StatusCode, String, Option<u64>) {
    let (status, cache_status, body) = exchange(app, method, uri).await;
    let version = body.strip_prefix('v').and_then(|v| v.parse().ok());
    (status, cache_status, version)
}

/// Calls of the read and write scripts (`EVALSHA`) Redis has served: reads answered by a
/// memory tier make none.
fn script_calls(server: &RedisServer) -> u64 {
    let info = server.cli(&["info", "commandstats"]);
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads on `app` for `duration` after a purge of `id` to version `purged` completed at
/// `completed`: returns (reads, stale reads, stale reads started more than the coherence
/// window after the purge completed).
async fn read_after_purge(
    app: &Served,
    id: usize,
    purged: u64,
    completed: Instant,
    duration: Duration,
) -> (usize, usize, usize) {
    let (mut reads, mut stale, mut late) = (0, 0, 0);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let started = Instant::now();
        let (status, _, version) = send(app, "GET", &format!("/books/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        reads += 1;
        if version < Some(purged) {
            stale += 1;
            if started.duration_since(completed) > TieredStore::COHERENCE_WINDOW {
                late += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (reads, stale, late)
}

/// (a) The link between instance A and Redis stalls (open, nothing forwarded); B's purge
/// completes in Redis. A stops trusting its memory tier within the coherence window, and
/// after the link heals it resubscribes and serves the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_stops_the_memory_tier_within_its_window() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = fresh_namespace();
    let store_a = tiered(proxy.url(), &namespace).await;
    let store_b = tiered(server.url(), &namespace).await;
    until("both feeds live", Duration::from_secs(10), || {
        store_a.stats().coherent && store_b.stats().coherent
    })
    .await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    assert_eq!(send(&a, "GET", "/books/1").await.2, Some(0));
    let before = script_calls(&server);
    assert!(send(&a, "GET", "/books/1").await.1.contains("; hit"));
    assert_eq!(script_calls(&server), before, "A answers from its memory tier");

    proxy.black_hole();
    let stalled = Instant::now();
    let watch = {
        let store_a = store_a.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while store_a.stats().coherent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stalled.elapsed()
        })
    };
    let (status, _, _) = send(&b, "POST", "/books/1/reviews").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(store_b.l2().stats().pending_purges, 0, "B's purge completed in Redis");
    let completed = Instant::now();
    let (reads, stale, late) = read_after_purge(&a, 1, 1, completed, Duration::from_secs(3)).await;
    let detected = watch.await.unwrap();
    eprintln!(
        "stall: detected after {detected:?} (bound {:?}); {reads} reads, {stale} stale within the window, {late} after it",
        TieredStore::COHERENCE_WINDOW
    );
    // Detection is decided by the heartbeat instants; the margin only covers this watcher's
    // own polling on a loaded machine.
    assert!(
        detected <= TieredStore::COHERENCE_WINDOW + Duration::from_millis(500),
        "stall detected after {detected:?}"
    );
    assert_eq!(late, 0, "reads older than B's purge after the window");
    assert_eq!(stale, 0, "reads older than B's purge once it returned");

    proxy.heal();
    until("A resubscribed", Duration::from_secs(10), || {
        let s = store_a.stats();
        s.subscriptions >= 2 && s.coherent
    })
    .await;
    assert!(
        store_a.stats().stalls >= 1,
        "the silent subscription was replaced before the heal"
    );
    let (reads, stale, _) = read_after_purge(&a, 1, 1, completed, Duration::from_millis(500)).await;
    eprintln!("stall: after the heal {reads} reads, {stale} stale");
    assert_eq!(stale, 0, "stale after the link healed");
}

/// (b) Redis is killed and restarted (empty) while A's breaker is open; B's purge completes
/// on the new server. A's memory tier must not answer until its feed is live again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_memory_tier_waits_for_its_feed() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let namespace = fresh_namespace();
    let store_a = tiered(server.url(), &namespace).await;
    let store_b = tiered(server.url(), &namespace).await;
    until("both feeds live", Duration::from_secs(10), || {
        store_a.stats().coherent && store_b.stats().coherent
    })
    .await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    assert_eq!(send(&a, "GET", "/books/2").await.2, Some(0));
    assert_eq!(store_a.l1().stats().entries, 1);

    server.kill();
    until("A noticed", Duration::from_secs(5), || !store_a.stats().subscribed).await;
    // Reads during the outage open A's breaker (5 failures by default).
    for _ in 0..6 {
        send(&a, "GET", "/books/2").await;
    }
    assert!(store_a.l2().stats().breaker_open, "A's breaker is open");
    server.restart();
    let (status, _, _) = send(&b, "POST", "/books/2/reviews").await;
    assert_eq!(status, StatusCode::CREATED);
    until("B's purge landed", Duration::from_secs(10), || {
        store_b.l2().stats().pending_purges == 0
    })
    .await;
    let completed = Instant::now();
    let (reads, stale, _) = read_after_purge(&a, 2, 1, completed, Duration::from_secs(2)).await;
    eprintln!("restart: {reads} reads, {stale} stale");
    assert_eq!(stale, 0, "reads older than B's completed purge after the restart");
}

/// (c) After a resubscription (here: Redis drops the pub/sub clients, entries kept) the
/// memory tier is emptied, then refills from Redis: hits stop costing a round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_answers_at_once_only_what_it_may_answer() {
    use tower_response_cache::store::Lookup;
    use tower_response_cache::Store;
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = tiered(server.url(), &fresh_namespace()).await;
    until("the feed live", Duration::from_secs(10), || store.stats().coherent).await;
    let books = Books::default();
    let app = router(&books, store.clone());
    assert_eq!(exchange(&app, "GET", "/books/1").await.2, "v0");
    let layer = CacheLayer::new(store.clone());
    let key = |uri: &str| {
        let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
        layer.cache_key(&parts)
    };
    // Held in memory with the feed live: answered without waiting, as `get` answers.
    let now = store.get_now(&key("/books/1"));
    assert!(matches!(now, Some(Lookup::Found(_))), "{now:?}");
    assert!(matches!(store.get(&key("/books/1")).await, Ok(Lookup::Found(_))));
    // Not in memory: Redis decides, so the layer must await `get`.
    assert!(store.get_now(&key("/books/2")).is_none());
    // Once the feed is not proven live, nothing is answered from memory at once.
    server.cli(&["client", "kill", "type", "pubsub"]);
    until("the feed lost", Duration::from_secs(10), || !store.stats().coherent).await;
    assert!(store.get_now(&key("/books/1")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_refills_after_a_resubscription() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let namespace = fresh_namespace();
    let store_a = tiered(server.url(), &namespace).await;
    let store_b = tiered(server.url(), &namespace).await;
    until("both feeds live", Duration::from_secs(10), || {
        store_a.stats().coherent && store_b.stats().coherent
    })
    .await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    assert_eq!(send(&a, "GET", "/books/3").await.2, Some(0));

    server.cli(&["client", "kill", "type", "pubsub"]);
    until("A resubscribed", Duration::from_secs(10), || {
        let s = store_a.stats();
        s.subscriptions >= 2 && s.coherent
    })
    .await;
    assert_eq!(store_a.l1().stats().entries, 0, "emptied on resubscribing");
    // The entry stored before the resubscription comes back from Redis and stays in L1.
    assert!(send(&a, "GET", "/books/3").await.1.contains("; hit"));
    let before = script_calls(&server);
    for _ in 0..20 {
        let (_, cache_status, version) = send(&a, "GET", "/books/3").await;
        assert!(cache_status.contains("; hit"), "{cache_status}");
        assert_eq!(version, Some(0));
    }
    let round_trips = script_calls(&server) - before;
    eprintln!("refill: 20 hits after the resubscription, {round_trips} of them went to Redis");
    assert_eq!(round_trips, 0, "the memory tier answers again");

    // And it is coherent: B's purge reaches it.
    until("B's feed live", Duration::from_secs(10), || store_b.stats().coherent).await;
    send(&b, "POST", "/books/3/reviews").await;
    let completed = Instant::now();
    until("A applied B's purge", Duration::from_secs(5), || {
        store_a.stats().messages >= 1
    })
    .await;
    let (reads, stale, _) = read_after_purge(&a, 3, 1, completed, Duration::from_millis(300)).await;
    eprintln!("refill: after B's purge {reads} reads, {stale} stale");
    assert_eq!(stale, 0);
}

/// While its feed is down and Redis unreachable, a memory-tier entry stands in only for an
/// origin error: a healthy origin answers, however long Redis stays away (the breaker opens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_memory_tier_entry_only_stands_in_for_origin_errors() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let store = tiered(server.url(), &fresh_namespace()).await;
    until("feed live", Duration::from_secs(10), || store.stats().coherent).await;
    let books = Books::default();
    let app = instance(&books, store.clone());
    assert_eq!(send(&app, "GET", "/books/0").await.2, Some(0));
    assert_eq!(store.l1().stats().entries, 1);

    server.kill();
    until("the feed noticed", Duration::from_secs(5), || !store.stats().subscribed).await;
    // Another instance's mutation whose purge cannot reach this one.
    books.versions[0].store(1, SeqCst);
    for i in 0..10 {
        let (status, cache_status, version) = send(&app, "GET", "/books/0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            version,
            Some(1),
            "read {i} served the memory tier's copy: {cache_status}"
        );
        assert!(!cache_status.contains("; hit"), "{cache_status}");
    }
    assert!(store.l2().stats().breaker_open);
    books.failing.store(true, SeqCst);
    let (status, cache_status, version) = send(&app, "GET", "/books/0").await;
    assert_eq!(status, StatusCode::OK, "stale-if-error: {cache_status}");
    assert_eq!(version, Some(0));
    assert!(cache_status.contains("stale-if-error"), "{cache_status}");
}

/// Over a spread namespace a purge reaches other memory tiers only through their purge log
/// mirrors: a copy the mirror knows purged stands in for nothing, even once the mirror and
/// Redis are out of reach (it would otherwise be served on an origin error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_spread_namespace_a_copy_known_purged_never_stands_in_for_an_error() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = fresh_namespace();
    let spread = |url: String| {
        let namespace = namespace.clone();
        async move {
            let l2 = RedisStore::builder(url)
                .namespace(namespace)
                .clock_skew_margin(Duration::ZERO)
                .spread_namespace(true)
                .connect()
                .await
                .expect("connect");
            TieredStore::new(MemoryStore::new(), l2)
        }
    };
    let store_a = spread(server.url()).await;
    let store_b = spread(proxy.url()).await;
    until("mirrors live", Duration::from_secs(10), || {
        store_a.stats().coherent && store_b.stats().coherent
    })
    .await;
    let books = Books::default();
    let app_b = instance(&books, store_b.clone());
    assert_eq!(send(&app_b, "GET", "/books/0").await.2, Some(0));
    assert_eq!(store_b.l1().stats().entries, 1);

    let applied = store_b.stats().messages;
    books.versions[0].store(1, SeqCst);
    store_a.purge_tags(["book:0".to_owned()]).await.expect("purge");
    until("B's mirror applied the purge", Duration::from_secs(5), || {
        store_b.stats().messages > applied
    })
    .await;
    proxy.black_hole();
    until("B's mirror no longer live", Duration::from_secs(5), || {
        !store_b.stats().coherent
    })
    .await;
    books.failing.store(true, SeqCst);
    let (status, cache_status, version) = send(&app_b, "GET", "/books/0").await;
    assert_eq!(
        (status, version),
        (StatusCode::SERVICE_UNAVAILABLE, None),
        "the purged copy was served: {cache_status}"
    );
}
