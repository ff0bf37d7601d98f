//! The safety defaults (DESIGN §3), one test per rule: what the layer never stores and never
//! serves from the cache.

mod common;

use axum::extract::Request;
use axum::response::IntoResponse;
use common::*;
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, RANGE, SET_COOKIE, VARY};
use http::{request, Method, StatusCode};
use std::time::Duration;
use tower_response_cache::{CacheLayer, MemoryStore};

/// Sends the same GET twice to an origin answering `respond`; both must reach the origin,
/// pass the origin's body through and say why the response was not stored.
async fn assert_never_stored<F, R>(respond: F, expected_status: StatusCode, detail: &str)
where
    F: Fn(Request) -> R + Clone + Send + Sync + 'static,
    R: IntoResponse,
{
    let origin = Origin::new();
    let app = origin.app(default_layer(), respond);
    for call in 1..=2 {
        let response = send(&app, get("/page")).await;
        assert_eq!(response.status(), expected_status);
        assert_not_stored(&response, detail);
        assert_eq!(text(response).await, "from origin");
        assert_eq!(origin.calls(), call, "every request reaches the origin");
    }
}

/// What the origin saw in a header, so that a test can tell whose response it got.
fn echo(request: &Request, name: http::HeaderName) -> String {
    let value = request.headers().get(name).map(|v| v.to_str().unwrap_or("?"));
    format!("seen {}", value.unwrap_or("nothing"))
}

/// The identity behind `Authorization: Bearer <user>`.
fn bearer_identity(parts: &request::Parts) -> Option<String> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

#[tokio::test]
async fn unsafe_methods_are_never_cached() {
    for method in [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        let origin = Origin::new();
        let app = origin.app(default_layer(), |request: Request| format!("{} done", request.method()));
        for call in 1..=2 {
            let response = send(&app, request(method.clone(), "/items", &[])).await;
            assert_eq!(
                cache_status(&response),
                format!("{NAME}; fwd=method; fwd-status=200; detail=method")
            );
            assert_eq!(text(response).await, format!("{method} done"));
            assert_eq!(origin.calls(), call, "{method} twice reaches the origin twice");
        }
        // Nor does a POST response become the GET entry.
        let get = send(&app, get("/items")).await;
        assert_stored(&get);
        assert_eq!(text(get).await, "GET done");
    }
}

#[tokio::test]
async fn authorization_without_identity_is_neither_served_from_nor_stored_in_the_cache() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| echo(&request, AUTHORIZATION));
    let anonymous = send(&app, get("/page")).await;
    assert_stored(&anonymous);

    for call in 2..=3 {
        let response = send(&app, get_with("/page", &[("authorization", "Bearer alice")])).await;
        assert_not_stored(&response, "credentials");
        assert_eq!(text(response).await, "seen Bearer alice", "never the anonymous entry");
        assert_eq!(origin.calls(), call);
    }

    let anonymous = send(&app, get("/page")).await;
    assert_hit(&anonymous);
    assert_eq!(
        text(anonymous).await,
        "seen nothing",
        "the shared entry was not overwritten"
    );
}

#[tokio::test]
async fn cookie_without_identity_is_neither_served_from_nor_stored_in_the_cache() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| echo(&request, COOKIE));
    assert_stored(&send(&app, get("/page")).await);

    for call in 2..=3 {
        let response = send(&app, get_with("/page", &[("cookie", "session=alice")])).await;
        assert_not_stored(&response, "credentials");
        assert_eq!(text(response).await, "seen session=alice");
        assert_eq!(origin.calls(), call);
    }

    let anonymous = send(&app, get("/page")).await;
    assert_hit(&anonymous);
    assert_eq!(text(anonymous).await, "seen nothing");
}

#[tokio::test]
async fn authorization_with_an_identity_is_cached_per_identity() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_identity(bearer_identity)
        .build();
    let app = origin.app(layer, |request: Request| {
        let (parts, _) = request.into_parts();
        let user = bearer_identity(&parts).unwrap_or_else(|| "nobody".into());
        ([(CACHE_CONTROL, "private, max-age=60")], format!("profile of {user}"))
    });
    let as_user = |user: &str| get_with("/me", &[("authorization", &format!("Bearer {user}"))]);

    let alice = send(&app, as_user("alice")).await;
    assert_stored(&alice);
    assert_eq!(text(alice).await, "profile of alice");
    let bob = send(&app, as_user("bob")).await;
    assert_stored(&bob);
    assert_eq!(text(bob).await, "profile of bob");
    assert_eq!(origin.calls(), 2);

    for user in ["alice", "bob", "alice"] {
        let response = send(&app, as_user(user)).await;
        assert_hit(&response);
        assert_eq!(text(response).await, format!("profile of {user}"));
    }
    assert_eq!(origin.calls(), 2);

    // Without an identity the private response is neither served nor stored.
    for call in 3..=4 {
        let anonymous = send(&app, get("/me")).await;
        assert_not_stored(&anonymous, "private");
        assert_eq!(text(anonymous).await, "profile of nobody");
        assert_eq!(origin.calls(), call);
    }
}

