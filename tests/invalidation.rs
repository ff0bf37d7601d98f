//! Tagging responses and purging them: Cache-Groups, CacheTags, tag functions,
//! InvalidateLayer (header, extension, rules, RFC 9111 §4.4) and the store's purge API,
//! all through a real axum Router.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tower::ServiceExt;
use tower_response_cache::{
    BypassReason, CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, PurgeMode, Store,
};

/// Origin calls per route, and the version of the data each GET sees.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    version: Arc<AtomicUsize>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

async fn book(State(o): State<Origin>, Path(id): Path<u32>) -> (Extension<CacheTags>, String) {
    o.calls.fetch_add(1, SeqCst);
    let v = o.version.load(SeqCst);
    (
        Extension(CacheTags::new([format!("book:{id}"), "books".into()])),
        format!("book {id} v{v}"),
    )
}

async fn grouped(State(o): State<Origin>) -> (HeaderMap, String) {
    o.calls.fetch_add(1, SeqCst);
    let mut h = HeaderMap::new();
    h.insert("cache-groups", "\"books\", \"reviews\"".parse().unwrap());
    (h, format!("top v{}", o.version.load(SeqCst)))
}

async fn review_by_extension(State(o): State<Origin>, Path(id): Path<u32>) -> (StatusCode, Extension<Invalidate>) {
    o.version.fetch_add(1, SeqCst);
    (
        StatusCode::CREATED,
        Extension(Invalidate::tags([format!("book:{id}"), "reviews".into()])),
    )
}

async fn review_by_header(State(o): State<Origin>) -> (StatusCode, HeaderMap) {
    o.version.fetch_add(1, SeqCst);
    let mut h = HeaderMap::new();
    h.insert("cache-group-invalidation", "\"reviews\"".parse().unwrap());
    (StatusCode::CREATED, h)
}

async fn rejected_review(State(o): State<Origin>) -> (StatusCode, Extension<Invalidate>) {
    o.version.fetch_add(1, SeqCst);
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Extension(Invalidate::tags(["books", "reviews"])),
    )
}

fn routes(origin: &Origin) -> Router {
    Router::new()
        .route("/books/{id}", get(book).delete(|| async { StatusCode::NO_CONTENT }))
        .route("/books/top", get(grouped))
        .route("/books/{id}/reviews", post(review_by_extension))
        .route("/books/{id}/ratings", post(|| async { StatusCode::NO_CONTENT }))
        .route("/reviews", post(review_by_header))
        .route("/rejected", post(rejected_review))
        .route(
            "/moved",
            post(|| async { (StatusCode::SEE_OTHER, [("location", "/books/2")]) }),
        )
        .with_state(origin.clone())
}

/// The catalogue with the invalidation layer inside the cache layer.
fn app(origin: &Origin, store: &MemoryStore) -> Router {
    routes(origin)
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()))
}

struct Reply {
    status: StatusCode,
    cache_status: String,
    body: String,
}

async fn send(app: &Router, method: &str, uri: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cache_status = res
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply {
        status,
        cache_status,
        body,
    }
}

fn is_hit(r: &Reply) -> bool {
    r.cache_status.contains("; hit")
}

#[tokio::test]
async fn cache_tags_extension_tags_the_entry_and_an_invalidate_extension_purges_it() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = app(&origin, &store);
    assert_eq!(send(&app, "GET", "/books/1").await.body, "book 1 v0");
    assert_eq!(send(&app, "GET", "/books/2").await.body, "book 2 v0");
    assert!(is_hit(&send(&app, "GET", "/books/1").await));

    let posted = send(&app, "POST", "/books/1/reviews").await;
    assert_eq!(posted.status, StatusCode::CREATED);

    let after = send(&app, "GET", "/books/1").await;
    assert_eq!(after.body, "book 1 v1", "the next read sees the new data");
    assert!(
        after.cache_status.contains("fwd=miss") && after.cache_status.contains("detail=invalidated"),
        "{}",
        after.cache_status
    );
    let other = send(&app, "GET", "/books/2").await;
    assert!(is_hit(&other), "book:2 was not purged: {}", other.cache_status);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn cache_groups_header_tags_and_cache_group_invalidation_purges() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = app(&origin, &store);
    send(&app, "GET", "/books/top").await;
    assert!(is_hit(&send(&app, "GET", "/books/top").await));
    send(&app, "GET", "/books/1").await;

    assert_eq!(send(&app, "POST", "/reviews").await.status, StatusCode::CREATED);
    let top = send(&app, "GET", "/books/top").await;
    assert_eq!(top.body, "top v1");
    assert!(!is_hit(&top));
    assert!(
        is_hit(&send(&app, "GET", "/books/1").await),
        "only the `reviews` group was purged"
    );
}

