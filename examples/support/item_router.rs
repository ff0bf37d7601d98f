//! The hit-path workload of `benches/hit_path.rs` and `examples/hit_workload.rs`: one axum
//! route answering 1 KiB of static JSON, with or without the cache, and a seeded generator.
//! Included with `#[path]`.

// Each includer uses its own subset.
#![allow(dead_code)]
use axum::body::Body;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};
use tower_response_cache::{CacheLayer, MemoryStore};

pub(crate) fn app(cached: bool) -> (Router, Option<CacheLayer<MemoryStore>>) {
    let mut json = String::from("{\"id\":\"item\",\"data\":\"");
    while json.len() < 1024 - 2 {
        json.push('x');
    }
    json.push_str("\"}");
    let json: &'static str = Box::leak(json.into_boxed_str());
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
    if !cached {
        return (router, None);
    }
    let layer = CacheLayer::new(MemoryStore::builder().max_bytes(256 << 20).build());
    (router.layer(layer.clone()), Some(layer))
}

pub(crate) fn uris(keys: u64) -> Vec<Uri> {
    (0..keys).map(|i| format!("/item/{i}").parse().unwrap()).collect()
}

pub(crate) async fn fetch(router: &mut Router, uri: &Uri) -> usize {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = uri.clone();
    let ready = ServiceExt::<Request<Body>>::ready(router).await.unwrap();
    let response = ready.call(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes().len()
}

/// splitmix64: a small, fixed-seed generator so that every run requests the same sequence.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
