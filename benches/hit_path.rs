//! The cache's in-process costs, measured with criterion.
//!
//! Run: `cargo bench --bench hit_path` (the whole run takes about two minutes); one group only:
//! `cargo bench --bench hit_path -- router` (or `threads`, `hit`, `miss_overhead`, `key`).
//!
//! - `router`: an axum `Router` with one route, `GET /item/{id}`, answering 1 KiB of static
//!   JSON (`content-type`, `cache-control: public, max-age=60`, `x-item-id`), through
//!   `ServiceExt::ready().call()` with the body collected: `floor` is the Router alone,
//!   `hit` the same Router with `CacheLayer::new(MemoryStore)` (256 MiB) applied by
//!   `Router::layer`, every key warmed; `1_key`, and `10k_keys` drawn uniformly.
//! - `threads`: the same hits from 1 thread and from 2 at once (each its own current-thread
//!   runtime and `Router` clone, one layer and store shared); the time is per request and per
//!   thread, so that equal figures mean the threads do not slow each other down.
//! - `hit`: `Service::call` on a `CacheService` over a `MemoryStore`, plus collecting the 1 KiB
//!   body, every request answered from the warmed cache: `1_key`, and `zipf_10k` (10,000 keys
//!   requested with a Zipf distribution, exponent 1).
//! - `miss_overhead`: what the layer adds to an inner service on a miss. `bare` is the inner
//!   service alone; `miss_store` puts the layer in front with a new key on every request, so
//!   each one misses, collects and stores (the store evicts once it is full); `bypass_no_store`
//!   answers `Cache-Control: no-store`, so each request misses and streams through unstored.
//! - `key`: `CacheLayer::cache_key` for a short URI, for a URI with 8 query parameters to sort
//!   and an ignored `utm_*` one, and with an identity function (hashed into the key).
//!
//! Requests are built inside the timed loop from prebuilt `Uri`s (a reference-count bump);
//! every variant, `bare` included, pays that same small cost.

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;
use tower_response_cache::{CacheLayer, MemoryStore};

#[path = "../examples/support/item_router.rs"]
mod router;
use router::SplitMix64;

const BODY_BYTES: usize = 1024;
const ZIPF_KEYS: usize = 10_000;
const ZIPF_EXPONENT: f64 = 1.0;
/// Long enough that the sequence visits most keys, short enough to stay in memory.
const SEQUENCE_LEN: usize = 1 << 16;
const CACHEABLE: &str = "public, max-age=3600";
const NO_STORE: &str = "no-store";

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

/// The inner service: a fixed 1 KiB body with a few typical headers, answered at once.
fn origin(
    cache_control: &'static str,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = Ready<Result<Res, Infallible>>> + Clone + Send + 'static
{
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    service_fn(move |_req: Req| {
        let mut response = Response::new(Full::new(body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        ready(Ok(response))
    })
}

fn get(uri: Uri) -> Req {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    request
}

/// One request through `svc`, its body collected: what every timed iteration does.
async fn fetch<S, B>(svc: &mut S, uri: Uri) -> (http::response::Parts, Bytes)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let response = svc.ready().await.unwrap().call(get(uri)).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

fn cache_status(parts: &http::response::Parts) -> &str {
    parts
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn item_uri(i: u64) -> Uri {
    format!("/items/{i}").parse().unwrap()
}

/// Key indices drawn from Zipf(`exponent`) over `keys` ranks, by inverting the CDF.
fn zipf_sequence(keys: usize, exponent: f64, len: usize, seed: u64) -> Vec<usize> {
    let mut cdf: Vec<f64> = (1..=keys)
        .scan(0.0, |sum, rank| {
            *sum += (rank as f64).powf(-exponent);
            Some(*sum)
        })
        .collect();
    let total = cdf[keys - 1];
    for c in &mut cdf {
        *c /= total;
    }
    let mut rng = SplitMix64(seed);
    (0..len)
        .map(|_| {
            let u = rng.next_f64();
            cdf.partition_point(|&c| c < u).min(keys - 1)
        })
        .collect()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Times `iters` requests for the same URI.
async fn repeat<S, B>(mut svc: S, uri: Uri, iters: u64) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        black_box(fetch(&mut svc, uri.clone()).await);
    }
    start.elapsed()
}

/// Times one request per URI.
async fn each<S, B>(mut svc: S, uris: impl IntoIterator<Item = Uri>) -> Duration
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let start = Instant::now();
    for uri in uris {
        black_box(fetch(&mut svc, uri).await);
    }
    start.elapsed()
}

/// `iters` requests through `app` for keys drawn uniformly (fixed seed) from `uris`.
async fn uniform(mut app: axum::Router, uris: &[Uri], seed: u64, iters: u64) -> Duration {
    let mut rng = SplitMix64(seed);
    let start = Instant::now();
    for _ in 0..iters {
        let uri = &uris[(rng.next_u64() % uris.len() as u64) as usize];
        black_box(router::fetch(&mut app, uri).await);
    }
    start.elapsed()
}

/// A Router (cached or not) with every key requested once.
fn warmed(rt: &Runtime, cached: bool, uris: &[Uri]) -> (axum::Router, Option<CacheLayer<MemoryStore>>) {
    let (mut app, layer) = router::app(cached);
    rt.block_on(async {
        for uri in uris {
            assert_eq!(router::fetch(&mut app, uri).await, BODY_BYTES);
        }
    });
    (app, layer)
}

fn router_floor_and_hit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for (name, keys) in [("1_key", 1), ("10k_keys", ZIPF_KEYS as u64)] {
        let uris = router::uris(keys);
        // Floor and hit side by side, so that both see the same machine.
        for cached in [false, true] {
            let (app, layer) = warmed(&rt, cached, &uris);
            let label = format!("{}/{name}", if cached { "hit" } else { "floor" });
            let mut seed = 0;
            group.bench_function(label, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    seed += 1;
                    uniform(app.clone(), &uris, seed, iters)
                })
            });
            if let Some(stats) = layer.map(|l| l.stats()) {
                assert_eq!(stats.misses, keys, "only the warm-up may miss: {stats:?}");
            }
        }
    }
    group.finish();
}

