//! Stampede protection: concurrent misses on one key make one inner call, through a real
//! axum Router and over loopback.

use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tower::ServiceExt;
mod common;
use common::until;
use tower_response_cache::{CacheLayer, MemoryStore};

const BODY_LEN: usize = 4096;

/// An origin whose calls wait at a gate until the test opens it.
#[derive(Clone, Default)]
struct Gate {
    calls: Arc<AtomicUsize>,
    open: Arc<Notify>,
    opened: Arc<std::sync::atomic::AtomicBool>,
    /// Calls after this many go straight through (0: all wait for the gate).
    hold_first: Arc<AtomicUsize>,
}

impl Gate {
    fn holding(n: usize) -> Self {
        let gate = Gate::default();
        gate.hold_first.store(n, SeqCst);
        gate
    }

    async fn pass(&self) -> usize {
        let call = self.calls.fetch_add(1, SeqCst) + 1;
        let held = self.hold_first.load(SeqCst);
        if held == 0 || call <= held {
            let notified = self.open.notified();
            if !self.opened.load(SeqCst) {
                notified.await;
            }
        }
        call
    }

    fn open(&self) {
        self.opened.store(true, SeqCst);
        self.open.notify_waiters();
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

async fn big(State(gate): State<Gate>) -> String {
    gate.pass().await;
    "x".repeat(BODY_LEN)
}

async fn private(State(gate): State<Gate>, headers: HeaderMap) -> ([(&'static str, &'static str); 1], String) {
    gate.pass().await;
    let user = headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_string();
    ([("cache-control", "private")], format!("for {user}"))
}

/// A response no one may share: it sets a cookie.
async fn cookie(State(gate): State<Gate>) -> ([(&'static str, &'static str); 1], &'static str) {
    gate.pass().await;
    ([("set-cookie", "session=1")], "with a cookie")
}

fn app(gate: &Gate, layer: CacheLayer<MemoryStore>) -> Router {
    Router::new()
        .route("/hot", get(big))
        .route("/private", get(private))
        .route("/cookie", get(cookie))
        .with_state(gate.clone())
        .layer(layer)
}

async fn get_body(app: Router, uri: &'static str, user: Option<String>) -> (StatusCode, String, String) {
    let mut req = Request::get(uri);
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let res = app.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap();
    let status = res.status();
    let cache_status = res.headers()["cache-status"].to_str().unwrap().to_string();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, cache_status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_requests_make_one_inner_call() {
    let gate = Gate::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    let requests: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(get_body(app.clone(), "/hot", None)))
        .collect();
    // Every request has missed while the one origin call is held: all of them coalesce.
    until("1000 misses", || layer.stats().misses == 1000).await;
    assert_eq!(gate.calls(), 1);
    gate.open();
    let mut collapsed = 0;
    for request in requests {
        let (status, cache_status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), BODY_LEN, "every request gets the full body");
        collapsed += cache_status.contains("collapsed") as usize;
    }
    assert_eq!(gate.calls(), 1, "exactly one inner call");
    assert_eq!(collapsed, 999);
    assert_eq!(layer.stats().coalesced, 999);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    // The first call hangs until the test gives up on it; later calls answer at once.
    let gate = Gate::holding(1);
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    let leader = tokio::spawn(get_body(app.clone(), "/hot", None));
    until("the leader to reach the origin", || gate.calls() == 1).await;
    let waiters: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_body(app.clone(), "/hot", None)))
        .collect();
    until("20 waiters", || layer.stats().misses == 21).await;

    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for waiter in waiters {
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), BODY_LEN);
    }
    assert_eq!(gate.calls(), 2, "one waiter took over; the rest shared its response");
    gate.open();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_never_shared_through_coalescing() {
    let gate = Gate::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let leader = tokio::spawn(get_body(app.clone(), "/private", Some(users[0].clone())));
    until("the leader", || gate.calls() == 1).await;
    let waiters: Vec<_> = users[1..]
        .iter()
        .map(|u| tokio::spawn(get_body(app.clone(), "/private", Some(u.clone()))))
        .collect();
    until("9 waiters", || layer.stats().misses == 10).await;
    gate.open();
    let (_, cache_status, body) = leader.await.unwrap();
    assert_eq!(body, "for user0");
    assert!(cache_status.contains("detail=private"), "{cache_status}");
    for (user, waiter) in users[1..].iter().zip(waiters) {
        let (_, cache_status, body) = waiter.await.unwrap();
        assert_eq!(body, format!("for {user}"), "each caller sees only its own page");
        assert!(!cache_status.contains("collapsed"), "{cache_status}");
    }
    assert_eq!(gate.calls(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_keys_are_remembered_so_requests_do_not_queue() {
    let gate = Gate::default();
    gate.open();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    get_body(app.clone(), "/cookie", None).await;

    // The gate is shut again: had the requests queued behind one another, only one would
    // ever reach the origin.
    let gate_shut = Gate::default();
    let app = Router::new()
        .route("/cookie", get(cookie))
        .with_state(gate_shut.clone())
        .layer(layer.clone());
    let requests: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get_body(app.clone(), "/cookie", None)))
        .collect();
    until("8 concurrent origin calls", || gate_shut.calls() == 8).await;
    gate_shut.open();
    for request in requests {
        assert_eq!(request.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(gate.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_credentials_does_not_cost_the_others_their_coalescing() {
    let gate = Gate::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    let with_token = {
        let app = app.clone();
        tokio::spawn(async move {
            let req = Request::get("/hot")
                .header("authorization", "Bearer t")
                .body(axum::body::Body::empty());
            app.oneshot(req.unwrap()).await.unwrap().status()
        })
    };
    until("the leader", || gate.calls() == 1).await;
    let anonymous: Vec<_> = (0..20)
        .map(|_| tokio::spawn(get_body(app.clone(), "/hot", None)))
        .collect();
    until("20 waiters", || layer.stats().misses == 21).await;
    gate.open();
    assert_eq!(with_token.await.unwrap(), StatusCode::OK);
    for request in anonymous {
        let (status, _, body) = request.await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::OK, BODY_LEN));
    }
    // The leader's answer was its own; one waiter took over and the rest shared that one.
    assert_eq!(gate.calls(), 2);
    assert!(get_body(app.clone(), "/hot", None).await.1.contains("; hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_bounded_by_the_coalesce_timeout() {
    let gate = Gate::holding(1);
    let layer = CacheLayer::builder(MemoryStore::new())
        .coalesce_timeout(Duration::from_millis(50))
        .build();
    let app = app(&gate, layer.clone());
    let leader = tokio::spawn(get_body(app.clone(), "/hot", None));
    until("the leader", || gate.calls() == 1).await;
    // The leader is still held: the waiter gives up on it and goes to the origin itself.
    let (status, cache_status, body) = get_body(app.clone(), "/hot", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), BODY_LEN);
    assert!(!cache_status.contains("collapsed"), "{cache_status}");
    assert_eq!(gate.calls(), 2);
    gate.open();
    leader.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_loopback_makes_one_inner_call() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let gate = Gate::default();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = app(&gate, layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client: Client<_, http_body_util::Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            let uri: http::Uri = format!("http://{addr}/hot").parse().unwrap();
            tokio::spawn(async move {
                let res = client.get(uri).await.unwrap();
                let status = res.status();
                (status, res.into_body().collect().await.unwrap().to_bytes().len())
            })
        })
        .collect();
    until("100 misses over loopback", || layer.stats().misses == 100).await;
    gate.open();
    for request in requests {
        let (status, len) = tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(len, BODY_LEN);
    }
    assert_eq!(gate.calls(), 1);
    server.abort();
}
