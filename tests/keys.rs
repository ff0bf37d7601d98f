//! Keys: which requests share an entry (query order, ignored parameters, GET and HEAD) and
//! which never do (other query values, hosts, `Vary` values); no raw credential in any key.

mod common;

use axum::extract::Request;
use common::*;
use http::header::{ACCEPT_LANGUAGE, CACHE_CONTROL, COOKIE, VARY};
use http::request;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::{CacheKey, CacheLayer, MemoryStore, PurgeMode, Store, StoreError};

/// Answers with the query string the origin received.
fn echo_query(request: Request) -> String {
    format!("query {}", request.uri().query().unwrap_or(""))
}

/// Greets in the request's `Accept-Language`, and says so with `Vary`.
fn greeting(request: Request) -> ([(http::HeaderName, &'static str); 1], String) {
    let language = request
        .headers()
        .get(ACCEPT_LANGUAGE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = match language.as_deref() {
        Some("fr") => "bonjour".to_owned(),
        Some("en") => "hello".to_owned(),
        Some(other) => format!("hello ({other})"),
        None => "hello (default)".to_owned(),
    };
    ([(VARY, "Accept-Language")], body)
}

#[tokio::test]
async fn query_order_and_ignored_parameters_share_an_entry() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .ignore_query_param("utm_*")
        .ignore_query_param("fbclid")
        .build();
    let app = origin.app(layer, echo_query);

    let first = send(&app, get("/search?a=1&b=2")).await;
    assert_stored(&first);
    assert_eq!(text(first).await, "query a=1&b=2");

    for uri in [
        "/search?b=2&a=1",
        "/search?utm_source=news&a=1&utm_medium=mail&b=2",
        "/search?a=1&fbclid=xyz&b=2",
    ] {
        let response = send(&app, get(uri)).await;
        assert_hit(&response);
        assert_eq!(text(response).await, "query a=1&b=2", "{uri}");
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn ignored_parameters_still_reach_the_origin() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .ignore_query_param("utm_*")
        .build();
    let app = origin.app(layer, echo_query);
    let response = send(&app, get("/search?utm_source=news&q=rust")).await;
    assert_eq!(text(response).await, "query utm_source=news&q=rust");
}

#[tokio::test]
async fn different_query_values_or_parameters_get_their_own_entries() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), echo_query);
    let uris = [
        "/search?q=1",
        "/search?q=2",
        "/search?q=1&page=2",
        "/search",
        "/search?q",
    ];
    for uri in uris {
        let response = send(&app, get(uri)).await;
        assert_stored(&response);
    }
    assert_eq!(origin.calls(), uris.len());
    for uri in uris {
        let response = send(&app, get(uri)).await;
        assert_hit(&response);
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        assert_eq!(text(response).await, format!("query {query}"));
    }
    assert_eq!(origin.calls(), uris.len());
}

