//! Purges that cannot reach Redis are not forgotten: they hold on the instance that made them
//! at once, are queued and retried until they land (with the instant they were requested),
//! and past the queue's bound become one purge-all. Real `redis-server` processes, killed with
//! SIGKILL (with an append-only file, so that entries and stamps survive the restart, as on a
//! persistent deployment) or cut off behind a black-holed TCP proxy. Requests go over
//! loopback HTTP.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::{exchange, Served};

#[path = "common/proxy.rs"]
mod proxy;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use proxy::Proxy;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_response_cache::store::{
    BoxStore, PurgeEvent, PurgeForwarding, PurgeOrigin, PurgeSinkError, RedisStore, TieredStore,
};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

fn fresh_namespace() -> String {
    exchange::fresh_namespace("queue")
}

/// A server whose data survives SIGKILL.
fn persistent_server() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

async fn redis(url: String, namespace: &str, pending_bytes: usize) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .clock_skew_margin(Duration::ZERO)
        .pending_purge_bytes(pending_bytes)
        .connect()
        .await
        .expect("connect")
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const BOOKS: usize = 8;

/// The versioned origin: a review bumps a book's version and purges its tag.
#[derive(Clone, Default)]
struct Books {
    versions: Arc<[AtomicU64; BOOKS]>,
}

async fn book(State(b): State<Books>, Path(id): Path<usize>) -> (Extension<CacheTags>, String) {
    let v = b.versions[id].load(SeqCst);
    (Extension(CacheTags::new([format!("book:{id}")])), format!("v{v}"))
}

async fn review(State(b): State<Books>, Path(id): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    b.versions[id].fetch_add(1, SeqCst);
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

fn instance<St: Store>(books: &Books, store: St) -> Served {
    exchange::serve(
        Router::new()
            .route("/books/{id}", get(book))
            .route("/books/{id}/reviews", post(review))
            .with_state(books.clone())
            .layer(InvalidateLayer::new(store.clone()))
            .layer(CacheLayer::new(store)),
    )
}

/// Sends a request; returns the status, `Cache-Status` and the version in the body.
async fn send(app: &Served, method: &str, uri: &str) -> (StatusCode, String, Option<u64>) {
    let (status, cache_status, body) = exchange(app, method, uri).await;
    let version = body.strip_prefix('v').and_then(|v| v.parse().ok());
    (status, cache_status, version)
}

/// Reads every book `rounds` times; returns (reads, reads older than the book's version when
/// the read was sent).
async fn read_all(app: &Served, books: &Books, rounds: usize) -> (usize, usize) {
    let (mut reads, mut stale) = (0, 0);
    for _ in 0..rounds {
        for id in 0..BOOKS {
            let floor = books.versions[id].load(SeqCst);
            let (status, _, version) = send(app, "GET", &format!("/books/{id}")).await;
            assert_eq!(status, StatusCode::OK);
            reads += 1;
            if version < Some(floor) {
                stale += 1;
            }
        }
    }
    (reads, stale)
}

/// Redis is SIGKILLed; instance A (a `RedisStore` alone) takes 4 mutations meanwhile; Redis
/// restarts with its data. A never serves the purged versions (its pending purges judge what
/// it reads back), and once they land neither does instance B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_made_while_redis_is_down_land_when_it_returns() {
    if !redis_server::available() {
        return;
    }
    let mut server = persistent_server();
    let namespace = fresh_namespace();
    let store_a = redis(server.url(), &namespace, 1 << 20).await;
    let store_b = redis(server.url(), &namespace, 1 << 20).await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    read_all(&b, &books, 1).await;
    assert!(
        send(&a, "GET", "/books/0").await.1.contains("; hit"),
        "shared through Redis"
    );

    server.kill();
    for id in 0..4 {
        let (status, _, _) = send(&a, "POST", &format!("/books/{id}/reviews")).await;
        assert_eq!(status, StatusCode::CREATED, "the mutation is not failed by the cache");
    }
    // Each mutation purges its tag and its URI (RFC 9111 §4.4) in one call: the CacheLayer
    // does not repeat the InvalidateLayer's purge of the URI in the same store.
    assert_eq!(store_a.stats().pending_purges, 4);
    let (outage_reads, outage_stale) = read_all(&a, &books, 2).await;

    server.restart();
    let keys: usize = server.cli(&["dbsize"]).trim().parse().unwrap();
    assert!(keys >= BOOKS, "the entries survived the restart: {keys} keys");
    // A judges what it reads back by its pending purges, before and after they land.
    let (mut a_reads, mut a_stale) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_a.stats().pending_purges > 0 {
        assert!(Instant::now() < deadline, "the queued purges never landed");
        let (r, s) = read_all(&a, &books, 1).await;
        (a_reads, a_stale) = (a_reads + r, a_stale + s);
    }
    let stats = store_a.stats();
    assert!(stats.retried_purges >= 4 && stats.landed_purges == 4, "{stats:?}");
    assert_eq!(stats.degraded_purges, 0);
    let (r, s) = read_all(&a, &books, 5).await;
    let (b_reads, b_stale) = read_all(&b, &books, 5).await;
    eprintln!(
        "SIGKILL: outage {outage_reads} reads on A, {outage_stale} stale; until landed {a_reads} reads on A, \
         {a_stale} stale; after: A {r} reads, {s} stale, B {b_reads} reads, {b_stale} stale; {stats:?}"
    );
    assert_eq!(outage_stale + a_stale + s + b_stale, 0, "reads of purged data");
    // Unpurged books were left alone: the queue did not degrade.
    assert!(send(&b, "GET", "/books/7").await.1.contains("; hit"));
}

