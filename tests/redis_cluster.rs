//! A namespace spread over a real Redis Cluster (`RedisStoreBuilder::spread_namespace`):
//! 3 masters started by the test (3 more as replicas for the failover test), on free loopback
//! ports. Entries spread evenly over the shards, a hit is one `GET` on the shard that holds
//! it, purges hold across instances within the bound the README states (measured), and a
//! master killed under load fails no request.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/cluster.rs"]
mod cluster;
use cluster::TestCluster;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::{exchange, fresh_namespace};

#[path = "common/lease_wake.rs"]
mod lease_wake;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;
#[cfg(feature = "test-util")]
use tower_response_cache::store::conformance;
use tower_response_cache::store::{Lookup, RedisStore, TieredStore};
use tower_response_cache::MemoryStore;
use tower_response_cache::{CacheLayer, CacheTags, Store};

/// Waits (bounded, off the runtime's threads) until a replica has been promoted in place of
/// a killed master.
async fn promoted(cluster: TestCluster) -> TestCluster {
    tokio::task::spawn_blocking(move || {
        cluster.wait("a replica promoted in place of the killed master", |c| {
            c.masters().len() == 3
        });
        cluster
    })
    .await
    .expect("the failover wait ended")
}

/// A spread store on the cluster. The tests' instances share the machine's clock with
/// Redis, so no clock-skew margin is needed.
async fn spread(urls: &[String], namespace: &str) -> RedisStore {
    RedisStore::cluster_builder(urls.to_vec())
        .namespace(namespace)
        .clock_skew_margin(Duration::ZERO)
        .spread_namespace(true)
        .connect()
        .await
        .expect("connect to the cluster")
}

/// Items whose versions purges bump; each answer carries its item's tag.
#[derive(Clone, Default)]
struct Items {
    versions: Arc<Vec<AtomicU64>>,
    calls: Arc<AtomicUsize>,
}

impl Items {
    fn new(n: usize) -> Items {
        Items {
            versions: Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()),
            calls: Arc::default(),
        }
    }
}

async fn item(State(items): State<Items>, Path(id): Path<usize>) -> (Extension<CacheTags>, String) {
    items.calls.fetch_add(1, SeqCst);
    let v = items.versions.get(id).map_or(0, |v| v.load(SeqCst));
    (Extension(CacheTags::new([format!("item:{id}")])), format!("{id} v{v}"))
}

fn instance<St: Store>(items: &Items, store: St) -> Router {
    Router::new()
        .route("/items/{id}", get(item))
        .with_state(items.clone())
        .layer(CacheLayer::new(store))
}

fn version(body: &str) -> u64 {
    body.rsplit('v')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a versioned body")
}

