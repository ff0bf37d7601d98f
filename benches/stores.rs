//! The stores side by side, measured with criterion: the hit path of each store, and the cost
//! of a purge against the number of entries carrying the purged tag.
//!
//! Run: `cargo bench --bench stores --features redis` (about two minutes; it starts its own
//! `redis-server` on a free loopback port, and without one runs the memory rows only).
//!
//! - `store_hit`: `Service::call` on a `CacheService` plus collecting the 1 KiB body, every
//!   request answered from the warmed store: `memory` (`MemoryStore`), `redis` (`RedisStore`:
//!   one round trip to Redis and a decode), `tiered` (`TieredStore`: its memory tier answers);
//!   for reference, `no_cache` is the inner service alone and `redis_ping` one `PING` through
//!   the same Redis client (a multiplexed connection): the floor of any Redis operation here.
//! - `store_get`: `Store::get` alone of the entry `store_hit` reads, for `memory`, `redis`
//!   (one script round trip and a decode) and `tiered`, beside `redis_plain_get_<n>_bytes`: a
//!   plain redis-rs `GET` of a value as large as the Redis store's (the entry's encoding), the
//!   floor of a Redis read of that size.
//! - `purge/<store>/<n>`: one `Store::purge` of a tag that `n` entries carry (10, 1,000 and
//!   100,000 entries). Purges stamp the tag and leave the entries to be judged when read, so
//!   the cost must not grow with `n`. The entries stay in the store for every iteration (a
//!   purged entry is only dropped when read), so each iteration purges all `n` of them.
//!
//! Key derivation is measured in `hit_path`, entry encoding and decoding in `codec`.

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures_util::{stream, StreamExt};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG};
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use redis_server::RedisServer;
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheKey, CacheLayer, MemoryStore, PurgeMode, Store};

const BODY_BYTES: usize = 1024;
const TAGGED: [usize; 3] = [10, 1_000, 100_000];
/// Concurrent writes while filling Redis: enough to keep the connection busy.
const FILL_CONCURRENCY: usize = 256;

type Req = Request<Empty<Bytes>>;
type Res = Response<Full<Bytes>>;

async fn redis_store(server: &RedisServer) -> RedisStore {
    static NAMESPACE: AtomicUsize = AtomicUsize::new(0);
    RedisStore::builder(server.url())
        .namespace(format!("bench{}", NAMESPACE.fetch_add(1, Relaxed)))
        // The bench and Redis share one clock.
        .clock_skew_margin(Duration::ZERO)
        .connect()
        .await
        .expect("connect to the bench's redis-server")
}

/// The inner service: a 1 KiB body, cacheable for an hour, tagged `tag`.
fn origin(
    tag: &'static str,
) -> impl Service<Req, Response = Res, Error = Infallible, Future = Ready<Result<Res, Infallible>>> + Clone + Send + 'static
{
    let body = Bytes::from(vec![b'x'; BODY_BYTES]);
    service_fn(move |_req: Req| {
        let mut response = Response::new(Full::new(body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert("cache-groups", HeaderValue::from_str(&format!("\"{tag}\"")).unwrap());
        ready(Ok(response))
    })
}

fn get(uri: Uri) -> Req {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    request
}

/// One request through `svc`, its body collected; returns the `Cache-Status` header.
async fn fetch<S, B>(svc: &mut S, uri: Uri) -> (String, Bytes)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let response = svc.ready().await.unwrap().call(get(uri)).await.unwrap();
    let (parts, body) = response.into_parts();
    let status = parts
        .headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, body.collect().await.unwrap().to_bytes())
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Benches hits through a layer over `store`, after checking that the second request hits.
fn bench_hits<St: Store>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    store: St,
) {
    let layer = CacheLayer::new(store);
    let svc = layer.layer(origin("item"));
    let uri: Uri = "/items/1".parse().unwrap();
    rt.block_on(async {
        let mut svc = svc.clone();
        let (first, _) = fetch(&mut svc, uri.clone()).await;
        assert!(
            first.contains("stored"),
            "{name}: the first request was not stored: {first}"
        );
        let (second, body) = fetch(&mut svc, uri.clone()).await;
        assert!(second.contains("; hit"), "{name}: the second request missed: {second}");
        assert_eq!(body.len(), BODY_BYTES);
    });
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (mut svc, uri) = (svc.clone(), uri.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(fetch(&mut svc, uri.clone()).await);
                }
                start.elapsed()
            }
        })
    });
    let stats = layer.stats();
    assert_eq!(stats.misses, 1, "{name}: only the first request may miss: {stats:?}");
}

