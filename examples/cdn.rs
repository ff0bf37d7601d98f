//! A catalogue behind a CDN: purges passed on to the CDN, and a purge endpoint for operators.
//!
//! ```text
//! cargo run --example cdn --features cdn-http,purge-endpoint
//! ```
//!
//! starts a stand-in for Fastly's purge API on a loopback port (it prints what it receives),
//! and the catalogue with a `PurgeForwarding` store that passes its purges on to it through an
//! `HttpPurgeSink`. Then it adds a review (the mutation purges the book's tag and path here and
//! at the CDN) and purges the list pages through the `PurgeEndpoint` mounted at `/cache`, the
//! way a deploy script would. It checks that the CDN saw each purge, and exits non-zero if not.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::StatusCode;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;
use tower_response_cache::invalidate::PurgeEndpoint;
use tower_response_cache::store::{HttpPurgeSink, PurgeForwarding};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore};

/// The operators' token. A real application reads it from its secrets.
const PURGE_TOKEN: &str = "Bearer operator-token";

async fn book(Path(id): Path<u32>) -> (Extension<CacheTags>, [(&'static str, String); 1], String) {
    // The same tags for the CDN (`Surrogate-Key`) as for this cache.
    let tags = format!("book:{id} books");
    (
        Extension(CacheTags::new([format!("book:{id}"), "books".into()])),
        [("surrogate-key", tags)],
        format!("book {id}"),
    )
}

async fn add_review(Path(id): Path<u32>) -> (StatusCode, Extension<Invalidate>) {
    (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
}

/// A stand-in for the CDN's purge API: answers `200` and reports each request as a line.
async fn fake_cdn() -> Result<(String, mpsc::UnboundedReceiver<String>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let api = Router::new().fallback(move |request: Request| {
        let keys = request.headers().get("surrogate-key").and_then(|v| v.to_str().ok());
        let line = match keys {
            Some(keys) => format!("{} {}  Surrogate-Key: {keys}", request.method(), request.uri().path()),
            None => format!("{} {}", request.method(), request.uri().path()),
        };
        tx.send(line).ok();
        async { StatusCode::OK }
    });
    tokio::spawn(async move { axum::serve(listener, api).await });
    Ok((format!("http://{addr}"), rx))
}

async fn expect(cdn: &mut mpsc::UnboundedReceiver<String>, wanted: &str) -> Result<(), String> {
    let line = tokio::time::timeout(Duration::from_secs(5), cdn.recv())
        .await
        .map_err(|_| format!("the CDN never received {wanted:?}"))?
        .ok_or("the CDN stopped")?;
    println!("  CDN received: {line}");
    match line == wanted {
        true => Ok(()),
        false => Err(format!("expected {wanted:?}")),
    }
}

async fn run() -> Result<(), String> {
    let (cdn_api, mut cdn) = fake_cdn().await?;
    // With Fastly itself: `.connector(...)` with a TLS connector, and no `api_base`.
    let sink = HttpPurgeSink::fastly("SERVICE_ID", "FASTLY_API_TOKEN")
        .api_base(&cdn_api)
        .site("www.example.com");
    let store = PurgeForwarding::new(MemoryStore::new(), sink);

    let purge = PurgeEndpoint::new(store.clone(), |request| {
        request
            .headers
            .get("authorization")
            .is_some_and(|value| value == PURGE_TOKEN)
    });
    let app = Router::new()
        .route("/books/{id}", get(book))
        .route("/books/{id}/reviews", post(add_review))
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store.clone()))
        .nest_service("/cache", purge);

    let call = |request: http::Request<Body>| {
        let app = app.clone();
        async move { app.oneshot(request).await.map_err(|e| e.to_string()) }
    };

    println!("POST /books/1/reviews");
    let response = call(http::Request::post("/books/1/reviews").body(Body::empty()).unwrap()).await?;
    println!("  answered {}", response.status());
    expect(&mut cdn, "POST /service/SERVICE_ID/purge  Surrogate-Key: book:1").await?;
    expect(&mut cdn, "POST /purge/www.example.com/books/1/reviews").await?;

    println!("POST /cache/purge {{\"tags\": [\"books\"], \"mode\": \"soft\"}}");
    let request = http::Request::post("/cache/purge")
        .header("authorization", PURGE_TOKEN)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"tags": ["books"], "mode": "soft"}"#))
        .unwrap();
    let response = call(request).await?;
    println!("  answered {}", response.status());
    if response.status() != StatusCode::OK {
        return Err("the purge endpoint refused an authorised purge".into());
    }
    expect(&mut cdn, "POST /service/SERVICE_ID/purge  Surrogate-Key: books").await?;

    let stats = store.stats();
    println!(
        "forwarded {} purges, {} failed, {} dropped",
        stats.delivered, stats.failed, stats.dropped
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!("cdn: every check passed");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cdn: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}
