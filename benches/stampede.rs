//! Cold-burst stampede over loopback: N concurrent requests for one cold key, against an
//! axum server whose handler takes 20 ms, with and without the cache layer.
//!
//! Run: `cargo bench --bench stampede`
//!
//! For N = 10, 100 and 1,000 it prints the origin calls per burst and the p50 / p99 latency
//! of the burst's requests (each burst uses a fresh key; 5 bursts per row). A second table
//! does the same for a per-user page: 100 requests with distinct cookies for one `private`
//! page, which the cache must not make wait on one another.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_response_cache::{CacheLayer, MemoryStore};

const BURSTS: usize = 5;
const ORIGIN_DELAY: Duration = Duration::from_millis(20);

async fn slow(
    State(calls): State<Arc<AtomicUsize>>,
    Query(q): Query<HashMap<String, String>>,
) -> ([(&'static str, &'static str); 1], String) {
    calls.fetch_add(1, SeqCst);
    tokio::time::sleep(ORIGIN_DELAY).await;
    let cc = if q.contains_key("private") {
        "private"
    } else {
        "max-age=60"
    };
    (
        [("cache-control", cc)],
        format!("value of {}", q.get("key").map(String::as_str).unwrap_or("?")),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// One row: `private` bursts carry a distinct cookie per request and get a `private` page.
async fn run(cached: bool, n: usize, private: bool, round: &mut usize) -> (f64, Duration, Duration) {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut app = Router::new().route("/slow", get(slow)).with_state(calls.clone());
    if cached {
        app = app.layer(CacheLayer::new(MemoryStore::new()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build_http();

    let mut latencies = Vec::with_capacity(n * BURSTS);
    for _ in 0..BURSTS {
        *round += 1;
        let query = if private { "&private=1" } else { "" };
        let uri: http::Uri = format!("http://{addr}/slow?key=k{round}{query}").parse().expect("uri");
        let requests: Vec<_> = (0..n)
            .map(|user| {
                let (client, uri) = (client.clone(), uri.clone());
                let mut request = http::Request::get(uri);
                if private {
                    request = request.header("cookie", format!("session={user}"));
                }
                let request = request.body(Empty::new()).expect("request");
                tokio::spawn(async move {
                    let start = Instant::now();
                    let response = client.request(request).await.expect("request");
                    response.into_body().collect().await.expect("body");
                    start.elapsed()
                })
            })
            .collect();
        for request in requests {
            let latency = tokio::time::timeout(Duration::from_secs(30), request)
                .await
                .expect("bounded")
                .expect("join");
            latencies.push(latency);
        }
    }
    server.abort();
    latencies.sort();
    let origin_calls = calls.load(SeqCst) as f64 / BURSTS as f64;
    (origin_calls, percentile(&latencies, 0.50), percentile(&latencies, 0.99))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("| N | layer | origin calls / burst | p50 | p99 |");
    println!("|---:|---|---:|---:|---:|");
    let mut round = 0;
    for n in [10, 100, 1000] {
        for cached in [false, true] {
            let (calls, p50, p99) = runtime.block_on(run(cached, n, false, &mut round));
            let layer = if cached { "CacheLayer + MemoryStore" } else { "no cache" };
            println!("| {n} | {layer} | {calls:.1} | {p50:.1?} | {p99:.1?} |");
        }
    }
    println!();
    println!("Per-user `private` page, 100 distinct cookies at once:");
    println!();
    println!("| layer | origin calls / burst | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for cached in [false, true] {
        let (calls, p50, p99) = runtime.block_on(run(cached, 100, true, &mut round));
        let layer = if cached { "CacheLayer + MemoryStore" } else { "no cache" };
        println!("| {layer} | {calls:.1} | {p50:.1?} | {p99:.1?} |");
    }
}
