//! Fleet load run: 4 instances behind one Redis, over loopback HTTP, with and without
//! fleet-wide coalescing.
//!
//! Run: `cargo run --release --features redis --example fleet` (about ten seconds;
//! `-- --quick` for a smoke run). It starts a child `redis-server` on a free loopback port,
//! 4 axum servers on 127.0.0.1:0 (each a `CacheLayer` over its own `TieredStore` handle on
//! that Redis), and a hyper client. Scenarios:
//! - `cold`: bursts of 4 x 64 concurrent requests (64 per instance) for a key none has, the
//!   origin taking 50 ms: origin calls per burst, p50/p99 latency; then bursts of 4 x 250
//!   without HTTP, calling each instance's `Router` in process: on the example's runtime, and
//!   with each instance on a one-thread runtime of its own (as separate processes);
//! - `stale`: a hot key whose entry is stale (inside `stale-while-revalidate`), 1,000
//!   requests spread over the instances: background refreshes made, p50/p99, hit ratio;
//! - then on a Redis Cluster of 3 child masters, 4 instances each over a `RedisStore` with
//!   `spread_namespace(true)`: the `cold` bursts, and `spread`: 10,000 requests over 1,000
//!   keys (each key's first request fills it), with the keys each master holds.

#[path = "support/redis_server.rs"]
mod redis_server;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, MemoryStore, Store};

const INSTANCES: usize = 4;
const ORIGIN: Duration = Duration::from_millis(50);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The origin: `/cold/{n}` answers fresh for a minute; `/stale` answers stale at first (with a
/// stale-while-revalidate window), then fresh. Every answer takes [`ORIGIN`].
fn origin(calls: Arc<AtomicUsize>, stale_calls: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/cold/{*n}",
            get(move |Path(_n): Path<String>| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(ORIGIN).await;
                    ([("cache-control", "max-age=60")], "cold")
                }
            }),
        )
        .route(
            "/stale",
            get(move || {
                let calls = stale_calls.clone();
                async move {
                    let first = calls.fetch_add(1, SeqCst) == 0;
                    tokio::time::sleep(ORIGIN).await;
                    let cc = if first {
                        "max-age=0, stale-while-revalidate=60"
                    } else {
                        "max-age=60"
                    };
                    ([("cache-control", cc)], "stale")
                }
            }),
        )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback port");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server") });
    addr
}

/// GETs `path` on `addr`: (latency, whether the cache answered it as a hit).
async fn get_once(client: &HttpClient, addr: SocketAddr, path: &str) -> (Duration, bool) {
    let started = Instant::now();
    // As behind a load balancer: every instance sees the site's own host.
    let request = http::Request::get(format!("http://{addr}{path}"))
        .header("host", "shop.example")
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    let hit = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("; hit"));
    response.into_body().collect().await.expect("body");
    (started.elapsed(), hit)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

struct Fleet {
    addrs: Vec<SocketAddr>,
    /// The same instances, to be called in process.
    apps: Vec<Router>,
    cold_calls: Arc<AtomicUsize>,
    stale_calls: Arc<AtomicUsize>,
}

async fn fleet(redis: &RedisServer, namespace: &str, coalesce: bool) -> Fleet {
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        let l2 = RedisStore::builder(redis.url())
            .namespace(namespace)
            .connect()
            .await
            .expect("redis");
        stores.push(TieredStore::new(MemoryStore::new(), l2));
    }
    fleet_of(stores, coalesce).await
}

