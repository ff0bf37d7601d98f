//! A store written outside the crate, as its users would: a `HashMap` behind a `Mutex`, with
//! `PurgeStamps` for the no-resurrection rule. It passes the crate's conformance suite, and
//! the same map without the stamps (purges that only drop what the map holds) fails its
//! no-resurrection check, so the suite does test what the stamps bring.
#![cfg(feature = "test-util")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_response_cache::store::{
    conformance, Entry, Lookup, PurgeMode, PurgeStamps, StampedEntry, Store, StoreError,
};
use tower_response_cache::{CacheKey, CacheLayer, InvalidateLayer};

/// Entries with their deadline, and the stamps that judge them.
#[derive(Clone, Default)]
struct MapStore {
    entries: Arc<Mutex<HashMap<CacheKey, (StampedEntry, Instant)>>>,
    stamps: PurgeStamps,
}

impl Store for MapStore {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let found = self.entries.lock().unwrap().get(key).cloned();
        let Some((stamped, expires)) = found else {
            return Ok(Lookup::Miss);
        };
        if expires <= Instant::now() {
            self.entries.lock().unwrap().remove(key);
            return Ok(Lookup::Miss);
        }
        let lookup = self.stamps.judge(&stamped);
        if matches!(lookup, Lookup::Purged) {
            self.entries.lock().unwrap().remove(key);
        }
        Ok(lookup)
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        let Some(stamped) = self.stamps.admit(entry) else {
            return Ok(false);
        };
        let expires = Instant::now() + ttl;
        self.entries.lock().unwrap().insert(key, (stamped, expires));
        Ok(true)
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.entries.lock().unwrap().remove(key);
        Ok(())
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.stamps.purge(tags, mode);
        Ok(())
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        self.stamps.purge_all();
        self.entries.lock().unwrap().clear();
        Ok(())
    }

    fn handle_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.entries) as usize)
    }
}

#[tokio::test]
async fn a_map_store_with_purge_stamps_passes_the_conformance_suite() {
    conformance::run(|| async { MapStore::default() }).await;
}

/// The naive store: a purge reaches the entries the map holds (a hard purge drops them, a
/// soft one marks them stale), and nothing is remembered for responses still in flight.
#[derive(Clone, Default)]
struct ForgetfulStore {
    entries: Arc<Mutex<HashMap<CacheKey, Held>>>,
}

/// An entry, its deadline and whether a soft purge reached it.
type Held = (Entry, Instant, bool);

impl Store for ForgetfulStore {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        Ok(match self.entries.lock().unwrap().get(key) {
            Some((_, expires, _)) if *expires <= Instant::now() => Lookup::Miss,
            Some((Entry::Response(r), _, true)) => Lookup::SoftPurged(r.clone()),
            Some((entry, _, _)) => Lookup::Found(entry.clone()),
            None => Lookup::Miss,
        })
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        let expires = Instant::now() + ttl;
        self.entries.lock().unwrap().insert(key, (entry, expires, false));
        Ok(true)
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.entries.lock().unwrap().remove(key);
        Ok(())
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        let carries = |entry: &Entry| matches!(entry, Entry::Response(r) if r.tags().iter().any(|t| tags.contains(t)));
        let mut entries = self.entries.lock().unwrap();
        match mode {
            PurgeMode::Hard => entries.retain(|_, (entry, _, _)| !carries(entry)),
            PurgeMode::Soft => entries
                .values_mut()
                .filter(|(entry, _, _)| carries(entry))
                .for_each(|(_, _, soft)| *soft = true),
        }
        Ok(())
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        self.entries.lock().unwrap().clear();
        Ok(())
    }
}

#[tokio::test]
async fn without_the_stamps_the_suite_catches_a_resurrection() {
    let run = tokio::spawn(conformance::run(|| async { ForgetfulStore::default() }));
    let failure = run.await.expect_err("the naive store must fail the suite");
    let message = failure.into_panic();
    let message = message
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| message.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.contains("a response whose request started before a purge of its tag must never be served after it"),
        "failed for another reason: {message}"
    );
}

#[tokio::test]
async fn a_map_store_serves_and_purges_behind_the_layers() {
    use axum::routing::get;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tower::ServiceExt;

    let store = MapStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new()
        .route(
            "/page",
            get(move || {
                let calls = counted.clone();
                async move { format!("call {}", calls.fetch_add(1, SeqCst) + 1) }
            })
            .post(|| async { "changed" }),
        )
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()));
    let send = |method: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri("/page")
            .body(axum::body::Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            let body = app.oneshot(request).await.unwrap().into_body();
            String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    };
    assert_eq!(send("GET").await, "call 1");
    assert_eq!(send("GET").await, "call 1", "a hit from the map");
    assert_eq!(send("POST").await, "changed");
    assert_eq!(send("GET").await, "call 2", "the POST purged the page");
    assert_eq!(calls.load(SeqCst), 2);
}
