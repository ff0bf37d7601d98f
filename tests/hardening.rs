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
use tokio::sync::Notify;
use tokio::task::JoinHandle;
mod common;
use common::{until, WAIT};
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
            assert_eq!(self.body.len(), length, "body shorter than its content-length: {self:?}");
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

/// An origin that counts its calls and holds some of them at a gate.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    gate: Arc<Notify>,
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
        [("cache-control", "max-age=60, stale-while-revalidate=600"), ("age", "61")],
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
