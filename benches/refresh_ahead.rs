//! Refresh-ahead under steady load: a hot key read every millisecond across 10 expiries of
//! its 1 s lifetime, and a cold key read once a lifetime, with refresh-ahead's defaults (the
//! last 10% of the lifetime, 3 reads) and without it. The origin takes 20 ms.
//!
//! Run: `cargo bench --bench refresh_ahead` (about 45 s).
//!
//! It prints, per key and setting, the reads, the reads that were not hits (the first fill
//! excluded), the refreshes made ahead of expiry, and the origin calls.

use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_response_cache::{CacheLayer, MemoryStore, RefreshAhead};

const LIFETIMES: u32 = 10;
const ORIGIN_DELAY: Duration = Duration::from_millis(20);

struct Run {
    reads: usize,
    not_hits: usize,
    refreshes: u64,
    origin_calls: usize,
}

/// Reads `/key` every `every` for 10 lifetimes (plus half of one), after a first fill.
async fn run(ahead: bool, every: Duration) -> Run {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut layer = CacheLayer::builder(MemoryStore::new());
    if ahead {
        layer = layer.refresh_ahead(RefreshAhead::new());
    }
    let layer = layer.build();
    let origin_calls = calls.clone();
    let app = Router::new()
        .route(
            "/key",
            get(move || {
                let calls = origin_calls.clone();
                async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(ORIGIN_DELAY).await;
                    ([("cache-control", "max-age=1")], "value")
                }
            }),
        )
        .layer(layer.clone());
    let read = || async {
        let res = app.clone().oneshot(
            axum::http::Request::get("/key")
                .body(axum::body::Body::empty())
                .unwrap(),
        );
        let res = tokio::time::timeout(Duration::from_secs(10), res)
            .await
            .expect("answered")
            .unwrap();
        let hit = res
            .headers()
            .get("cache-status")
            .is_some_and(|v| v.to_str().unwrap_or("").contains("hit"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"value");
        hit
    };
    read().await;
    let (mut reads, mut not_hits) = (0, 0);
    let started = Instant::now();
    let end = Duration::from_secs(1) * LIFETIMES + Duration::from_millis(500);
    while started.elapsed() < end {
        reads += 1;
        if !read().await {
            not_hits += 1;
        }
        tokio::time::sleep(every).await;
    }
    // The last refresh, if one runs, lands before the origin calls are counted.
    tokio::time::sleep(ORIGIN_DELAY * 3).await;
    Run {
        reads,
        not_hits,
        refreshes: layer.stats().background_refreshes,
        origin_calls: calls.load(SeqCst),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| key | refresh-ahead | reads | reads not hits | refreshes ahead | origin calls |");
    println!("|---|---|---:|---:|---:|---:|");
    for (name, every) in [
        ("hot (1 ms between reads)", Duration::from_millis(1)),
        ("cold (1.1 s between reads)", Duration::from_millis(1_100)),
    ] {
        for ahead in [true, false] {
            let r = runtime.block_on(run(ahead, every));
            let setting = if ahead { "on (defaults)" } else { "off" };
            println!(
                "| {name} | {setting} | {} | {} | {} | {} |",
                r.reads, r.not_hits, r.refreshes, r.origin_calls
            );
        }
    }
}