fn store_hit(c: &mut Criterion, redis: Option<&RedisServer>) {
    let rt = runtime();
    let mut group = c.benchmark_group("store_hit");
    group.throughput(Throughput::Elements(1));

    let bare = origin("item");
    let uri: Uri = "/items/1".parse().unwrap();
    group.bench_function("no_cache", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (mut svc, uri) = (bare.clone(), uri.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(fetch(&mut svc, uri.clone()).await);
                }
                start.elapsed()
            }
        })
    });

    bench_hits(&mut group, &rt, "memory", MemoryStore::new());
    match redis {
        Some(server) => {
            let connection = rt.block_on(async {
                let client = redis::Client::open(server.url()).expect("redis url");
                client.get_multiplexed_async_connection().await.expect("connect")
            });
            group.bench_function("redis_ping", |b| {
                b.to_async(&rt).iter(|| {
                    let mut connection = connection.clone();
                    async move { redis::cmd("PING").query_async::<String>(&mut connection).await.unwrap() }
                })
            });
            let store = rt.block_on(redis_store(server));
            bench_hits(&mut group, &rt, "redis", store);
            let tiered = rt.block_on(subscribed_tiered(server));
            bench_hits(&mut group, &rt, "tiered", tiered);
        }
        None => eprintln!("store_hit: redis and tiered skipped (no redis-server)"),
    }
    group.finish();
}

/// Benches `Store::get` of a key the layer stored (through `bench_hits`'s warm-up), checking
/// first that it is found.
fn bench_get<St: Store>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    store: St,
) {
    let layer = CacheLayer::new(store);
    let mut svc = layer.layer(origin("item"));
    let uri: Uri = "/items/1".parse().unwrap();
    let (parts, ()) = Request::get(uri.clone()).body(()).unwrap().into_parts();
    let key = layer.cache_key(&parts);
    rt.block_on(async {
        fetch(&mut svc, uri).await;
        let found = layer.store().get(&key).await.unwrap();
        assert!(matches!(found, Lookup::Found(Entry::Response(_))), "{name}: {found:?}");
    });
    let store = layer.store().clone();
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let (store, key) = (&store, &key);
            async move { black_box(store.get(key).await.unwrap()) }
        })
    });
}

/// `Store::get` of each store, side by side with a plain redis-rs `GET` of a value as large as
/// the entry the Redis store keeps (its encoding), through a multiplexed connection.
fn store_get(c: &mut Criterion, redis: Option<&RedisServer>) {
    let rt = runtime();
    let mut group = c.benchmark_group("store_get");
    group.throughput(Throughput::Elements(1));
    bench_get(&mut group, &rt, "memory", MemoryStore::new());
    let Some(server) = redis else {
        eprintln!("store_get: redis and tiered skipped (no redis-server)");
        return group.finish();
    };
    let (connection, encoded) = rt.block_on(async {
        let client = redis::Client::open(server.url()).expect("redis url");
        let mut connection = client.get_multiplexed_async_connection().await.expect("connect");
        let encoded = tagged_entry("item").await.encode();
        redis::cmd("SET")
            .arg("bench:plain")
            .arg(&encoded[..])
            .query_async::<()>(&mut connection)
            .await
            .unwrap();
        (connection, encoded)
    });
    let size = encoded.len();
    group.bench_function(format!("redis_plain_get_{size}_bytes"), |b| {
        b.to_async(&rt).iter(|| {
            let mut connection = connection.clone();
            async move {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg("bench:plain")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                assert_eq!(value.len(), size);
                black_box(value)
            }
        })
    });
    let store = rt.block_on(redis_store(server));
    bench_get(&mut group, &rt, "redis", store);
    let tiered = rt.block_on(subscribed_tiered(server));
    bench_get(&mut group, &rt, "tiered", tiered);
    group.finish();
}

