//! The behaviour every [`Store`] must show, as one async suite (feature `test-util`).
//!
//! The crate runs it against each of its stores; a third-party store runs it from its own
//! tests, with the feature enabled for them only:
//!
//! ```toml
//! [dev-dependencies]
//! tower-response-cache = { version = "0.1", features = ["test-util"] }
//! tokio = { version = "1", features = ["macros", "rt", "time"] }
//! ```
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! // In a `#[tokio::test] async fn`:
//! use tower_response_cache::{store::conformance, MemoryStore};
//! conformance::run(|| async { MemoryStore::new() }).await;
//! # });
//! ```
//!
//! Each check runs on a fresh, empty store from the closure and panics with a message naming
//! the rule the store broke: round trips of responses and `Vary` variants, removal, expiry,
//! hard and soft purges, no resurrection (a response whose request started before a purge of
//! one of its tags is never served after it, even when written after it, and even when no
//! stored entry carried the tag), long tags, many purges sparing unrelated entries,
//! `purge_uri`, `purge_all` and `get_latest`. An in-process store gets the no-resurrection checks right
//! with [`PurgeStamps`](super::PurgeStamps).

use super::{request_clock, Entry, Lookup, PurgeMode, Store};
use crate::entry::testing::{response, started_at};
use crate::CacheKey;
use http::HeaderName;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// Runs every check, each on a fresh, empty store from `new_store`.
pub async fn run<S, F, Fut>(new_store: F)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    round_trip(&new_store().await).await;
    variants_round_trip(&new_store().await).await;
    remove(&new_store().await).await;
    expiry(&new_store().await).await;
    hard_purge(&new_store().await).await;
    soft_purge(&new_store().await).await;
    no_resurrection(&new_store().await).await;
    soft_purge_of_an_uncarried_tag(&new_store().await).await;
    refill_after_a_purge(&new_store().await).await;
    long_tags(&new_store().await).await;
    many_purges_spare_unrelated_entries(&new_store().await).await;
    purge_uri(&new_store().await).await;
    purge_all(&new_store().await).await;
    latest_reads(&new_store().await).await;
}

fn key(name: &str) -> CacheKey {
    CacheKey::from_bytes(format!("conformance:{name}").into_bytes())
}

fn entry(body: &'static str, tags: &[&str]) -> Entry {
    Entry::Response(Arc::new(response(body, tags, MINUTE)))
}

async fn lookup<S: Store>(store: &S, name: &str) -> Lookup {
    store
        .get(&key(name))
        .await
        .expect("get must succeed on a healthy store")
}

async fn put<S: Store>(store: &S, name: &str, entry: Entry) -> bool {
    store
        .put(key(name), entry, MINUTE)
        .await
        .expect("put must succeed on a healthy store")
}

fn body_of(lookup: &Lookup) -> Option<&[u8]> {
    match lookup {
        Lookup::Found(Entry::Response(r)) => Some(r.body()),
        _ => None,
    }
}

async fn round_trip<S: Store>(store: &S) {
    assert!(
        matches!(lookup(store, "a").await, Lookup::Miss),
        "an empty store must miss"
    );
    assert!(
        put(store, "a", entry("hello", &["t1", "t2"])).await,
        "a fresh entry must be accepted"
    );
    let found = lookup(store, "a").await;
    let Lookup::Found(Entry::Response(r)) = found else {
        panic!("a stored entry must be found, got {found:?}");
    };
    assert_eq!(r.body().as_ref(), b"hello", "the body must round-trip");
    assert_eq!(r.status(), http::StatusCode::OK, "the status must round-trip");
    assert_eq!(
        r.headers().get("x-conformance").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "headers must round-trip"
    );
    assert_eq!(
        r.trailers().and_then(|t| t.get("x-checksum")).map(|v| v.as_bytes()),
        Some(&b"abc"[..]),
        "trailers must round-trip"
    );
    assert_eq!(r.tags(), ["t1", "t2"], "tags must round-trip");
    assert!(put(store, "a", entry("again", &[])).await);
    assert_eq!(
        body_of(&lookup(store, "a").await),
        Some(&b"again"[..]),
        "a put must replace the entry"
    );
}

async fn variants_round_trip<S: Store>(store: &S) {
    let names: Arc<[HeaderName]> = vec![http::header::ACCEPT_ENCODING, http::header::ACCEPT_LANGUAGE].into();
    assert!(put(store, "v", Entry::Variants(names.clone())).await);
    match lookup(store, "v").await {
        Lookup::Found(Entry::Variants(found)) => assert_eq!(found, names, "variant names must round-trip"),
        other => panic!("a variants entry must be found, got {other:?}"),
    }
}

