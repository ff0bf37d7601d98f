//! Shared-cache conformance (RFC 9111) through a real axum Router: rules a reverse-proxy
//! cache must keep.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
mod common;
use common::{cache_status, send, text};
use tower_response_cache::{CacheLayer, MemoryStore};

/// An origin answering `cache_control` with an `Age` already past any freshness of 60 s;
/// calls after the first answer `failure` when it is set.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    cache_control: &'static str,
    failure: Option<StatusCode>,
}

async fn page(State(origin): State<Origin>) -> (StatusCode, [(&'static str, &'static str); 2], String) {
    let call = origin.calls.fetch_add(1, SeqCst) + 1;
    let status = match origin.failure {
        Some(failure) if call > 1 => failure,
        _ => StatusCode::OK,
    };
    (
        status,
        [("cache-control", origin.cache_control), ("age", "61")],
        format!("call {call}"),
    )
}

fn app(origin: &Origin) -> Router {
    Router::new()
        .route("/page", get(page))
        .with_state(origin.clone())
        .layer(CacheLayer::new(MemoryStore::new()))
}

#[tokio::test]
async fn s_maxage_forbids_serving_stale_while_revalidating() {
    let origin = Origin {
        calls: Arc::default(),
        cache_control: "s-maxage=60, stale-while-revalidate=600",
        failure: None,
    };
    let app = app(&origin);
    assert_eq!(text(send(&app, common::get("/page")).await).await, "call 1");
    // Stale on arrival; `s-maxage` means `proxy-revalidate`: the next request goes to the origin.
    let second = send(&app, common::get("/page")).await;
    assert!(
        !cache_status(&second).contains("fwd=stale"),
        "{}",
        cache_status(&second)
    );
    assert_eq!(text(second).await, "call 2");
    assert_eq!(origin.calls.load(SeqCst), 2);
}

#[tokio::test]
async fn s_maxage_forbids_serving_stale_on_error() {
    let origin = Origin {
        calls: Arc::default(),
        cache_control: "s-maxage=60, stale-if-error=600",
        failure: Some(StatusCode::SERVICE_UNAVAILABLE),
    };
    let app = app(&origin);
    assert_eq!(text(send(&app, common::get("/page")).await).await, "call 1");
    let second = send(&app, common::get("/page")).await;
    assert_eq!(
        second.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        cache_status(&second)
    );
    assert_eq!(text(second).await, "call 2");
}

#[tokio::test]
async fn max_age_alone_still_serves_stale_within_its_windows() {
    let origin = Origin {
        calls: Arc::default(),
        cache_control: "max-age=60, stale-if-error=600",
        failure: Some(StatusCode::SERVICE_UNAVAILABLE),
    };
    let app = app(&origin);
    assert_eq!(text(send(&app, common::get("/page")).await).await, "call 1");
    let second = send(&app, common::get("/page")).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert!(cache_status(&second).contains("fwd=stale"), "{}", cache_status(&second));
    assert_eq!(text(second).await, "call 1");
}

// RFC 9110 §13: conditional requests answered from a fresh entry.

async fn tagged() -> [(&'static str, &'static str); 3] {
    [
        ("cache-control", "max-age=60"),
        ("etag", r#"W/"v1,2""#),
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]
}

#[tokio::test]
async fn conditional_requests_follow_rfc_9110_section_13() {
    let app = Router::new()
        .route("/t", get(tagged))
        .layer(CacheLayer::new(MemoryStore::new()));
    assert_eq!(send(&app, common::get("/t")).await.status(), StatusCode::OK);
    let conditional = |headers: &[(&str, &str)]| send(&app, common::get_with("/t", headers));
    // A list of entity tags, one of which holds a comma; weak comparison.
    let list = conditional(&[("if-none-match", r#""other", "v1,2""#)]).await;
    assert_eq!(list.status(), StatusCode::NOT_MODIFIED, "{}", cache_status(&list));
    assert_eq!(
        conditional(&[("if-none-match", r#""v1""#)]).await.status(),
        StatusCode::OK,
        "a tag is not split at its comma"
    );
    // No Last-Modified: If-Modified-Since is judged against Date.
    let later = [("if-modified-since", "Mon, 07 Nov 1994 00:00:00 GMT")];
    assert_eq!(conditional(&later).await.status(), StatusCode::NOT_MODIFIED);
    let earlier = [("if-modified-since", "Sat, 05 Nov 1994 00:00:00 GMT")];
    assert_eq!(conditional(&earlier).await.status(), StatusCode::OK);
    // If-None-Match takes precedence over If-Modified-Since.
    let both = [("if-none-match", r#""other""#), later[0]];
    assert_eq!(conditional(&both).await.status(), StatusCode::OK);
}
