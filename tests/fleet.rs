//! A fleet behaves like one cache: 4 instances (4 layers over 4 handles on one real
//! `redis-server`) make one origin call for a cold key, and a leader cancelled mid-call is
//! taken over by one waiter.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::exchange;

#[path = "common/lease_wake.rs"]
mod lease_wake;
use lease_wake::releases_live;

use axum::routing::get;
use axum::Router;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_response_cache::store::{BoxStore, LeaseAttempt, Lookup, RedisStore, TieredStore};
use tower_response_cache::{CacheKey, CacheLayer, MemoryStore, RefreshAhead, Store};

const INSTANCES: usize = 4;
const PER_INSTANCE: usize = 250;

/// An origin whose answers take `delay`, counting its calls.
fn instance(store: RedisStore, calls: Arc<AtomicUsize>, delay: Duration, fleet: bool) -> Router {
    Router::new()
        .route(
            "/hot",
            get(move || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(delay).await;
                    ([("cache-control", "max-age=60")], "hot")
                }
            }),
        )
        .layer(CacheLayer::builder(store).fleet_coalesce(fleet).build())
}

async fn fleet(
    server: &RedisServer,
    namespace: &str,
    calls: &Arc<AtomicUsize>,
    delay: Duration,
    on: bool,
) -> (Vec<Router>, Vec<RedisStore>) {
    let (mut apps, mut stores) = (Vec::new(), Vec::new());
    for _ in 0..INSTANCES {
        let store = store_in(server, namespace).await;
        apps.push(instance(store.clone(), calls.clone(), delay, on));
        stores.push(store);
    }
    (apps, stores)
}

/// 250 concurrent cold requests on each of 4 instances: returns (origin calls, p99 latency).
async fn burst(apps: &[Router], calls: &Arc<AtomicUsize>) -> (usize, Duration) {
    let mut tasks = Vec::new();
    for app in apps {
        for _ in 0..PER_INSTANCE {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let (status, _, body) = exchange(&app, "GET", "/hot").await;
                assert_eq!((status.as_u16(), body.as_str()), (200, "hot"));
                started.elapsed()
            }));
        }
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("answered")
                .unwrap(),
        );
    }
    latencies.sort();
    (calls.load(SeqCst), latencies[latencies.len() * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_make_one_origin_call_for_a_cold_key() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let delay = Duration::from_millis(50);

    let calls = Arc::new(AtomicUsize::new(0));
    let (apps, stores) = fleet(&server, &exchange::fresh_namespace("fleet"), &calls, delay, true).await;
    // As in a fleet that has run a while: each store listens for lease releases (from its
    // first lease on), so that its waits can be woken rather than polled.
    for store in &stores {
        let warm = CacheKey::from_bytes("GET /warm");
        if let LeaseAttempt::Acquired(token) = store.try_lease(&warm, Duration::from_secs(1)).await {
            store.release_lease(&warm, token).await;
        }
        releases_live(store).await;
    }
    let (fleet_calls, p99) = burst(&apps, &calls).await;
    // The waiting instances waited for word of the lease given back, and heard it (whether
    // a wait ended by the word or at its poll depends on timing: tested at the store level).
    let waits: u64 = stores.iter().map(|s| s.stats().lease_waits).sum();
    let heard: u64 = stores.iter().map(|s| s.stats().lease_releases_heard).sum();

    // Without it, each instance's leader calls the origin: an origin slow enough that every
    // instance's burst has started before the first answer is stored (on a loaded machine
    // a late instance would otherwise find it in Redis).
    let alone = Arc::new(AtomicUsize::new(0));
    let (apps, _) = fleet(
        &server,
        &exchange::fresh_namespace("alone"),
        &alone,
        Duration::from_secs(1),
        false,
    )
    .await;
    let (alone_calls, _) = burst(&apps, &alone).await;
    eprintln!(
        "{} requests over {INSTANCES} instances: {fleet_calls} origin call(s) with fleet coalescing \
         (p99 {p99:?}, origin {delay:?}), {alone_calls} without",
        INSTANCES * PER_INSTANCE
    );
    assert_eq!(fleet_calls, 1, "one origin call across the fleet");
    assert!(waits >= 1, "the waiting instances waited for word of the release");
    assert!(heard >= 1, "the release of the lease they waited on was heard");
    assert_eq!(alone_calls, INSTANCES, "without it, one per instance");
}

/// The instance that leads is cancelled mid-call: its lease is given back, one waiter takes
/// over, and every other request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_is_taken_over_by_one_waiter() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (apps, _) = fleet(
        &server,
        &exchange::fresh_namespace("takeover"),
        &calls,
        Duration::from_millis(300),
        true,
    )
    .await;
    let leader = {
        let app = apps[0].clone();
        tokio::spawn(async move { exchange(&app, "GET", "/hot").await })
    };
    // The leader holds the lease once its origin call has started.
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls.load(SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the leader never called the origin");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut waiters = Vec::new();
    for app in &apps[1..] {
        for _ in 0..50 {
            let app = app.clone();
            waiters.push(tokio::spawn(async move { exchange(&app, "GET", "/hot").await }));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    leader.abort();
    for waiter in waiters {
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "hot"));
    }
    assert_eq!(calls.load(SeqCst), 2, "the cancelled call, and one takeover");
}

