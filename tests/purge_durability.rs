//! A purge runs to its end once its mutation has succeeded, even when the client goes away
//! while it is under way: over real HTTP/1.1 on loopback, each client sends a POST and
//! closes its connection as soon as the purge has started, before the response.

mod common;
#[path = "common/loopback.rs"]
mod loopback;
#[cfg(feature = "redis")]
#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use common::{cache_status, text, until};
use http::{Method, StatusCode};
use loopback::{request, serve, within, Connection, SlowLink};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_response_cache::store::{Entry, Lookup};
use tower_response_cache::{
    CacheKey, CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, PurgeMode, Store, StoreError,
};

/// Mutations per scenario.
const N: usize = 40;

/// A store whose purges announce that they started, take `delay` more, and count how they
/// ended: a client can leave while one is under way, and the test can tell whether it
/// completed or was cancelled.
#[derive(Clone)]
struct Watched<St> {
    inner: St,
    delay: Duration,
    started: Arc<watch::Sender<usize>>,
    /// Purges the inner store carried out.
    completed: Arc<AtomicUsize>,
    /// Purges over, whether completed, failed or cancelled (their future dropped).
    ended: Arc<AtomicUsize>,
}

/// Counts a purge as over when its future ends or is dropped.
struct Ended(Arc<AtomicUsize>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

impl<St> Watched<St> {
    fn new(inner: St, delay: Duration) -> Self {
        Watched {
            inner,
            delay,
            started: Arc::new(watch::channel(0).0),
            completed: Arc::default(),
            ended: Arc::default(),
        }
    }

    fn started(&self) -> usize {
        *self.started.borrow()
    }

    fn completed(&self) -> usize {
        self.completed.load(SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(SeqCst)
    }
}

impl<St: Store> Store for Watched<St> {
    fn get(&self, key: &CacheKey) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        self.inner.get(key)
    }

    fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> impl Future<Output = Result<bool, StoreError>> + Send {
        self.inner.put(key, entry, ttl)
    }

    fn remove(&self, key: &CacheKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.remove(key)
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        let _ended = Ended(self.ended.clone());
        self.started.send_modify(|n| *n += 1);
        tokio::time::sleep(self.delay).await;
        let result = self.inner.purge(tags, mode).await;
        if result.is_ok() {
            self.completed.fetch_add(1, SeqCst);
        }
        result
    }

    fn purge_all(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.purge_all()
    }
}

/// Books whose versions mutations bump.
#[derive(Clone)]
struct Books(Arc<Vec<AtomicU64>>);

impl Books {
    fn new() -> Self {
        Books(Arc::new((0..N).map(|_| AtomicU64::new(0)).collect()))
    }

    fn page(&self, id: usize) -> String {
        format!("book {id} v{}", self.0[id].load(SeqCst))
    }
}

async fn book(State(books): State<Books>, Path(id): Path<usize>) -> (Extension<CacheTags>, String) {
    (Extension(CacheTags::new([format!("book:{id}")])), books.page(id))
}

/// Changes the book and names its tag to purge (for the `InvalidateLayer`).
async fn review(State(books): State<Books>, Path(id): Path<usize>) -> (StatusCode, Extension<Invalidate>) {
    books.0[id].fetch_add(1, SeqCst);
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

/// Changes the book at its own URI, which RFC 9111 §4.4 invalidates (for the `CacheLayer`).
async fn update(State(books): State<Books>, Path(id): Path<usize>) -> StatusCode {
    books.0[id].fetch_add(1, SeqCst);
    StatusCode::NO_CONTENT
}

fn routes(books: &Books) -> Router {
    Router::new()
        .route("/books/{id}", get(book).post(update))
        .route("/books/{id}/reviews", post(review))
        .with_state(books.clone())
}

/// Sends `POST path` and closes the connection as soon as a purge has started, unless the
/// response came first; returns whether the client left before its response, once the
/// socket is closed.
async fn post_and_leave<St>(addr: SocketAddr, path: &str, store: &Watched<St>) -> bool {
    let mut started = store.started.subscribe();
    let before = *started.borrow_and_update();
    let mut connection = Connection::open(addr).await;
    let response = connection.sender.send_request(request(Method::POST, path));
    let left = tokio::select! {
        biased;
        answered = response => {
            assert_eq!(answered.expect("answered").status(), StatusCode::CREATED);
            false
        }
        purging = within(started.wait_for(|n| *n > before)) => {
            purging.expect("the store is alive");
            true
        }
    };
    connection.close().await;
    left
}

/// Reads `GET /books/{id}` on a connection of its own: the body and whether it was a hit.
async fn read_book(addr: SocketAddr, id: usize) -> (String, bool) {
    let mut connection = Connection::open(addr).await;
    let response = within(
        connection
            .sender
            .send_request(request(Method::GET, &format!("/books/{id}"))),
    )
    .await
    .expect("answered");
    let hit = cache_status(&response).contains("; hit;");
    let body = text(response).await;
    connection.close().await;
    (body, hit)
}

/// What a scenario measured.
#[derive(Debug, PartialEq, Eq)]
struct Lost {
    /// Clients that left while their purge was under way.
    left: usize,
    /// Books served at their old version afterwards.
    stale: usize,
}

/// Fills the cache with every book, has each one mutated (at `path(id)`, after `prepare`)
/// by a client that leaves while its purge is under way, and returns how many books are
/// still served from the cache at their old version: the purges lost.
async fn mutate_and_leave<St, P, F>(
    app: Router,
    books: &Books,
    store: &Watched<St>,
    path: fn(usize) -> String,
    mut prepare: P,
) -> Lost
where
    St: Store,
    P: FnMut() -> F,
    F: Future<Output = ()>,
{
    let (addr, server) = serve(app).await;
    for id in 0..N {
        assert_eq!(read_book(addr, id).await, (books.page(id), false));
        assert_eq!(read_book(addr, id).await, (books.page(id), true), "stored");
    }
    let mut left = 0;
    for id in 0..N {
        prepare().await;
        left += usize::from(post_and_leave(addr, &path(id), store).await);
        // Completed or cancelled: either way the next mutation starts on its own.
        until("the purge to be over", || store.ended() == store.started()).await;
    }
    let mut stale = 0;
    for id in 0..N {
        let (body, hit) = read_book(addr, id).await;
        if body != books.page(id) {
            assert!(hit, "an old version can only come from the cache");
            stale += 1;
        }
    }
    eprintln!(
        "{N} mutations, {left} of whose clients left mid-purge: purges started {}, completed {}, \
         books served stale afterwards: {stale}",
        store.started(),
        store.completed(),
    );
    server.abort();
    Lost { left, stale }
}

fn reviews(id: usize) -> String {
    format!("/books/{id}/reviews")
}

/// The `InvalidateLayer` inside the `CacheLayer`, as the crate's examples put it.
fn stacked<St: Store>(books: &Books, store: &Watched<St>) -> Router {
    routes(books)
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()))
}

