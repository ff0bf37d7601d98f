//! Hit workload: the same axum `Router` with and without the cache, for counting instructions.
//!
//! Run: `cargo run --release --example hit_workload -- hit --requests 100000 --keys 10000`
//! (`floor` instead of `hit` runs the Router without the cache). `benches/callgrind.sh` runs
//! it under callgrind at two request counts and prints instructions per request.
//!
//! One route, `GET /item/{id}`, answers 1 KiB of static JSON with `content-type`,
//! `cache-control: public, max-age=60` and `x-item-id`. With `hit`, `CacheLayer::new` over a
//! 256 MiB `MemoryStore` is applied with `Router::layer`, and every key is requested once
//! before the measured requests, so that all of these are hits. Requests go through
//! `ServiceExt::ready().call()` on a current-thread runtime and their bodies are collected;
//! keys are drawn uniformly with a fixed seed.

use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::BodyExt;
use std::process::ExitCode;
use tower::{Service, ServiceExt};
use tower_response_cache::{CacheLayer, MemoryStore};

/// 1,024 bytes of JSON, built once.
fn item_json() -> &'static str {
    let mut json = String::from("{\"id\":\"item\",\"data\":\"");
    while json.len() < 1024 - 2 {
        json.push('x');
    }
    json.push_str("\"}");
    Box::leak(json.into_boxed_str())
}

/// The workload's Router: the bare handler, or with the cache in front of it.
fn router(cached: bool) -> (Router, Option<CacheLayer<MemoryStore>>) {
    let json = item_json();
    let router = Router::new().route(
        "/item/{id}",
        get(move |Path(id): Path<u64>| async move {
            (
                [
                    (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (CACHE_CONTROL, HeaderValue::from_static("public, max-age=60")),
                    (HeaderName::from_static("x-item-id"), HeaderValue::from(id)),
                ],
                json,
            )
        }),
    );
    if cached {
        let layer = CacheLayer::new(MemoryStore::builder().max_bytes(256 << 20).build());
        (router.layer(layer.clone()), Some(layer))
    } else {
        (router, None)
    }
}

/// splitmix64: a fixed-seed generator, so that every run draws the same keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

async fn fetch(router: &mut Router, uri: &Uri) -> usize {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri.clone();
    let ready = ServiceExt::<Request<Body>>::ready(router).await.expect("ready");
    let response = ready.call(request).await.expect("infallible");
    response.into_body().collect().await.expect("body").to_bytes().len()
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut cached, mut requests, mut keys) = (None, 100_000u64, 1u64);
    while let Some(arg) = args.next() {
        let mut number = || args.next().and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0);
        match arg.as_str() {
            "hit" => cached = Some(true),
            "floor" => cached = Some(false),
            "--requests" => requests = number().unwrap_or(0),
            "--keys" => keys = number().unwrap_or(0),
            _ => cached = None,
        }
    }
    let Some(cached) = cached.filter(|_| requests > 0 && keys > 0) else {
        eprintln!("usage: hit_workload (hit|floor) [--requests N] [--keys K]");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (mut router, layer) = router(cached);
    let uris: Vec<Uri> = (0..keys).map(|i| format!("/item/{i}").parse().expect("uri")).collect();
    let mut rng = SplitMix64(0x5EED);
    let bytes = runtime.block_on(async {
        // Every key once, so that the measured requests all hit (the floor does the same).
        for uri in &uris {
            fetch(&mut router, uri).await;
        }
        let mut bytes = 0;
        for _ in 0..requests {
            let uri = &uris[(rng.next_u64() % keys) as usize];
            bytes += fetch(&mut router, uri).await;
        }
        bytes
    });
    if bytes != requests as usize * 1024 {
        eprintln!("FAILED: {bytes} bytes for {requests} requests");
        return ExitCode::FAILURE;
    }
    if let Some(stats) = layer.map(|layer| layer.stats()) {
        if stats.misses != keys || stats.hits != requests {
            eprintln!("FAILED: not every measured request was a hit: {stats:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
