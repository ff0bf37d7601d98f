//! RedisStore and TieredStore against real `redis-server` processes started on free loopback
//! ports: the store conformance suite (standalone, cluster, tiered), one-round-trip hits,
//! unreadable values, several instances sharing one Redis, and Redis failing under load.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::exchange;

use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
#[cfg(feature = "test-util")]
use tower_response_cache::store::conformance;
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

static NAMESPACE: AtomicUsize = AtomicUsize::new(0);

/// A namespace no other store in this process uses, so each store starts empty.
fn fresh_namespace() -> String {
    format!("test{}", NAMESPACE.fetch_add(1, SeqCst))
}

/// A store on `server` with a namespace of its own. The tests' instances share the machine's
/// clock with Redis, so no clock-skew margin is needed (the default is 500 ms).
async fn standalone(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .namespace(fresh_namespace())
        .clock_skew_margin(Duration::ZERO)
        .connect()
        .await
        .expect("connect")
}

/// The catalogue: each book has a version that mutations bump.
#[derive(Clone, Default)]
struct Books {
    versions: Arc<[AtomicU64; 8]>,
    calls: Arc<AtomicUsize>,
}

async fn book(State(b): State<Books>, Path(id): Path<usize>) -> (Extension<CacheTags>, String) {
    b.calls.fetch_add(1, SeqCst);
    let v = b.versions[id].load(SeqCst);
    (
        Extension(CacheTags::new([format!("book:{id}")])),
        format!("book {id} v{v}"),
    )
}

async fn review(State(b): State<Books>, Path(id): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    b.versions[id].fetch_add(1, SeqCst);
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

fn instance<St: Store>(books: &Books, store: St) -> Router {
    Router::new()
        .route("/books/{id}", get(book))
        .route("/books/{id}/reviews", axum::routing::post(review))
        .with_state(books.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store))
}

async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, String, String) {
    exchange(app, method, uri).await
}

fn is_hit(cache_status: &str) -> bool {
    cache_status.contains("; hit")
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn redis_store_passes_the_conformance_suite() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    conformance::run(|| standalone(&server)).await;
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn redis_cluster_store_passes_the_conformance_suite() {
    if !redis_server::available() {
        return;
    }
    let cluster = redis_server::RedisCluster::start();
    let urls = cluster.urls();
    conformance::run(|| async {
        RedisStore::cluster_builder(urls.clone())
            .namespace(fresh_namespace())
            .clock_skew_margin(Duration::ZERO)
            .connect()
            .await
            .expect("cluster")
    })
    .await;
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn tiered_store_passes_the_conformance_suite() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    conformance::run(|| async { TieredStore::new(MemoryStore::new(), standalone(&server).await) }).await;
}

fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["info", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_hit_is_one_round_trip() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let books = Books::default();
    let app = instance(&books, standalone(&server).await);
    send(&app, "GET", "/books/1").await;
    assert!(is_hit(&send(&app, "GET", "/books/1").await.1));
    let (evalsha, eval) = (command_calls(&server, "evalsha"), command_calls(&server, "eval"));
    let (_, cache_status, body) = send(&app, "GET", "/books/1").await;
    assert!(is_hit(&cache_status), "{cache_status}");
    assert_eq!(body, "book 1 v0");
    assert_eq!(
        command_calls(&server, "evalsha"),
        evalsha + 1,
        "one script call per hit"
    );
    assert_eq!(command_calls(&server, "eval"), eval);
}

#[tokio::test]
async fn unreadable_values_are_misses_and_counted() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .namespace("bad")
        .connect()
        .await
        .unwrap();
    let layer = CacheLayer::new(store.clone());
    let (parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
    let key = layer.cache_key(&parts);
    let mut redis_key = b"{bad}:e:".to_vec();
    redis_key.extend_from_slice(key.as_bytes());
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let garbage: [(&str, Vec<u8>); 3] = [
        ("string", b"not a hash".to_vec()),
        ("hash", b"TRCE\x01\x01truncated".to_vec()),
        ("foreign", b"{\"json\": true}".to_vec()),
    ];
    for (i, (kind, bytes)) in garbage.iter().enumerate() {
        let _: () = redis::cmd("DEL").arg(&redis_key).query_async(&mut conn).await.unwrap();
        if *kind == "string" {
            let _: () = redis::cmd("SET")
                .arg(&redis_key)
                .arg(bytes)
                .query_async(&mut conn)
                .await
                .unwrap();
        } else {
            let _: () = redis::cmd("HSET")
                .arg(&redis_key)
                .arg("d")
                .arg(bytes)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let lookup = store
            .get(&key)
            .await
            .expect("an unreadable value is not a store failure");
        assert!(
            matches!(lookup, tower_response_cache::store::Lookup::Miss),
            "{kind}: {lookup:?}"
        );
        assert_eq!(store.stats().corrupt, i as u64 + 1);
    }
    // Through the layer: the request is served by the origin and the entry replaced.
    let app = Router::new().route("/x", get(|| async { "fresh" })).layer(layer);
    let (status, _, body) = send(&app, "GET", "/x").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fresh"));
    assert!(is_hit(&send(&app, "GET", "/x").await.1));
}

#[tokio::test]
async fn two_instances_share_entries_and_purges() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let namespace = fresh_namespace();
    let connect = || RedisStore::builder(server.url()).namespace(namespace.clone()).connect();
    let books = Books::default();
    let a = instance(&books, connect().await.unwrap());
    let b = instance(&books, connect().await.unwrap());
    assert!(!is_hit(&send(&a, "GET", "/books/1").await.1));
    assert!(is_hit(&send(&b, "GET", "/books/1").await.1), "B reads what A stored");
    assert_eq!(send(&b, "POST", "/books/1/reviews").await.0, StatusCode::CREATED);
    let (_, cache_status, body) = send(&a, "GET", "/books/1").await;
    assert_eq!(body, "book 1 v1", "A sees B's purge at once: {cache_status}");
    assert!(cache_status.contains("detail=invalidated"), "{cache_status}");
}

#[tokio::test]
async fn a_slow_response_cannot_resurrect_across_instances() {
    slow_response_after_a_purge(false).await;
}

/// The same race, with Redis restarted empty (no persistence) between the purge and the
/// slow write: the purge is forgotten, but the write still may not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_cannot_resurrect_after_redis_restarts_empty() {
    slow_response_after_a_purge(true).await;
}

