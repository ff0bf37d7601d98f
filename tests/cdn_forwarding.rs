//! Purges passed on to a CDN: `PurgeForwarding` with `HttpPurgeSink` against a real HTTP
//! server on loopback that records what it receives, and an app whose requests a failing
//! CDN never delays or fails.

#[path = "common/loopback.rs"]
mod loopback;

use axum::extract::{Path, Request as AxumRequest};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{HeaderMap, StatusCode};
use loopback::{serve, within};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_response_cache::store::{HttpPurgeSink, PurgeForwarding};
use tower_response_cache::{CacheLayer, Invalidate, InvalidateLayer, MemoryStore, Store};

/// One request the CDN received.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    headers: HeaderMap,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A CDN purge API on loopback: records every request, answers `503` to the first
/// `failures` of them and `200` to the rest.
async fn cdn(failures: usize) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let answered = Arc::new(AtomicUsize::new(0));
    let app = Router::new().fallback(move |request: AxumRequest| {
        let (tx, answered) = (tx.clone(), answered.clone());
        async move {
            tx.send(Received {
                method: request.method().to_string(),
                path: request.uri().path().to_owned(),
                headers: request.headers().clone(),
            })
            .ok();
            match answered.fetch_add(1, SeqCst) < failures {
                true => StatusCode::SERVICE_UNAVAILABLE,
                false => StatusCode::OK,
            }
        }
    });
    let (addr, _server) = serve(app).await;
    (format!("http://{addr}"), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    within(rx.recv()).await.expect("the CDN is still recording")
}

/// Waits until `holds` (a counter the sink's task updates after the CDN has answered).
async fn until(holds: impl Fn() -> bool) {
    within(async {
        while !holds() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn fastly(base: &str) -> HttpPurgeSink {
    HttpPurgeSink::fastly("svc1", "secret-token")
        .api_base(base)
        .site("shop.example")
}

fn quick_retries<K: tower_response_cache::store::PurgeSink>(sink: K) -> PurgeForwarding<MemoryStore> {
    PurgeForwarding::builder(MemoryStore::new(), sink)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .timeout(Duration::from_secs(5))
        .build()
}

#[tokio::test]
async fn fastly_purges_are_sent_as_its_api_expects_and_retried_after_a_503() {
    let (base, mut cdn) = cdn(1).await;
    let store = quick_retries(fastly(&base));

    store.purge_tags(["books", "book:1"]).await.unwrap();
    for attempt in ["answered 503", "retried"] {
        let got = next(&mut cdn).await;
        assert_eq!(
            (got.method.as_str(), got.path.as_str()),
            ("POST", "/service/svc1/purge"),
            "{attempt}"
        );
        assert_eq!(got.header("surrogate-key"), Some("books book:1"), "{attempt}");
        assert_eq!(got.header("fastly-key"), Some("secret-token"), "{attempt}");
        assert_eq!(got.header("fastly-soft-purge"), None, "{attempt}");
    }

    store.soft_purge_tags(["reviews"]).await.unwrap();
    let got = next(&mut cdn).await;
    assert_eq!(got.path, "/service/svc1/purge");
    assert_eq!(got.header("surrogate-key"), Some("reviews"));
    assert_eq!(got.header("fastly-soft-purge"), Some("1"));

    store.purge_uri("https://shop.example/books/7?page=2").await.unwrap();
    let got = next(&mut cdn).await;
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/purge/shop.example/books/7")
    );
    assert_eq!(got.header("surrogate-key"), None);

    store.purge_all().await.unwrap();
    let got = next(&mut cdn).await;
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/service/svc1/purge_all")
    );

    until(|| store.stats().delivered == 4).await;
    let stats = store.stats();
    assert_eq!(
        (stats.delivered, stats.retries, stats.failed, stats.dropped),
        (4, 1, 0, 0)
    );
    assert!(cdn.try_recv().is_err(), "nothing more was sent");
}

#[tokio::test]
async fn per_url_purges_use_the_purge_method() {
    let (base, mut cdn) = cdn(0).await;
    let store = quick_retries(
        HttpPurgeSink::per_url(&base)
            .tag_header("xkey-purge")
            .header("x-token", "t"),
    );

    store.purge_uri("/books/1").await.unwrap();
    let got = next(&mut cdn).await;
    assert_eq!((got.method.as_str(), got.path.as_str()), ("PURGE", "/books/1"));
    assert_eq!(got.header("x-token"), Some("t"));

    store.purge_tags(["books", "authors"]).await.unwrap();
    let got = next(&mut cdn).await;
    assert_eq!((got.method.as_str(), got.path.as_str()), ("PURGE", "/"));
    assert_eq!(got.header("xkey-purge"), Some("books authors"));
}

async fn add_review(Path(id): Path<u32>) -> (StatusCode, Extension<Invalidate>) {
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

fn shop(store: PurgeForwarding<MemoryStore>) -> Router {
    Router::new()
        .route("/books/{id}", get(|| async { "a book" }))
        .route("/books/{id}/reviews", post(add_review))
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store))
}

fn post_review() -> http::Request<axum::body::Body> {
    http::Request::post("/books/3/reviews")
        .body(axum::body::Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_mutation_through_the_app_reaches_the_cdn_once() {
    let (base, mut cdn) = cdn(0).await;
    let store = quick_retries(fastly(&base));
    let response = within(shop(store.clone()).oneshot(post_review())).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let tags = next(&mut cdn).await;
    assert_eq!(tags.path, "/service/svc1/purge");
    assert_eq!(tags.header("surrogate-key"), Some("book:3"));
    let target = next(&mut cdn).await;
    assert_eq!(target.path, "/purge/shop.example/books/3/reviews");
    // Purges are delivered in order: had the CacheLayer on the same store purged the
    // target a second time, that purge would come before this one.
    store.purge_tags(["marker"]).await.unwrap();
    let marker = next(&mut cdn).await;
    assert_eq!(marker.header("surrogate-key"), Some("marker"));
}

#[tokio::test]
async fn a_cdn_that_never_answers_neither_delays_nor_fails_requests() {
    // Accepts connections and never answers.
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (accepted, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
            accepted.send(()).ok();
        }
    });
    let store = PurgeForwarding::builder(MemoryStore::new(), fastly(&base))
        .timeout(Duration::from_secs(600))
        .build();
    let app = shop(store.clone());

    for _ in 0..3 {
        let response = within(app.clone().oneshot(post_review())).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let read = http::Request::get("/books/3").body(axum::body::Body::empty()).unwrap();
    let response = within(app.oneshot(read)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    within(connections.recv())
        .await
        .expect("the sink is trying to reach the CDN");
    assert_eq!(store.stats().delivered, 0);
}