/// A tiered store whose memory tier answers: subscribed to its invalidation feed.
async fn subscribed_tiered(server: &RedisServer) -> TieredStore {
    let store = TieredStore::new(MemoryStore::new(), redis_store(server).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.stats().subscribed {
        assert!(Instant::now() < deadline, "the tiered store did not subscribe");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store
}

/// A response the layer stored with the tag `tag`, read back from a `MemoryStore`.
async fn tagged_entry(tag: &'static str) -> Entry {
    let layer = CacheLayer::new(MemoryStore::new());
    let mut svc = layer.layer(origin(tag));
    let uri: Uri = "/items/1".parse().unwrap();
    fetch(&mut svc, uri.clone()).await;
    let (parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
    match layer.store().get(&layer.cache_key(&parts)).await.unwrap() {
        Lookup::Found(entry @ Entry::Response(_)) => entry,
        other => panic!("the layer did not store the response: {other:?}"),
    }
}

/// Writes `n` copies of `entry` under distinct keys, `FILL_CONCURRENCY` at a time.
async fn fill<St: Store>(store: &St, entry: &Entry, n: usize) {
    let stored = stream::iter(0..n)
        .map(|i| {
            let key = CacheKey::from_bytes(format!("purge-bench-{i}"));
            store.put(key, entry.clone(), Duration::from_secs(3600))
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .filter(|r| ready(matches!(r, Ok(true))))
        .count()
        .await;
    assert_eq!(stored, n, "the store declined some entries");
}

/// Benches purges of a tag that `n` entries carry, then checks that they are all purged.
fn bench_purge<St: Store>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    name: &str,
    new_store: impl Fn() -> St,
) {
    // A tag per size, so that one size's purges cannot touch another's entries.
    let tags: [&'static str; 3] = ["tagged-10", "tagged-1000", "tagged-100000"];
    for (n, tag) in TAGGED.into_iter().zip(tags) {
        let store = new_store();
        let entry = rt.block_on(tagged_entry(tag));
        let start = Instant::now();
        rt.block_on(fill(&store, &entry, n));
        eprintln!(
            "purge/{name}: {n} entries tagged `{tag}` written in {:.1?}",
            start.elapsed()
        );
        let purged = [tag.to_owned()];
        // Unset when a filter on the command line skips this size.
        let mut measured = false;
        group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
            measured = true;
            b.to_async(rt)
                .iter(|| async { store.purge(black_box(&purged), PurgeMode::Hard).await.unwrap() })
        });
        if !measured {
            continue;
        }
        rt.block_on(async {
            for i in [0, n / 2, n - 1] {
                let key = CacheKey::from_bytes(format!("purge-bench-{i}"));
                let lookup = store.get(&key).await.unwrap();
                assert!(
                    matches!(lookup, Lookup::Purged),
                    "entry {i} of {n} survived: {lookup:?}"
                );
            }
        });
    }
}

fn purge(c: &mut Criterion, redis: Option<&RedisServer>) {
    let rt = runtime();
    let mut group = c.benchmark_group("purge");
    group.throughput(Throughput::Elements(1));
    // Room for 100,000 entries of about 1.5 KiB (they share one body, so little is resident).
    bench_purge(&mut group, &rt, "memory", || {
        MemoryStore::builder().max_bytes(1 << 30).build()
    });
    match redis {
        Some(server) => {
            bench_purge(&mut group, &rt, "redis", || rt.block_on(redis_store(server)));
            server.cli(&["flushall"]);
        }
        None => eprintln!("purge: redis skipped (no redis-server)"),
    }
    group.finish();
}

// A main of its own rather than `criterion_main!`, so that the `redis-server` it starts is
// dropped, and so stopped, when the bench ends (a static would outlive the process's exit).
fn main() {
    let redis = redis_server::available().then(RedisServer::start);
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    store_hit(&mut criterion, redis.as_ref());
    store_get(&mut criterion, redis.as_ref());
    purge(&mut criterion, redis.as_ref());
    criterion.final_summary();
}
