//! `PurgeEndpoint`: purging by tag or URI over HTTP, behind the application's authorisation
//! check; refused, malformed and oversized requests answered with a 4xx and the store
//! untouched. One test runs it behind a real server on loopback.

#[path = "common/loopback.rs"]
mod loopback;

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loopback::{serve, within};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;
use tower_response_cache::invalidate::PurgeEndpoint;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::{CacheKey, CacheLayer, CacheTags, MemoryStore, PurgeMode, Store, StoreError};

/// Tags and mode of one purge.
type Purge = (Vec<String>, PurgeMode);

/// A memory store that records the purges it is asked for.
#[derive(Clone, Default)]
struct Recorded {
    inner: MemoryStore,
    purges: Arc<Mutex<Vec<Purge>>>,
}

impl Recorded {
    fn purges(&self) -> Vec<Purge> {
        self.purges.lock().unwrap().clone()
    }
}

impl Store for Recorded {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.put(key, entry, ttl).await
    }
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.purges.lock().unwrap().push((tags.to_vec(), mode));
        self.inner.purge(tags, mode).await
    }
    async fn purge_all(&self) -> Result<(), StoreError> {
        self.purges.lock().unwrap().push((vec!["*".into()], PurgeMode::Hard));
        self.inner.purge_all().await
    }
}

const TOKEN: &str = "Bearer s3cret";

fn endpoint(store: Recorded) -> PurgeEndpoint<Recorded> {
    PurgeEndpoint::new(store, |request| {
        request.headers.get("authorization").is_some_and(|value| value == TOKEN)
    })
    .max_body_bytes(256)
}