async fn remove<S: Store>(store: &S) {
    put(store, "r", entry("x", &[])).await;
    store.remove(&key("r")).await.expect("remove must succeed");
    assert!(
        matches!(lookup(store, "r").await, Lookup::Miss),
        "a removed entry must miss"
    );
    store
        .remove(&key("never-stored"))
        .await
        .expect("removing a missing key must succeed");
}

async fn expiry<S: Store>(store: &S) {
    let short = Duration::from_millis(30);
    assert!(store.put(key("e"), entry("x", &[]), short).await.expect("put"));
    // Sleeping past the lifetime cannot race: the entry's deadline has passed either way.
    tokio::time::sleep(short * 4).await;
    assert!(
        matches!(lookup(store, "e").await, Lookup::Miss),
        "an expired entry must miss"
    );
}

async fn hard_purge<S: Store>(store: &S) {
    put(store, "h1", entry("1", &["book:1", "books"])).await;
    put(store, "h2", entry("2", &["book:2", "books"])).await;
    store
        .purge(&["book:1".to_string()], PurgeMode::Hard)
        .await
        .expect("purge");
    assert!(
        matches!(lookup(store, "h1").await, Lookup::Purged | Lookup::Miss),
        "an entry with a hard-purged tag must not be found"
    );
    assert_eq!(
        body_of(&lookup(store, "h2").await),
        Some(&b"2"[..]),
        "entries without the tag must survive"
    );
    store.purge_tags(["books"]).await.expect("purge");
    assert!(body_of(&lookup(store, "h2").await).is_none(), "purge_tags must purge");
    assert!(
        put(store, "h3", entry("3", &["books"])).await,
        "entries started after a purge must be accepted"
    );
    assert_eq!(
        body_of(&lookup(store, "h3").await),
        Some(&b"3"[..]),
        "entries started after a purge must be found"
    );
}

async fn soft_purge<S: Store>(store: &S) {
    put(store, "s", entry("soft", &["t"])).await;
    store.purge(&["t".to_string()], PurgeMode::Soft).await.expect("purge");
    match lookup(store, "s").await {
        Lookup::SoftPurged(r) => assert_eq!(r.body().as_ref(), b"soft"),
        other => panic!("a soft-purged entry must be returned as stale, got {other:?}"),
    }
    store.purge(&["t".to_string()], PurgeMode::Hard).await.expect("purge");
    assert!(
        body_of(&lookup(store, "s").await).is_none(),
        "a hard purge must override a soft one"
    );
}

async fn no_resurrection<S: Store>(store: &S) {
    // The request starts, the purge runs, then the (slow) response is written.
    let started = request_clock();
    store.purge_tags(["price"]).await.expect("purge");
    let late = Entry::Response(Arc::new(started_at(started, "stale price", &["price"], MINUTE)));
    let _declined = put(store, "n", late).await;
    assert!(
        body_of(&lookup(store, "n").await).is_none(),
        "a response whose request started before a purge of its tag must never be served after it"
    );
    let other = Entry::Response(Arc::new(started_at(started, "other", &["unrelated"], MINUTE)));
    assert!(
        put(store, "n2", other).await,
        "a purge must not refuse entries without its tags"
    );
}

async fn soft_purge_of_an_uncarried_tag<S: Store>(store: &S) {
    // No stored entry carries the tag when it is purged; a response in flight since before
    // the purge may turn stale or be refused, never be served as fresh.
    let started = request_clock();
    store.purge(&["st".to_string()], PurgeMode::Soft).await.expect("purge");
    let late = Entry::Response(Arc::new(started_at(started, "late", &["st"], MINUTE)));
    let _declined = put(store, "su", late).await;
    assert!(
        body_of(&lookup(store, "su").await).is_none(),
        "a response whose request started before a soft purge of its tag must not be served as fresh"
    );
}

async fn refill_after_a_purge<S: Store>(store: &S) {
    put(store, "f", entry("old", &["page"])).await;
    store.purge_tags(["page"]).await.expect("purge");
    assert!(body_of(&lookup(store, "f").await).is_none(), "the purge applies");
    // The purged entry is gone: nothing carries the tag any more, yet the purge is known.
    assert!(
        put(store, "f", entry("new", &["page"])).await,
        "a response whose request started after the purge must be accepted"
    );
    assert_eq!(body_of(&lookup(store, "f").await), Some(&b"new"[..]));
    store.remove(&key("f")).await.expect("remove");
    let started = request_clock();
    store.purge_tags(["page"]).await.expect("purge");
    let late = Entry::Response(Arc::new(started_at(started, "late", &["page"], MINUTE)));
    let _declined = put(store, "f", late).await;
    assert!(
        body_of(&lookup(store, "f").await).is_none(),
        "a purge of a tag no stored entry carries must still refuse responses started before it"
    );
}