#[cfg(feature = "test-util")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_namespace_passes_the_conformance_suite() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let urls = cluster.urls();
    conformance::run(|| async { spread(&urls, &fresh_namespace("conf")).await }).await;
    // On a standalone Redis too (the layout does not need a cluster), alone and under a
    // tiered store.
    let server = redis_server::RedisServer::start();
    let alone = || async {
        RedisStore::builder(server.url())
            .namespace(fresh_namespace("alone"))
            .clock_skew_margin(Duration::ZERO)
            .spread_namespace(true)
            .connect()
            .await
            .expect("connect")
    };
    conformance::run(alone).await;
    conformance::run(|| async { TieredStore::new(MemoryStore::new(), alone().await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_entries_of_one_namespace_spread_over_three_masters() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let store = spread(&cluster.urls(), &fresh_namespace("spread")).await;
    let items = Items::new(0);
    let app = instance(&items, store.clone());
    const ENTRIES: usize = 30_000;
    let stored = futures_util::stream::iter(0..ENTRIES)
        .map(|i| {
            let app = app.clone();
            async move {
                exchange(&app, "GET", &format!("/items/{i}"))
                    .await
                    .1
                    .ends_with("stored")
            }
        })
        .buffer_unordered(32)
        .filter(|stored| std::future::ready(*stored))
        .count()
        .await;
    assert_eq!(stored, ENTRIES, "every response stored");
    let sizes: Vec<u64> = cluster.masters().into_iter().map(TestCluster::dbsize).collect();
    assert_eq!(sizes.len(), 3);
    let (least, most) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    eprintln!(
        "keys per master: {sizes:?} (busiest / idlest = {:.3})",
        most as f64 / least as f64
    );
    assert!(sizes.iter().sum::<u64>() >= ENTRIES as u64);
    assert!(
        most as f64 <= 1.3 * least as f64,
        "the busiest shard holds at most 1.3x the idlest: {sizes:?}"
    );
}

/// Calls per command on every master, less what does not answer a request (the stats
/// themselves, the mirror's blocking reads of the log, the client's topology queries).
fn request_calls(masters: &[u16]) -> Vec<(u16, String, u64)> {
    let mut calls = Vec::new();
    for &port in masters {
        for (command, n) in TestCluster::command_calls(port) {
            if !matches!(
                command.as_str(),
                "info" | "config|resetstat" | "config" | "xread" | "ping"
            ) && !command.starts_with("cluster")
            {
                calls.push((port, command, n));
            }
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_one_get_on_the_shard_that_holds_it() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let store = spread(&cluster.urls(), &fresh_namespace("rtt")).await;
    let items = Items::new(4);
    let app = instance(&items, store.clone());
    let masters = cluster.masters();
    for id in 0..4 {
        let (_, first, _) = exchange(&app, "GET", &format!("/items/{id}")).await;
        assert!(first.ends_with("stored"), "{first}");
        for &port in &masters {
            redis_server::cli(port, &["config", "resetstat"]);
        }
        // A hit needs a mirror proven live.
        mirror_live(&store).await;
        let (_, second, _) = exchange(&app, "GET", &format!("/items/{id}")).await;
        assert!(second.contains("; hit"), "{second}");
        let calls = request_calls(&masters);
        assert_eq!(
            calls.iter().map(|(_, _, n)| n).sum::<u64>(),
            1,
            "one command for a hit over the whole cluster: {calls:?}"
        );
        let (port, command, _) = &calls[0];
        assert_eq!(command, "get", "a hit is a plain GET: {calls:?}");
        eprintln!("hit on /items/{id}: 1 GET, on the master on port {port}");
    }
    assert_eq!(items.calls.load(SeqCst), 4);
}

/// A completed purge: the version it made current, when it returned, on which instance.
type Purged = (u64, Instant, usize);

/// The one guarantee across instances: a read that starts `RedisStore::MIRROR_WINDOW` or
/// more after a purge returned (on another instance), or at any time after it returned (on
/// the instance that purged), never answers with what the purge invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_race_fills_on_two_instances_without_resurrection() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("race");
    const ITEMS: usize = 6;
    let items = Items::new(ITEMS);
    let stores = [
        spread(&cluster.urls(), &namespace).await,
        spread(&cluster.urls(), &namespace).await,
    ];
    let apps: Vec<Router> = stores.iter().map(|s| instance(&items, s.clone())).collect();
    // Per item: (version the purge made current, when the purge returned, which instance).
    let purges: Arc<Mutex<Vec<Vec<Purged>>>> = Arc::new(Mutex::new(vec![Vec::new(); ITEMS]));
    let run_for = Duration::from_secs(4);
    let started = Instant::now();

    let mut purgers = Vec::new();
    for p in 0..2 {
        let (stores, items, purges) = (stores.clone(), items.clone(), purges.clone());
        purgers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9 + p);
            let mut count = 0;
            while started.elapsed() < run_for {
                let id = rng.below(ITEMS as u64) as usize;
                let on = rng.below(2) as usize;
                // The data changes, then the purge tells the caches.
                let now_current = items.versions[id].fetch_add(1, SeqCst) + 1;
                stores[on].purge_tags([format!("item:{id}")]).await.expect("purge");
                purges.lock().unwrap()[id].push((now_current, Instant::now(), on));
                count += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
            }
            count
        }));
    }
    let mut readers = Vec::new();
    for r in 0..8u64 {
        let (apps, purges) = (apps.clone(), purges.clone());
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(0x51_7cc1 + r);
            let (mut reads, mut hits, mut violations, mut stale_within_bound) = (0u64, 0u64, 0u64, 0u64);
            while started.elapsed() < run_for {
                let id = rng.below(ITEMS as u64) as usize;
                let on = rng.below(2) as usize;
                let sent = Instant::now();
                let (status, cache_status, body) = exchange(&apps[on], "GET", &format!("/items/{id}")).await;
                assert_eq!(status, StatusCode::OK);
                reads += 1;
                hits += u64::from(cache_status.contains("; hit"));
                let got = version(&body);
                let purges = purges.lock().unwrap();
                let mut late = false;
                for &(current, returned, by) in &purges[id] {
                    if got >= current || returned > sent {
                        continue;
                    }
                    let bound = if by == on {
                        Duration::ZERO
                    } else {
                        RedisStore::MIRROR_WINDOW
                    };
                    if sent.duration_since(returned) >= bound {
                        late = true;
                        eprintln!(
                            "violation: /items/{id} on instance {on} answered v{got} {:?} after a purge by \
                             instance {by} made v{current} current ({cache_status})",
                            sent.duration_since(returned)
                        );
                    } else {
                        stale_within_bound += 1;
                    }
                }
                violations += u64::from(late);
            }
            (reads, hits, violations, stale_within_bound)
        }));
    }
    let mut purged = 0;
    for p in purgers {
        purged += tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("purger ended")
            .unwrap();
    }
    let (mut reads, mut hits, mut violations, mut within) = (0, 0, 0, 0);
    for r in readers {
        let (a, b, c, d) = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("reader ended")
            .unwrap();
        reads += a;
        hits += b;
        violations += c;
        within += d;
    }
    eprintln!(
        "race: {purged} purges, {reads} reads ({hits} hits), {violations} violations, \
         {within} stale answers within the stated bound"
    );
    assert!(
        purged > 50 && reads > 200 && hits > 50,
        "the race ran: {purged} purges, {reads} reads, {hits} hits"
    );
    assert_eq!(violations, 0, "no read older than a completed purge beyond the bound");
}

