//! Scheduled warming: rounds on an interval (on a paused clock), their reports, the
//! concurrency bound, jitter, and the stop.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tower::service_fn;
use tower_response_cache::{CacheLayer, CacheTags, KeepWarm, MemoryStore, Store, WarmHandle, WarmRound};

const PAGES: usize = 10;
const EVERY: Duration = Duration::from_secs(60);

/// Origin calls, and the most that were in flight at once.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Origin {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + 'static {
        let origin = self.clone();
        service_fn(move |_request: Request<Full<Bytes>>| {
            let origin = origin.clone();
            async move {
                origin.calls.fetch_add(1, SeqCst);
                let now = origin.in_flight.fetch_add(1, SeqCst) + 1;
                origin.max_in_flight.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                origin.in_flight.fetch_sub(1, SeqCst);
                let mut response = Response::new(Full::new(Bytes::from_static(b"page")));
                response
                    .headers_mut()
                    .insert("cache-control", "max-age=3600".parse().unwrap());
                response.extensions_mut().insert(CacheTags::new(["pages"]));
                Ok::<_, Infallible>(response)
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

fn pages() -> impl Iterator<Item = Request<Full<Bytes>>> + Send {
    (0..PAGES).map(|i| Request::get(format!("/pages/{i}")).body(Full::default()).unwrap())
}

async fn next(handle: &mut WarmHandle) -> WarmRound {
    tokio::time::timeout(Duration::from_secs(3600), handle.next_round())
        .await
        .expect("a round within the hour")
        .expect("the warming runs")
}

#[tokio::test(start_paused = true)]
async fn rounds_repeat_report_what_they_did_and_respect_the_concurrency_bound() {
    let (store, origin) = (MemoryStore::new(), Origin::default());
    let layer = CacheLayer::new(store.clone());
    let schedule = KeepWarm::every(EVERY).concurrency(3);
    let start = Instant::now();
    let mut warming = layer.keep_warm(origin.service(), pages, schedule);

    let first = next(&mut warming).await;
    assert_eq!(first.round, 1);
    assert_eq!(
        (first.report.requested, first.report.stored, first.report.already_fresh),
        (PAGES, PAGES, 0)
    );
    assert_eq!(origin.calls(), PAGES);
    assert_eq!(origin.max_in_flight.load(SeqCst), 3, "three at a time, no more");
    assert!(start.elapsed() < EVERY, "the first round starts at once");

    let second = next(&mut warming).await;
    assert_eq!(second.round, 2);
    assert_eq!((second.report.stored, second.report.already_fresh), (0, PAGES));
    assert_eq!(origin.calls(), PAGES, "fresh entries cost the origin nothing");
    assert!(start.elapsed() >= EVERY);
    assert_eq!(warming.latest(), Some(second));

    store.purge_tags(["pages"]).await.unwrap();
    let third = next(&mut warming).await;
    assert_eq!(third.round, 3);
    assert_eq!(
        (third.report.stored, third.report.already_fresh, third.report.failed),
        (PAGES, 0, 0)
    );
    assert_eq!(origin.calls(), 2 * PAGES);
    assert!(start.elapsed() >= 2 * EVERY);

    warming.stop().await;
    tokio::time::sleep(10 * EVERY).await;
    assert_eq!(origin.calls(), 2 * PAGES, "no round after the stop");
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_rounds_within_its_bound() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let jitter = Duration::from_secs(30);
    let mut warming = layer.keep_warm(origin.service(), pages, KeepWarm::every(EVERY).jitter(jitter));
    next(&mut warming).await;
    let (mut previous, mut gaps) = (Instant::now(), Vec::new());
    for _ in 0..5 {
        next(&mut warming).await;
        gaps.push(previous.elapsed());
        previous = Instant::now();
    }
    // Reports come when rounds end, and a round takes under a second (100 ms per call,
    // four at a time): gaps between them are the interval plus jitter, within a second.
    let second = Duration::from_secs(1);
    assert!(
        gaps.iter()
            .all(|gap| *gap + second >= EVERY && *gap <= EVERY + jitter + second),
        "{gaps:?}"
    );
    // Five random delays up to 30 s all under 2 s: a chance of about one in ten million.
    assert!(
        gaps.iter().any(|gap| *gap > EVERY + 2 * second),
        "no jitter at all: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_warming() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let mut warming = layer.keep_warm(origin.service(), pages, KeepWarm::every(EVERY));
    next(&mut warming).await;
    drop(warming);
    tokio::time::sleep(10 * EVERY).await;
    assert_eq!(origin.calls(), PAGES, "one round, none after the drop");
}