fn request(method: &str, path: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", TOKEN);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

/// Status and JSON body of the endpoint's answer.
async fn call(store: &Recorded, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = within(endpoint(store.clone()).oneshot(request)).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let status = response.status();
    let body = within(response.into_body().collect()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

fn error_of(body: &serde_json::Value) -> &str {
    body["error"].as_str().expect("an error message")
}

const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn tags_are_purged_from_json_and_form_bodies() {
    let store = Recorded::default();
    let (status, body) = call(
        &store,
        request("POST", "/purge", JSON, r#"{"tags":["books","book:1","books"]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"purged": {"tags": ["book:1", "books"], "mode": "hard"}})
    );

    let form = "tags=reviews&tags=book%3A2&mode=soft";
    let (status, body) = call(
        &store,
        request(
            "POST",
            "/purge",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            form,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"purged": {"tags": ["book:2", "reviews"], "mode": "soft"}})
    );

    assert_eq!(
        store.purges(),
        [
            (vec!["book:1".to_string(), "books".to_string()], PurgeMode::Hard),
            (vec!["book:2".to_string(), "reviews".to_string()], PurgeMode::Soft),
        ]
    );
}

#[tokio::test]
async fn purge_method_purges_the_path() {
    let store = Recorded::default();
    let (status, body) = call(&store, request("PURGE", "/books/1?page=2", None, Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"purged": {"paths": ["/books/1"], "mode": "hard"}})
    );
    assert_eq!(store.purges(), [(vec!["path:/books/1".to_string()], PurgeMode::Hard)]);
}

#[tokio::test]
async fn unauthorised_requests_are_refused_before_anything_else() {
    let store = Recorded::default();
    let wrong_token = |method: &str, path: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", "Bearer guess")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    for request in [
        wrong_token("POST", "/purge", r#"{"tags":["books"]}"#),
        wrong_token("PURGE", "/books/1", ""),
        wrong_token("POST", "/purge", "not even JSON"),
        wrong_token("DELETE", "/anything", ""),
        Request::post("/purge")
            .body(Body::from(r#"{"tags":["books"]}"#))
            .unwrap(),
    ] {
        let (status, body) = call(&store, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(error_of(&body), "not authorised to purge");
    }
    assert!(store.purges().is_empty(), "the store was not touched");
}

#[tokio::test]
async fn malformed_requests_get_a_400_with_a_clear_message() {
    let store = Recorded::default();
    let long_tag = format!(r#"{{"tags":["{}"]}}"#, "x".repeat(1025));
    let cases: [(Option<&str>, &str, &str); 12] = [
        (JSON, "{\"tags\": [\"books\"", "malformed JSON"),
        (JSON, r#"["books"]"#, "expected a JSON object"),
        (JSON, r#"{"tags": "books"}"#, "\"tags\" must be an array of strings"),
        (JSON, r#"{"tags": [1]}"#, "tags must be strings, not 1"),
        (JSON, r#"{"tags": []}"#, "no tags to purge"),
        (JSON, r#"{}"#, "no tags to purge"),
        (JSON, r#"{"tags": ["a"], "mode": "gentle"}"#, "unknown mode \"gentle\""),
        (JSON, r#"{"tags": ["a"], "mdoe": "soft"}"#, "unknown field \"mdoe\""),
        (JSON, r#"{"tags": [""]}"#, "a tag is empty"),
        (JSON, r#"{"tags": ["a\u0000b"]}"#, "holds control characters"),
        (FORM, "tag=books", "unknown field \"tag\""),
        (FORM, "mode=soft", "no tags to purge"),
    ];
    for (content_type, body, message) in cases {
        let (status, answer) = call(&store, request("POST", "/purge", content_type, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(error_of(&answer).contains(message), "{body}: {answer}");
    }
    let store_big = Recorded::default();
    let endpoint = PurgeEndpoint::new(store_big.clone(), |_| true);
    let response = endpoint
        .oneshot(request("POST", "/purge", JSON, long_tag))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a tag over 1024 bytes");
    assert!(store.purges().is_empty() && store_big.purges().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_refused_whether_declared_or_streamed() {
    let store = Recorded::default();
    let big = format!(r#"{{"tags":["{}"]}}"#, "x".repeat(300));

    // Declared by Content-Length: refused before reading.
    let declared = request("POST", "/purge", JSON, big.clone());
    let mut declared = declared;
    declared.headers_mut().insert("content-length", big.len().into());
    let (status, body) = call(&store, declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&body), "the body is over 256 bytes");

    // Streamed without a length: cut off at the bound.
    let chunks = big
        .into_bytes()
        .chunks(50)
        .map(|chunk| Ok::<_, std::io::Error>(Bytes::copy_from_slice(chunk)))
        .collect::<Vec<_>>();
    let streamed = request(
        "POST",
        "/purge",
        JSON,
        Body::from_stream(futures_util::stream::iter(chunks)),
    );
    let (status, _) = call(&store, streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(store.purges().is_empty());
}

#[tokio::test]
async fn other_methods_paths_and_content_types_are_refused() {
    let store = Recorded::default();
    let response = within(endpoint(store.clone()).oneshot(request("GET", "/purge", None, Body::empty())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST, PURGE");

    let (status, _) = call(&store, request("POST", "/elsewhere", JSON, r#"{"tags":["a"]}"#)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&store, request("POST", "/purge", Some("text/plain"), "tags=a")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(&body).contains("application/json"));
    let (status, _) = call(&store, request("POST", "/purge", None, r#"{"tags":["a"]}"#)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(store.purges().is_empty());
}

async fn book() -> (Extension<CacheTags>, [(&'static str, &'static str); 1], &'static str) {
    (
        Extension(CacheTags::new(["books"])),
        [("cache-control", "max-age=60")],
        "a book",
    )
}

#[tokio::test]
async fn mounted_behind_a_real_server_it_purges_what_the_cache_holds() {
    let store = Recorded::default();
    let app = Router::new()
        .route("/books/{id}", get(book))
        .layer(CacheLayer::new(store.clone()))
        .nest_service("/cache", endpoint(store.clone()));
    let (addr, server) = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |method: &str, path: &str, auth: &str, content_type: &str, body: &'static str| {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", content_type);
        if !auth.is_empty() {
            request = request.header("authorization", auth);
        }
        let request = request.body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap();
        let client = client.clone();
        async move {
            let response = within(client.request(request)).await.expect("an answer");
            let status = response.status();
            let cache_status = response
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = within(response.into_body().collect()).await.unwrap().to_bytes();
            (status, cache_status, body)
        }
    };
    let hit = |cache_status: &str| cache_status.contains("; hit");

    send("GET", "/books/1", "", "text/plain", "").await;
    assert!(hit(&send("GET", "/books/1", "", "text/plain", "").await.1), "stored");

    let (status, _, _) = send("PURGE", "/cache/books/1", "Bearer guess", "text/plain", "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        hit(&send("GET", "/books/1", "", "text/plain", "").await.1),
        "still stored"
    );

    let (status, _, body) = send("PURGE", "/cache/books/1", TOKEN, "text/plain", "").await;
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"purged": {"paths": ["/books/1"], "mode": "hard"}})
    );
    assert!(
        !hit(&send("GET", "/books/1", "", "text/plain", "").await.1),
        "purged by path"
    );
    assert!(
        hit(&send("GET", "/books/1", "", "text/plain", "").await.1),
        "stored again"
    );

    let (status, _, _) = send(
        "POST",
        "/cache/purge",
        TOKEN,
        "application/json",
        r#"{"tags":["books"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !hit(&send("GET", "/books/1", "", "text/plain", "").await.1),
        "purged by tag"
    );
    server.abort();
}