/// A lease is its holder's: another cannot take or release it, and it ends by itself.
#[tokio::test]
async fn a_lease_belongs_to_its_holder_and_expires() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let namespace = exchange::fresh_namespace("lease");
    let connect = || RedisStore::builder(server.url()).namespace(&namespace).connect();
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    let key = CacheKey::from_bytes(&b"k"[..]);
    let ttl = Duration::from_millis(300);
    let LeaseAttempt::Acquired(token) = a.try_lease(&key, ttl).await else {
        panic!("a free lease is taken")
    };
    assert_eq!(b.try_lease(&key, ttl).await, LeaseAttempt::Held);
    // A token that is not the holder's neither renews nor releases it.
    let forged = tower_response_cache::store::LeaseToken(token.0.wrapping_add(1));
    assert!(!b.renew_lease(&key, forged, ttl).await);
    b.release_lease(&key, forged).await;
    assert_eq!(b.try_lease(&key, ttl).await, LeaseAttempt::Held);
    assert!(a.renew_lease(&key, token, ttl).await);
    a.release_lease(&key, token).await;
    let LeaseAttempt::Acquired(_) = b.try_lease(&key, ttl).await else {
        panic!("released: free to take")
    };
    // Never given back: it expires by itself.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.try_lease(&key, ttl).await == LeaseAttempt::Held {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instance's store: Redis alone, or a memory tier over it.
fn store_for(redis: RedisStore, tiered: bool) -> BoxStore {
    if tiered {
        BoxStore::new(TieredStore::new(MemoryStore::new(), redis))
    } else {
        BoxStore::new(redis)
    }
}

/// A stale hot key on 4 instances: 1,000 requests spread over them inside its
/// stale-while-revalidate window make 1 background refresh across the fleet, with Redis
/// alone and with a memory tier over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hot_key_is_refreshed_once_per_fleet() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let runs = [false, true]
        .into_iter()
        // Without the lease each instance refreshes, and may again when a request that read
        // the stale entry reaches the coalescer after its instance's refresh settled.
        .flat_map(|tiered| [(tiered, true, 1..=1), (tiered, false, 2..=4 * INSTANCES)]);
    for (tiered, on, expected) in runs {
        let namespace = exchange::fresh_namespace("refresh");
        let calls = Arc::new(AtomicUsize::new(0));
        let mut apps = Vec::new();
        for _ in 0..INSTANCES {
            let store = store_in(&server, &namespace).await;
            let calls = calls.clone();
            let app = Router::new()
                .route(
                    "/hot",
                    get(move || {
                        let calls = calls.clone();
                        async move {
                            // The first answer is stale at once; refreshes are fresh, and slow.
                            let cc = if calls.fetch_add(1, SeqCst) == 0 {
                                "max-age=0, stale-while-revalidate=60"
                            } else {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                "max-age=60"
                            };
                            ([("cache-control", cc)], "hot")
                        }
                    }),
                )
                .layer(CacheLayer::builder(store_for(store, tiered)).fleet_coalesce(on).build());
            apps.push(app);
        }
        let (status, _, _) = exchange(&apps[0], "GET", "/hot").await;
        assert_eq!(status.as_u16(), 200);
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let app = apps[i % INSTANCES].clone();
            tasks.push(tokio::spawn(async move { exchange(&app, "GET", "/hot").await }));
        }
        for task in tasks {
            let (status, _, body) = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("answered")
                .unwrap();
            assert_eq!((status.as_u16(), body.as_str()), (200, "hot"));
        }
        let refreshes = settled(&calls, Duration::from_millis(300)).await - 1;
        eprintln!(
            "tiered {tiered}, fleet coalescing {on}: {refreshes} background refresh(es) for 1,000 stale requests"
        );
        assert!(
            expected.contains(&refreshes),
            "tiered {tiered}, fleet {on}: {refreshes} refreshes"
        );
    }
}