/// One instance (an axum server) per store.
async fn fleet_of<S: Store>(stores: Vec<S>, coalesce: bool) -> Fleet {
    let (cold_calls, stale_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (mut addrs, mut apps) = (Vec::new(), Vec::new());
    for store in stores {
        let layer = CacheLayer::builder(store).fleet_coalesce(coalesce).build();
        let app = origin(cold_calls.clone(), stale_calls.clone()).layer(layer);
        addrs.push(serve(app.clone()).await);
        apps.push(app);
    }
    Fleet {
        addrs,
        apps,
        cold_calls,
        stale_calls,
    }
}

async fn cold(client: &HttpClient, fleet: &Fleet, bursts: u64, per_instance: usize) -> String {
    let mut latencies = Vec::new();
    let before = fleet.cold_calls.load(SeqCst);
    for burst in 0..bursts {
        let path = format!("/cold/{burst}");
        let mut tasks = Vec::new();
        for &addr in &fleet.addrs {
            for _ in 0..per_instance {
                let (client, path) = (client.clone(), path.clone());
                tasks.push(tokio::spawn(async move { get_once(&client, addr, &path).await.0 }));
            }
        }
        for task in tasks {
            latencies.push(task.await.expect("request"));
        }
    }
    latencies.sort();
    let calls = fleet.cold_calls.load(SeqCst) - before;
    format!(
        "{:.2} origin calls per burst | p50 {:.1} ms | p99 {:.1} ms",
        calls as f64 / bursts as f64,
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
    )
}

/// The cold bursts without HTTP: `per_instance` concurrent requests on each instance's
/// `Router`, called in process, so that the figures are the cache's and not the loopback
/// client's.
async fn cold_in_process(fleet: &Fleet, bursts: u64, per_instance: usize) -> String {
    let here = tokio::runtime::Handle::current();
    let instances: Vec<_> = fleet.apps.iter().map(|app| (here.clone(), app.clone())).collect();
    called(&instances, &fleet.cold_calls, "in-process", bursts, per_instance).await
}

/// The cold bursts with each instance on a Tokio runtime (one worker thread) of its own, as
/// separate processes would be: one instance's waiters do not queue behind another's on the
/// same threads.
async fn cold_isolated(redis: &RedisServer, coalesce: bool, bursts: u64, per_instance: usize) -> String {
    let calls = Arc::new(AtomicUsize::new(0));
    let namespace = format!("isolated-{coalesce}-{}", std::process::id());
    let (mut runtimes, mut instances) = (Vec::new(), Vec::new());
    for _ in 0..INSTANCES {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (url, namespace, calls) = (redis.url(), namespace.clone(), calls.clone());
        let app = runtime
            .spawn(async move {
                let l2 = RedisStore::builder(url)
                    .namespace(namespace)
                    .connect()
                    .await
                    .expect("redis");
                let layer = CacheLayer::builder(TieredStore::new(MemoryStore::new(), l2))
                    .fleet_coalesce(coalesce)
                    .build();
                origin(calls, Arc::default()).layer(layer)
            })
            .await
            .expect("an instance");
        instances.push((runtime.handle().clone(), app));
        runtimes.push(runtime);
    }
    let result = called(&instances, &calls, "isolated", bursts, per_instance).await;
    for runtime in runtimes {
        runtime.shutdown_background();
    }
    result
}

/// Bursts of `per_instance` concurrent requests on each instance's `Router`, each request
/// run on the instance's runtime: origin calls per burst, p50/p99 latency.
async fn called(
    instances: &[(tokio::runtime::Handle, Router)],
    calls: &AtomicUsize,
    name: &str,
    bursts: u64,
    per_instance: usize,
) -> String {
    let mut latencies = Vec::new();
    let before = calls.load(SeqCst);
    for burst in 0..bursts {
        let path = format!("/cold/{name}/{burst}");
        let mut tasks = Vec::new();
        for (runtime, app) in instances {
            for _ in 0..per_instance {
                let request = http::Request::get(path.as_str())
                    .header("host", "shop.example")
                    .body(axum::body::Body::empty())
                    .expect("request");
                let app = app.clone();
                tasks.push(runtime.spawn(async move {
                    let started = Instant::now();
                    let response = app.oneshot(request).await.expect("answered");
                    response.into_body().collect().await.expect("body");
                    started.elapsed()
                }));
            }
        }
        for task in tasks {
            latencies.push(task.await.expect("request"));
        }
    }
    latencies.sort();
    format!(
        "{:.2} origin calls per burst | p50 {:.1} ms | p99 {:.1} ms",
        (calls.load(SeqCst) - before) as f64 / bursts as f64,
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
    )
}

async fn stale(client: &HttpClient, fleet: &Fleet, requests: usize) -> String {
    get_once(client, fleet.addrs[0], "/stale").await;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let (client, addr) = (client.clone(), fleet.addrs[i % INSTANCES]);
        tasks.push(tokio::spawn(async move { get_once(&client, addr, "/stale").await }));
    }
    let mut latencies = Vec::new();
    let mut hits = 0;
    for task in tasks {
        let (latency, hit) = task.await.expect("request");
        latencies.push(latency);
        hits += usize::from(hit);
    }
    // Let refreshes still under way land before counting them.
    tokio::time::sleep(ORIGIN * 4).await;
    latencies.sort();
    format!(
        "{} background refreshes | p50 {:.1} ms | p99 {:.1} ms | hit ratio {:.1}%",
        fleet.stale_calls.load(SeqCst) - 1,
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
        100.0 * hits as f64 / requests as f64,
    )
}