/// Past its bound the queue becomes one purge-all: after Redis returns, no read is stale on
/// any instance, and the entries stored before the outage are gone, purged or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_degrades_to_a_purge_all() {
    if !redis_server::available() {
        return;
    }
    let mut server = persistent_server();
    let namespace = fresh_namespace();
    // Room for about three tags.
    let store_a = redis(server.url(), &namespace, 3 * (64 + 16)).await;
    let store_b = redis(server.url(), &namespace, 1 << 20).await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    read_all(&b, &books, 1).await;

    server.kill();
    for id in 0..BOOKS / 2 {
        let (status, _, _) = send(&a, "POST", &format!("/books/{id}/reviews")).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let stats = store_a.stats();
    assert!(stats.degraded_purges >= 1 && stats.pending_purges <= 3, "{stats:?}");
    let (a_reads, a_stale) = read_all(&a, &books, 1).await;

    server.restart();
    until("the purge-all landed", Duration::from_secs(10), || {
        store_a.stats().pending_purges == 0
    })
    .await;
    for id in BOOKS / 2..BOOKS {
        let (_, cache_status, version) = send(&b, "GET", &format!("/books/{id}")).await;
        assert_eq!(version, Some(0));
        assert!(
            !cache_status.contains("; hit"),
            "book {id} survived the purge-all: {cache_status}"
        );
    }
    let (reads, stale) = read_all(&b, &books, 3).await;
    eprintln!(
        "degraded: A {a_reads} reads during the outage, {a_stale} stale; B {reads} reads after the landing, \
         {stale} stale; {:?}",
        store_a.stats()
    );
    assert_eq!(a_stale + stale, 0);
}

/// The purge-all degrades on the safe side even for entries nobody read since: the first
/// read of an unpurged book after the landing misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_queue_invalidates_unpurged_entries_too() {
    if !redis_server::available() {
        return;
    }
    let mut server = persistent_server();
    let namespace = fresh_namespace();
    let store_a = redis(server.url(), &namespace, 64 + 16).await;
    let store_b = redis(server.url(), &namespace, 1 << 20).await;
    let books = Books::default();
    let b = instance(&books, store_b.clone());
    read_all(&b, &books, 1).await;
    server.kill();
    store_a.purge_tags(["tag-one"]).await.expect("queued, not failed");
    store_a.purge_tags(["tag-two"]).await.expect("queued, not failed");
    assert_eq!(store_a.stats().degraded_purges, 1);
    server.restart();
    until("the purge-all landed", Duration::from_secs(10), || {
        store_a.stats().pending_purges == 0
    })
    .await;
    let (_, cache_status, version) = send(&b, "GET", "/books/7").await;
    assert_eq!(version, Some(0));
    assert!(
        !cache_status.contains("; hit"),
        "invalidated by the purge-all: {cache_status}"
    );
}

