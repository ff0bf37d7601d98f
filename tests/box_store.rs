//! A store chosen at run time (`BoxStore`, `Arc<S>`) behind a real axum Router: entries are
//! served from it, an `InvalidateLayer` on a clone purges what the `CacheLayer` stored, and
//! the two layers purge a mutated URI once, as they do with the store itself.

use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tower::ServiceExt;
use tower_response_cache::store::BoxStore;
use tower_response_cache::{CacheLayer, InvalidateLayer, MemoryStore, Store};

/// `GET /books/1` answers the number of origin calls so far; `POST /books/1` succeeds.
fn app<S: Store>(store: S, calls: Arc<AtomicUsize>) -> Router {
    let read = move || {
        let calls = calls.clone();
        async move { format!("call {}", calls.fetch_add(1, SeqCst) + 1) }
    };
    Router::new()
        .route("/books/1", get(read).post(|| async { StatusCode::NO_CONTENT }))
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store))
}

async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn a_box_store_serves_hits_and_a_purge_through_one_clone_reaches_the_other() {
    let memory = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(BoxStore::new(memory.clone()), calls.clone());
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 1");
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 1", "a hit");
    assert_eq!(memory.stats().entries, 1, "stored in the store inside the box");

    let purges = memory.stats().purges;
    assert_eq!(send(&app, "POST", "/books/1").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        memory.stats().purges,
        purges + 1,
        "both layers hold one store: the mutated URI is purged once"
    );
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 2", "purged");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test]
async fn an_arc_store_serves_hits_and_purges_once() {
    let memory = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(memory.clone(), calls.clone());
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 1");
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 1", "a hit");
    let purges = memory.stats().purges;
    assert_eq!(send(&app, "POST", "/books/1").await.0, StatusCode::NO_CONTENT);
    assert_eq!(memory.stats().purges, purges + 1, "purged once");
    assert_eq!(send(&app, "GET", "/books/1").await.1, "call 2", "purged");
}

#[tokio::test]
async fn layers_on_different_stores_each_purge() {
    // The contrast that shows the count above is the dedupe at work.
    let (inner, outer) = (MemoryStore::new(), MemoryStore::new());
    let app = Router::new()
        .route("/books/1", axum::routing::post(|| async { StatusCode::NO_CONTENT }))
        .layer(InvalidateLayer::new(BoxStore::new(inner.clone())))
        .layer(CacheLayer::new(BoxStore::new(outer.clone())));
    assert_eq!(send(&app, "POST", "/books/1").await.0, StatusCode::NO_CONTENT);
    assert_eq!((inner.stats().purges, outer.stats().purges), (1, 1));
}
