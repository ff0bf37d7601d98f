//! What the layer tells: the stats snapshot, `Cache-Status` on every response (with the
//! configured name), and the store failing open.

mod common;

use axum::extract::Request;
use common::*;
use http::header::CACHE_CONTROL;
use http::Method;
use std::time::Duration;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::{
    BypassReason, CacheKey, CacheLayer, CacheOutcome, CacheStatusHeader, CacheStatusName, MemoryStore, PurgeMode,
    Served, StaleReason, Store, StoreError,
};

/// Answers by path: `/nostore` says `no-store`, `/cookie` sets a cookie, others are plain.
fn by_path(request: Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    match request.uri().path() {
        "/nostore" => ([(CACHE_CONTROL, "no-store")], "fresh every time").into_response(),
        "/cookie" => ([("set-cookie", "a=b")], "cookie").into_response(),
        _ => "plain".into_response(),
    }
}

#[tokio::test]
async fn stats_count_hits_misses_stores_and_bypasses_by_reason() {
    let origin = Origin::new();
    let layer = default_layer();
    let app = origin.app(layer.clone(), by_path);

    send(&app, get("/a")).await; // miss, stored
    send(&app, get("/a")).await; // hit
    send(&app, get("/a")).await; // hit
    send(&app, request(Method::HEAD, "/a", &[])).await; // hit
    send(&app, request(Method::POST, "/a", &[])).await; // bypass: method
    send(&app, request(Method::DELETE, "/a", &[])).await; // bypass: method
    send(&app, get("/nostore")).await; // miss, not stored: no-store
    send(&app, get("/cookie")).await; // miss, not stored: set-cookie
    send(&app, get_with("/b", &[("range", "bytes=0-1")])).await; // bypass: range
    send(&app, request(Method::HEAD, "/c", &[])).await; // miss, not stored: head

    let stats = layer.stats();
    assert_eq!(stats.hits, 3);
    assert_eq!(stats.misses, 4);
    assert_eq!(stats.invalidated_misses, 0);
    assert_eq!(stats.stores, 1);
    assert_eq!(stats.store_errors, 0);
    // Requests not looked up, and responses not stored, each by reason.
    let bypasses: Vec<(&str, u64)> = stats.bypasses.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(bypasses, [("method", 2), ("range", 1)]);
    assert_eq!(stats.total_bypasses(), 3);
    let not_stored: Vec<(&str, u64)> = stats.not_stored.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(not_stored, [("head", 1), ("no-store", 1), ("set-cookie", 1)]);
    assert_eq!(stats.total_not_stored(), 3);
    assert_eq!(origin.calls(), 7);
}

#[tokio::test]
async fn stats_are_shared_by_every_clone_of_the_layer() {
    let layer = default_layer();
    let origin = Origin::new();
    let first = origin.app(layer.clone(), by_path);
    let second = origin.app(layer.clone(), by_path);
    send(&first, get("/a")).await;
    send(&second, get("/a")).await;
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.hits, stats.stores), (1, 1, 1));
    assert_eq!(origin.calls(), 1, "both routers share the layer's store");
}

#[tokio::test]
async fn bypass_reason_names_match_cache_status_details() {
    let names = [
        (BypassReason::Method, "method"),
        (BypassReason::Credentials, "credentials"),
        (BypassReason::Range, "range"),
        (BypassReason::NoStore, "no-store"),
        (BypassReason::Private, "private"),
        (BypassReason::SetCookie, "set-cookie"),
        (BypassReason::VaryStar, "vary"),
        (BypassReason::BodyTooLarge, "too-large"),
        (BypassReason::BodyError, "body-error"),
        (BypassReason::StoreError, "store-error"),
    ];
    for (reason, name) in names {
        assert_eq!(reason.as_str(), name);
        assert_eq!(reason.to_string(), name);
    }
}

#[tokio::test]
async fn every_response_carries_cache_status_under_the_configured_name() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .cache_status_name(CacheStatusName::new("edge").unwrap())
        .build();
    let app = origin.app(layer, by_path);
    let responses = [
        send(&app, get("/a")).await,
        send(&app, get("/a")).await,
        send(&app, request(Method::POST, "/a", &[])).await,
        send(&app, get("/nostore")).await,
        send(&app, get_with("/a", &[("range", "bytes=0-1")])).await,
        send(&app, get_with("/a", &[("if-none-match", "*")])).await,
    ];
    for response in &responses {
        let status = cache_status(response);
        assert!(status.starts_with("edge; "), "{status}");
        assert_eq!(response.headers().get_all("cache-status").iter().count(), 1);
    }
}

