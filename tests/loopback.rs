//! The layer behind a real HTTP/1.1 server on a loopback port, called by a hyper client.

mod common;

use axum::extract::Request;
use axum::response::IntoResponse;
use bytes::Bytes;
use common::{body_bytes, cache_status, header, Origin, NAME, WAIT};
use http::{Method, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_response_cache::{CacheLayer, MemoryStore};

/// A server on 127.0.0.1 with a free port; the task ends when the returned handle is aborted.
async fn serve(app: axum::Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the server runs");
    });
    (addr, server)
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("the network answered in time")
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).expect("valid request");
    within(client.request(request)).await.expect("the request succeeded")
}

fn book(request: Request) -> axum::response::Response {
    let id = request.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    let headers = [("content-type", "application/json"), ("etag", "\"v1\"")];
    (headers, format!(r#"{{"id":"{id}"}}"#)).into_response()
}

#[tokio::test]
async fn over_loopback_a_miss_then_a_hit() {
    let origin = Origin::new();
    let app = origin.app(CacheLayer::new(MemoryStore::new()), book);
    let (addr, server) = serve(app).await;
    let client = client();
    let url = format!("http://{addr}/books/1");

    let miss = call(&client, Method::GET, &url, &[]).await;
    assert_eq!(miss.status(), StatusCode::OK);
    assert_eq!(cache_status(&miss), format!("{NAME}; fwd=miss; fwd-status=200; stored"));
    assert!(miss.headers().get("age").is_none());
    assert_eq!(body_bytes(miss).await, r#"{"id":"1"}"#);

    let hit = call(&client, Method::GET, &url, &[]).await;
    assert_eq!(hit.status(), StatusCode::OK);
    assert!(
        cache_status(&hit).starts_with(&format!("{NAME}; hit; ttl=")),
        "{}",
        cache_status(&hit)
    );
    assert!(header(&hit, "age").is_some());
    assert_eq!(header(&hit, "content-type"), Some("application/json"));
    assert_eq!(header(&hit, "content-length"), Some("10"));
    assert_eq!(body_bytes(hit).await, r#"{"id":"1"}"#);

    assert_eq!(origin.calls(), 1);
    server.abort();
}

#[tokio::test]
async fn over_loopback_head_and_conditional_requests_are_answered_from_the_cache() {
    let origin = Origin::new();
    let app = origin.app(CacheLayer::new(MemoryStore::new()), book);
    let (addr, server) = serve(app).await;
    let client = client();
    let url = format!("http://{addr}/books/2");
    body_bytes(call(&client, Method::GET, &url, &[]).await).await;

    let head = call(&client, Method::HEAD, &url, &[]).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(cache_status(&head).contains("; hit;"));
    assert_eq!(header(&head, "content-length"), Some("10"));
    assert!(body_bytes(head).await.is_empty());

    let conditional = call(&client, Method::GET, &url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&conditional, "etag"), Some("\"v1\""));
    assert!(body_bytes(conditional).await.is_empty());

    assert_eq!(origin.calls(), 1);
    server.abort();
}

#[tokio::test]
async fn over_loopback_an_oversize_body_arrives_whole_and_is_not_stored() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new()).max_body_bytes(1024).build();
    let app = origin.app(layer, |_| "z".repeat(64 * 1024));
    let (addr, server) = serve(app).await;
    let client = client();
    let url = format!("http://{addr}/big");
    for call_number in 1..=2 {
        let response = call(&client, Method::GET, &url, &[]).await;
        assert!(cache_status(&response).ends_with("detail=too-large"));
        assert_eq!(body_bytes(response).await, "z".repeat(64 * 1024));
        assert_eq!(origin.calls(), call_number);
    }
    server.abort();
}