/// A shelf of pages sharing the tag `shelf`, one version for all; the first read of
/// `/shelf/old` takes the version, then waits for the test's release.
#[derive(Clone, Default)]
struct Shelf {
    version: Arc<AtomicU64>,
    held: Arc<std::sync::atomic::AtomicBool>,
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

async fn shelf_page(State(shelf): State<Shelf>, Path(name): Path<String>) -> (Extension<CacheTags>, String) {
    let version = shelf.version.load(SeqCst);
    if name == "old" && !shelf.held.swap(true, SeqCst) {
        shelf.entered.notify_one();
        tokio::time::timeout(Duration::from_secs(10), shelf.release.notified())
            .await
            .expect("released");
    }
    (Extension(CacheTags::new(["shelf"])), format!("v{version}"))
}

fn shelf_instance<St: Store>(shelf: &Shelf, store: St) -> Served {
    exchange::serve(
        Router::new()
            .route("/shelf/{name}", get(shelf_page))
            .with_state(shelf.clone())
            .layer(CacheLayer::new(store)),
    )
}

/// A purge queued while A's link is cut is stamped with the instant it was requested: an
/// entry whose request came before it, stored in Redis (by B) after it, is not served once
/// it lands; one whose request came after it is (it is not judged by the landing instant).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_purge_judges_entries_stored_before_it_lands_by_its_request_instant() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let namespace = fresh_namespace();
    let store_a = redis(proxy.url(), &namespace, 1 << 20).await;
    let store_b = redis(server.url(), &namespace, 1 << 20).await;
    let shelf = Shelf::default();
    let (a, b) = (shelf_instance(&shelf, store_a.clone()), shelf_instance(&shelf, store_b));

    // B's read of the old page has taken v0 from the origin before the purge is requested.
    let old = {
        let b = b.clone();
        tokio::spawn(async move { send(&b, "GET", "/shelf/old").await })
    };
    tokio::time::timeout(Duration::from_secs(10), shelf.entered.notified())
        .await
        .expect("the read reached the origin");
    proxy.black_hole();
    shelf.version.store(1, SeqCst);
    store_a.purge_tags(["shelf"]).await.expect("queued, not failed");
    assert_eq!(store_a.stats().pending_purges, 1, "queued");
    // Stored after the purge was requested, before it lands.
    shelf.release.notify_one();
    let (status, cache_status, version) = old.await.unwrap();
    assert_eq!((status, version), (StatusCode::OK, Some(0)));
    assert!(cache_status.contains("stored"), "{cache_status}");
    // Requested after the purge: the new version, stored.
    let (_, cache_status, version) = send(&b, "GET", "/shelf/new").await;
    assert_eq!(version, Some(1));
    assert!(cache_status.contains("stored"), "{cache_status}");
    // Until it lands, B (which has not heard of it) serves the old page from Redis.
    let (_, cache_status, version) = send(&b, "GET", "/shelf/old").await;
    assert_eq!(version, Some(0));
    assert!(cache_status.contains("; hit"), "{cache_status}");

    proxy.heal();
    until("the purge landed", Duration::from_secs(10), || {
        store_a.stats().pending_purges == 0
    })
    .await;
    for app in [&b, &a] {
        let (_, cache_status, version) = send(app, "GET", "/shelf/old").await;
        assert_eq!(version, Some(1), "an entry older than the purge served: {cache_status}");
    }
    let (_, cache_status, version) = send(&b, "GET", "/shelf/new").await;
    assert_eq!(version, Some(1));
    assert!(
        cache_status.contains("; hit"),
        "an entry newer than the purge's request was judged by its landing: {cache_status}"
    );
    eprintln!("queued purge judged by its request instant; {:?}", store_a.stats());
}

/// Two tiered instances on `url_a` and `url_b` (one namespace), their feeds live, every book
/// read once on each.
async fn warm_tiered_pair(
    url_a: String,
    url_b: String,
    op_timeout: Option<Duration>,
) -> (TieredStore, TieredStore, Books, Served, Served) {
    let namespace = fresh_namespace();
    let tiered = |url: String| {
        let namespace = namespace.clone();
        async move {
            let mut builder = RedisStore::builder(url)
                .namespace(&namespace)
                .clock_skew_margin(Duration::ZERO);
            if let Some(timeout) = op_timeout {
                builder = builder.op_timeout(timeout);
            }
            TieredStore::new(MemoryStore::new(), builder.connect().await.expect("connect"))
        }
    };
    let store_a = tiered(url_a).await;
    let store_b = tiered(url_b).await;
    until("both feeds live", Duration::from_secs(10), || {
        store_a.stats().coherent && store_b.stats().coherent
    })
    .await;
    let books = Books::default();
    let (a, b) = (instance(&books, store_a.clone()), instance(&books, store_b.clone()));
    read_all(&a, &books, 1).await;
    read_all(&b, &books, 1).await;
    (store_a, store_b, books, a, b)
}