#[test]
fn an_invalid_cache_status_name_is_an_error_not_a_silent_default() {
    for bad in ["two words", "1st", "", "a;b", "näme"] {
        let error = CacheStatusName::new(bad).expect_err(bad);
        assert!(error.to_string().contains("not a structured-field token"), "{error}");
    }
    assert_eq!("edge/1.0".parse::<CacheStatusName>().unwrap().as_str(), "edge/1.0");
}

/// Every response carries the typed outcome, on every path: miss stored, hit, HEAD hit,
/// bypass, not stored with its reason, stale.
#[tokio::test]
async fn every_response_carries_its_typed_outcome() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| {
        use axum::response::IntoResponse;
        match request.uri().path() {
            "/nostore" => ([(CACHE_CONTROL, "no-store")], "x").into_response(),
            "/stale" => ([(CACHE_CONTROL, "max-age=0, stale-while-revalidate=60")], "x").into_response(),
            _ => "plain".into_response(),
        }
    });
    let outcome = |response: &http::Response<_>| *response.extensions().get::<CacheOutcome>().expect("an outcome");
    let first = outcome(&send(&app, get("/a")).await);
    assert_eq!(
        (first.served(), first.stored(), first.not_stored()),
        (Served::Miss, true, None)
    );
    let hit = outcome(&send(&app, get("/a")).await);
    assert_eq!((hit.served(), hit.stored()), (Served::Hit, false));
    assert!(hit.age().is_some(), "a hit says the age of what it served");
    assert_eq!(
        outcome(&send(&app, request(Method::HEAD, "/a", &[])).await).served(),
        Served::Hit
    );
    let post = outcome(&send(&app, request(Method::POST, "/a", &[])).await);
    assert_eq!(post.served(), Served::Bypass(BypassReason::Method));
    let refused = outcome(&send(&app, get("/nostore")).await);
    assert_eq!(
        (refused.served(), refused.stored(), refused.not_stored()),
        (Served::Miss, false, Some(BypassReason::NoStore))
    );
    send(&app, get("/stale")).await;
    let stale = outcome(&send(&app, get("/stale")).await);
    assert_eq!(stale.served(), Served::Stale(StaleReason::WhileRevalidate));
}

/// `Cache-Status` can be switched off, or sent only to requests that ask for it; the typed
/// outcome is there either way.
#[tokio::test]
async fn cache_status_is_sent_only_as_configured() {
    let origin = Origin::new();
    let never = CacheLayer::builder(MemoryStore::new())
        .cache_status(CacheStatusHeader::Never)
        .build();
    let app = origin.app(never, by_path);
    for response in [send(&app, get("/a")).await, send(&app, get("/a")).await] {
        assert!(response.headers().get("cache-status").is_none());
        assert!(response.extensions().get::<CacheOutcome>().is_some());
    }
    let asked = CacheLayer::builder(MemoryStore::new())
        .cache_status(CacheStatusHeader::WhenRequested(http::HeaderName::from_static(
            "x-cache-debug",
        )))
        .build();
    let app = origin.app(asked, by_path);
    let plain = send(&app, get("/b")).await;
    assert!(plain.headers().get("cache-status").is_none());
    let debug = send(&app, get_with("/b", &[("x-cache-debug", "1")])).await;
    assert!(cache_status(&debug).contains("; hit"), "{}", cache_status(&debug));
    let hit = send(&app, get("/b")).await;
    assert!(hit.headers().get("cache-status").is_none());
    assert!(
        hit.headers().get("age").is_some(),
        "Age is HTTP, not debugging: always sent"
    );
}

