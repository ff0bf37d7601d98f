//! No resurrection: a response whose computation started before a purge of one of its tags is
//! never served after that purge, even when it is stored after the purge.

use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};
use tower::ServiceExt;
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

/// A handler that reads the price, then waits to be released before answering: the window
/// in which a purge can overtake it.
#[derive(Clone)]
struct SlowPrice {
    price: Arc<AtomicU64>,
    read: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    release: Arc<Notify>,
    hold: Arc<std::sync::atomic::AtomicBool>,
}

async fn price(State(s): State<SlowPrice>) -> (Extension<CacheTags>, String) {
    let price = s.price.load(SeqCst);
    if s.hold.load(SeqCst) {
        if let Some(tx) = s.read.lock().unwrap().take() {
            let _ = tx.send(());
        }
        s.release.notified().await;
    }
    (Extension(CacheTags::new(["price"])), price.to_string())
}

async fn set_price(State(s): State<SlowPrice>, Path(p): Path<u64>) -> (StatusCode, Extension<Invalidate>) {
    s.price.store(p, SeqCst);
    (StatusCode::OK, Extension(Invalidate::tags(["price"])))
}

async fn fetch(app: &Router, uri: &str) -> (String, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_string();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// Slow read starts → price changes and is purged → slow read finishes and is stored.
/// The next read must see the new price.
async fn race(purge_through_http: bool) {
    let (read_tx, read_rx) = oneshot::channel();
    let state = SlowPrice {
        price: Arc::new(AtomicU64::new(100)),
        read: Arc::new(Mutex::new(Some(read_tx))),
        release: Arc::new(Notify::new()),
        hold: Arc::new(true.into()),
    };
    let store = MemoryStore::new();
    let app = Router::new()
        .route("/price", get(price))
        .route("/price/{p}", axum::routing::post(set_price))
        .with_state(state.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()));

    let slow = tokio::spawn({
        let app = app.clone();
        async move { fetch(&app, "/price").await }
    });
    read_rx.await.expect("the slow read has read the old price");
    if purge_through_http {
        let req = Request::post("/price/120").body(axum::body::Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
    } else {
        state.price.store(120, SeqCst);
        store.purge_tags(["price"]).await.unwrap();
    }
    state.hold.store(false, SeqCst);
    state.release.notify_one();
    let (old, old_status) = slow.await.unwrap();
    assert_eq!(old, "100", "the in-flight read answers what it read");
    assert!(old_status.contains("fwd=miss"), "{old_status}");

    let (now, status) = fetch(&app, "/price").await;
    assert_eq!(now, "120", "the old price must not be resurrected ({status})");
    let (again, status) = fetch(&app, "/price").await;
    assert_eq!(again, "120");
    assert!(status.contains("; hit"), "the new price is cached: {status}");
}

#[tokio::test]
async fn slow_response_finishing_after_a_programmatic_purge_is_not_served() {
    race(false).await;
}

#[tokio::test]
async fn slow_response_finishing_after_an_invalidating_mutation_is_not_served() {
    race(true).await;
}

/// xorshift64*: a small deterministic generator, seeded per task.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

const ITEMS: usize = 4;

#[derive(Clone)]
struct Model {
    /// The database: a version per item.
    versions: Arc<[AtomicU64; ITEMS]>,
}

async fn read_item(State(m): State<Model>, Path(i): Path<usize>) -> (Extension<CacheTags>, String) {
    let v = m.versions[i].load(SeqCst);
    // Yield a few times so that writes and purges interleave with this computation.
    for _ in 0..(v % 4) {
        tokio::task::yield_now().await;
    }
    (Extension(CacheTags::new([format!("item:{i}")])), v.to_string())
}

async fn write_item(State(m): State<Model>, Path(i): Path<usize>) -> (StatusCode, Extension<Invalidate>, String) {
    let v = m.versions[i].fetch_add(1, SeqCst) + 1;
    (
        StatusCode::OK,
        Extension(Invalidate::tags([format!("item:{i}")])),
        v.to_string(),
    )
}

/// Readers, writers and purges at random, checked against the model: once a write's purge
/// has completed, no read that starts afterwards sees a version older than that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_writes_and_purges_never_serve_purged_data() {
    let model = Model {
        versions: Arc::new(Default::default()),
    };
    let store = MemoryStore::new();
    let app = Router::new()
        .route("/items/{i}", get(read_item).post(write_item))
        .with_state(model.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()));
    // The newest version whose purge has completed, per item.
    let published: Arc<[AtomicU64; ITEMS]> = Arc::new(Default::default());

    let mut tasks = Vec::new();
    for seed in 1..=4u64 {
        let (app, published) = (app.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut hits = 0;
            for _ in 0..400 {
                let i = rng.next(ITEMS as u64) as usize;
                let floor = published[i].load(SeqCst);
                let (body, status) = fetch(&app, &format!("/items/{i}")).await;
                let seen: u64 = body.parse().unwrap();
                assert!(
                    seen >= floor,
                    "item {i}: read v{seen} after v{floor} was purged ({status})"
                );
                hits += status.contains("; hit") as u32;
            }
            hits
        }));
    }
    for seed in 11..=12u64 {
        let (app, published) = (app.clone(), published.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for _ in 0..60 {
                let i = rng.next(ITEMS as u64) as usize;
                let req = Request::post(format!("/items/{i}"))
                    .body(axum::body::Body::empty())
                    .unwrap();
                let res = app.clone().oneshot(req).await.unwrap();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                let written: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                published[i].fetch_max(written, SeqCst);
                for _ in 0..rng.next(3) {
                    tokio::task::yield_now().await;
                }
            }
            0
        }));
    }
    let mut hits = 0;
    for task in tasks {
        hits += tokio::time::timeout(std::time::Duration::from_secs(60), task)
            .await
            .expect("bounded")
            .unwrap();
    }
    // The run must have exercised the cache, not bypassed it.
    assert!(hits > 100, "only {hits} hits");
    assert!(store.stats().purges >= 120);
}
