//! One bounded request through a Router (in process, or served over loopback), and
//! namespaces no other test uses, for the tests that run against real `redis-server`
//! processes. Include with
//! `#[path = "common/exchange.rs"] mod exchange;`.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use axum::http::{Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tower::ServiceExt;

/// How long one exchange may take before the test fails.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a test sends its requests to: a `Router` in process, or one served over loopback.
pub trait Exchange {
    /// Sends a request (failing the test past 10 s); returns its status, `Cache-Status` and
    /// body.
    fn exchange(&self, method: &str, uri: &str) -> impl Future<Output = (StatusCode, String, String)> + Send;
}

/// Sends a request (failing the test past 10 s); returns its status, `Cache-Status` and body.
pub async fn exchange(app: &impl Exchange, method: &str, uri: &str) -> (StatusCode, String, String) {
    app.exchange(method, uri).await
}

fn parts<B>(res: &http::Response<B>) -> (StatusCode, String) {
    let cache_status = res
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (res.status(), cache_status)
}

impl Exchange for Router {
    async fn exchange(&self, method: &str, uri: &str) -> (StatusCode, String, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = tokio::time::timeout(EXCHANGE_TIMEOUT, self.clone().oneshot(req))
            .await
            .expect("a request hung")
            .unwrap();
        let (status, cache_status) = parts(&res);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, cache_status, String::from_utf8(body.to_vec()).unwrap())
    }
}

/// A `Router` served by `axum::serve` on a free loopback port, and a hyper client for it;
/// the server stops when the last clone drops.
#[derive(Clone)]
pub struct Served {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    server: std::sync::Arc<ServerTask>,
}

struct ServerTask(tokio::task::JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `router` over loopback (inside a Tokio runtime).
pub fn serve(router: Router) -> Served {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local addr");
    let listener = tokio::net::TcpListener::from_std(listener).expect("in a Tokio runtime");
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Served {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
        server: std::sync::Arc::new(ServerTask(server)),
    }
}

impl Exchange for Served {
    async fn exchange(&self, method: &str, uri: &str) -> (StatusCode, String, String) {
        self.exchange_within(method, uri, EXCHANGE_TIMEOUT).await
    }
}

impl Served {
    /// [`exchange`], failing the test past `within`.
    pub async fn exchange_within(&self, method: &str, uri: &str, within: Duration) -> (StatusCode, String, String) {
        // One host for every instance, as behind a load balancer: the cache keys by it, so
        // instances on different ports share their entries through the store.
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{uri}", self.addr))
            .header(http::header::HOST, "app.test")
            .body(Empty::new())
            .unwrap();
        let exchange = async {
            let res = self.client.request(req).await.expect("the request reached the server");
            let (status, cache_status) = parts(&res);
            let body = res.into_body().collect().await.expect("the body").to_bytes();
            (status, cache_status, String::from_utf8(body.to_vec()).unwrap())
        };
        tokio::time::timeout(within, exchange).await.expect("a request hung")
    }
}

/// A Redis namespace no other test of this process uses.
pub fn fresh_namespace(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}-{}", std::process::id(), NEXT.fetch_add(1, SeqCst))
}
