//! The cost of the binary form that remote stores keep, measured with criterion.
//!
//! Run: `cargo bench --bench codec` (about fifteen seconds).
//!
//! - `codec/encode`: `Entry::encode` of a stored response with a 1 KiB body, 8 headers and a tag.
//! - `codec/decode`: `Entry::decode` of those bytes from a `&[u8]` (one copy of the input, then
//!   the body is shared with it).
//! - `codec/decode_bytes`: `Entry::decode_bytes` of the same bytes already held as `Bytes`, as
//!   a Redis client hands them over (the body is sliced, not copied).
//!
//! The entry is the one the layer really stores: one request goes through `CacheLayer` over a
//! `MemoryStore`, and the entry is read back with `Store::get` under `CacheLayer::cache_key`.
//! Throughput is in encoded bytes.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_LANGUAGE, CONTENT_TYPE, ETAG, LAST_MODIFIED, LINK, X_CONTENT_TYPE_OPTIONS,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::future::ready;
use std::hint::black_box;
use std::time::Duration;
use tower::{service_fn, ServiceExt};
use tower_layer::Layer;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::{CacheLayer, MemoryStore, Store};

const BODY_BYTES: usize = 1024;

/// A typical cacheable page: a 1 KiB body and 8 headers, one of them tagging it.
fn origin_response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; BODY_BYTES])));
    let headers = response.headers_mut();
    let fields = [
        (CONTENT_TYPE, "text/html; charset=utf-8"),
        (CACHE_CONTROL, "public, max-age=3600"),
        (ETAG, "\"33a64df551425fcc55e4d42a148795d9f25f89d4\""),
        (LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT"),
        (CONTENT_LANGUAGE, "en"),
        (LINK, "</style.css>; rel=preload; as=style"),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in fields {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert("cache-groups", HeaderValue::from_static("\"product:42\""));
    response
}

/// Sends one request through the layer and reads back the entry it stored.
fn stored_entry() -> Entry {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = CacheLayer::new(MemoryStore::new());
        let svc = layer.layer(service_fn(|_req: Request<Empty<Bytes>>| {
            ready(Ok::<_, Infallible>(origin_response()))
        }));
        let request = Request::get("http://example.com/products/42")
            .body(Empty::new())
            .unwrap();
        let (parts, _) = Request::get("http://example.com/products/42")
            .body(())
            .unwrap()
            .into_parts();
        let response = svc.oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        match layer.store().get(&layer.cache_key(&parts)).await.unwrap() {
            Lookup::Found(entry @ Entry::Response(_)) => entry,
            other => panic!("the layer did not store the response: {other:?}"),
        }
    })
}

fn codec(c: &mut Criterion) {
    let entry = stored_entry();
    let Entry::Response(response) = &entry else {
        unreachable!()
    };
    assert_eq!(response.body().len(), BODY_BYTES);
    assert_eq!(response.headers().len(), 8, "{:?}", response.headers());
    assert!(!response.tags().is_empty());
    let encoded = entry.encode();
    assert!(matches!(Entry::decode(&encoded), Ok(Entry::Response(_))));

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| b.iter(|| black_box(&entry).encode()));
    group.bench_function("decode", |b| b.iter(|| Entry::decode(black_box(&encoded)).unwrap()));
    group.bench_function("decode_bytes", |b| {
        b.iter(|| Entry::decode_bytes(black_box(encoded.clone())).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = codec
}
criterion_main!(benches);