/// From a purge's start on one instance to the first read on the other that no longer answers
/// the purged entry: p50, p99 and max over 200 purges, each within the stated bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_to_invalidated_delay_across_instances() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("delay");
    let items = Items::new(1);
    let (a, b) = (
        spread(&cluster.urls(), &namespace).await,
        spread(&cluster.urls(), &namespace).await,
    );
    let app_b = instance(&items, b.clone());
    let mut delays = Vec::new();
    for _ in 0..200 {
        // Warm B with the current version (a hit there).
        let current = items.versions[0].load(SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, status, body) = exchange(&app_b, "GET", "/items/0").await;
            if status.contains("; hit") && version(&body) == current {
                break;
            }
            assert!(Instant::now() < deadline, "B never hit v{current}");
        }
        let next = items.versions[0].fetch_add(1, SeqCst) + 1;
        let start = Instant::now();
        a.purge_tags(["item:0".to_owned()]).await.expect("purge");
        let returned = start.elapsed();
        // The bound is on when a read starts: the first read to see the new version must
        // have started no later than the window after the purge returned.
        let invalidated = loop {
            let read_started = start.elapsed();
            let (_, _, body) = exchange(&app_b, "GET", "/items/0").await;
            if version(&body) >= next {
                break read_started;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "B kept the purged entry");
        };
        assert!(
            invalidated <= returned + RedisStore::MIRROR_WINDOW,
            "within the stated bound: a stale read started at {invalidated:?} (the purge returned after {returned:?})"
        );
        delays.push(invalidated);
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q) as usize).min(delays.len() - 1)];
    eprintln!(
        "purge-to-invalidated across instances over {} purges: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
}

/// A request whose outcome is counted rather than asserted: `None` if it failed, or hung
/// past the layer's own bounds (the coalescing timeout is 10 s).
async fn try_get(app: &Router, uri: &str) -> Option<(String, String)> {
    let req = Request::builder().uri(uri).body(axum::body::Body::empty()).ok()?;
    let res = tokio::time::timeout(Duration::from_secs(15), app.clone().oneshot(req))
        .await
        .ok()?
        .ok()?;
    if res.status() != StatusCode::OK {
        return None;
    }
    let status = res.headers().get("cache-status")?.to_str().ok()?.to_owned();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8(body.to_vec()).ok()?))
}