fn threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("threads");
    group.throughput(Throughput::Elements(1));
    for (name, keys) in [("1_key", 1), ("10k_keys", ZIPF_KEYS as u64)] {
        let uris = router::uris(keys);
        let (app, layer) = warmed(&runtime(), true, &uris);
        for threads in [1u64, 2] {
            group.bench_function(format!("{threads}_thread/{name}"), |b| {
                b.iter_custom(|iters| {
                    let barrier = std::sync::Barrier::new(threads as usize);
                    std::thread::scope(|scope| {
                        let handles: Vec<_> = (0..threads)
                            .map(|t| {
                                let (app, uris, barrier) = (app.clone(), &uris, &barrier);
                                scope.spawn(move || {
                                    let rt = runtime();
                                    barrier.wait();
                                    rt.block_on(uniform(app, uris, t + 1, iters))
                                })
                            })
                            .collect();
                        // Per thread: the slowest one's time for its `iters` requests.
                        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
                    })
                })
            });
        }
        let stats = layer.unwrap().stats();
        assert_eq!(stats.misses, keys, "only the warm-up may miss: {stats:?}");
    }
    group.finish();
}

// Each scenario builds its own layer and store and drops them when it returns, so that one
// scenario's entries (the full store `miss_store` leaves behind) never weigh on the next.

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    hit_one_key(&mut group, &rt);
    hit_zipf(&mut group, &rt);
    group.finish();
}

fn hit_one_key(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let layer = CacheLayer::new(MemoryStore::new());
    let mut svc = layer.layer(origin(CACHEABLE));
    let uri = item_uri(0);
    rt.block_on(async {
        let (first, _) = fetch(&mut svc, uri.clone()).await;
        assert!(cache_status(&first).contains("stored"), "{first:?}");
        let (second, body) = fetch(&mut svc, uri.clone()).await;
        assert!(cache_status(&second).contains("; hit"), "{second:?}");
        assert_eq!(body.len(), BODY_BYTES);
    });
    group.bench_function("1_key", |b| {
        b.to_async(rt)
            .iter_custom(|iters| repeat(svc.clone(), uri.clone(), iters))
    });
    let stats = layer.stats();
    assert_eq!(stats.misses, 1, "only the warm-up may miss: {stats:?}");
}