async fn slow_response_after_a_purge(restart: bool) {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let namespace = fresh_namespace();
    let a = RedisStore::builder(server.url())
        .namespace(namespace.clone())
        .connect()
        .await
        .unwrap();
    let b = RedisStore::builder(server.url())
        .namespace(namespace)
        .connect()
        .await
        .unwrap();
    // Instance A starts computing, instance B purges, A's result arrives after the purge.
    let layer = CacheLayer::new(a.clone());
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let slots = Arc::new(std::sync::Mutex::new((Some(started_tx), Some(finish_rx))));
    let app = Router::new()
        .route(
            "/price",
            get(move || {
                let slots = slots.clone();
                async move {
                    let (started, finish) = {
                        let mut s = slots.lock().unwrap();
                        (s.0.take(), s.1.take())
                    };
                    let price = if started.is_some() { "old" } else { "new" };
                    if let (Some(started), Some(finish)) = (started, finish) {
                        let _ = started.send(());
                        let _ = finish.await;
                    }
                    (Extension(CacheTags::new(["price"])), price)
                }
            }),
        )
        .layer(layer);
    let slow = tokio::spawn({
        let app = app.clone();
        async move { send(&app, "GET", "/price").await }
    });
    started_rx.await.unwrap();
    b.purge_tags(["price"]).await.unwrap();
    if restart {
        server.restart();
        // A reaches the new server before its slow write is sent.
        let probe = tower_response_cache::CacheKey::from_bytes(b"probe".to_vec());
        let reconnected = async {
            while a.get(&probe).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reconnected)
            .await
            .expect("A reconnects");
    }
    finish_tx.send(()).unwrap();
    let (_, cache_status, body) = slow.await.unwrap();
    assert_eq!(body, "old");
    assert!(
        !cache_status.contains("store-error"),
        "the write reached Redis: {cache_status}"
    );
    assert!(
        !cache_status.contains("stored"),
        "Redis refused the write: {cache_status}"
    );
    assert_eq!(send(&app, "GET", "/price").await.2, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_instances_see_each_others_purges_in_their_memory_tier() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let namespace = fresh_namespace();
    let tiered = || async {
        let l2 = RedisStore::builder(server.url())
            .namespace(namespace.clone())
            .connect()
            .await
            .unwrap();
        TieredStore::new(MemoryStore::new(), l2)
    };
    let (store_a, store_b) = (tiered().await, tiered().await);
    let wait = |s: TieredStore| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.stats().subscribed {
            assert!(Instant::now() < deadline, "subscription did not come up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    wait(store_a.clone()).await;
    wait(store_b.clone()).await;
    let books = Books::default();
    let a = instance(&books, store_a.clone());
    let b = instance(&books, store_b.clone());
    send(&a, "GET", "/books/2").await;
    assert!(
        is_hit(&send(&b, "GET", "/books/2").await.1),
        "B filled its L1 from Redis"
    );
    assert_eq!(store_b.l1().stats().entries, 1);

    send(&a, "POST", "/books/2/reviews").await;
    // B's memory tier learns of the purge through pub/sub, within a bounded delay.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, cache_status, body) = send(&b, "GET", "/books/2").await;
        if body == "book 2 v1" {
            assert!(!is_hit(&cache_status));
            break;
        }
        assert_eq!(body, "book 2 v0");
        assert!(Instant::now() < deadline, "B never saw A's purge");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(store_b.stats().messages >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_empties_the_memory_tier() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let l2 = RedisStore::builder(server.url())
        .namespace(fresh_namespace())
        .circuit_breaker(1000, Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let store = TieredStore::new(MemoryStore::new(), l2);
    let until = |what: &'static str, s: TieredStore, f: fn(&TieredStore) -> bool| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&s) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    until("subscription", store.clone(), |s| s.stats().subscribed).await;
    let books = Books::default();
    let app = instance(&books, store.clone());
    send(&app, "GET", "/books/3").await;
    assert_eq!(store.l1().stats().entries, 1);

    // Purges published while this instance is unsubscribed never reach it: on resubscribing
    // it must forget its L1 rather than trust it.
    server.restart();
    until("resubscription", store.clone(), |s| {
        s.stats().subscriptions >= 2 && s.stats().subscribed
    })
    .await;
    let (_, cache_status, _) = send(&app, "GET", "/books/3").await;
    assert!(
        !is_hit(&cache_status),
        "L1 was emptied and Redis restarted empty: {cache_status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failing_under_load_never_fails_a_request_nor_serves_purged_data() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .namespace(fresh_namespace())
        .op_timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let books = Books::default();
    let layer = CacheLayer::new(store.clone());
    let app = Router::new()
        .route("/books/{id}", get(book))
        .route("/books/{id}/reviews", axum::routing::post(review))
        .with_state(books.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(layer.clone());

    // Each phase: a burst of concurrent reads over 8 books, every answer checked against the
    // versions that were current when it was asked.
    let burst = |app: Router, books: Books| async move {
        let requests: Vec<_> = (0..200)
            .map(|i| {
                let (app, books) = (app.clone(), books.clone());
                tokio::spawn(async move {
                    let id = i % 8;
                    let floor = books.versions[id].load(SeqCst);
                    let (status, _, body) = send(&app, "GET", &format!("/books/{id}")).await;
                    assert_eq!(status, StatusCode::OK);
                    let seen: u64 = body.rsplit('v').next().unwrap().parse().unwrap();
                    assert!(seen >= floor, "book {id}: served v{seen} after v{floor} was purged");
                })
            })
            .collect();
        for r in requests {
            r.await.unwrap();
        }
    };
    burst(app.clone(), books.clone()).await;
    let stats = layer.stats();
    assert!(stats.stores > 0 && stats.hits + stats.coalesced > 0, "{stats:?}");

    server.kill();
    burst(app.clone(), books.clone()).await;
    // Mutations while Redis is down still succeed for the client.
    assert_eq!(send(&app, "POST", "/books/1/reviews").await.0, StatusCode::CREATED);
    let stats = store.stats();
    assert!(stats.breaker_trips >= 1, "{stats:?}");
    assert!(stats.refused > 0, "the breaker spared Redis the calls: {stats:?}");
    assert!(layer.stats().store_errors > 0);

    server.restart();
    // The store reconnects by itself; purges after the restart hold at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(&app, "GET", "/books/5").await;
        if is_hit(&send(&app, "GET", "/books/5").await.1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never recovered: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(send(&app, "POST", "/books/5/reviews").await.0, StatusCode::CREATED);
    burst(app.clone(), books.clone()).await;
    assert_eq!(send(&app, "GET", "/books/5").await.2, "book 5 v1");
}

/// A breaker probe whose request is cancelled mid-call (its client went away) counts as
/// failed: the breaker probes again after its cooldown instead of refusing Redis forever.
#[tokio::test]
async fn a_cancelled_breaker_probe_does_not_keep_the_breaker_open() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .namespace(fresh_namespace())
        .op_timeout(Duration::from_millis(200))
        .circuit_breaker(1, Duration::from_millis(100))
        .connect()
        .await
        .expect("connect");
    let key = tower_response_cache::CacheKey::from_bytes(&b"probe"[..]);
    store.get(&key).await.expect("Redis answers");
    // One timeout opens the breaker.
    server.cli(&["client", "pause", "3000", "ALL"]);
    assert!(store.get(&key).await.is_err());
    assert!(store.stats().breaker_open);
    // After the cooldown, the probe is cancelled while Redis still holds it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(tokio::time::timeout(Duration::from_millis(20), store.get(&key))
        .await
        .is_err());
    server.cli(&["client", "unpause"]);
    // Bounded: the breaker lets a new probe through and closes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(&key).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the breaker stayed open: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.stats().breaker_open);
}