/// A hot key read on 4 instances in the last half of its lifetime: with refresh-ahead, one
/// instance refreshes it for the fleet (each would without fleet coalescing), and no
/// request misses. With Redis alone and with a memory tier over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_ahead_once_per_fleet() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    for tiered in [false, true] {
        for (on, expected) in [(true, 1..=1), (false, 2..=INSTANCES)] {
            let refreshes = refreshed_ahead(&server, tiered, on).await;
            assert!(
                expected.contains(&refreshes),
                "tiered {tiered}, fleet {on}: {refreshes} refreshes"
            );
        }
    }
}

/// Refreshes made ahead of expiry while 4 instances read one hot key for most of its
/// 2 s lifetime.
async fn refreshed_ahead(server: &RedisServer, tiered: bool, on: bool) -> usize {
    let namespace = exchange::fresh_namespace("ahead");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut apps = Vec::new();
    for _ in 0..INSTANCES {
        let store = store_in(server, &namespace).await;
        let calls = calls.clone();
        let origin = get(move || {
            let calls = calls.clone();
            async move {
                // Refreshes are slow: every instance is due before the first lands.
                if calls.fetch_add(1, SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                ([("cache-control", "max-age=2")], "hot")
            }
        });
        let layer = CacheLayer::builder(store_for(store, tiered))
            .fleet_coalesce(on)
            .refresh_ahead(RefreshAhead::new().window(0.5).min_reads(1));
        apps.push(Router::new().route("/hot", origin).layer(layer.build()));
    }
    let started = Instant::now();
    let (status, _, _) = exchange(&apps[0], "GET", "/hot").await;
    assert_eq!(status.as_u16(), 200);
    // Reads spread over the instances until shortly before the first entry expires; a
    // refreshed entry's window opens only after that.
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(1_900) {
        let (status, cache_status, body) = exchange(&apps[i % INSTANCES], "GET", "/hot").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "hot"));
        assert!(cache_status.contains("hit"), "read {i}: {cache_status}");
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refreshes = settled(&calls, Duration::from_millis(600)).await - 1;
    eprintln!(
        "tiered {tiered}, fleet coalescing {on}: {refreshes} refresh(es) ahead for {i} hot reads over 4 instances"
    );
    refreshes
}

/// The origin calls once no more were made for `quiet` (refreshes still running finish), or
/// after 10 s.
async fn settled(calls: &AtomicUsize, quiet: Duration) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut settled = calls.load(SeqCst);
    loop {
        tokio::time::sleep(quiet).await;
        let now = calls.load(SeqCst);
        if now == settled || Instant::now() > deadline {
            return now;
        }
        settled = now;
    }
}

/// A tiered instance refreshes ahead what it stored itself: the copy in its memory tier and
/// the one Redis holds are the same response, not a newer one from elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_instance_refreshes_ahead_what_it_stored() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let redis = store_in(&server, &exchange::fresh_namespace("self-ahead")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let origin_calls = calls.clone();
    let layer = CacheLayer::builder(TieredStore::new(MemoryStore::new(), redis))
        .refresh_ahead(RefreshAhead::new().window(0.5).min_reads(3))
        .build();
    let app = Router::new()
        .route(
            "/hot",
            get(move || {
                origin_calls.fetch_add(1, SeqCst);
                async { ([("cache-control", "max-age=1")], "hot") }
            }),
        )
        .layer(layer.clone());
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_600) {
        let (status, _, body) = exchange(&app, "GET", "/hot").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "hot"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = layer.stats();
    assert_eq!(stats.misses, 1, "refreshed before expiry, never missed: {stats:?}");
    assert!(stats.background_refreshes >= 1);
}

