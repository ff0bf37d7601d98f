//! The basic HTTP flow through a real axum Router: miss then hit, HEAD answered from the GET
//! entry, and conditional requests answered `304` from the cache.

mod common;

use axum::extract::Request;
use axum::response::IntoResponse;
use common::*;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{Method, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tower::Layer;

const BOOK: &str = r#"{"id":1,"title":"Dune"}"#;
const LAST_MODIFIED_DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

/// A JSON book with validators; answers HEAD with headers only, as a correct origin would.
fn book(request: Request) -> impl IntoResponse {
    let headers = [
        (CONTENT_TYPE, "application/json"),
        (ETAG, "\"v1\""),
        (LAST_MODIFIED, LAST_MODIFIED_DATE),
    ];
    if request.method() == Method::HEAD {
        let length = BOOK.len().to_string();
        return (headers, [(CONTENT_LENGTH, length)], "").into_response();
    }
    (headers, BOOK).into_response()
}

#[tokio::test]
async fn first_get_misses_and_stores_second_is_a_hit_with_age() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);

    let first = send(&app, get("/books/1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&first),
        format!("{NAME}; fwd=miss; fwd-status=200; stored")
    );
    assert_stored(&first);
    assert_eq!(text(first).await, BOOK);

    let second = send(&app, get("/books/1")).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_hit(&second);
    assert!(age(&second) <= 2, "a fresh entry is young");
    assert!(
        (55..=60).contains(&ttl(&second)),
        "default TTL is 60 s: {}",
        ttl(&second)
    );
    assert_eq!(header(&second, "content-type"), Some("application/json"));
    assert_eq!(header(&second, "etag"), Some("\"v1\""));
    assert_eq!(text(second).await, BOOK);

    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_without_a_body() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    let head = send(&app, request(Method::HEAD, "/books/1", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_hit(&head);
    assert_eq!(header(&head, "etag"), Some("\"v1\""));
    assert_eq!(header(&head, "content-length"), Some(BOOK.len().to_string().as_str()));
    assert!(body_bytes(head).await.is_empty());
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn head_is_answered_without_a_body_by_the_cache_itself_when_it_wraps_the_router() {
    // Outside the Router, nothing after the cache strips bodies from HEAD responses.
    let origin = Origin::new();
    let router = axum::Router::new().route("/{*path}", origin.handler(book));
    let app = default_layer().layer(router);
    assert_stored(&send(&app, get("/books/1")).await);

    let head = send(&app, request(Method::HEAD, "/books/1", &[])).await;
    assert_hit(&head);
    assert_eq!(header(&head, "content-length"), Some(BOOK.len().to_string().as_str()));
    assert!(body_bytes(head).await.is_empty());
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_head_miss_is_never_stored_as_the_get_entry() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);

    let head = send(&app, request(Method::HEAD, "/books/1", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_not_stored(&head, "head");
    assert!(body_bytes(head).await.is_empty());

    let full = send(&app, get("/books/1")).await;
    assert_stored(&full);
    assert_eq!(
        text(full).await,
        BOOK,
        "the GET gets the full body, not the HEAD's empty one"
    );
    assert_eq!(origin.calls(), 2);

    let again = send(&app, get("/books/1")).await;
    assert_hit(&again);
    assert_eq!(text(again).await, BOOK);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn if_none_match_with_the_cached_etag_is_answered_304_from_the_cache() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    let conditional = send(&app, get_with("/books/1", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert_hit(&conditional);
    assert_eq!(header(&conditional, "etag"), Some("\"v1\""));
    assert!(body_bytes(conditional).await.is_empty());
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn if_none_match_compares_weakly_and_accepts_a_list() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    for condition in ["W/\"v1\"", "\"v0\", \"v1\"", "*"] {
        let conditional = send(&app, get_with("/books/1", &[("if-none-match", condition)])).await;
        assert_eq!(
            conditional.status(),
            StatusCode::NOT_MODIFIED,
            "If-None-Match: {condition}"
        );
        assert!(body_bytes(conditional).await.is_empty());
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_conditional_miss_is_forwarded_unconditionally_and_answered_304() {
    let origin = Origin::new();
    let conditionals_seen = Arc::new(AtomicUsize::new(0));
    let seen = conditionals_seen.clone();
    let app = origin.app(default_layer(), move |request: Request| {
        if request.headers().contains_key(IF_NONE_MATCH) || request.headers().contains_key(IF_MODIFIED_SINCE) {
            seen.fetch_add(1, SeqCst);
        }
        book(request)
    });

    let conditional = send(&app, get_with("/books/1", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert_stored(&conditional);
    assert!(body_bytes(conditional).await.is_empty());
    assert_eq!(
        conditionals_seen.load(SeqCst),
        0,
        "the origin must get an unconditional request"
    );

    // The full response was stored, so an unconditional request is now a hit with the body.
    let full = send(&app, get("/books/1")).await;
    assert_hit(&full);
    assert_eq!(text(full).await, BOOK);

    let since = send(&app, get_with("/books/2", &[("if-modified-since", LAST_MODIFIED_DATE)])).await;
    assert_eq!(since.status(), StatusCode::NOT_MODIFIED);
    assert_stored(&since);
    assert_eq!(conditionals_seen.load(SeqCst), 0);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn if_none_match_with_another_etag_gets_the_full_response() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    let conditional = send(&app, get_with("/books/1", &[("if-none-match", "\"v0\"")])).await;
    assert_eq!(conditional.status(), StatusCode::OK);
    assert_hit(&conditional);
    assert_eq!(text(conditional).await, BOOK);

    // On a miss too: the origin's full response goes back to the client.
    let miss = send(&app, get_with("/books/2", &[("if-none-match", "\"v0\"")])).await;
    assert_eq!(miss.status(), StatusCode::OK);
    assert_stored(&miss);
    assert_eq!(text(miss).await, BOOK);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn if_modified_since_is_compared_with_last_modified() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    for unchanged_since in [LAST_MODIFIED_DATE, "Thu, 22 Oct 2015 07:28:00 GMT"] {
        let conditional = send(&app, get_with("/books/1", &[("if-modified-since", unchanged_since)])).await;
        assert_eq!(
            conditional.status(),
            StatusCode::NOT_MODIFIED,
            "since {unchanged_since}"
        );
        assert_hit(&conditional);
        assert_eq!(header(&conditional, "last-modified"), Some(LAST_MODIFIED_DATE));
        assert!(body_bytes(conditional).await.is_empty());
    }

    for modified_since in ["Tue, 20 Oct 2015 07:28:00 GMT", "not a date"] {
        let conditional = send(&app, get_with("/books/1", &[("if-modified-since", modified_since)])).await;
        assert_eq!(conditional.status(), StatusCode::OK, "since {modified_since}");
        assert_hit(&conditional);
        assert_eq!(text(conditional).await, BOOK);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn if_none_match_takes_precedence_over_if_modified_since() {
    // RFC 9110 §13.1.3: with If-None-Match present, If-Modified-Since is ignored.
    let origin = Origin::new();
    let app = origin.app(default_layer(), book);
    assert_stored(&send(&app, get("/books/1")).await);

    let conditional = send(
        &app,
        get_with(
            "/books/1",
            &[("if-none-match", "\"v0\""), ("if-modified-since", LAST_MODIFIED_DATE)],
        ),
    )
    .await;
    assert_eq!(conditional.status(), StatusCode::OK);
    assert_eq!(text(conditional).await, BOOK);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn preconditions_are_ignored_when_the_cached_response_is_not_2xx() {
    // RFC 9110 §13.2.1: preconditions apply only when the response would have been 2xx (or
    // 412); a cached 404 stays a 404 whatever the client's validators say.
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        let headers = [(ETAG, "\"gone\""), (LAST_MODIFIED, LAST_MODIFIED_DATE)];
        (StatusCode::NOT_FOUND, headers, "no such book")
    });
    assert_stored(&send(&app, get("/books/404")).await);

    for condition in [
        ("if-none-match", "\"gone\""),
        ("if-none-match", "*"),
        ("if-modified-since", LAST_MODIFIED_DATE),
    ] {
        let response = send(&app, get_with("/books/404", &[condition])).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{condition:?}");
        assert_hit(&response);
        assert_eq!(text(response).await, "no such book");
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn the_age_an_upstream_cache_gave_is_kept_on_the_miss_response() {
    // RFC 9111 §5.1: a response already 50 s old must not reach the client looking new,
    // or a client cache would keep it for the full max-age.
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        (
            [("cache-control", "max-age=60"), ("age", "50")],
            "from an upstream cache",
        )
    });
    let miss = send(&app, get("/page")).await;
    assert!(cache_status(&miss).ends_with("; stored"), "{}", cache_status(&miss));
    let age = header(&miss, "age").map(|a| a.parse::<u64>().unwrap());
    assert!(age.is_some_and(|a| a >= 50), "Age on the miss: {age:?}");
}
