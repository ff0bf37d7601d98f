//! The promises under faults, over real HTTP/1.1 on loopback: HEAD never poisons a GET
//! entry, credentialed responses are shared only on the origin's own freshness, a failing
//! or hung origin keeps its stampede protection, waiting is not counted as age, and per-user
//! pages are not served one after another.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
mod common;
#[path = "common/rng.rs"]
mod rng;
use common::{until, WAIT};
use rng::Rng;
use tower_response_cache::{CacheLayer, MemoryStore, Store};

/// What the client saw.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A body that says less than its `Content-Length` is a broken response.
    fn assert_complete(&self) {
        if let Some(length) = self.headers.get("content-length") {
            let length: usize = length.to_str().unwrap().parse().unwrap();
            assert_eq!(
                self.body.len(),
                length,
                "body shorter than its content-length: {self:?}"
            );
        }
    }
}

async fn serve(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Seen {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let exchange = async {
        let response = client.request(request.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Seen {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(WAIT, exchange).await.expect("the exchange hung")
}

/// An origin that counts its calls and those under way.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Notify>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// Counts a call; returns its number (from 1).
    fn enter(&self) -> usize {
        self.in_flight.fetch_add(1, SeqCst);
        self.calls.fetch_add(1, SeqCst) + 1
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
    }
}

const PAGE: &str = "the complete body of the catalogue page";

// --- 1. HEAD never poisons the GET entry -------------------------------------------------

/// Stale on arrival (its `Age` is past its `max-age`) and inside its stale-while-revalidate
/// window, so that every request after the first finds it stale and refreshes it.
async fn stale_page(State(origin): State<Origin>) -> ([(&'static str, &'static str); 2], &'static str) {
    origin.enter();
    origin.leave();
    (
        [
            ("cache-control", "max-age=60, stale-while-revalidate=600"),
            ("age", "61"),
        ],
        PAGE,
    )
}

async fn head_without_body(State(origin): State<Origin>) -> ([(&'static str, String); 3], ()) {
    origin.enter();
    origin.leave();
    (
        [
            ("cache-control", "max-age=60, stale-while-revalidate=600".into()),
            ("age", "61".into()),
            ("content-length", PAGE.len().to_string()),
        ],
        (),
    )
}

async fn head_then_get_stays_whole(app: Router, origin: &Origin, layer: &CacheLayer<MemoryStore>) {
    let (addr, server) = serve(app).await;
    let client = client();
    let first = fetch(&client, addr, "GET", "/page", &[]).await;
    assert!(first.cache_status().contains("stored"), "{}", first.cache_status());
    // Every GET now finds the entry stale and starts one refresh, awaited so that the next
    // request sees what it stored; a HEAD is answered from the entry and refreshes nothing.
    let mut refreshes = 0;
    for method in ["HEAD", "GET", "HEAD", "HEAD", "GET", "HEAD", "GET"] {
        let seen = fetch(&client, addr, method, "/page", &[]).await;
        assert_eq!(seen.status, StatusCode::OK);
        assert!(seen.cache_status().contains("fwd=stale"), "{}", seen.cache_status());
        if method == "GET" {
            seen.assert_complete();
            assert_eq!(seen.body, PAGE, "after a HEAD: {}", seen.cache_status());
            refreshes += 1;
        } else {
            assert!(seen.body.is_empty());
            assert_eq!(seen.headers["content-length"], PAGE.len().to_string().as_str());
        }
        until("the refresh", || layer.stats().background_refreshes == refreshes).await;
        until("its entry", || layer.stats().stores == refreshes + 1).await;
    }
    assert_eq!(origin.calls(), 4, "one call for the first GET, one per GET's refresh");
    let last = fetch(&client, addr, "GET", "/page", &[]).await;
    last.assert_complete();
    assert_eq!(last.body, PAGE);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_refresh_never_poisons_the_get_entry_of_a_whole_router() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    // The layer wraps the whole Router, which answers HEAD by running the GET handler and
    // dropping the body.
    let app = Router::new()
        .route("/page", get(stale_page))
        .with_state(origin.clone())
        .layer(layer.clone());
    head_then_get_stays_whole(app, &origin, &layer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_refresh_never_poisons_the_get_entry_of_an_explicit_head_route() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = Router::new()
        .route("/page", get(stale_page).head(head_without_body))
        .with_state(origin.clone())
        .layer(layer.clone());
    head_then_get_stays_whole(app, &origin, &layer).await;
}

/// A page with a validator whose HEAD route answers headers only (and never 304): stale on
/// arrival when `x-age: 61` is sent, else fresh; no stale-while-revalidate window.
fn page_with_head_route(origin: &Origin) -> Router {
    async fn page(State(origin): State<Origin>, headers: HeaderMap) -> ([(&'static str, String); 3], &'static str) {
        origin.enter();
        origin.leave();
        let age = headers.get("x-age").map_or("0", |v| v.to_str().unwrap()).to_string();
        (
            [
                ("cache-control", "max-age=60".into()),
                ("etag", "\"p\"".into()),
                ("age", age),
            ],
            PAGE,
        )
    }
    async fn head(State(origin): State<Origin>, headers: HeaderMap) -> ([(&'static str, String); 4], ()) {
        let ([cc, etag, age], body) = page(State(origin), headers).await;
        ([cc, etag, age, ("content-length", body.len().to_string())], ())
    }
    Router::new()
        .route("/page", get(page).head(head))
        .with_state(origin.clone())
}

fn head_request(age: &str) -> http::Request<axum::body::Body> {
    http::Request::head("/page")
        .header("x-age", age)
        .body(axum::body::Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_by_warming_or_revalidating_never_stores_a_bodyless_entry() {
    use tower_response_cache::KeepWarm;
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let routes = page_with_head_route(&origin);
    let (addr, server) = serve(routes.clone().layer(layer.clone())).await;
    let client = client();

    // Warming with a HEAD, once and on a schedule, on a cold key.
    let report = layer.warm(routes.clone(), [head_request("0")], 1).await;
    assert_eq!((report.stored, report.not_stored), (0, 1), "{report:?}");
    let mut warming = layer.keep_warm(
        routes.clone(),
        || [head_request("0")],
        KeepWarm::every(Duration::from_secs(3600)),
    );
    let round = tokio::time::timeout(WAIT, warming.next_round()).await.unwrap().unwrap();
    assert_eq!((round.report.stored, round.report.not_stored), (0, 1), "{round:?}");
    warming.stop().await;
    assert_eq!(layer.stats().stores, 0);
    let get = fetch(&client, addr, "GET", "/page", &[("x-age", "61")]).await;
    get.assert_complete();
    assert_eq!(get.body, PAGE);
    assert!(get.cache_status().contains("stored"), "{}", get.cache_status());

    // The entry is stale with a validator: a HEAD from warming, then one from a client, is
    // forwarded (the HEAD route answers 200, headers only) and stores nothing.
    let report = layer.warm(routes.clone(), [head_request("61")], 1).await;
    assert_eq!((report.stored, report.already_fresh), (0, 0), "{report:?}");
    let head = fetch(&client, addr, "HEAD", "/page", &[("x-age", "61")]).await;
    assert!(head.cache_status().contains("fwd=stale"), "{}", head.cache_status());
    assert!(!head.cache_status().contains("stored"), "{}", head.cache_status());
    assert_eq!(layer.stats().stores, 1, "only the GET's entry");
    let get = fetch(&client, addr, "GET", "/page", &[]).await;
    get.assert_complete();
    assert_eq!(get.body, PAGE, "{}", get.cache_status());
    let hit = fetch(&client, addr, "GET", "/page", &[]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(hit.body, PAGE);
    server.abort();
}

// --- 2. Credentialed responses are shared only on the origin's freshness -----------------

async fn who(State(origin): State<Origin>, headers: HeaderMap) -> ([(&'static str, &'static str); 1], String) {
    origin.enter();
    origin.leave();
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    let cc = headers
        .get("x-cc")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("must-revalidate");
    let cc: &'static str = match cc {
        "public" => "public",
        "public-fresh" => "public, max-age=60",
        _ => "must-revalidate",
    };
    ([("cache-control", cc)], format!("for {caller}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentialed_response_is_never_shared_on_a_ttl_the_origin_did_not_give() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = Router::new()
        .route("/who", get(who))
        .with_state(origin.clone())
        .layer(layer.clone());
    let (addr, server) = serve(app).await;
    let client = client();
    for cc in ["must-revalidate", "public"] {
        let path = format!("/who?cc={cc}");
        let alice = fetch(
            &client,
            addr,
            "GET",
            &path,
            &[("authorization", "Bearer alice"), ("x-cc", cc)],
        )
        .await;
        assert_eq!(alice.body, "for Bearer alice");
        assert!(
            alice.cache_status().contains("detail=credentials"),
            "{}",
            alice.cache_status()
        );
        let bob = fetch(
            &client,
            addr,
            "GET",
            &path,
            &[("authorization", "Bearer bob"), ("x-cc", cc)],
        )
        .await;
        assert_eq!(bob.body, "for Bearer bob", "{cc}: alice's answer served to bob");
        let anonymous = fetch(&client, addr, "GET", &path, &[("x-cc", cc)]).await;
        assert_eq!(
            anonymous.body, "for anonymous",
            "{cc}: alice's answer served to anonymous"
        );
    }
    assert_eq!(origin.calls(), 6);
    // With freshness from the origin, RFC 9111 §3.5 lets it be shared.
    let fresh = "/who?cc=public-fresh";
    let alice = fetch(
        &client,
        addr,
        "GET",
        fresh,
        &[("authorization", "Bearer alice"), ("x-cc", "public-fresh")],
    )
    .await;
    assert!(alice.cache_status().contains("stored"), "{}", alice.cache_status());
    let bob = fetch(
        &client,
        addr,
        "GET",
        fresh,
        &[("authorization", "Bearer bob"), ("x-cc", "public-fresh")],
    )
    .await;
    assert!(bob.cache_status().contains("hit"));
    assert_eq!(bob.body, "for Bearer alice", "explicitly public and fresh: shared");
    server.abort();
}

// --- 7. A failing origin keeps its stampede protection -----------------------------------

/// The first call fails with a 503 once the whole burst is waiting on it; later calls succeed.
async fn flaky(
    State((origin, layer)): State<(Origin, CacheLayer<MemoryStore>)>,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let call = origin.enter();
    if call == 1 || call == 2 {
        // Hold the leader until every other request of the burst waits on it.
        let waiters = BURST as u64 - 1;
        until("the burst to wait", || layer.stats().waiting == waiters).await;
    }
    origin.leave();
    if call == 1 {
        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "try again")
    } else {
        (StatusCode::OK, [("cache-control", "max-age=60")], PAGE)
    }
}

const BURST: usize = 200;

async fn burst(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr) -> Vec<Seen> {
    let requests: Vec<_> = (0..BURST)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { fetch(&client, addr, "GET", "/flaky", &[]).await })
        })
        .collect();
    let mut seen = Vec::new();
    for request in requests {
        seen.push(request.await.unwrap());
    }
    seen
}

/// A burst after a failed one, the origin healthy: one new call (the second), every request
/// answered with the page, which is then stored.
async fn healthy_burst(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr, origin: &Origin) {
    let second = burst(client, addr).await;
    assert_eq!(origin.calls(), 2);
    for seen in &second {
        assert_eq!((seen.status, &seen.body[..]), (StatusCode::OK, PAGE.as_bytes()));
    }
    assert!(fetch(client, addr, "GET", "/flaky", &[])
        .await
        .cache_status()
        .contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_a_failing_origin_makes_one_call_and_so_does_the_next() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = Router::new()
        .route("/flaky", get(flaky))
        .with_state((origin.clone(), layer.clone()))
        .layer(layer.clone());
    let (addr, server) = serve(app).await;
    let client = client();

    let first = burst(&client, addr).await;
    assert_eq!(origin.calls(), 1, "the failure was shared, not retried by every waiter");
    for seen in &first {
        assert_eq!(
            (seen.status, &seen.body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"try again"[..])
        );
        assert_eq!(seen.headers["retry-after"], "1");
    }
    assert_eq!(layer.stats().failures_shared, BURST as u64 - 1);

    // The origin is healthy again: the key was not marked uncacheable, so one call again.
    healthy_burst(&client, addr, &origin).await;
    server.abort();
}

/// The cache in front of a service that can fail with an error (not a response): the error
/// reaches its own client as a 500 from `HandleErrorLayer`, outside the cache.
fn erring_app(layer: &CacheLayer<MemoryStore>, inner: ErringOrigin) -> Router {
    use axum::error_handling::HandleErrorLayer;
    let service = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: std::io::Error| async move {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("leader: {error}"))
        }))
        .layer(layer.clone())
        .service(inner);
    Router::new().route_service("/{*path}", service)
}

/// What an [`ErringOrigin`] call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// Answers the page, `max-age=60`.
    Page,
    /// Answers the page stale on arrival, inside a 600 s stale-if-error window.
    StalePage,
    /// Answers a 503.
    Unavailable,
    /// Fails with an error.
    Fail,
    /// Never answers.
    Hang,
}

/// An origin whose calls do what `script` says, in order (the last one repeats). Each call
/// waits, before acting, until `waiters` requests wait on it, so that a whole burst depends on
/// its outcome; only a first call that answers `StalePage` (a lone fill) does not.
#[derive(Clone)]
struct ErringOrigin {
    origin: Origin,
    script: Arc<Vec<Then>>,
    layer: CacheLayer<MemoryStore>,
    waiters: u64,
}

impl tower::Service<axum::extract::Request> for ErringOrigin {
    type Response = axum::response::Response;
    type Error = std::io::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: axum::extract::Request) -> Self::Future {
        use axum::response::IntoResponse;
        let this = self.clone();
        Box::pin(async move {
            let call = this.origin.enter();
            let then = this.script[(call - 1).min(this.script.len() - 1)];
            if call > 1 || this.script[0] != Then::StalePage {
                until("the burst to wait", || this.layer.stats().waiting == this.waiters).await;
            }
            this.origin.leave();
            match then {
                Then::Page => Ok(([("cache-control", "max-age=60")], PAGE).into_response()),
                Then::StalePage => Ok((
                    [("cache-control", "max-age=60, stale-if-error=600"), ("age", "61")],
                    PAGE,
                )
                    .into_response()),
                Then::Unavailable => Ok((StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()),
                Then::Fail => Err(std::io::Error::other("connection refused")),
                Then::Hang => std::future::pending().await,
            }
        })
    }
}

fn erring(script: &[Then], layer: &CacheLayer<MemoryStore>) -> (Origin, Router) {
    let origin = Origin::default();
    let inner = ErringOrigin {
        origin: origin.clone(),
        script: Arc::new(script.to_vec()),
        layer: layer.clone(),
        waiters: BURST as u64 - 1,
    };
    (origin, erring_app(layer, inner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_against_an_erring_origin_makes_one_call_and_so_does_the_next() {
    let layer = CacheLayer::new(MemoryStore::new());
    let (origin, app) = erring(&[Then::Fail, Then::Page], &layer);
    let (addr, server) = serve(app).await;
    let client = client();

    let first = burst(&client, addr).await;
    assert_eq!(origin.calls(), 1, "the error was shared, not retried by every waiter");
    let leader: Vec<_> = first
        .iter()
        .filter(|s| s.status == StatusCode::INTERNAL_SERVER_ERROR)
        .collect();
    assert_eq!(leader.len(), 1, "the leader's client got its own error");
    assert_eq!(leader[0].body, "leader: connection refused");
    for seen in first.iter().filter(|s| s.status != StatusCode::INTERNAL_SERVER_ERROR) {
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{seen:?}");
        assert!(seen.cache_status().contains("collapsed"), "{}", seen.cache_status());
    }
    assert_eq!(layer.stats().failures_shared, BURST as u64 - 1);

    // Healthy again: a new leader, one call, every request answered and the page stored.
    healthy_burst(&client, addr, &origin).await;
    server.abort();
}

/// A stale entry inside its stale-if-error window; the leader of the next burst fails as
/// `then`: every request of the burst gets the stale entry, for one origin call.
async fn stale_if_error_burst(then: Then, layer: CacheLayer<MemoryStore>) {
    let (origin, app) = erring(&[Then::StalePage, then], &layer);
    let (addr, server) = serve(app).await;
    let client = client();
    let first = fetch(&client, addr, "GET", "/flaky", &[]).await;
    assert!(first.cache_status().contains("stored"), "{}", first.cache_status());

    let seen = burst(&client, addr).await;
    assert_eq!(origin.calls(), 2, "{then:?}: one call for the whole burst");
    for seen in &seen {
        assert_eq!(
            (seen.status, &seen.body[..]),
            (StatusCode::OK, PAGE.as_bytes()),
            "{then:?}: {}",
            seen.cache_status()
        );
        assert!(
            seen.cache_status().contains("fwd=stale"),
            "{then:?}: {}",
            seen.cache_status()
        );
    }
    let collapsed = seen.iter().filter(|s| s.cache_status().contains("collapsed")).count();
    assert_eq!(
        collapsed,
        BURST - 1,
        "{then:?}: the waiters got it from the leader's settlement"
    );
    assert_eq!(layer.stats().errors_absorbed, 1, "{then:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_the_stale_entry_when_the_leader_gets_a_5xx() {
    stale_if_error_burst(Then::Unavailable, CacheLayer::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_the_stale_entry_when_the_leader_gets_an_error() {
    stale_if_error_burst(Then::Fail, CacheLayer::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_the_stale_entry_when_the_leader_times_out() {
    // Longer than the burst takes to gather behind the leader; the origin holds its answer
    // until it has, then never answers.
    let layer = CacheLayer::builder(MemoryStore::new())
        .origin_timeout(Duration::from_secs(3))
        .build();
    stale_if_error_burst(Then::Hang, layer).await;
}

// --- 8. A hung origin call does not stall the key ---------------------------------------

/// The first call never returns, the fourth waits for the test's gate; the others answer at
/// once.
async fn hangs_first(State(origin): State<Origin>) -> ([(&'static str, &'static str); 1], &'static str) {
    match origin.enter() {
        1 => std::future::pending::<()>().await,
        // The fourth call waits for the test to let it answer.
        4 => origin.gate.notified().await,
        _ => {}
    }
    origin.leave();
    ([("cache-control", "max-age=60")], PAGE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_hung_call_the_next_request_does_not_wait_for_it() {
    let origin = Origin::default();
    let deadline = Duration::from_secs(2);
    let layer = CacheLayer::builder(MemoryStore::new())
        .coalesce_timeout(deadline)
        .build();
    let app = Router::new()
        .route("/hung", get(hangs_first))
        .with_state(origin.clone())
        .layer(layer.clone());
    let (addr, server) = serve(app).await;
    let client = client();
    let hung = {
        let client = client.clone();
        tokio::spawn(async move { fetch(&client, addr, "GET", "/hung", &[]).await })
    };
    until("the hung call", || origin.calls() == 1).await;
    // This one waits on the hung flight until its deadline, then goes alone.
    let waiter = fetch(&client, addr, "GET", "/hung", &[]).await;
    assert_eq!(waiter.body, PAGE);
    // The flight is past its deadline: the next miss leads its own rather than waiting again.
    layer.store().purge_all().await.unwrap();
    let started = Instant::now();
    let next = fetch(&client, addr, "GET", "/hung", &[]).await;
    assert_eq!(next.body, PAGE);
    assert!(!next.cache_status().contains("collapsed"), "{}", next.cache_status());
    assert!(
        started.elapsed() < deadline / 2,
        "waited {:?} on a dead flight",
        started.elapsed()
    );
    assert_eq!(origin.calls(), 3);
    // And misses coalesce again, behind a new leader, not behind the hung one.
    layer.store().purge_all().await.unwrap();
    let leader = {
        let client = client.clone();
        tokio::spawn(async move { fetch(&client, addr, "GET", "/hung", &[]).await })
    };
    until("the new leader", || origin.calls() == 4).await;
    let follower = {
        let client = client.clone();
        tokio::spawn(async move { fetch(&client, addr, "GET", "/hung", &[]).await })
    };
    until("the follower to wait on the new leader", || layer.stats().waiting == 1).await;
    origin.gate.notify_one();
    assert_eq!(leader.await.unwrap().body, PAGE);
    let follower = follower.await.unwrap();
    assert!(
        follower.cache_status().contains("collapsed"),
        "{}",
        follower.cache_status()
    );
    assert_eq!(origin.calls(), 4);
    hung.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_that_never_returns_is_abandoned_at_its_deadline() {
    let origin = Origin::default();
    let layer = CacheLayer::builder(MemoryStore::new())
        .coalesce_timeout(Duration::from_millis(200))
        .build();
    // Call 1 hangs, so make the first fill through a second route sharing the key.
    let app = Router::new()
        .route("/refresh", get(hangs_after_first))
        .with_state(origin.clone())
        .layer(layer.clone());
    let (addr, server) = serve(app).await;
    let client = client();
    assert!(fetch(&client, addr, "GET", "/refresh", &[])
        .await
        .cache_status()
        .contains("stored"));
    // Stale on arrival: this hit starts a refresh that hangs.
    let stale = fetch(&client, addr, "GET", "/refresh", &[]).await;
    assert!(stale.cache_status().contains("fwd=stale"));
    until("the hung refresh", || origin.calls() == 2).await;
    // Stale hits keep being answered; once the hung refresh passes its deadline, one of them
    // starts a new refresh, which lands.
    let refreshed = async {
        while layer.stats().stores < 2 {
            let seen = fetch(&client, addr, "GET", "/refresh", &[]).await;
            assert_eq!(seen.body, PAGE);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refreshed)
        .await
        .expect("no refresh after the hung one: its flight stayed locked");
    assert_eq!(layer.stats().background_refreshes, 2);
    assert_eq!(origin.calls(), 3);
    server.abort();
}

/// The second call (the first refresh) never returns.
async fn hangs_after_first(State(origin): State<Origin>) -> ([(&'static str, &'static str); 2], &'static str) {
    if origin.enter() == 2 {
        std::future::pending::<()>().await;
    }
    origin.leave();
    (
        [
            ("cache-control", "max-age=60, stale-while-revalidate=600"),
            ("age", "61"),
        ],
        PAGE,
    )
}

// --- 9. Waiting is not counted as age ----------------------------------------------------

/// The first call hangs until its client goes away; the next answers with the route's
/// `Cache-Control`.
async fn hangs_until_abandoned(
    State((origin, cache_control)): State<(Origin, &'static str)>,
) -> ([(&'static str, &'static str); 1], &'static str) {
    if origin.enter() == 1 {
        std::future::pending::<()>().await;
    }
    origin.leave();
    ([("cache-control", cache_control)], PAGE)
}

/// A leader whose call hangs and a waiter behind it on `path`, both over loopback.
struct Takeover {
    origin: Origin,
    layer: CacheLayer<MemoryStore>,
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    server: JoinHandle<()>,
    leader: JoinHandle<Seen>,
    waiter: JoinHandle<Seen>,
}

impl Takeover {
    /// Returns once the waiter waits on the hung leader.
    async fn start(path: &'static str, cache_control: &'static str) -> Takeover {
        let origin = Origin::default();
        let layer = CacheLayer::new(MemoryStore::new());
        let app = Router::new()
            .route(path, get(hangs_until_abandoned))
            .with_state((origin.clone(), cache_control))
            .layer(layer.clone());
        let (addr, server) = serve(app).await;
        let client = client();
        let spawn = |client: &Client<HttpConnector, Empty<Bytes>>| {
            let client = client.clone();
            tokio::spawn(async move { fetch(&client, addr, "GET", path, &[]).await })
        };
        let leader = spawn(&client);
        until("the leader", || origin.calls() == 1).await;
        let waiter = spawn(&client);
        until("the waiter", || layer.stats().waiting == 1).await;
        Takeover {
            origin,
            layer,
            client,
            addr,
            server,
            leader,
            waiter,
        }
    }

    /// The leader's client leaves: the waiter takes over. Returns what it got.
    async fn abandon_leader(&mut self) -> Seen {
        self.leader.abort();
        (&mut self.waiter).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_takes_over_counts_age_from_its_own_origin_call() {
    let mut t = Takeover::start("/slow", "max-age=1").await;
    // Waiting longer than the answer's max-age...
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // ...then the waiter takes over and gets a fresh answer.
    let waiter = t.abandon_leader().await;
    assert_eq!(waiter.body, PAGE);
    assert!(waiter.cache_status().contains("stored"), "{}", waiter.cache_status());
    assert!(fetch(&t.client, t.addr, "GET", "/slow", &[])
        .await
        .cache_status()
        .contains("hit"));
    t.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_takes_over_is_judged_by_purges_since_its_arrival() {
    let mut t = Takeover::start("/arrival", "max-age=60").await;
    // After the waiter arrived, before it sends its own origin call: the purge may have been
    // for a change the answer it will get does not show yet.
    t.layer.store().purge_tags(["path:/arrival"]).await.unwrap();
    let waiter = t.abandon_leader().await;
    assert_eq!(waiter.body, PAGE);
    assert_eq!(t.origin.calls(), 2, "the waiter took over");
    assert!(
        !waiter.cache_status().contains("stored"),
        "an answer to a request older than a purge was stored: {}",
        waiter.cache_status()
    );
    let next = fetch(&t.client, t.addr, "GET", "/arrival", &[]).await;
    assert!(!next.cache_status().contains("hit"), "{}", next.cache_status());
    assert_eq!(t.origin.calls(), 3);
    t.server.abort();
}

// --- 12. Per-user pages are not served one after another --------------------------------

const USERS: usize = 100;

/// A per-user page that answers only once every user's request is at the origin.
async fn per_user(State(origin): State<Origin>, headers: HeaderMap) -> ([(&'static str, &'static str); 1], String) {
    origin.enter();
    // Every user's call reaches the origin while this one is held: none waited on another.
    let all_in = async {
        while origin.calls() < USERS {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let concurrent = tokio::time::timeout(Duration::from_secs(3), all_in).await.is_ok();
    origin.leave();
    let user = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = if concurrent {
        format!("page for {user}")
    } else {
        "served one after another".into()
    };
    ([("cache-control", "private")], body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_private_page_with_distinct_cookies_do_not_queue() {
    let origin = Origin::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = Router::new()
        .route("/me", get(per_user))
        .with_state(origin.clone())
        .layer(layer.clone());
    let (addr, server) = serve(app).await;
    let client = client();
    let requests: Vec<_> = (0..USERS)
        .map(|user| {
            let client = client.clone();
            tokio::spawn(async move {
                let cookie = format!("session={user}");
                (user, fetch(&client, addr, "GET", "/me", &[("cookie", &cookie)]).await)
            })
        })
        .collect();
    for request in requests {
        let (user, seen) = request.await.unwrap();
        assert_eq!(seen.body, format!("page for session={user}"), "{}", seen.cache_status());
    }
    assert_eq!(origin.calls(), USERS);
    server.abort();
}

// --- HEAD, GET and conditional requests in random order ----------------------------------

/// A versioned page: the body and `ETag` name the version, its length differs per version,
/// and the response is stale on arrival or fresh as the test asks (`x-age`).
#[derive(Clone, Default)]
struct Versioned {
    version: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

fn versioned_body(version: usize) -> String {
    format!("v{version}:{}", "x".repeat(version % 7 * 10 + 5))
}

async fn versioned(State(page): State<Versioned>, headers: HeaderMap) -> ([(&'static str, String); 4], String) {
    page.calls.fetch_add(1, SeqCst);
    let version = page.version.load(SeqCst);
    let age = headers
        .get("x-age")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string();
    (
        [
            ("cache-control", "max-age=60, stale-while-revalidate=600".into()),
            ("age", age),
            ("etag", format!("\"v{version}\"")),
            ("cache-groups", "\"page\"".into()),
        ],
        versioned_body(version),
    )
}

async fn versioned_head(State(page): State<Versioned>, headers: HeaderMap) -> ([(&'static str, String); 5], ()) {
    let ([cc, age, etag, groups], body) = versioned(State(page), headers).await;
    ([cc, age, etag, groups, ("content-length", body.len().to_string())], ())
}

async fn random_heads_and_gets(app: Router, page: Versioned, layer: CacheLayer<MemoryStore>, seed: u64) {
    let (addr, server) = serve(app).await;
    let client = client();
    let mut rng = Rng(seed);
    let (mut gets, mut heads, mut not_modified) = (0, 0, 0);
    for step in 0..1_500 {
        let age = if rng.below(2) == 0 { "0" } else { "61" };
        let current = page.version.load(SeqCst);
        let tag = format!("\"v{}\"", rng.below(current as u64 + 2));
        let mut headers = vec![("x-age", age)];
        if rng.below(3) == 0 {
            headers.push(("if-none-match", &tag));
        }
        match rng.below(10) {
            0 => {
                page.version.fetch_add(1, SeqCst);
            }
            1 => layer.store().purge_tags(["page"]).await.unwrap(),
            2 => layer.store().soft_purge_tags(["page"]).await.unwrap(),
            3..=5 => {
                let seen = fetch(&client, addr, "HEAD", "/v", &headers).await;
                heads += 1;
                assert!(seen.body.is_empty(), "step {step}: a HEAD with a body");
                if seen.status == StatusCode::OK {
                    let etag = seen.headers["etag"].to_str().unwrap();
                    let version: usize = etag.trim_matches('"')[1..].parse().unwrap();
                    let length = seen.headers["content-length"].to_str().unwrap();
                    assert_eq!(
                        length,
                        versioned_body(version).len().to_string(),
                        "step {step}: {seen:?}"
                    );
                }
            }
            _ => {
                let seen = fetch(&client, addr, "GET", "/v", &headers).await;
                gets += 1;
                if seen.status == StatusCode::NOT_MODIFIED {
                    not_modified += 1;
                    assert_eq!(seen.headers["etag"].to_str().unwrap(), tag, "step {step}: {seen:?}");
                    assert!(seen.body.is_empty());
                    continue;
                }
                assert_eq!(seen.status, StatusCode::OK, "step {step}: {seen:?}");
                seen.assert_complete();
                let etag = seen.headers["etag"].to_str().unwrap();
                let version: usize = etag.trim_matches('"')[1..].parse().unwrap();
                assert!(version <= page.version.load(SeqCst));
                assert_eq!(
                    seen.body,
                    versioned_body(version),
                    "step {step}: body and ETag disagree"
                );
            }
        }
    }
    assert!(
        gets > 500 && heads > 300 && not_modified > 0,
        "{gets} GETs, {heads} HEADs, {not_modified} 304s"
    );
    assert!(page.calls.load(SeqCst) > 10);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_heads_gets_and_conditionals_always_get_whole_bodies() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d] {
        let page = Versioned::default();
        let layer = CacheLayer::new(MemoryStore::new());
        let whole_router = Router::new()
            .route("/v", get(versioned))
            .with_state(page.clone())
            .layer(layer.clone());
        random_heads_and_gets(whole_router, page, layer, seed).await;

        let page = Versioned::default();
        let layer = CacheLayer::new(MemoryStore::new());
        let explicit_head = Router::new()
            .route("/v", get(versioned).head(versioned_head))
            .with_state(page.clone())
            .layer(layer.clone());
        random_heads_and_gets(explicit_head, page, layer, seed).await;
    }
}

/// A 503 that carries what belongs to its caller; answered once the other requests wait.
async fn personal_failure(
    State((origin, layer)): State<(Origin, CacheLayer<MemoryStore>)>,
    headers: HeaderMap,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    origin.enter();
    until("the waiters", || layer.stats().waiting == 19).await;
    origin.leave();
    let caller = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    let cookie = if caller == "anonymous" { "session=secret" } else { "x=1" };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("set-cookie", cookie)],
        format!("sorry, {caller}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_failure_never_carries_what_belongs_to_the_leader() {
    for leader_headers in [&[][..], &[("authorization", "Bearer alice")][..]] {
        let origin = Origin::default();
        let layer = CacheLayer::new(MemoryStore::new());
        let app = Router::new()
            .route("/fails", get(personal_failure))
            .with_state((origin.clone(), layer.clone()))
            .layer(layer.clone());
        let (addr, server) = serve(app).await;
        let client = client();
        let leader = {
            let (client, headers) = (client.clone(), leader_headers.to_vec());
            tokio::spawn(async move { fetch(&client, addr, "GET", "/fails", &headers).await })
        };
        until("the leader", || origin.calls() == 1).await;
        let waiters: Vec<_> = (0..19)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { fetch(&client, addr, "GET", "/fails", &[]).await })
            })
            .collect();
        let leader = leader.await.unwrap();
        assert!(leader.body.starts_with(b"sorry"));
        for waiter in waiters {
            let seen = waiter.await.unwrap();
            assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                seen.body.is_empty(),
                "the leader's failure body reached a waiter: {seen:?}"
            );
            assert!(!seen.headers.contains_key("set-cookie"), "{seen:?}");
        }
        assert_eq!(origin.calls(), 1);
        server.abort();
    }
}