/// Reading past a tiered store's memory tier keeps its copy when Redis has none (evicted, a
/// put that failed): the copy still answers, as stale-if-error needs it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_past_the_memory_tier_keeps_its_copy_when_redis_has_none() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let redis = store_in(&server, &exchange::fresh_namespace("latest")).await;
    let store = TieredStore::new(MemoryStore::new(), redis);
    let layer = CacheLayer::new(store.clone());
    let app = Router::new()
        .route("/page", get(|| async { ([("cache-control", "max-age=60")], "page") }))
        .layer(layer.clone());
    feed_live(&store).await;
    exchange(&app, "GET", "/page").await;
    let (parts, ()) = axum::http::Request::get("/page").body(()).unwrap().into_parts();
    let key = layer.cache_key(&parts);
    store.l2().remove(&key).await.unwrap();
    assert!(matches!(store.l2().get(&key).await, Ok(Lookup::Miss)));
    assert!(
        matches!(store.get_latest(&key).await, Ok(Lookup::Found(_))),
        "the copy answers"
    );
    assert!(matches!(store.get(&key).await, Ok(Lookup::Found(_))), "and stays");
}

/// A store on `server` in `namespace`.
async fn store_in(server: &RedisServer, namespace: &str) -> RedisStore {
    RedisStore::builder(server.url())
        // A loaded machine (1,000 tasks on 2 cores) must not time out the leases and puts.
        .op_timeout(Duration::from_secs(2))
        .namespace(namespace)
        .connect()
        .await
        .expect("connect")
}

/// A memory tier keeps its copy no longer than Redis keeps the entry (`max_entry_ttl`),
/// whatever the response's own lifetime: a spread namespace's mirror forgets purges older
/// than that, so a longer-lived copy could outlive the purge that invalidated it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_tier_keeps_its_copy_no_longer_than_redis_keeps_the_entry() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let redis = RedisStore::builder(server.url())
        .namespace(exchange::fresh_namespace("l1-ttl"))
        .max_entry_ttl(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let store = TieredStore::new(MemoryStore::new(), redis);
    let layer = CacheLayer::new(store.clone());
    let app = Router::new()
        .route("/page", get(|| async { ([("cache-control", "max-age=3600")], "page") }))
        .layer(layer.clone());
    feed_live(&store).await;
    exchange(&app, "GET", "/page").await;
    let (parts, ()) = axum::http::Request::get("/page").body(()).unwrap().into_parts();
    let key = layer.cache_key(&parts);
    assert!(matches!(store.l1().get(&key).await, Ok(Lookup::Found(_))), "copied");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(
        matches!(store.l1().get(&key).await, Ok(Lookup::Miss)),
        "gone with the entry's time in Redis"
    );
}

/// Waits (at most 10 s) until a tiered store's invalidation feed is live: its memory tier
/// takes copies only then.
async fn feed_live(store: &TieredStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.stats().coherent {
        assert!(Instant::now() < deadline, "the feed never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An instance waiting on another's lease is woken when the holder gives it back, not at a
/// poll: given a minute to wait, it returns within seconds of the release. A lease no one
/// waited on is given back without a word (the release publishes only what is waited on).
#[tokio::test]
async fn a_waiting_instance_is_woken_when_the_lease_is_given_back() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let namespace = exchange::fresh_namespace("woken");
    let (a, b) = (store_in(&server, &namespace).await, store_in(&server, &namespace).await);
    let ttl = Duration::from_secs(30);
    let (quiet, key) = (CacheKey::from_bytes("GET quiet"), CacheKey::from_bytes("GET hot"));
    // Both start listening with their first lease.
    let LeaseAttempt::Acquired(token) = a.try_lease(&quiet, ttl).await else {
        panic!("a free lease is taken")
    };
    a.release_lease(&quiet, token).await;
    let LeaseAttempt::Acquired(token) = b.try_lease(&quiet, ttl).await else {
        panic!("a free lease is taken")
    };
    b.release_lease(&quiet, token).await;
    releases_live(&a).await;
    releases_live(&b).await;
    assert_eq!(
        server
            .cli(&["pubsub", "numsub", &format!("{{{namespace}}}:leases")])
            .lines()
            .nth(1),
        Some("2")
    );
    assert_eq!(publishes(&server), 0, "releases no one waited on publish nothing");
    lease_wake::woken_by_release(&a, &b, &key, "standalone").await;
    assert_eq!(b.stats().lease_releases_heard, 1, "{:?}", b.stats());
    assert_eq!(publishes(&server), 1, "the waited-on release alone was published");
    // The subscriptions end with their stores.
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(5);
    while server
        .cli(&["pubsub", "numsub", &format!("{{{namespace}}}:leases")])
        .lines()
        .nth(1)
        != Some("0")
    {
        assert!(
            Instant::now() < deadline,
            "a dropped store still listens for lease releases"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `PUBLISH` calls Redis ran (scripts' included).
fn publishes(server: &RedisServer) -> u64 {
    server
        .cli(&["info", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}