/// A tiered instance whose link to Redis is black-holed takes a mutation: its own memory tier
/// drops the entry at once; once the link heals the purge lands and reaches the other
/// instance's memory tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_purge_through_a_black_holed_link_lands_after_the_heal() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let (store_a, store_b, books, a, b) = warm_tiered_pair(proxy.url(), server.url(), None).await;

    proxy.black_hole();
    let (status, _, _) = send(&a, "POST", "/books/5/reviews").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(store_a.l2().stats().pending_purges >= 1);
    let (a_reads, a_stale) = read_all(&a, &books, 2).await;
    let messages = store_b.stats().messages;

    proxy.heal();
    until("the purge landed", Duration::from_secs(10), || {
        store_a.l2().stats().pending_purges == 0
    })
    .await;
    until("B applied it", Duration::from_secs(5), || {
        store_b.stats().messages > messages
    })
    .await;
    let (b_reads, b_stale) = read_all(&b, &books, 5).await;
    let (r, s) = read_all(&a, &books, 5).await;
    eprintln!(
        "black hole: A {a_reads} reads during the outage, {a_stale} stale; after the landing B {b_reads} reads, \
         {b_stale} stale, A {r} reads, {s} stale; {:?}",
        store_a.l2().stats()
    );
    assert_eq!(a_stale + b_stale + s, 0);
}

/// A queued purge of a tiered store counts as pending until the other instances' memory tiers
/// have applied it: B's link to Redis is slow (100 ms each way, within its coherence window),
/// so B hears of A's purge 100 ms after it landed. When A reports nothing pending, B already
/// serves the new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_landed_tiered_purge_stays_pending_until_every_memory_tier_applied_it() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let link_a = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let link_b = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    link_b.set_delay(Duration::from_millis(100));
    let (store_a, _store_b, books, a, b) =
        warm_tiered_pair(link_a.url(), link_b.url(), Some(Duration::from_secs(1))).await;
    let (_, warm_stale) = read_all(&b, &books, 1).await;
    assert_eq!(warm_stale, 0);

    link_a.black_hole();
    let (status, _, _) = send(&a, "POST", "/books/5/reviews").await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(store_a.l2().stats().pending_purges >= 1, "queued");
    link_a.heal();
    let landed = store_a.l2().stats().landed_purges;
    until("the purge landed", Duration::from_secs(10), || {
        store_a.l2().stats().pending_purges == 0
    })
    .await;
    let (reads, stale) = read_all(&b, &books, 1).await;
    eprintln!(
        "after A reported nothing pending: B {reads} reads, {stale} stale; {:?}",
        store_a.l2().stats()
    );
    assert_eq!(stale, 0, "B served what A's landed purge invalidated");
    assert_eq!(store_a.l2().stats().landed_purges, landed + 1);
}

/// A purge made while the link to Redis is cut is passed on to the CDN at once (this
/// instance applies it at once) and again, as `Replayed`, once it lands in Redis: until then
/// other instances could serve what it invalidates, and the CDN fetch it again from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_purge_is_passed_on_again_once_it_lands() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let store = redis(proxy.url(), &fresh_namespace(), 1 << 20).await;
    let (sink, mut rx) = recording_sink();
    // Through a BoxStore, as an application choosing its store at run time has it.
    let forwarding = PurgeForwarding::new(BoxStore::new(store.clone()), sink);

    forwarding.purge_tags(["books"]).await.unwrap();
    let event = next_event(&mut rx).await;
    assert_eq!(
        (event.tags.as_slice(), event.origin),
        (&["books".to_owned()][..], PurgeOrigin::Programmatic)
    );

    proxy.black_hole();
    forwarding.purge_tags(["reviews"]).await.unwrap();
    assert_eq!(store.stats().pending_purges, 1, "queued, not failed");
    let event = next_event(&mut rx).await;
    assert_eq!(
        (event.tags.as_slice(), event.origin),
        (&["reviews".to_owned()][..], PurgeOrigin::Programmatic)
    );

    proxy.heal();
    let event = next_event(&mut rx).await;
    assert_eq!(
        (event.tags.as_slice(), event.origin),
        (&["reviews".to_owned()][..], PurgeOrigin::Replayed)
    );
    assert_eq!(store.stats().landed_purges, 1);
    assert!(
        rx.try_recv().is_err(),
        "a purge that reached Redis at once is not passed on again"
    );
    until("3 purges delivered", Duration::from_secs(5), || {
        forwarding.stats().delivered == 3
    })
    .await;
}

async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<PurgeEvent>) -> PurgeEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event")
        .unwrap()
}

type Events = tokio::sync::mpsc::UnboundedReceiver<PurgeEvent>;

/// A sink handing every purge it is given to the receiver.
fn recording_sink() -> (
    impl Fn(PurgeEvent) -> std::future::Ready<Result<(), PurgeSinkError>> + Clone + Send + Sync + 'static,
    Events,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sink =
        move |event: PurgeEvent| std::future::ready(tx.send(event).map_err(|_| PurgeSinkError::new("receiver gone")));
    (sink, rx)
}