#[tokio::test]
async fn failed_mutations_purge_nothing() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let invalidate = InvalidateLayer::new(store.clone());
    let app = routes(&origin)
        .layer(invalidate.clone())
        .layer(CacheLayer::new(store.clone()));
    send(&app, "GET", "/books/1").await;
    assert_eq!(
        send(&app, "POST", "/rejected").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(is_hit(&send(&app, "GET", "/books/1").await), "a 422 must not purge");
    assert_eq!(invalidate.stats().skipped, 1);
    assert_eq!(invalidate.stats().purges, 0);
}

#[tokio::test]
async fn errors_and_cancelled_mutations_purge_nothing() {
    let store = MemoryStore::new();
    let app = app(&Origin::default(), &store);
    send(&app, "GET", "/books/1").await;

    // A service that fails: the error goes back, nothing is purged.
    let failing = tower::service_fn(|_req: Request<axum::body::Body>| async {
        Err::<http::Response<axum::body::Body>, std::io::Error>(std::io::Error::other("database down"))
    });
    let svc = tower::ServiceBuilder::new()
        .layer(InvalidateLayer::new(store.clone()))
        .service(failing);
    let req = Request::post("/books/1").body(axum::body::Body::empty()).unwrap();
    assert!(svc.oneshot(req).await.is_err());
    assert!(is_hit(&send(&app, "GET", "/books/1").await), "an error must not purge");

    // A mutation whose client went away before the response: dropped future, no purge.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let entered_tx = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
    let hanging = tower::service_fn(move |_req: Request<axum::body::Body>| {
        let entered_tx = entered_tx.clone();
        async move {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::future::pending::<()>().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(InvalidateLayer::new(store.clone()))
        .service(hanging);
    let call = tokio::spawn(svc.oneshot(Request::post("/books/1").body(axum::body::Body::empty()).unwrap()));
    entered_rx.await.unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert!(
        is_hit(&send(&app, "GET", "/books/1").await),
        "a cancelled mutation must not purge"
    );
}

/// Rules for `POST /books/{id}/ratings`, which names nothing itself and whose target URI
/// is not the book's: only the rules purge the book.
fn rating_rules(req: &http::request::Parts, _status: StatusCode) -> Vec<String> {
    let id = req
        .uri
        .path()
        .strip_prefix("/books/")
        .and_then(|rest| rest.strip_suffix("/ratings"));
    id.map(|id| vec![format!("book:{id}")]).unwrap_or_default()
}

#[tokio::test]
async fn rules_function_purges_by_route() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = routes(&origin)
        .layer(InvalidateLayer::builder(store.clone()).rules(rating_rules).build())
        .layer(CacheLayer::new(store.clone()));
    send(&app, "GET", "/books/3").await;
    send(&app, "GET", "/books/1").await;
    assert!(is_hit(&send(&app, "GET", "/books/3").await));
    assert_eq!(
        send(&app, "POST", "/books/3/ratings").await.status,
        StatusCode::NO_CONTENT
    );
    assert!(!is_hit(&send(&app, "GET", "/books/3").await));
    assert!(is_hit(&send(&app, "GET", "/books/1").await));
}

#[tokio::test]
async fn a_built_layer_purges_alike_in_every_clone() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let layer = InvalidateLayer::builder(store.clone())
        .rules(rating_rules)
        .mode(PurgeMode::Hard)
        .build();
    let clone = layer.clone();
    let first = routes(&origin)
        .layer(layer.clone())
        .layer(CacheLayer::new(store.clone()));
    let second = routes(&origin).layer(clone).layer(CacheLayer::new(store.clone()));
    for id in [3, 4] {
        send(&first, "GET", &format!("/books/{id}")).await;
        assert!(is_hit(&send(&second, "GET", &format!("/books/{id}")).await));
    }
    send(&first, "POST", "/books/3/ratings").await;
    send(&second, "POST", "/books/4/ratings").await;
    assert!(
        !is_hit(&send(&second, "GET", "/books/3").await),
        "the original's rules ran"
    );
    assert!(!is_hit(&send(&first, "GET", "/books/4").await), "the clone's rules ran");
    assert_eq!(layer.stats().purges, 2, "every clone counts into the same stats");
}

#[tokio::test]
async fn target_uri_and_same_origin_location_are_invalidated() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    // The cache layer alone applies RFC 9111 §4.4 to the target URI.
    let app = routes(&origin).layer(CacheLayer::new(store.clone()));
    send(&app, "GET", "/books/7").await;
    send(&app, "GET", "/books/8").await;
    send(&app, "DELETE", "/books/7").await;
    assert!(
        !is_hit(&send(&app, "GET", "/books/7").await),
        "DELETE /books/7 invalidates GET /books/7"
    );
    assert!(is_hit(&send(&app, "GET", "/books/8").await));

    // And the Location of a successful response.
    let app = routes(&origin)
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()));
    send(&app, "GET", "/books/2").await;
    assert_eq!(send(&app, "POST", "/moved").await.status, StatusCode::SEE_OTHER);
    assert!(
        !is_hit(&send(&app, "GET", "/books/2").await),
        "Location: /books/2 is invalidated"
    );
}