/// A hit carries the stored fields as they came (a repeated name's lines in order), then
/// `Age` and this cache's `Cache-Status`, and nothing else, hit after hit; a HEAD hit adds the
/// `Content-Length` its GET would have had.
#[tokio::test]
async fn a_hit_carries_the_stored_fields_then_age_and_cache_status() {
    use tower::Layer;
    let origin = tower::service_fn(|_: http::Request<axum::body::Body>| async {
        let response = http::Response::builder()
            .header("x-first", "1")
            .header(CACHE_CONTROL, "max-age=60")
            .header("x-repeated", "a")
            .header("x-repeated", "b")
            .header("content-type", "text/plain")
            .body(axum::body::Body::from("body"))
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let service = default_layer().layer(origin);
    let fields = |response: &http::Response<_>| -> Vec<String> {
        let fields = response.headers().iter();
        fields.map(|(n, v)| format!("{n}: {}", v.to_str().unwrap())).collect()
    };
    let stored = [
        "x-first: 1",
        "cache-control: max-age=60",
        "x-repeated: a",
        "x-repeated: b",
        "content-type: text/plain",
    ];
    send(&service, get("/a")).await;
    for (request, added) in [
        (get("/a"), None),
        (get("/a"), None),
        (request(Method::HEAD, "/a", &[]), Some("content-length: 4")),
        (get("/a"), None),
    ] {
        let hit = send(&service, request).await;
        assert_hit(&hit);
        let mut expected: Vec<String> = stored.iter().map(|s| s.to_string()).collect();
        expected.extend(added.map(String::from));
        expected.push(format!("age: {}", age(&hit)));
        expected.push(format!("cache-status: {NAME}; hit; ttl={}", ttl(&hit)));
        assert_eq!(fields(&hit), expected);
    }
}

#[tokio::test]
async fn cache_status_from_a_cache_nearer_the_origin_is_kept_first() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| ([("cache-status", "origin-cache; hit")], "x"));
    for _ in 0..2 {
        let response = send(&app, get("/a")).await;
        let members: Vec<&str> = response
            .headers()
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(members.len(), 2, "{members:?}");
        assert_eq!(members[0], "origin-cache; hit");
        assert!(members[1].starts_with(NAME), "{members:?}");
    }
}

/// A store whose every operation fails, as a store whose server is down.
#[derive(Clone, Debug)]
struct FailingStore;

impl Store for FailingStore {
    async fn get(&self, _: &CacheKey) -> Result<Lookup, StoreError> {
        Err(StoreError::new("down"))
    }
    async fn put(&self, _: CacheKey, _: Entry, _: Duration) -> Result<bool, StoreError> {
        Err(StoreError::new("down"))
    }
    async fn remove(&self, _: &CacheKey) -> Result<(), StoreError> {
        Err(StoreError::new("down"))
    }
    async fn purge(&self, _: &[String], _: PurgeMode) -> Result<(), StoreError> {
        Err(StoreError::new("down"))
    }
    async fn purge_all(&self) -> Result<(), StoreError> {
        Err(StoreError::new("down"))
    }
}

#[tokio::test]
async fn a_failing_store_never_fails_the_request() {
    let origin = Origin::new();
    let layer = CacheLayer::new(FailingStore);
    let app = origin.app(layer.clone(), |_| ([("x-origin", "yes")], "from origin"));
    for call in 1..=2 {
        let response = send(&app, get("/page")).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(header(&response, "x-origin"), Some("yes"));
        assert_eq!(text(response).await, "from origin");
        assert_eq!(origin.calls(), call);
    }
    let stats = layer.stats();
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.stores, 0);
    assert!(stats.store_errors >= 2, "each request counts its failures: {stats:?}");
    assert_eq!(stats.not_stored.get(&BypassReason::StoreError), Some(&2));
}

#[tokio::test]
async fn a_failing_store_is_named_in_cache_status() {
    let origin = Origin::new();
    let app = origin.app(CacheLayer::new(FailingStore), |_| "from origin");
    let response = send(&app, get("/page")).await;
    assert_not_stored(&response, "store-error");
}

#[tokio::test]
async fn a_failing_store_does_not_change_bypassed_or_uncacheable_responses() {
    let origin = Origin::new();
    let app = origin.app(CacheLayer::new(FailingStore), by_path);
    let post = send(&app, request(Method::POST, "/a", &[])).await;
    assert_eq!(
        cache_status(&post),
        format!("{NAME}; fwd=method; fwd-status=200; detail=method")
    );
    let no_store = send(&app, get("/nostore")).await;
    assert_eq!(text(no_store).await, "fresh every time");
    assert_eq!(origin.calls(), 2);
}