/// Only the forwarding store a queued purge was made through passes it on again, and a
/// purge-all the queue made of purges past its bound is not passed on at all (the purges it
/// replaced were, when they were made): an outage never turns into a CDN-wide flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_purges_a_forwarding_store_made_are_passed_on_again() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let store = redis(proxy.url(), &fresh_namespace(), 1 << 20).await;
    let (sink_a, mut events_a) = recording_sink();
    let (sink_b, mut events_b) = recording_sink();
    let a = PurgeForwarding::new(store.clone(), sink_a);
    let b = PurgeForwarding::new(store.clone(), sink_b);

    proxy.black_hole();
    a.purge_tags(["through-a"]).await.unwrap();
    store.purge_tags(["bare"]).await.unwrap();
    assert_eq!(next_event(&mut events_a).await.origin, PurgeOrigin::Programmatic);
    proxy.heal();
    until("landed", Duration::from_secs(10), || store.stats().pending_purges == 0).await;
    let event = next_event(&mut events_a).await;
    assert_eq!(
        (event.tags.as_slice(), event.origin),
        (&["through-a".to_owned()][..], PurgeOrigin::Replayed)
    );
    // A purge that reaches Redis at once marks the end: nothing before it for B, nothing
    // more for A.
    b.purge_tags(["after"]).await.unwrap();
    assert_eq!(next_event(&mut events_b).await.tags, ["after"]);
    a.purge_tags(["after"]).await.unwrap();
    assert_eq!(next_event(&mut events_a).await.tags, ["after"]);

    // Past the queue's bound (300 bytes here): 5 purges become one purge-all in Redis.
    let small = redis(proxy.url(), &fresh_namespace(), 300).await;
    let (sink, mut events) = recording_sink();
    let forwarding = PurgeForwarding::new(small.clone(), sink);
    proxy.black_hole();
    for i in 0..5 {
        forwarding
            .purge_tags([format!("tag-{i}-{}", "x".repeat(40))])
            .await
            .unwrap();
    }
    assert!(small.stats().degraded_purges >= 1);
    proxy.heal();
    until("landed", Duration::from_secs(10), || small.stats().pending_purges == 0).await;
    forwarding.purge_tags(["after"]).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events).await;
        if event.tags == ["after"] {
            break;
        }
        seen.push(event);
    }
    // The 5 as they were made, then again those queued after the purge-all replaced the
    // first ones: never a purge-all.
    let made = seen.iter().filter(|e| e.origin == PurgeOrigin::Programmatic).count();
    assert_eq!(made, 5, "{seen:?}");
    assert!(seen.iter().all(|e| !e.all && e.tags.len() == 1), "{seen:?}");
    assert!(
        seen.len() < 10,
        "not all of them replayed: the first were replaced: {seen:?}"
    );
}

/// Under tiered stores, a queued purge is passed on again only once it has reached the other
/// instances' memory tiers too (as a direct tiered purge returns only then): the CDN that
/// fetches again then finds no instance serving what it invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_tiered_purge_is_passed_on_again_once_every_memory_tier_applied_it() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let (store_a, _store_b, _books, _a, _b) = warm_tiered_pair(proxy.url(), server.url(), None).await;
    let (sink, mut events) = recording_sink();
    let forwarding = PurgeForwarding::new(store_a.clone(), sink);
    proxy.black_hole();
    forwarding.purge_tags(["book:1"]).await.unwrap();
    assert_eq!(next_event(&mut events).await.origin, PurgeOrigin::Programmatic);
    proxy.heal();
    let event = next_event(&mut events).await;
    assert_eq!(event.origin, PurgeOrigin::Replayed);
    assert_eq!(
        store_a.l2().stats().pending_purges,
        0,
        "passed on again only once settled everywhere"
    );
}

/// Over a spread namespace other instances honour a purge from `MIRROR_WINDOW` after it
/// returned: the CDN is told only then, so that what it fetches again is never the purged
/// version from an instance yet to apply it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_spread_namespace_the_cdn_is_told_once_every_instance_honours_the_purge() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .namespace(fresh_namespace())
        .spread_namespace(true)
        .connect()
        .await
        .expect("connect");
    let (sink, mut events) = recording_sink();
    let forwarding = PurgeForwarding::new(store, sink);
    // Timed from the call, which the purge's return can only follow.
    let called = Instant::now();
    forwarding.purge_tags(["books"]).await.unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event.tags, ["books"]);
    assert!(
        called.elapsed() >= RedisStore::MIRROR_WINDOW,
        "told {:?} after the purge was called",
        called.elapsed()
    );
}