#[tokio::test]
async fn an_explicitly_shareable_response_may_answer_requests_with_authorization() {
    for cache_control in ["public, max-age=60", "s-maxage=60", "must-revalidate, max-age=60"] {
        let origin = Origin::new();
        let app = origin.app(default_layer(), move |_| {
            ([(CACHE_CONTROL, cache_control)], "catalogue")
        });

        let alice = send(&app, get_with("/catalogue", &[("authorization", "Bearer alice")])).await;
        assert_stored(&alice);
        let bob = send(&app, get_with("/catalogue", &[("authorization", "Bearer bob")])).await;
        assert_hit(&bob);
        assert_eq!(text(bob).await, "catalogue");
        let anonymous = send(&app, get("/catalogue")).await;
        assert_hit(&anonymous);
        assert_eq!(origin.calls(), 1, "Cache-Control: {cache_control}");
    }
}

#[tokio::test]
async fn set_cookie_responses_are_never_stored() {
    let respond = |_| ([(SET_COOKIE, "session=abc")], "from origin");
    assert_never_stored(respond, StatusCode::OK, "set-cookie").await;

    let origin = Origin::new();
    let app = origin.app(default_layer(), respond);
    let response = send(&app, get("/page")).await;
    assert_eq!(header(&response, "set-cookie"), Some("session=abc"), "passed through");
}

#[tokio::test]
async fn private_responses_are_never_stored_without_an_identity() {
    assert_never_stored(
        |_| ([(CACHE_CONTROL, "private, max-age=60")], "from origin"),
        StatusCode::OK,
        "private",
    )
    .await;
}

#[tokio::test]
async fn private_responses_are_not_stored_when_the_identity_function_finds_no_identity() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_identity(bearer_identity)
        .build();
    let app = origin.app(layer, |_| ([(CACHE_CONTROL, "private, max-age=60")], "mine"));
    for call in 1..=2 {
        let response = send(&app, get_with("/me", &[("authorization", "Basic YTpi")])).await;
        assert_not_stored(&response, "private");
        assert_eq!(origin.calls(), call);
    }
}

#[tokio::test]
async fn no_store_responses_are_never_stored() {
    assert_never_stored(
        |_| ([(CACHE_CONTROL, "no-store, max-age=60")], "from origin"),
        StatusCode::OK,
        "no-store",
    )
    .await;
}

#[tokio::test]
async fn vary_star_responses_are_never_stored() {
    assert_never_stored(
        |_| ([(VARY, "accept-language, *")], "from origin"),
        StatusCode::OK,
        "vary",
    )
    .await;
}

#[tokio::test]
async fn range_requests_never_store_a_206_and_are_cut_from_a_stored_200() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |request: Request| {
        if request.headers().contains_key(RANGE) {
            (StatusCode::PARTIAL_CONTENT, [("content-range", "bytes 0-3/10")], "0123").into_response()
        } else {
            "0123456789".into_response()
        }
    });
    // A range that misses goes to the origin, and its 206 is not stored.
    for call in 1..=2 {
        let partial = send(&app, get_with("/file", &[("range", "bytes=0-3")])).await;
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            cache_status(&partial),
            format!("{NAME}; fwd=bypass; fwd-status=206; detail=range")
        );
        assert_eq!(text(partial).await, "0123");
        assert_eq!(origin.calls(), call);
    }
    assert_stored(&send(&app, get("/file")).await);

    // Once the complete response is stored, ranges are cut from it.
    let partial = send(&app, get_with("/file", &[("range", "bytes=2-5")])).await;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(partial.headers()["content-range"], "bytes 2-5/10");
    assert_hit(&partial);
    assert_eq!(text(partial).await, "2345");
    let full = send(&app, get("/file")).await;
    assert_hit(&full);
    assert_eq!(
        text(full).await,
        "0123456789",
        "the stored response is the complete one"
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn partial_content_responses_are_never_stored() {
    assert_never_stored(
        |_| (StatusCode::PARTIAL_CONTENT, "from origin"),
        StatusCode::PARTIAL_CONTENT,
        "range",
    )
    .await;
}

#[tokio::test]
async fn statuses_outside_the_cacheable_set_are_never_stored() {
    assert_never_stored(
        |_| (StatusCode::INTERNAL_SERVER_ERROR, "from origin"),
        StatusCode::INTERNAL_SERVER_ERROR,
        "status",
    )
    .await;
    assert_never_stored(|_| (StatusCode::CREATED, "from origin"), StatusCode::CREATED, "status").await;
}

#[tokio::test]
async fn a_configured_status_becomes_cacheable() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .cacheable_statuses([StatusCode::OK, StatusCode::CREATED])
        .build();
    let app = origin.app(layer, |_| (StatusCode::CREATED, "made"));
    assert_stored(&send(&app, get("/page")).await);
    let hit = send(&app, get("/page")).await;
    assert_eq!(hit.status(), StatusCode::CREATED);
    assert_hit(&hit);
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn not_found_is_cached_by_default_as_heuristically_cacheable() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| (StatusCode::NOT_FOUND, "no such book"));
    assert_stored(&send(&app, get("/books/404")).await);
    let hit = send(&app, get("/books/404")).await;
    assert_eq!(hit.status(), StatusCode::NOT_FOUND);
    assert_hit(&hit);
    assert_eq!(text(hit).await, "no such book");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn max_ttl_caps_what_the_origin_asks_for() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .max_ttl(Duration::from_secs(30))
        .build();
    let app = origin.app(layer, |_| ([(CACHE_CONTROL, "max-age=31536000")], "long"));
    assert_stored(&send(&app, get("/page")).await);
    let hit = send(&app, get("/page")).await;
    assert!(ttl(&hit) <= 30, "ttl {} over max_ttl", ttl(&hit));
}
