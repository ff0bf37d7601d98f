//! Purge propagation between instances: how long after a purge on instance A returns does
//! instance B's memory tier stop answering with the purged entry?
//!
//! Run: `cargo bench --features redis --bench propagation`
//!
//! Starts its own `redis-server` on a free loopback port, builds two `TieredStore`s (two
//! instances) in one process, and for 300 rounds: B caches a response (in Redis and its memory
//! tier), A purges its tag, and B is asked again until its answer is no longer the cached one.
//! Prints p50 / p99 / max of that delay, and the same for a plain `RedisStore` on B (where the
//! purge holds at once, by the stamp check in Redis).

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use axum::extract::Path;
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, CacheTags, MemoryStore, Store};

const ROUNDS: usize = 300;

async fn item(Path(id): Path<usize>) -> (Extension<CacheTags>, String) {
    (Extension(CacheTags::new([format!("item:{id}")])), format!("item {id}"))
}

async fn is_hit(app: &Router, uri: &str) -> bool {
    let request = http::Request::get(uri)
        .body(axum::body::Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let hit = response.headers()["cache-status"]
        .to_str()
        .expect("ascii")
        .contains("; hit");
    response.into_body().collect().await.expect("body");
    hit
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

/// Rounds of: B caches `item:i`, A purges it, B is polled until it misses.
async fn measure<St: Store>(a: &St, b: St) -> Vec<Duration> {
    let app = Router::new().route("/items/{id}", get(item)).layer(CacheLayer::new(b));
    let mut delays = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let uri = format!("/items/{i}");
        is_hit(&app, &uri).await;
        assert!(is_hit(&app, &uri).await, "B caches the item");
        // From the start of the purge call: a client of A has its answer after the call returns.
        let purged = Instant::now();
        a.purge_tags([format!("item:{i}")]).await.expect("purge");
        let deadline = purged + Duration::from_secs(2);
        while is_hit(&app, &uri).await {
            assert!(Instant::now() < deadline, "B never saw the purge");
            tokio::task::yield_now().await;
        }
        delays.push(purged.elapsed());
    }
    delays.sort();
    delays
}

fn report(what: &str, delays: &[Duration]) {
    println!(
        "| {what} | {ROUNDS} | {:.0?} | {:.0?} | {:.0?} |",
        percentile(delays, 0.5),
        percentile(delays, 0.99),
        delays[delays.len() - 1]
    );
}

fn main() {
    if !redis_server::available() {
        return;
    }
    let server = redis_server::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let connect = |namespace: &'static str| {
            RedisStore::builder(server.url())
                .namespace(namespace)
                .clock_skew_margin(Duration::ZERO)
                .connect()
        };
        let (a, b) = (
            connect("tiered").await.expect("redis"),
            connect("tiered").await.expect("redis"),
        );
        let (a, b) = (
            TieredStore::new(MemoryStore::new(), a),
            TieredStore::new(MemoryStore::new(), b),
        );
        let subscribed = Instant::now() + Duration::from_secs(5);
        while !(a.stats().subscribed && b.stats().subscribed) {
            assert!(Instant::now() < subscribed, "subscriptions did not come up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("| B's store | purges | p50 | p99 | max |");
        println!("|---|---:|---:|---:|---:|");
        report("TieredStore (memory tier told over pub/sub)", &measure(&a, b).await);
        let (a, b) = (
            connect("plain").await.expect("redis"),
            connect("plain").await.expect("redis"),
        );
        report("RedisStore (stamp checked in Redis)", &measure(&a, b).await);
    });
}