#[tokio::test]
async fn invalidate_layer_works_outside_the_cache_layer_too() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = routes(&origin)
        .layer(CacheLayer::new(store.clone()))
        .layer(InvalidateLayer::new(store.clone()));
    send(&app, "GET", "/books/1").await;
    send(&app, "GET", "/books/top").await;
    send(&app, "POST", "/reviews").await;
    assert!(!is_hit(&send(&app, "GET", "/books/top").await));
    assert!(is_hit(&send(&app, "GET", "/books/1").await));
    send(&app, "POST", "/books/1/reviews").await;
    assert_eq!(send(&app, "GET", "/books/1").await.body, "book 1 v2");
}

#[tokio::test]
async fn programmatic_purges_tags_uri_and_everything() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = app(&origin, &store);
    for uri in ["/books/1", "/books/1?page=2", "/books/2", "/books/top"] {
        send(&app, "GET", uri).await;
    }
    store.purge_tags(["reviews"]).await.unwrap();
    assert!(!is_hit(&send(&app, "GET", "/books/top").await));
    assert!(is_hit(&send(&app, "GET", "/books/2").await));

    store.purge_uri("/books/1").await.unwrap();
    assert!(!is_hit(&send(&app, "GET", "/books/1").await), "the path is purged");
    assert!(
        !is_hit(&send(&app, "GET", "/books/1?page=2").await),
        "in all its variants"
    );
    assert!(is_hit(&send(&app, "GET", "/books/2").await));

    store.purge_all().await.unwrap();
    assert!(!is_hit(&send(&app, "GET", "/books/2").await));
    let stats = store.stats();
    assert_eq!(stats.purges, 3);
    assert!(stats.invalidated >= 3, "{stats:?}");
}

#[tokio::test]
async fn soft_purge_misses_until_stale_serving_is_configured() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = app(&origin, &store);
    send(&app, "GET", "/books/1").await;
    store.soft_purge_tags(["book:1"]).await.unwrap();
    let reply = send(&app, "GET", "/books/1").await;
    assert!(!is_hit(&reply), "{}", reply.cache_status);
    assert!(reply.cache_status.contains("fwd=stale"), "{}", reply.cache_status);
    assert!(
        is_hit(&send(&app, "GET", "/books/1").await),
        "the refreshed entry is served"
    );
    let invalidate = Invalidate::tags(["x"]).soft();
    assert_eq!(invalidate.mode(), PurgeMode::Soft);
}