fn hit_zipf(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let layer = CacheLayer::new(MemoryStore::new());
    let mut svc = layer.layer(origin(CACHEABLE));
    let uris: Vec<Uri> = (0..ZIPF_KEYS as u64).map(item_uri).collect();
    let sequence = zipf_sequence(ZIPF_KEYS, ZIPF_EXPONENT, SEQUENCE_LEN, 0x5EED);
    rt.block_on(async {
        for uri in &uris {
            fetch(&mut svc, uri.clone()).await;
        }
        // Every key must now hit, or the bench would measure misses.
        for uri in &uris {
            let (parts, _) = fetch(&mut svc, uri.clone()).await;
            assert!(cache_status(&parts).contains("; hit"), "{uri} missed: {parts:?}");
        }
    });
    // Samples carry on through the sequence where the previous one stopped.
    let (uris, sequence) = (&uris, &sequence);
    let mut position = 0;
    group.bench_function("zipf_10k", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let first = position;
            position = (position + iters as usize) % SEQUENCE_LEN;
            let requests = (first..first + iters as usize).map(move |i| uris[sequence[i % SEQUENCE_LEN]].clone());
            each(svc.clone(), requests)
        })
    });
    let stats = layer.stats();
    assert_eq!(stats.misses, ZIPF_KEYS as u64, "only the warm-up may miss: {stats:?}");
}

fn miss_overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("miss_overhead");
    group.throughput(Throughput::Elements(1));
    let mut ids = 0..;
    // Fresh URIs for each sample, built before its timer starts.
    let mut unique_uris = move |n: u64| -> Vec<Uri> { ids.by_ref().take(n as usize).map(item_uri).collect() };
    miss_bare(&mut group, &rt, &mut unique_uris);
    miss_store(&mut group, &rt, &mut unique_uris);
    miss_bypass(&mut group, &rt);
    group.finish();
}

fn miss_bare(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, unique_uris: &mut impl FnMut(u64) -> Vec<Uri>) {
    let svc = origin(CACHEABLE);
    group.bench_function("bare", |b| {
        b.to_async(rt)
            .iter_custom(|iters| each(svc.clone(), unique_uris(iters)))
    });
}

fn miss_store(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, unique_uris: &mut impl FnMut(u64) -> Vec<Uri>) {
    let layer = CacheLayer::new(MemoryStore::new());
    let svc = layer.layer(origin(CACHEABLE));
    group.bench_function("miss_store", |b| {
        b.to_async(rt)
            .iter_custom(|iters| each(svc.clone(), unique_uris(iters)))
    });
    let stats = layer.stats();
    assert!(stats.hits == 0 && stats.stores == stats.misses, "{stats:?}");
}

fn miss_bypass(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime) {
    let layer = CacheLayer::new(MemoryStore::new());
    let mut svc = layer.layer(origin(NO_STORE));
    let uri = item_uri(0);
    rt.block_on(async {
        let (parts, _) = fetch(&mut svc, uri.clone()).await;
        assert!(cache_status(&parts).contains("fwd=miss"), "{parts:?}");
        assert!(!cache_status(&parts).contains("stored"), "{parts:?}");
    });
    group.bench_function("bypass_no_store", |b| {
        b.to_async(rt)
            .iter_custom(|iters| repeat(svc.clone(), uri.clone(), iters))
    });
    let stats = layer.stats();
    assert!(stats.hits == 0 && stats.stores == 0, "{stats:?}");
}

fn key(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    let parts = |uri: &str, user: Option<&str>| {
        let mut request = Request::get(uri);
        if let Some(user) = user {
            request = request.header("x-user-id", user);
        }
        request.body(()).unwrap().into_parts().0
    };

    let layer = CacheLayer::new(MemoryStore::new());
    let short = parts("/books/42", None);
    group.bench_function("short", |b| b.iter(|| layer.cache_key(black_box(&short))));

    let layer = CacheLayer::builder(MemoryStore::new())
        .ignore_query_param("utm_*")
        .build();
    let long = parts(
        "/search?sort=desc&q=rust&page=2&utm_source=newsletter&lang=en&year=2024&tag=async&limit=20&offset=40",
        None,
    );
    let canonical = parts(
        "/search?lang=en&limit=20&offset=40&page=2&q=rust&sort=desc&tag=async&year=2024",
        None,
    );
    assert_eq!(layer.cache_key(&long), layer.cache_key(&canonical));
    group.bench_function("query_8_params_utm", |b| b.iter(|| layer.cache_key(black_box(&long))));

    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_identity(|parts| {
            parts
                .headers
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .build();
    let user = parts("/books/42", Some("user-1234"));
    assert_ne!(layer.cache_key(&user), layer.cache_key(&short));
    group.bench_function("identity", |b| b.iter(|| layer.cache_key(black_box(&user))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = router_floor_and_hit, threads, hit, miss_overhead, key
}
criterion_main!(benches);
