//! Time to first byte of a slow streaming body on a miss, over loopback, with and without the
//! cache layer.
//!
//! Run: `cargo bench --bench streaming`
//!
//! The handler answers a storable NDJSON body of 10 lines sent 50 ms apart. Each round asks for
//! a fresh key (a miss that stores), once through a Router without the layer and once through
//! the same Router with `CacheLayer::new(MemoryStore)`, alternating; it prints the median time
//! from sending the request to the first body frame, and to the end of the body.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tower_response_cache::{CacheLayer, MemoryStore};

const ROUNDS: usize = 15;
const LINES: usize = 10;
const LINE_GAP: Duration = Duration::from_millis(50);

async fn ndjson(Path(id): Path<u64>) -> ([(&'static str, &'static str); 2], Body) {
    let lines = futures_util::stream::unfold(0, move |sent| async move {
        if sent == LINES {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(LINE_GAP).await;
        }
        let line = Bytes::from(format!("{{\"item\":{id},\"line\":{sent}}}\n"));
        Some((Ok::<_, Infallible>(line), sent + 1))
    });
    (
        [
            ("cache-control", "max-age=60"),
            ("content-type", "application/x-ndjson"),
        ],
        Body::from_stream(lines),
    )
}

async fn serve(cached: bool) -> std::net::SocketAddr {
    let mut app = Router::new().route("/feed/{id}", get(ndjson));
    if cached {
        app = app.layer(CacheLayer::new(MemoryStore::new()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Time to the first body frame and to the end of the body.
async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: String,
) -> (Duration, Duration) {
    let start = Instant::now();
    let response = client.get(uri.parse().expect("uri")).await.expect("request");
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        frame.expect("frame");
        first.get_or_insert_with(|| start.elapsed());
    }
    (first.expect("a body frame"), start.elapsed())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let plain = serve(false).await;
        let cached = serve(true).await;
        let client = Client::builder(TokioExecutor::new()).build_http();
        let (mut first, mut whole) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for round in 0..ROUNDS {
            for (i, addr) in [plain, cached].into_iter().enumerate() {
                let uri = format!("http://{addr}/feed/{round}");
                let (f, w) = tokio::time::timeout(Duration::from_secs(10), fetch(&client, uri))
                    .await
                    .expect("bounded");
                first[i].push(f);
                whole[i].push(w);
            }
        }
        println!("{LINES} NDJSON lines {LINE_GAP:?} apart, a miss each round, median of {ROUNDS}:");
        println!();
        println!("| layer | first byte | whole body |");
        println!("|---|---:|---:|");
        let [first_plain, first_cached] = first.map(median);
        let [whole_plain, whole_cached] = whole.map(median);
        println!("| no cache | {first_plain:.1?} | {whole_plain:.1?} |");
        println!("| CacheLayer + MemoryStore (miss) | {first_cached:.1?} | {whole_cached:.1?} |");
        println!();
        println!(
            "first byte through the layer: {:+.0} µs against the origin's",
            first_cached.as_secs_f64() * 1e6 - first_plain.as_secs_f64() * 1e6
        );
    });
}
