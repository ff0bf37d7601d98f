//! Helpers shared by the integration tests: an origin that counts its calls, request
//! builders, and readers for what the cache puts on responses.

// Each test file is its own crate and uses its own subset of these helpers.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::{any, MethodRouter};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceExt};
use tower_response_cache::{CacheLayer, MemoryStore, Store};

/// The longest any response or body frame may take; past it the test has hung.
pub const WAIT: Duration = Duration::from_secs(5);

/// The `Cache-Status` name the layer uses unless configured otherwise.
pub const NAME: &str = "tower-response-cache";

/// A layer with the default configuration over a fresh in-memory store.
pub fn default_layer() -> CacheLayer<MemoryStore> {
    CacheLayer::new(MemoryStore::new())
}

/// The application behind the cache: counts how often it is really called.
#[derive(Clone, Default)]
pub struct Origin {
    calls: Arc<AtomicUsize>,
}

impl Origin {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests reached the origin.
    pub fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// A handler for every method that counts the call and answers `respond(request)`.
    pub fn handler<F, R>(&self, respond: F) -> MethodRouter
    where
        F: Fn(Request) -> R + Clone + Send + Sync + 'static,
        R: IntoResponse,
    {
        let calls = self.calls.clone();
        any(move |request: Request| {
            calls.fetch_add(1, SeqCst);
            let response = respond(request).into_response();
            async move { response }
        })
    }

    /// A router that answers every path with `respond`, behind `cache` (`Router::layer`).
    pub fn app<St, F, R>(&self, cache: CacheLayer<St>, respond: F) -> Router
    where
        St: Store,
        F: Fn(Request) -> R + Clone + Send + Sync + 'static,
        R: IntoResponse,
    {
        Router::new().route("/{*path}", self.handler(respond)).layer(cache)
    }
}

/// A GET request for `uri`.
pub fn get(uri: &str) -> Request {
    request(Method::GET, uri, &[])
}

/// A GET request for `uri` with extra headers.
pub fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request {
    request(Method::GET, uri, headers)
}

/// A bodiless request.
pub fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("valid request")
}

/// Sends one request through a fresh clone of `service` (a Router, or anything wrapping one).
pub async fn send<S, ReqB, B>(service: &S, request: http::Request<ReqB>) -> Response<B>
where
    S: Service<http::Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Debug,
{
    tokio::time::timeout(WAIT, service.clone().oneshot(request))
        .await
        .expect("the response came in time")
        .expect("the service answered")
}

/// This cache's `Cache-Status` member; every response must carry one.
pub fn cache_status<B>(response: &Response<B>) -> &str {
    response
        .headers()
        .get("cache-status")
        .expect("every response carries Cache-Status")
        .to_str()
        .expect("Cache-Status is ASCII")
}

/// A response header as text, if present.
pub fn header<'r, B>(response: &'r Response<B>, name: &str) -> Option<&'r str> {
    response.headers().get(name).map(|v| v.to_str().expect("ASCII header"))
}

/// The `ttl=` parameter of a hit's `Cache-Status`.
pub fn ttl<B>(response: &Response<B>) -> u64 {
    cache_status(response)
        .split("; ")
        .find_map(|member| member.strip_prefix("ttl="))
        .expect("a hit carries ttl=")
        .parse()
        .expect("ttl is a number")
}

/// The `Age` header in seconds.
pub fn age<B>(response: &Response<B>) -> u64 {
    header(response, "age")
        .expect("a hit carries Age")
        .parse()
        .expect("Age is a number")
}

/// Asserts the response came from the cache: `hit` in `Cache-Status` and an `Age`.
pub fn assert_hit<B>(response: &Response<B>) {
    let status = cache_status(response);
    assert!(status.starts_with(&format!("{NAME}; hit; ttl=")), "not a hit: {status}");
    age(response);
}

/// Asserts the response came from the origin and was stored.
pub fn assert_stored<B>(response: &Response<B>) {
    let status = cache_status(response);
    assert!(
        status.contains("; fwd=") && status.ends_with("; stored"),
        "not a stored miss: {status}"
    );
    assert!(response.headers().get("age").is_none(), "a miss carries no Age");
}

/// Asserts the response came from the origin and was not stored, for `detail`.
pub fn assert_not_stored<B>(response: &Response<B>, detail: &str) {
    let status = cache_status(response);
    assert!(status.contains("; fwd="), "not forwarded: {status}");
    assert!(!status.contains("; stored"), "stored: {status}");
    assert!(
        status.ends_with(&format!("; detail={detail}")),
        "expected detail={detail}: {status}"
    );
    assert!(
        response.headers().get("age").is_none(),
        "a forwarded response carries no Age"
    );
}

/// The whole body and its trailers, or the error the body ended with.
pub async fn read_body<B>(body: B) -> Result<(Bytes, Option<HeaderMap>), B::Error>
where
    B: http_body::Body,
{
    let mut body = std::pin::pin!(body);
    let mut data = BytesMut::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the body frame came in time")
    {
        let frame = frame?;
        match frame.into_data() {
            Ok(mut chunk) => data.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining())),
            Err(frame) => {
                let more = frame.into_trailers().ok().expect("a frame is data or trailers");
                trailers.get_or_insert_with(HeaderMap::new).extend(more);
            }
        }
    }
    Ok((data.freeze(), trailers))
}

/// The whole body of a response that must not fail.
pub async fn body_bytes<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: Debug,
{
    read_body(response.into_body()).await.expect("the body is complete").0
}

/// The whole body as UTF-8 text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: Debug,
{
    String::from_utf8(body_bytes(response).await.to_vec()).expect("UTF-8 body")
}

/// Waits (bounded, 20 s) until `condition` holds; the outcome is decided by `condition`, the
/// polling interval only paces the wait.
pub async fn until(what: &str, condition: impl Fn() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}