// Several threads: requests answered by the origin alone complete without yielding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request() {
    if !redis_server::available() {
        return;
    }
    let mut cluster = TestCluster::start(3, 1);
    let namespace = fresh_namespace("failover");
    const ITEMS: usize = 64;
    let items = Items::new(ITEMS);
    let stores = [
        spread(&cluster.urls(), &namespace).await,
        spread(&cluster.urls(), &namespace).await,
    ];
    let apps: Vec<Router> = stores.iter().map(|s| instance(&items, s.clone())).collect();
    let stop = Arc::new(AtomicU64::new(0));
    let (requests, failures, hits_after) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let recovered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..8u64 {
        let (apps, stop, requests, failures, hits_after, recovered) = (
            apps.clone(),
            stop.clone(),
            requests.clone(),
            failures.clone(),
            hits_after.clone(),
            recovered.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut rng = Rng(0xfa11 + w);
            while stop.load(SeqCst) == 0 {
                let id = rng.below(ITEMS as u64);
                let app = &apps[rng.below(2) as usize];
                requests.fetch_add(1, SeqCst);
                match try_get(app, &format!("/items/{id}")).await {
                    None => {
                        failures.fetch_add(1, SeqCst);
                    }
                    Some((status, _)) => {
                        if recovered.load(SeqCst) == 1 && status.contains("; hit") {
                            hits_after.fetch_add(1, SeqCst);
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The master holding the purge log (and a third of the entries) dies.
    let victim = cluster.master_of(&format!("{{{namespace}}}:log"));
    let before = requests.load(SeqCst);
    cluster.kill(victim);
    let killed_at = Instant::now();
    cluster = promoted(cluster).await;
    eprintln!("failover: 3 masters again {:?} after the kill", killed_at.elapsed());
    // Back to hits once the client sees the new topology (bounded).
    recovered.store(1, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hits_after.load(SeqCst) < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(1, SeqCst);
    for l in load {
        tokio::time::timeout(Duration::from_secs(20), l)
            .await
            .expect("load ended")
            .unwrap();
    }
    // Purges work through the new master, and hold across instances.
    let next = items.versions[3].fetch_add(1, SeqCst) + 1;
    stores[0].purge_tags(["item:3".to_owned()]).await.expect("purge");
    tokio::time::sleep(RedisStore::MIRROR_WINDOW).await;
    let (_, _, body) = exchange(&apps[1], "GET", "/items/3").await;
    assert!(
        version(&body) >= next,
        "the purge after the failover holds on the other instance"
    );
    let (total, failed) = (requests.load(SeqCst), failures.load(SeqCst));
    eprintln!(
        "failover: {total} requests ({} after the kill), {failed} failed, {} hits after recovery, stats {:?}",
        total - before,
        hits_after.load(SeqCst),
        stores[1].stats()
    );
    assert_eq!(failed, 0, "no request fails when a master dies");
    assert!(hits_after.load(SeqCst) >= 100, "hits came back after the failover");
    drop(cluster);
}

/// A mirror that cannot prove itself caught up does not answer hits: with the shard holding
/// the purge log paused, reads of entries on the other shards become unverified (served from
/// the origin) within the window, and hits come back once the log answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_purge_log_turns_hits_into_origin_calls() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("stall");
    // No circuit breaker in the way: reads keep reaching the shards that answer.
    let store = RedisStore::cluster_builder(cluster.urls())
        .namespace(namespace.as_str())
        .clock_skew_margin(Duration::ZERO)
        .op_timeout(Duration::from_millis(100))
        .circuit_breaker(u32::MAX, Duration::from_millis(1))
        .spread_namespace(true)
        .connect()
        .await
        .expect("connect");
    const ITEMS: usize = 30;
    let items = Items::new(ITEMS);
    let app = instance(&items, store.clone());
    for id in 0..ITEMS {
        exchange(&app, "GET", &format!("/items/{id}")).await;
    }
    let log_shard = cluster.master_of(&format!("{{{namespace}}}:log"));
    // The items whose entries live on the other shards (a hit there is not a GET on the
    // log's shard): those stay readable while the log's shard is paused.
    let mut elsewhere = Vec::new();
    for id in 0..ITEMS {
        redis_server::cli(log_shard, &["config", "resetstat"]);
        let (_, status, _) = exchange(&app, "GET", &format!("/items/{id}")).await;
        assert!(status.contains("; hit"), "{status}");
        if !TestCluster::command_calls(log_shard).contains_key("get") {
            elsewhere.push(id);
        }
    }
    assert!(
        elsewhere.len() >= 10,
        "two thirds of the entries elsewhere: {elsewhere:?}"
    );
    let pause = Duration::from_millis(2500);
    redis_server::cli(log_shard, &["client", "pause", &pause.as_millis().to_string(), "ALL"]);
    let paused_at = Instant::now();
    // Past the window (and the blocking read that was in flight), no read is a hit.
    tokio::time::sleep(RedisStore::MIRROR_WINDOW + Duration::from_millis(300)).await;
    // A purge made now cannot reach the log: it holds here at once all the same, and what it
    // purged is a miss, not even a stand-in for an origin error.
    let purged = elsewhere[0];
    store.purge_tags([format!("item:{purged}")]).await.unwrap();
    assert_eq!(store.stats().pending_purges, 1, "queued");
    let (parts, ()) = Request::get(format!("/items/{purged}")).body(()).unwrap().into_parts();
    let key = CacheLayer::new(store.clone()).cache_key(&parts);
    let lookup = store.get(&key).await.unwrap();
    assert!(
        matches!(lookup, Lookup::Purged),
        "a purged entry while not live: {lookup:?}"
    );
    let (mut reads, mut hits) = (0, 0);
    while paused_at.elapsed() < pause - Duration::from_millis(300) {
        for &id in &elsewhere {
            if paused_at.elapsed() >= pause - Duration::from_millis(300) {
                break;
            }
            if let Some((status, _)) = try_get(&app, &format!("/items/{id}")).await {
                reads += 1;
                hits += u32::from(status.contains("; hit"));
            }
        }
    }
    eprintln!(
        "log shard paused: {reads} answered reads, {hits} hits, {} unverified",
        store.stats().unverified_reads
    );
    assert!(
        reads > 0 && store.stats().unverified_reads > 0,
        "reads reached the other shards"
    );
    assert_eq!(hits, 0, "no hit while the mirror is not proven live");
    // Once the log answers, hits return (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status, _) = exchange(&app, "GET", "/items/1").await;
        if status.contains("; hit") {
            break;
        }
        assert!(Instant::now() < deadline, "hits never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tiered stores over a spread namespace: from `RedisStore::MIRROR_WINDOW` after a purge
/// through one instance's tiered store returned, the other's memory tier no longer serves
/// what it purged (its copies judged by the purge log's mirror), and nothing is
/// broadcast to the cluster's nodes (no `PUBLISH` of purges or heartbeats): each memory tier
/// follows the purge log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_stores_over_a_spread_namespace_stay_coherent() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("tiered");
    let items = Items::new(4);
    let a = TieredStore::new(MemoryStore::new(), spread(&cluster.urls(), &namespace).await);
    let b = TieredStore::new(MemoryStore::new(), spread(&cluster.urls(), &namespace).await);
    let (app_a, app_b) = (instance(&items, a.clone()), instance(&items, b.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.stats().coherent && b.stats().coherent) {
        assert!(Instant::now() < deadline, "the feeds never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let masters = cluster.masters();
    for &port in &masters {
        redis_server::cli(port, &["config", "resetstat"]);
    }
    for id in 0..4 {
        let path = format!("/items/{id}");
        let (_, filled, _) = exchange(&app_a, "GET", &path).await;
        assert!(filled.ends_with("stored"), "{filled}");
        let (_, shared, _) = exchange(&app_b, "GET", &path).await;
        assert!(shared.contains("; hit"), "shared through the cluster: {shared}");
        // b's memory tier answers alone while its mirror is live (a lapse under load sends
        // the read to Redis: tried again).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "b's memory tier never answered alone");
            if !b.stats().coherent {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let gets = get_calls(&masters);
            let (_, local, _) = exchange(&app_b, "GET", &path).await;
            assert!(local.contains("; hit"), "{local}");
            if get_calls(&masters) == gets {
                break;
            }
        }
        let next = items.versions[id].fetch_add(1, SeqCst) + 1;
        a.purge_tags([format!("item:{id}")]).await.expect("purge");
        tokio::time::sleep(RedisStore::MIRROR_WINDOW).await;
        let (_, _, body) = exchange(&app_b, "GET", &path).await;
        assert_eq!(
            version(&body),
            next,
            "the other instance's memory tier honours the purge"
        );
    }
    let published: Vec<_> = request_calls(&masters)
        .into_iter()
        .filter(|(_, command, _)| command == "publish")
        .collect();
    assert!(published.is_empty(), "nothing broadcast: {published:?}");
}

/// `GET`s run over the cluster's masters.
fn get_calls(masters: &[u16]) -> u64 {
    request_calls(masters)
        .iter()
        .filter(|(_, command, _)| command == "get")
        .map(|(_, _, n)| n)
        .sum()
}

/// A fleet that mixes plain spread stores (a worker purging) and tiered ones (the web
/// instances): a plain store's purge publishes nothing, yet a memory tier stops serving what
/// it purged within the window, its copies judged by the purge log's mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_spread_stores_purge_reaches_the_memory_tiers() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("mixed");
    let items = Items::new(4);
    let worker = spread(&cluster.urls(), &namespace).await;
    let web = TieredStore::new(MemoryStore::new(), spread(&cluster.urls(), &namespace).await);
    let app = instance(&items, web.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !web.stats().coherent || !web.l2().stats().purge_log_live {
        assert!(Instant::now() < deadline, "the feed and the mirror never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in 0..4 {
        let path = format!("/items/{id}");
        exchange(&app, "GET", &path).await;
        mirror_live(web.l2()).await;
        let (_, status, _) = exchange(&app, "GET", &path).await;
        assert!(status.contains("; hit"), "from the memory tier: {status}");
        let next = items.versions[id].fetch_add(1, SeqCst) + 1;
        worker.purge_tags([format!("item:{id}")]).await.expect("purge");
        // The bound the README states: reads starting this long after the purge returned.
        tokio::time::sleep(RedisStore::MIRROR_WINDOW).await;
        let (_, _, body) = exchange(&app, "GET", &path).await;
        assert_eq!(
            version(&body),
            next,
            "the memory tier stopped serving the purged version"
        );
    }
}

/// The log stays bounded: trimmed to its length at every purge, and of purges older than the
/// longest an entry lives. An instance that has read everything keeps its hits; one that
/// starts after the trim treats what predates the trimmed purges as misses (the floor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_log_is_trimmed_by_length_and_age_without_resurrection() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("trim");
    let bounded = |ttl: Duration| {
        RedisStore::cluster_builder(cluster.urls())
            .namespace(namespace.as_str())
            .clock_skew_margin(Duration::ZERO)
            .max_entry_ttl(ttl)
            .in_flight_horizon(Duration::from_millis(500))
            .purge_log_max_len(10)
            .spread_namespace(true)
            .connect()
    };
    let a = bounded(Duration::from_secs(60)).await.expect("connect");
    let items = Items::new(4);
    let app_a = instance(&items, a.clone());
    let (_, filled, _) = exchange(&app_a, "GET", "/items/0").await;
    assert!(filled.ends_with("stored"), "{filled}");
    let log_shard = cluster.master_of(&format!("{{{namespace}}}:log"));
    let log = format!("{{{namespace}}}:log");
    for i in 0..30 {
        a.purge_tags([format!("other:{i}")]).await.expect("purge");
    }
    let len: u64 = redis_server::cli(log_shard, &["xlen", &log])
        .trim()
        .parse()
        .expect("XLEN");
    assert_eq!(len, 10, "trimmed to its length");
    // A reads on: it read every purge before they were trimmed.
    let (_, still, _) = exchange(&app_a, "GET", "/items/0").await;
    assert!(still.contains("; hit"), "{still}");
    // A newcomer cannot know what was trimmed: the entry is a miss there, not a hit.
    let b = bounded(Duration::from_secs(60)).await.expect("connect");
    let app_b = instance(&items, b.clone());
    let (_, newcomer, _) = exchange(&app_b, "GET", "/items/1").await;
    assert!(newcomer.ends_with("stored"), "{newcomer}");
    let before = items.calls.load(SeqCst);
    let (_, old, _) = exchange(&app_b, "GET", "/items/0").await;
    assert!(!old.contains("; hit"), "an entry older than the trimmed purges: {old}");
    assert_eq!(items.calls.load(SeqCst), before + 1);
    // Purges still hold on both after the trim.
    let next = items.versions[1].fetch_add(1, SeqCst) + 1;
    b.purge_tags(["item:1".to_owned()]).await.expect("purge");
    tokio::time::sleep(RedisStore::MIRROR_WINDOW).await;
    let (_, _, body) = exchange(&app_a, "GET", "/items/1").await;
    assert_eq!(version(&body), next);
    // By age: with entries living at most 1 s (plus the 0.5 s horizon), a purge made after
    // that drops every older one.
    let short = bounded(Duration::from_secs(1)).await.expect("connect");
    short.purge_tags(["aged".to_owned()]).await.expect("purge");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    short.purge_tags(["fresh".to_owned()]).await.expect("purge");
    let len: u64 = redis_server::cli(log_shard, &["xlen", &log])
        .trim()
        .parse()
        .expect("XLEN");
    assert_eq!(len, 1, "only the purge younger than an entry's longest life is kept");
    assert!(a.stats().purge_log_live && b.stats().purge_log_live);
}

/// Waits (at most 10 s) until the store's mirror of the purge log is proven live.
async fn mirror_live(store: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.stats().purge_log_live {
        assert!(Instant::now() < deadline, "the mirror never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tiered store over a cluster namespace that is not spread, with `sharded_pubsub`: purges
/// and heartbeats go over sharded pub/sub on the node owning the namespace's slot.
async fn sharded_tiered(urls: &[String], namespace: &str) -> TieredStore {
    let l2 = RedisStore::cluster_builder(urls.to_vec())
        .namespace(namespace)
        .clock_skew_margin(Duration::ZERO)
        .sharded_pubsub(true)
        .connect()
        .await
        .expect("connect to the cluster");
    TieredStore::new(MemoryStore::new(), l2)
}

async fn wait_coherent(stores: &[&TieredStore], within: Duration) {
    let deadline = Instant::now() + within;
    while !stores.iter().all(|s| s.stats().coherent) {
        assert!(Instant::now() < deadline, "the feeds never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fills `path` through `a`, then reads it through `b` until `b`'s memory tier answers alone
/// (no `GET` on any master).
async fn hit_from_b_memory(app_a: &Router, app_b: &Router, b: &TieredStore, masters: &[u16], path: &str) {
    exchange(app_a, "GET", path).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "b's memory tier never answered alone");
        if !b.stats().coherent {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let gets = get_calls(masters);
        let (_, status, _) = exchange(app_b, "GET", path).await;
        assert!(status.contains("; hit"), "{status}");
        if get_calls(masters) == gets {
            return;
        }
    }
}

/// Purges reach the other instance's memory tier by the time the purge returns, and the
/// cluster broadcasts nothing: no `PUBLISH` on any master, and `SPUBLISH` only on the master
/// that owns the namespace's slot. Fails when purges are published with `PUBLISH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_stores_over_a_cluster_namespace_use_sharded_pubsub() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    let namespace = fresh_namespace("sharded");
    let items = Items::new(4);
    let a = sharded_tiered(&cluster.urls(), &namespace).await;
    let b = sharded_tiered(&cluster.urls(), &namespace).await;
    let (app_a, app_b) = (instance(&items, a.clone()), instance(&items, b.clone()));
    wait_coherent(&[&a, &b], Duration::from_secs(10)).await;
    let masters = cluster.masters();
    for &port in &masters {
        redis_server::cli(port, &["config", "resetstat"]);
    }
    for id in 0..4 {
        let path = format!("/items/{id}");
        hit_from_b_memory(&app_a, &app_b, &b, &masters, &path).await;
        let next = items.versions[id].fetch_add(1, SeqCst) + 1;
        a.purge_tags([format!("item:{id}")]).await.expect("purge");
        // No wait: a tiered purge returns once the other memory tiers have applied it.
        let (_, _, body) = exchange(&app_b, "GET", &path).await;
        assert_eq!(version(&body), next, "the other memory tier honours the purge at once");
    }
    let owner = cluster.master_of(&format!("{{{namespace}}}:purge"));
    let calls = request_calls(&masters);
    let published: Vec<_> = calls.iter().filter(|(_, c, _)| c == "publish").collect();
    assert!(published.is_empty(), "nothing broadcast: {published:?}");
    let sharded: Vec<_> = calls.iter().filter(|(_, c, _)| c == "spublish").collect();
    assert!(
        !sharded.is_empty() && sharded.iter().all(|(port, _, _)| *port == owner),
        "published on the slot's master ({owner}) alone: {sharded:?}"
    );
    assert!(b.stats().messages >= 4, "b heard the purges: {:?}", b.stats());
}

/// The master owning the namespace's slot dies: the memory tiers stop answering until their
/// sharded subscriptions are up again on the promoted replica, then purges reach them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_subscription_follows_a_failover() {
    if !redis_server::available() {
        return;
    }
    let mut cluster = TestCluster::start(3, 1);
    let namespace = fresh_namespace("sharded-failover");
    let items = Items::new(2);
    let a = sharded_tiered(&cluster.urls(), &namespace).await;
    let b = sharded_tiered(&cluster.urls(), &namespace).await;
    let (app_a, app_b) = (instance(&items, a.clone()), instance(&items, b.clone()));
    wait_coherent(&[&a, &b], Duration::from_secs(10)).await;
    let subscriptions = b.stats().subscriptions;
    let victim = cluster.master_of(&format!("{{{namespace}}}:purge"));
    cluster.kill(victim);
    // Within the coherence window the tier stops answering (its heartbeats stop).
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.stats().coherent {
        assert!(
            Instant::now() < deadline,
            "b's tier kept answering with its slot's master dead"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster = promoted(cluster).await;
    wait_coherent(&[&a, &b], Duration::from_secs(30)).await;
    assert!(
        b.stats().subscriptions > subscriptions,
        "b subscribed again: {:?}",
        b.stats()
    );
    let masters = cluster.masters();
    hit_from_b_memory(&app_a, &app_b, &b, &masters, "/items/1").await;
    let next = items.versions[1].fetch_add(1, SeqCst) + 1;
    a.purge_tags(["item:1".to_owned()]).await.expect("purge");
    let (_, _, body) = exchange(&app_b, "GET", "/items/1").await;
    assert_eq!(version(&body), next, "purges reach the memory tier after the failover");
    drop(cluster);
}

/// Over a cluster namespace, spread or not, sharded or broadcast, an instance waiting on
/// another's lease is woken when the holder gives it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_is_woken_on_a_cluster() {
    use tower_response_cache::CacheKey;
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 0);
    for (spread_it, sharded) in [(false, false), (false, true), (true, false)] {
        let namespace = fresh_namespace("woken");
        let connect = || {
            RedisStore::cluster_builder(cluster.urls())
                .namespace(namespace.as_str())
                .spread_namespace(spread_it)
                .sharded_pubsub(sharded)
                .connect()
        };
        let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
        let what = format!("spread {spread_it}, sharded {sharded}");
        lease_wake::woken_by_release(&a, &b, &CacheKey::from_bytes("GET hot"), &what).await;
    }
}

/// With purges broadcast (the default), a tiered store's heartbeats run on the primary that
/// runs the namespace's purges, so that they reach its subscription in order with them, even
/// through a cluster client that reads from replicas (a bare `PUBLISH` is routed as a read):
/// `PUBLISH` is called on that master alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_run_on_the_master_that_runs_the_purges() {
    if !redis_server::available() {
        return;
    }
    let cluster = TestCluster::start(3, 1);
    let namespace = fresh_namespace("beats");
    let urls = cluster.urls();
    let client = redis::cluster::ClusterClient::builder(urls.clone())
        .read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy)
        .build()
        .expect("a cluster client");
    let node = redis::Client::open(urls[0].as_str()).expect("a node client");
    let l2 = RedisStore::cluster_builder_with_client(client, node)
        .namespace(namespace.as_str())
        .connect()
        .await
        .expect("connect to the cluster");
    let store = TieredStore::new(MemoryStore::new(), l2);
    wait_coherent(&[&store], Duration::from_secs(10)).await;
    let nodes = cluster.live_ports();
    for &port in &nodes {
        redis_server::cli(port, &["config", "resetstat"]);
    }
    let beats = store.stats().heartbeats;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().heartbeats < beats + 5 {
        assert!(Instant::now() < deadline, "heartbeats stopped coming back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = cluster.master_of(&format!("{{{namespace}}}:purge"));
    let published: Vec<_> = request_calls(&nodes)
        .into_iter()
        .filter(|(_, command, _)| command == "publish")
        .collect();
    assert!(
        !published.is_empty() && published.iter().all(|(port, _, _)| *port == owner),
        "heartbeats published on the slot's master ({owner}) alone: {published:?}"
    );
}

/// A master that does not own the namespace's slot dies: the sharded subscription's cluster
/// client loses a link (it says of no node which), and the memory tier, after a new
/// subscription, answers again; it does not stay off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_subscription_outlives_another_masters_failover() {
    if !redis_server::available() {
        return;
    }
    let mut cluster = TestCluster::start(3, 1);
    let namespace = fresh_namespace("sharded-other");
    let store = sharded_tiered(&cluster.urls(), &namespace).await;
    wait_coherent(&[&store], Duration::from_secs(10)).await;
    let owner = cluster.master_of(&format!("{{{namespace}}}:purge"));
    let other = cluster
        .masters()
        .into_iter()
        .find(|&port| port != owner)
        .expect("another master");
    cluster.kill(other);
    cluster = promoted(cluster).await;
    // Heartbeats kept coming back through the owner, so a stuck feed would show only in the
    // tier not answering: it must be coherent again, and stay so.
    wait_coherent(&[&store], Duration::from_secs(30)).await;
    let beats = store.stats().heartbeats;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().heartbeats < beats + 5 {
        assert!(Instant::now() < deadline, "heartbeats stopped coming back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.stats().coherent, "{:?}", store.stats());
    drop(cluster);
}
