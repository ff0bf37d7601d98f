//! The layer in the places axum users put it: `Router::layer`, `Router::route_layer`,
//! nested routers, handlers with extractors and state, and around a whole Router.

mod common;

use axum::extract::{Path, Query, State};
use axum::routing;
use axum::{Json, Router};
use common::*;
use http::{Method, StatusCode};
use serde::Deserialize;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tower::Layer;

#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

#[derive(Deserialize)]
struct Page {
    page: u32,
}

async fn book(State(calls): State<Calls>, Path(id): Path<u32>) -> Json<serde_json::Value> {
    calls.0.fetch_add(1, SeqCst);
    Json(serde_json::json!({ "id": id, "title": format!("Book {id}") }))
}

async fn books(State(calls): State<Calls>, Query(query): Query<Page>) -> String {
    calls.0.fetch_add(1, SeqCst);
    format!("page {}", query.page)
}

async fn add_review(State(calls): State<Calls>, Path(id): Path<u32>) -> (StatusCode, String) {
    calls.0.fetch_add(1, SeqCst);
    (StatusCode::CREATED, format!("review of {id}"))
}

fn catalogue(calls: &Calls) -> Router {
    Router::new()
        .route("/books", routing::get(books))
        .route("/books/{id}", routing::get(book))
        .route("/books/{id}/reviews", routing::post(add_review))
        .with_state(calls.clone())
}

#[tokio::test]
async fn works_with_router_layer() {
    let calls = Calls::default();
    let app = catalogue(&calls).layer(default_layer());

    let miss = send(&app, get("/books/7")).await;
    assert_stored(&miss);
    assert_eq!(header(&miss, "content-type"), Some("application/json"));
    let hit = send(&app, get("/books/7")).await;
    assert_hit(&hit);
    assert_eq!(text(hit).await, r#"{"id":7,"title":"Book 7"}"#);

    assert_stored(&send(&app, get("/books?page=2")).await);
    let page = send(&app, get("/books?page=2")).await;
    assert_hit(&page);
    assert_eq!(text(page).await, "page 2");

    let review = send(&app, request(Method::POST, "/books/7/reviews", &[])).await;
    assert_eq!(review.status(), StatusCode::CREATED);
    assert!(cache_status(&review).contains("fwd=method"));
    assert_eq!(calls.count(), 3);
}

#[tokio::test]
async fn works_with_router_route_layer() {
    let calls = Calls::default();
    let app = catalogue(&calls).route_layer(default_layer());

    assert_stored(&send(&app, get("/books/7")).await);
    let hit = send(&app, get("/books/7")).await;
    assert_hit(&hit);
    assert_eq!(text(hit).await, r#"{"id":7,"title":"Book 7"}"#);
    assert_eq!(calls.count(), 1);

    // Unmatched paths never reach a route layer.
    let missing = send(&app, get("/nowhere")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.headers().get("cache-status").is_none());
}

#[tokio::test]
async fn extractor_rejections_pass_through_uncached() {
    let calls = Calls::default();
    let app = catalogue(&calls).layer(default_layer());
    for _ in 0..2 {
        let rejected = send(&app, get("/books?page=not-a-number")).await;
        assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
        assert!(
            cache_status(&rejected).contains("detail=status"),
            "{}",
            cache_status(&rejected)
        );
    }
    assert_eq!(calls.count(), 0);
}

#[tokio::test]
async fn works_on_a_nested_router() {
    let calls = Calls::default();
    let app = Router::new().nest("/api", catalogue(&calls).layer(default_layer()));
    assert_stored(&send(&app, get("/api/books/1")).await);
    assert_hit(&send(&app, get("/api/books/1")).await);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn works_around_a_whole_router() {
    let calls = Calls::default();
    let app = default_layer().layer(catalogue(&calls));
    assert_stored(&send(&app, get("/books/3")).await);
    let hit = send(&app, get("/books/3")).await;
    assert_hit(&hit);
    assert_eq!(text(hit).await, r#"{"id":3,"title":"Book 3"}"#);
    assert_eq!(calls.count(), 1);
}

#[tokio::test]
async fn two_layers_over_one_store_share_its_entries() {
    let store = tower_response_cache::MemoryStore::new();
    let (calls_a, calls_b) = (Calls::default(), Calls::default());
    let a = catalogue(&calls_a).layer(tower_response_cache::CacheLayer::new(store.clone()));
    let b = catalogue(&calls_b).layer(tower_response_cache::CacheLayer::new(store.clone()));
    assert_stored(&send(&a, get("/books/1")).await);
    assert_hit(&send(&b, get("/books/1")).await);
    assert_eq!((calls_a.count(), calls_b.count()), (1, 0));
    assert!(store.stats().entries >= 1);
}

#[tokio::test]
async fn works_with_any_tower_service_and_body_types() {
    use bytes::Bytes;
    use http_body_util::Full;
    use std::convert::Infallible;

    let calls = Calls::default();
    let counter = calls.clone();
    let service = tower::service_fn(move |request: http::Request<String>| {
        counter.0.fetch_add(1, SeqCst);
        let body = Full::new(Bytes::from(format!("{} {}", request.uri().path(), request.body())));
        async move { Ok::<_, Infallible>(http::Response::new(body)) }
    });
    let app = default_layer().layer(service);
    let request = || http::Request::get("/plain").body(String::from("ignored")).unwrap();

    let miss = send(&app, request()).await;
    assert_stored(&miss);
    assert_eq!(body_bytes(miss).await, "/plain ignored");
    let hit = send(&app, request()).await;
    assert_hit(&hit);
    assert_eq!(body_bytes(hit).await, "/plain ignored");
    assert_eq!(calls.count(), 1);
}