/// `requests` GETs over `keys` keys, 64 at a time, spread over the instances.
async fn spread(client: &HttpClient, fleet: &Fleet, keys: usize, requests: usize) -> String {
    let before = fleet.cold_calls.load(SeqCst);
    let mut latencies = Vec::new();
    let mut hits = 0;
    for batch in (0..requests).collect::<Vec<_>>().chunks(64) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&i| {
                let (client, addr) = (client.clone(), fleet.addrs[i % INSTANCES]);
                // A key's requests come in different batches, so its first one fills it.
                let path = format!("/cold/{}", 1_000_000 + (i * 7919) % keys);
                tokio::spawn(async move { get_once(&client, addr, &path).await })
            })
            .collect();
        for task in tasks {
            let (latency, hit) = task.await.expect("request");
            latencies.push(latency);
            hits += usize::from(hit);
        }
    }
    latencies.sort();
    format!(
        "{} origin calls | p50 {:.1} ms | p99 {:.1} ms | hit ratio {:.1}%",
        fleet.cold_calls.load(SeqCst) - before,
        percentile(&latencies, 50).as_secs_f64() * 1e3,
        percentile(&latencies, 99).as_secs_f64() * 1e3,
        100.0 * hits as f64 / requests as f64,
    )
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !redis_server::available() {
        eprintln!("redis-server is not installed: nothing to run");
        return;
    }
    let redis = RedisServer::start();
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let (bursts, per_instance, stale_requests) = if quick { (3, 16, 200) } else { (20, 64, 1000) };
    println!("| scenario | fleet coalescing | result |");
    println!("|---|---|---|");
    for coalesce in [true, false] {
        let namespace = format!("fleet-{}-{}", coalesce, std::process::id());
        let fleet = fleet(&redis, &namespace, coalesce).await;
        let on = if coalesce { "on" } else { "off" };
        let cold = cold(&client, &fleet, bursts, per_instance).await;
        println!("| cold: {bursts} bursts of {INSTANCES} x {per_instance} | {on} | {cold} |");
        let per_instance = per_instance * 250 / 64;
        let in_process = cold_in_process(&fleet, bursts, per_instance).await;
        println!("| cold, in process: {bursts} bursts of {INSTANCES} x {per_instance} | {on} | {in_process} |");
        let isolated = cold_isolated(&redis, coalesce, bursts, per_instance).await;
        println!(
            "| cold, in process, a runtime per instance: {bursts} bursts of {INSTANCES} x {per_instance} | {on} | {isolated} |"
        );
        let stale = stale(&client, &fleet, stale_requests).await;
        println!("| stale hot key: {stale_requests} requests | {on} | {stale} |");
    }
    drop(redis);
    // One namespace over a 3-master cluster, spread over its shards.
    let cluster = redis_server::RedisCluster::start();
    let namespace = format!("cluster-{}", std::process::id());
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        let store = RedisStore::cluster_builder(cluster.urls())
            .namespace(namespace.as_str())
            .spread_namespace(true)
            .connect()
            .await
            .expect("redis cluster");
        stores.push(store);
    }
    let fleet = fleet_of(stores, true).await;
    let cold = cold(&client, &fleet, bursts, per_instance).await;
    println!("| cluster (3 masters, spread): cold, {bursts} bursts of {INSTANCES} x {per_instance} | on | {cold} |");
    let (keys, requests) = if quick { (100, 1_000) } else { (1_000, 10_000) };
    let spread = spread(&client, &fleet, keys, requests).await;
    let per_master: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["dbsize"]).trim().to_owned())
        .collect();
    println!(
        "| cluster (3 masters, spread): {requests} requests over {keys} keys | on | {spread} | keys per master {} |",
        per_master.join(" / ")
    );
}