#[tokio::test]
async fn invalidate_layer_purges_complete_after_the_client_leaves() {
    let books = Books::new();
    let store = Watched::new(MemoryStore::new(), Duration::from_millis(20));
    let lost = mutate_and_leave(stacked(&books, &store), &books, &store, reviews, || async {}).await;
    assert_eq!(lost, Lost { left: N, stale: 0 }, "purges lost when their clients left");
    assert_eq!(store.completed(), store.started());
}

#[tokio::test]
async fn rfc9111_target_purges_complete_after_the_client_leaves() {
    let books = Books::new();
    let store = Watched::new(MemoryStore::new(), Duration::from_millis(20));
    let app = routes(&books).layer(CacheLayer::new(store.clone()));
    let lost = mutate_and_leave(app, &books, &store, |id| format!("/books/{id}"), || async {}).await;
    assert_eq!(lost, Lost { left: N, stale: 0 }, "purges lost when their clients left");
    assert_eq!(store.completed(), store.started());
}

/// Each purge finds Redis without its scripts (`SCRIPT FLUSH`), so it loads them and retries,
/// over a link that holds Redis's replies back 5 ms: the client leaves while that is under way.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_purges_complete_after_the_client_leaves_even_when_scripts_reload() {
    use redis_server::RedisServer;
    use tower_response_cache::store::RedisStore;

    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let link = SlowLink::start(([127, 0, 0, 1], server.port).into(), Duration::from_millis(5)).await;
    let redis = RedisStore::builder(format!("redis://{}", link.addr))
        .namespace("durability")
        .clock_skew_margin(Duration::ZERO)
        .connect()
        .await
        .expect("connect");
    let flusher = ::redis::Client::open(server.url()).expect("redis url");
    let flusher = within(flusher.get_multiplexed_async_connection())
        .await
        .expect("connected");
    let flush_scripts = || {
        let mut flusher = flusher.clone();
        async move {
            let flushed: String = within(::redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut flusher))
                .await
                .expect("SCRIPT FLUSH");
            assert_eq!(flushed, "OK");
        }
    };
    let books = Books::new();
    let store = Watched::new(redis, Duration::ZERO);
    let lost = mutate_and_leave(stacked(&books, &store), &books, &store, reviews, flush_scripts).await;
    assert_eq!(lost.stale, 0, "purges lost when their clients left");
    assert!(lost.left > N / 2, "most clients left mid-purge: {lost:?}");
    assert_eq!(store.completed(), store.started());
}

/// Sends `POST path` and waits for its response; returns the purges the store had started and
/// completed when the response arrived.
async fn post_and_stay<St>(addr: SocketAddr, path: &str, store: &Watched<St>) -> (usize, usize) {
    let mut connection = Connection::open(addr).await;
    let response = within(connection.sender.send_request(request(Method::POST, path)))
        .await
        .expect("answered");
    let seen = (store.started(), store.completed());
    assert!(response.status().is_success(), "{}", response.status());
    connection.close().await;
    seen
}

/// A client that stays gets the response to its mutation only once the purge it made has
/// completed (the store's purge takes 200 ms): whatever it reads next is not the old page.
async fn the_response_waits_for_the_purge(app: Router, books: &Books, store: &Watched<MemoryStore>, path: &str) {
    let (addr, server) = serve(app).await;
    read_book(addr, 3).await;
    assert_eq!(read_book(addr, 3).await, (books.page(3), true), "stored");
    let (started, completed) = post_and_stay(addr, path, store).await;
    assert!(started >= 1, "the mutation purged");
    assert_eq!(completed, started, "the response arrived before its purge completed");
    assert_eq!(read_book(addr, 3).await, (books.page(3), false));
    server.abort();
}

#[tokio::test]
async fn invalidate_layer_answers_a_client_that_stays_once_its_purge_completed() {
    let books = Books::new();
    let store = Watched::new(MemoryStore::new(), Duration::from_millis(200));
    the_response_waits_for_the_purge(stacked(&books, &store), &books, &store, &reviews(3)).await;
}

#[tokio::test]
async fn rfc9111_target_answers_a_client_that_stays_once_its_purge_completed() {
    let books = Books::new();
    let store = Watched::new(MemoryStore::new(), Duration::from_millis(200));
    let app = routes(&books).layer(CacheLayer::new(store.clone()));
    the_response_waits_for_the_purge(app, &books, &store, "/books/3").await;
}