async fn long_tags<S: Store>(store: &S) {
    // As the implicit path tag of a 16 KiB path.
    let long = crate::key::path_tag(&format!("/{}", "x".repeat(16 << 10)));
    let other = crate::key::path_tag(&format!("/{}", "y".repeat(16 << 10)));
    put(store, "l1", entry("long", &[long.as_str()])).await;
    put(store, "l2", entry("other", &[other.as_str()])).await;
    assert_eq!(
        body_of(&lookup(store, "l1").await),
        Some(&b"long"[..]),
        "long tags must work"
    );
    let started = request_clock();
    store
        .purge(std::slice::from_ref(&long), PurgeMode::Hard)
        .await
        .expect("purge");
    assert!(body_of(&lookup(store, "l1").await).is_none(), "a long tag must purge");
    assert_eq!(
        body_of(&lookup(store, "l2").await),
        Some(&b"other"[..]),
        "a purge of one long tag must spare another"
    );
    let late = Entry::Response(Arc::new(started_at(started, "late", &[long.as_str()], MINUTE)));
    let _declined = put(store, "l3", late).await;
    assert!(
        body_of(&lookup(store, "l3").await).is_none(),
        "no resurrection with long tags"
    );
}

async fn many_purges_spare_unrelated_entries<S: Store>(store: &S) {
    let page = crate::key::path_tag("/kept");
    put(store, "m", entry("kept", &[page.as_str(), "group"])).await;
    // What POSTs to many distinct paths purge: nothing the entry carries.
    for i in 0..2000 {
        let tag = crate::key::path_tag(&format!("/posted/{i}"));
        store.purge(&[tag], PurgeMode::Hard).await.expect("purge");
    }
    assert_eq!(
        body_of(&lookup(store, "m").await),
        Some(&b"kept"[..]),
        "purges of other tags, however many, must not invalidate an entry"
    );
    assert!(
        put(store, "m2", entry("fresh", &["new-tag"])).await,
        "writes that start after many purges must be accepted"
    );
}

async fn purge_uri<S: Store>(store: &S) {
    let (one, two) = (crate::key::path_tag("/books/1"), crate::key::path_tag("/books/2"));
    put(store, "p1", entry("1", &[one.as_str()])).await;
    put(store, "p1b", entry("1b", &[one.as_str()])).await;
    put(store, "p2", entry("2", &[two.as_str()])).await;
    store.purge_uri("/books/1?page=2").await.expect("purge_uri");
    assert!(
        body_of(&lookup(store, "p1").await).is_none(),
        "purge_uri must purge entries of that path"
    );
    assert!(
        body_of(&lookup(store, "p1b").await).is_none(),
        "purge_uri must purge every variant"
    );
    assert!(
        body_of(&lookup(store, "p2").await).is_some(),
        "purge_uri must spare other paths"
    );
    store
        .purge_uri("https://shop.example/books/2")
        .await
        .expect("purge_uri");
    assert!(
        body_of(&lookup(store, "p2").await).is_none(),
        "purge_uri must accept absolute URIs"
    );
}

async fn purge_all<S: Store>(store: &S) {
    put(store, "x", entry("x", &[])).await;
    put(store, "y", entry("y", &["t"])).await;
    store.purge_all().await.expect("purge_all");
    assert!(
        body_of(&lookup(store, "x").await).is_none(),
        "purge_all must purge untagged entries"
    );
    assert!(
        body_of(&lookup(store, "y").await).is_none(),
        "purge_all must purge tagged entries"
    );
    assert!(put(store, "z", entry("z", &[])).await);
    assert!(
        body_of(&lookup(store, "z").await).is_some(),
        "a store must work after purge_all"
    );
}

/// `get_latest` sees what `get` sees: the entry put last, and no purged one.
async fn latest_reads<S: Store>(store: &S) {
    let latest = |name: &'static str| async move {
        store
            .get_latest(&key(name))
            .await
            .expect("get_latest must succeed on a healthy store")
    };
    assert!(matches!(latest("l1").await, Lookup::Miss), "an empty store must miss");
    put(store, "l1", entry("first", &["latest"])).await;
    put(store, "l1", entry("second", &["latest"])).await;
    assert_eq!(body_of(&latest("l1").await), Some(&b"second"[..]), "the entry put last");
    store.purge_tags(["latest"]).await.expect("purge");
    assert!(
        body_of(&latest("l1").await).is_none(),
        "a purged entry must not be found"
    );
}