#[tokio::test]
async fn different_paths_get_their_own_entries() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| request.uri().path().to_owned());
    for path in ["/a", "/a/", "/A", "/a/b"] {
        assert_stored(&send(&app, get(path)).await);
    }
    for path in ["/a", "/a/", "/A", "/a/b"] {
        let response = send(&app, get(path)).await;
        assert_hit(&response);
        assert_eq!(text(response).await, path);
    }
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn hosts_are_keyed_apart_unless_disabled() {
    let host = |name: &str| get_with("/page", &[("host", name)]);
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| {
        format!("page of {}", request.headers()["host"].to_str().unwrap())
    });
    assert_stored(&send(&app, host("a.example")).await);
    let other = send(&app, host("b.example")).await;
    assert_stored(&other);
    assert_eq!(text(other).await, "page of b.example");
    let same_host_other_case = send(&app, host("A.EXAMPLE")).await;
    assert_hit(&same_host_other_case);
    assert_eq!(text(same_host_other_case).await, "page of a.example");
    assert_eq!(origin.calls(), 2);

    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new()).key_host(false).build();
    let app = origin.app(layer, |_| "same everywhere");
    assert_stored(&send(&app, host("a.example")).await);
    assert_hit(&send(&app, host("b.example")).await);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn vary_keeps_several_variants_of_one_uri_side_by_side() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), greeting);
    let in_language = |language: &str| get_with("/greeting", &[("accept-language", language)]);

    let en = send(&app, in_language("en")).await;
    assert_eq!(cache_status(&en), format!("{NAME}; fwd=miss; fwd-status=200; stored"));
    assert_eq!(text(en).await, "hello");
    let fr = send(&app, in_language("fr")).await;
    assert_eq!(
        cache_status(&fr),
        format!("{NAME}; fwd=vary-miss; fwd-status=200; stored")
    );
    assert_eq!(text(fr).await, "bonjour");
    let none = send(&app, get("/greeting")).await;
    assert_stored(&none);
    assert_eq!(text(none).await, "hello (default)");
    assert_eq!(origin.calls(), 3);

    for (language, expected) in [("fr", "bonjour"), ("en", "hello"), ("fr", "bonjour")] {
        let response = send(&app, in_language(language)).await;
        assert_hit(&response);
        assert_eq!(header(&response, "vary"), Some("Accept-Language"));
        assert_eq!(text(response).await, expected);
    }
    let none = send(&app, get("/greeting")).await;
    assert_hit(&none);
    assert_eq!(text(none).await, "hello (default)");

    // An empty header is another variant than an absent one.
    let empty = send(&app, in_language("")).await;
    assert_stored(&empty);
    assert_eq!(text(empty).await, "hello ()");
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn vary_values_are_matched_after_trimming_and_line_joining() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), greeting);
    assert_stored(&send(&app, get_with("/greeting", &[("accept-language", "fr")])).await);
    let padded = send(&app, get_with("/greeting", &[("accept-language", "  fr ")])).await;
    assert_hit(&padded);
    assert_eq!(text(padded).await, "bonjour");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn head_requests_find_the_variant_of_their_vary_values() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), greeting);
    assert_stored(&send(&app, get_with("/greeting", &[("accept-language", "fr")])).await);
    let head = send(
        &app,
        request(http::Method::HEAD, "/greeting", &[("accept-language", "fr")]),
    )
    .await;
    assert_hit(&head);
    assert_eq!(header(&head, "content-length"), Some("7"));
    let other = send(
        &app,
        request(http::Method::HEAD, "/greeting", &[("accept-language", "en")]),
    )
    .await;
    assert!(
        cache_status(&other).contains("fwd=vary-miss"),
        "{}",
        cache_status(&other)
    );
}

/// A memory store that remembers every key it was asked about.
#[derive(Clone, Default)]
struct RecordingStore {
    inner: MemoryStore,
    keys: Arc<Mutex<Vec<CacheKey>>>,
}

impl RecordingStore {
    fn record(&self, key: &CacheKey) {
        self.keys.lock().unwrap().push(key.clone());
    }
}

impl Store for RecordingStore {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        self.record(key);
        self.inner.get(key).await
    }
    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        self.record(&key);
        self.inner.put(key, entry, ttl).await
    }
    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }
    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.inner.purge(tags, mode).await
    }
    async fn purge_all(&self) -> Result<(), StoreError> {
        self.inner.purge_all().await
    }
}

fn session_identity(parts: &request::Parts) -> Option<String> {
    let cookie = parts.headers.get(COOKIE)?.to_str().ok()?;
    cookie.strip_prefix("session=").map(str::to_owned)
}

#[tokio::test]
async fn raw_credentials_never_appear_in_a_key() {
    const SECRET: &str = "alice-secret-token";
    let store = RecordingStore::default();
    let layer = CacheLayer::builder(store.clone())
        .vary_by_identity(session_identity)
        .build();
    let origin = Origin::new();
    // Varying on the credential itself puts its value into the secondary key: hashed.
    let app = origin.app(layer.clone(), |_| {
        (
            [(CACHE_CONTROL, "private, max-age=60"), (VARY, "Cookie, Authorization")],
            "mine",
        )
    });
    let with_secrets = || {
        get_with(
            "/me",
            &[
                ("cookie", &format!("session={SECRET}")),
                ("authorization", &format!("Bearer {SECRET}")),
            ],
        )
    };
    assert_stored(&send(&app, with_secrets()).await);
    assert_hit(&send(&app, with_secrets()).await);
    assert_eq!(origin.calls(), 1);

    let (parts, _) = with_secrets().into_parts();
    let mut keys = store.keys.lock().unwrap().clone();
    keys.push(layer.cache_key(&parts));
    assert!(keys.len() >= 4, "primary and variant keys were written and read");
    for key in keys {
        let bytes = key.as_bytes();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "a key holds the raw credential: {key:?}"
        );
    }
}