#[tokio::test]
async fn tag_function_and_limits() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let layer = CacheLayer::builder(store.clone())
        .tag_with(|req, _res| vec![format!("section:{}", req.uri.path().split('/').nth(1).unwrap_or(""))])
        .build();
    let app = routes(&origin).layer(layer.clone());
    send(&app, "GET", "/books/1").await;
    store.purge_tags(["section:books"]).await.unwrap();
    assert!(!is_hit(&send(&app, "GET", "/books/1").await));

    // Four tags (path, book:1, books, section) do not fit in three: not stored.
    let tight = CacheLayer::builder(MemoryStore::new())
        .max_tags_per_entry(3)
        .tag_with(|_, _| vec!["extra".into()])
        .build();
    let app = routes(&origin).layer(tight.clone());
    let first = send(&app, "GET", "/books/1").await;
    assert!(first.cache_status.contains("detail=tags"), "{}", first.cache_status);
    assert!(!is_hit(&send(&app, "GET", "/books/1").await));
    assert_eq!(tight.stats().not_stored.get(&BypassReason::Tags), Some(&2));
}

#[tokio::test]
async fn malformed_cache_groups_is_not_stored() {
    let store = MemoryStore::new();
    let app = Router::new()
        .route(
            "/bad",
            get(|| async { ([("cache-groups", "books, \"unterminated")], "x") }),
        )
        .route("/token", get(|| async { ([("cache-groups", "books")], "x") }))
        .layer(CacheLayer::new(store));
    for uri in ["/bad", "/token"] {
        let r = send(&app, "GET", uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "x");
        assert!(r.cache_status.contains("detail=tags"), "{}", r.cache_status);
    }
}

#[tokio::test]
async fn malformed_invalidation_members_are_dropped_but_valid_ones_purge() {
    let (origin, store) = (Origin::default(), MemoryStore::new());
    let app = routes(&origin)
        .route(
            "/mixed",
            post(|| async { ([("cache-group-invalidation", "\"reviews\", 42")], "ok") }),
        )
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()));
    send(&app, "GET", "/books/top").await;
    assert_eq!(send(&app, "POST", "/mixed").await.status, StatusCode::OK);
    assert!(!is_hit(&send(&app, "GET", "/books/top").await));
}

/// A memory store that counts the purges it is asked for.
#[derive(Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    purges: Arc<AtomicUsize>,
}

impl Store for CountingStore {
    async fn get(
        &self,
        key: &tower_response_cache::CacheKey,
    ) -> Result<tower_response_cache::store::Lookup, tower_response_cache::StoreError> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: tower_response_cache::CacheKey,
        entry: tower_response_cache::store::Entry,
        ttl: std::time::Duration,
    ) -> Result<bool, tower_response_cache::StoreError> {
        self.inner.put(key, entry, ttl).await
    }
    async fn remove(&self, key: &tower_response_cache::CacheKey) -> Result<(), tower_response_cache::StoreError> {
        self.inner.remove(key).await
    }
    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), tower_response_cache::StoreError> {
        self.purges.fetch_add(1, SeqCst);
        self.inner.purge(tags, mode).await
    }
    async fn purge_all(&self) -> Result<(), tower_response_cache::StoreError> {
        self.inner.purge_all().await
    }
    fn handle_id(&self) -> Option<usize> {
        self.inner.handle_id()
    }
}

async fn created() -> StatusCode {
    StatusCode::CREATED
}

#[tokio::test]
async fn a_mutated_uri_is_purged_once_when_both_layers_share_a_store() {
    let shared = CountingStore::default();
    let app = Router::new()
        .route("/books", post(created))
        .layer(InvalidateLayer::new(shared.clone()))
        .layer(CacheLayer::new(shared.clone()));
    let response = app
        .oneshot(Request::post("/books").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        shared.purges.load(SeqCst),
        1,
        "the CacheLayer did not repeat the InvalidateLayer's purge"
    );

    // Different stores: each layer purges its own.
    let (inside, outside) = (CountingStore::default(), CountingStore::default());
    let app = Router::new()
        .route("/books", post(created))
        .layer(InvalidateLayer::new(inside.clone()))
        .layer(CacheLayer::new(outside.clone()));
    app.oneshot(Request::post("/books").body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!((inside.purges.load(SeqCst), outside.purges.load(SeqCst)), (1, 1));
}
