//! RFC 9111 policy through a Router: freshness sources, `no-cache`, `max-age=0`, route
//! overrides (layer hook and handler extension), request directives, and malformed
//! `Cache-Control` read conservatively.

mod common;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Extension;
use common::*;
use http::header::{AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES};
use http::{HeaderValue, StatusCode};
use std::time::{Duration, SystemTime};
use tower_response_cache::{CacheDecision, CacheLayer, MemoryStore, RouteOverride, Store};

/// A response with these `Cache-Control` field lines (raw bytes, so that any value fits).
fn with_cache_control(
    lines: &'static [&'static [u8]],
) -> impl Fn(Request) -> axum::response::Response + Clone + Send + Sync + 'static {
    move |_| {
        let mut response = "from origin".into_response();
        for line in lines {
            let value = HeaderValue::from_bytes(line).expect("a header value");
            response.headers_mut().append(CACHE_CONTROL, value);
        }
        response
    }
}

/// Two GETs: the second must reach the origin too, and the first must say why.
async fn assert_not_served_from_cache(lines: &'static [&'static [u8]], detail: &str) {
    let origin = Origin::new();
    let app = origin.app(default_layer(), with_cache_control(lines));
    for call in 1..=2 {
        let response = send(&app, get("/page")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_not_stored(&response, detail);
        assert_eq!(text(response).await, "from origin");
        assert_eq!(origin.calls(), call);
    }
}

/// One miss then one hit; returns the hit's `ttl`.
async fn stored_ttl(app: &axum::Router) -> u64 {
    assert_stored(&send(app, get("/page")).await);
    let hit = send(app, get("/page")).await;
    assert_hit(&hit);
    ttl(&hit)
}

#[tokio::test]
async fn no_cache_responses_are_stored_but_never_served_without_revalidation() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        (
            [(CACHE_CONTROL, "no-cache, max-age=60"), (ETAG, "\"v1\"")],
            "from origin",
        )
    });
    let first = send(&app, get("/page")).await;
    assert_stored(&first);
    let second = send(&app, get("/page")).await;
    assert!(cache_status(&second).contains("; fwd="), "{}", cache_status(&second));
    assert!(second.headers().get("age").is_none());
    assert_eq!(text(second).await, "from origin");
    assert_eq!(origin.calls(), 2);

    // Not even a conditional request is answered from the entry.
    let conditional = send(&app, get_with("/page", &[("if-none-match", "\"v1\"")])).await;
    assert!(!cache_status(&conditional).contains("; hit"));
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn max_age_zero_is_never_served() {
    assert_not_served_from_cache(&[b"max-age=0"], "not-fresh").await;
}

#[tokio::test]
async fn expires_in_the_past_is_never_served() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        let now = httpdate::fmt_http_date(SystemTime::now());
        let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
        ([(DATE, now), (EXPIRES, past)], "from origin")
    });
    for call in 1..=2 {
        let response = send(&app, get("/page")).await;
        assert_not_stored(&response, "not-fresh");
        assert_eq!(origin.calls(), call);
    }
}

#[tokio::test]
async fn expires_minus_date_gives_the_freshness_lifetime() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(300);
        let dates = [
            (DATE, httpdate::fmt_http_date(now)),
            (EXPIRES, httpdate::fmt_http_date(later)),
        ];
        (dates, "from origin")
    });
    let ttl = stored_ttl(&app).await;
    assert!((290..=300).contains(&ttl), "ttl {ttl}");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn s_maxage_beats_max_age() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), with_cache_control(&[b"max-age=10, s-maxage=120"]));
    let ttl = stored_ttl(&app).await;
    assert!((110..=120).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn the_default_ttl_applies_only_without_explicit_freshness() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .default_ttl(Duration::from_secs(7))
        .build();
    let app = origin.app(layer, |_| "no freshness information");
    let ttl = stored_ttl(&app).await;
    assert!((1..=7).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn an_upstream_age_shortens_the_freshness_left() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        ([(CACHE_CONTROL, "max-age=60"), (AGE, "50")], "from an upstream cache")
    });
    let miss = send(&app, get("/page")).await;
    assert!(cache_status(&miss).ends_with("; stored"), "{}", cache_status(&miss));
    let hit = send(&app, get("/page")).await;
    assert_hit(&hit);
    assert!(ttl(&hit) <= 10, "ttl {}", ttl(&hit));
    assert!((50..=55).contains(&age(&hit)), "age {}", age(&hit));
}

#[tokio::test]
async fn a_route_override_hook_sets_the_ttl() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .route_override(|parts| (parts.uri.path() == "/page").then_some(RouteOverride::Ttl(Duration::from_secs(5))))
        .build();
    let app = origin.app(layer, with_cache_control(&[b"max-age=3600"]));
    let ttl = stored_ttl(&app).await;
    assert!(ttl <= 5, "the override's 5 s, not the origin's hour: ttl {ttl}");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_route_override_hook_bypasses_the_cache() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .route_override(|parts| parts.uri.path().starts_with("/admin").then_some(RouteOverride::Bypass))
        .build();
    let app = origin.app(layer, with_cache_control(&[b"public, max-age=3600"]));
    for call in 1..=2 {
        let response = send(&app, get("/admin/panel")).await;
        assert_eq!(
            cache_status(&response),
            format!("{NAME}; fwd=bypass; fwd-status=200; detail=route")
        );
        assert_eq!(origin.calls(), call);
    }
    // Other routes are cached as usual.
    assert_stored(&send(&app, get("/public")).await);
    assert_hit(&send(&app, get("/public")).await);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn a_handler_extension_sets_the_ttl() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        (
            Extension(RouteOverride::Ttl(Duration::from_secs(5))),
            [(CACHE_CONTROL, "max-age=3600")],
            "prices",
        )
    });
    let ttl = stored_ttl(&app).await;
    assert!(ttl <= 5, "ttl {ttl}");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_handler_extension_bypasses_the_cache() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| (Extension(RouteOverride::Bypass), "live"));
    for call in 1..=2 {
        let response = send(&app, get("/live")).await;
        assert_not_stored(&response, "route");
        assert_eq!(text(response).await, "live");
        assert_eq!(origin.calls(), call);
    }
}

#[tokio::test]
async fn a_handler_extension_wins_over_the_layer_hook() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .route_override(|_| Some(RouteOverride::Ttl(Duration::from_secs(3600))))
        .build();
    let app = origin.app(layer, |_| (Extension(RouteOverride::Bypass), "live"));
    let response = send(&app, get("/live")).await;
    assert_not_stored(&response, "route");
}

#[tokio::test]
async fn a_ttl_override_never_makes_an_unsafe_response_storable() {
    for (cache_control, detail) in [("no-store", "no-store"), ("private", "private")] {
        let origin = Origin::new();
        let layer = CacheLayer::builder(MemoryStore::new())
            .route_override(|_| Some(RouteOverride::Ttl(Duration::from_secs(60))))
            .build();
        let app = origin.app(layer, move |_| ([(CACHE_CONTROL, cache_control)], "secret"));
        for call in 1..=2 {
            assert_not_stored(&send(&app, get("/page")).await, detail);
            assert_eq!(origin.calls(), call);
        }
    }
}

#[tokio::test]
async fn a_negative_max_age_is_read_as_stale() {
    assert_not_served_from_cache(&[b"max-age=-1"], "not-fresh").await;
}

#[tokio::test]
async fn a_huge_max_age_is_capped_not_overflowed() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .max_ttl(Duration::from_secs(3600))
        .build();
    let app = origin.app(layer, with_cache_control(&[b"max-age=99999999999999999999"]));
    let ttl = stored_ttl(&app).await;
    assert!((3590..=3600).contains(&ttl), "capped at max_ttl: ttl {ttl}");
}

#[tokio::test]
async fn a_huge_max_age_is_capped_by_the_default_max_ttl() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), with_cache_control(&[b"s-maxage=18446744073709551616"]));
    let ttl = stored_ttl(&app).await;
    assert!(ttl <= 86_400, "ttl {ttl}");
}

#[tokio::test]
async fn conflicting_duplicate_max_ages_are_read_as_stale() {
    assert_not_served_from_cache(&[b"max-age=10, max-age=20"], "not-fresh").await;
    assert_not_served_from_cache(&[b"max-age=10", b"max-age=20"], "not-fresh").await;
}

#[tokio::test]
async fn garbage_max_age_values_are_read_as_stale() {
    assert_not_served_from_cache(&[b"max-age=abc"], "not-fresh").await;
    assert_not_served_from_cache(&[b"max-age=1.5"], "not-fresh").await;
    assert_not_served_from_cache(&[b"max-age"], "not-fresh").await;
}

#[tokio::test]
async fn non_utf8_cache_control_is_never_stored() {
    assert_not_served_from_cache(&[b"max-age=60, \xff\xfe"], "unreadable").await;
    assert_not_served_from_cache(&[b"public, max-age=60", b"\xc3\x28no-store"], "unreadable").await;
}

#[tokio::test]
async fn unknown_directives_are_ignored() {
    let origin = Origin::new();
    let app = origin.app(
        default_layer(),
        with_cache_control(&[b"max-age=30, x-future=\"a, b\", immutable"]),
    );
    let ttl = stored_ttl(&app).await;
    assert!((25..=30).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn client_no_cache_does_not_force_the_origin_by_default() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| "from origin");
    assert_stored(&send(&app, get("/page")).await);
    for directive in ["no-cache", "max-age=0", "no-store"] {
        let response = send(&app, get_with("/page", &[("cache-control", directive)])).await;
        assert_hit(&response);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn client_directives_are_honoured_when_configured() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .honor_request_directives(true)
        .build();
    let app = origin.app(layer, |_| "from origin");
    assert_stored(&send(&app, get("/page")).await);

    let no_cache = send(&app, get_with("/page", &[("cache-control", "no-cache")])).await;
    assert!(
        cache_status(&no_cache).contains("fwd=request"),
        "{}",
        cache_status(&no_cache)
    );
    assert_eq!(origin.calls(), 2);

    let no_store = send(&app, get_with("/page", &[("cache-control", "no-store")])).await;
    assert_eq!(
        cache_status(&no_store),
        format!("{NAME}; fwd=request; fwd-status=200; detail=request-no-store")
    );
    assert_eq!(origin.calls(), 3);

    let only_cached = send(&app, get_with("/elsewhere", &[("cache-control", "only-if-cached")])).await;
    assert_eq!(only_cached.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 3, "only-if-cached never reaches the origin");

    assert_hit(&send(&app, get("/page")).await);
}

mod arbitrary_headers {
    //! Any bytes in the caching headers: never a panic, never a broken response, and a hit
    //! only ever follows a response the layer said it stored.

    use super::*;
    use proptest::prelude::*;

    const FRAGMENTS: &[&[u8]] = &[
        b"max-age=",
        b"s-maxage=",
        b"stale-while-revalidate=",
        b"stale-if-error=",
        b"no-cache",
        b"no-store",
        b"private",
        b"public",
        b"must-revalidate",
        b"immutable",
        b"-1",
        b"0",
        b"60",
        b"99999999999999999999",
        b"1.5",
        b",",
        b", ",
        b" ",
        b"\t",
        b"\"",
        b"=",
        b"\xff",
        b"\xc3\x28",
        b"*",
        b"accept",
        b"Accept-Language",
        b"Thu, 01 Jan 1970 00:00:00 GMT",
        b"Fri, 31 Dec 9999 23:59:59 GMT",
    ];

    fn field_value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..8).prop_map(|parts| parts.concat())
    }

    fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
        prop::collection::vec(byte, 0..24)
    }

    fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
        let name = prop::sample::select(&["cache-control", "cache-control", "expires", "date", "age", "vary"][..]);
        let value = prop_oneof![3 => field_value(), 1 => raw_bytes()];
        prop::collection::vec((name, value), 0..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn arbitrary_caching_headers_never_break_a_response(headers in headers()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let origin = Origin::new();
                let app = origin.app(default_layer(), move |_| {
                    let mut response = "from origin".into_response();
                    for (name, value) in &headers {
                        let value = HeaderValue::from_bytes(value).expect("allowed header bytes");
                        response.headers_mut().append(*name, value);
                    }
                    response
                });
                let first = send(&app, get("/page")).await;
                let stored = cache_status(&first).ends_with("; stored");
                assert_eq!(first.status(), StatusCode::OK);
                assert_eq!(text(first).await, "from origin");

                let second = send(&app, get("/page")).await;
                let hit = cache_status(&second).contains("; hit;");
                assert_eq!(second.status(), StatusCode::OK);
                assert!(stored || !hit, "a hit without a store: {}", cache_status(&second));
                assert_eq!(origin.calls(), if hit { 1 } else { 2 });
                assert_eq!(text(second).await, "from origin");
            });
        }
    }
}

#[tokio::test]
async fn a_get_on_a_post_only_route_or_a_missing_page_is_kept_briefly() {
    use axum::routing::post;
    let app = axum::Router::new()
        .route("/orders", post(|| async { "created" }))
        .layer(default_layer());
    for uri in ["/orders", "/no-such-page"] {
        send(&app, get(uri)).await;
        let again = send(&app, get(uri)).await;
        assert_hit(&again);
        assert!(ttl(&again) <= 5, "{uri}: {}", cache_status(&again));
    }
}

/// The policy hook decides per request: bypass, TTL, stale-if-error, extra tags; the route
/// override applies on top of it.
#[tokio::test]
async fn a_policy_hook_decides_bypass_ttl_stale_windows_and_tags() {
    let origin = Origin::new();
    let store = MemoryStore::new();
    let layer = CacheLayer::builder(store.clone())
        .policy(|request: &http::request::Parts| match request.uri.path() {
            "/health" => CacheDecision::bypass(),
            "/prices" => CacheDecision::default()
                .ttl(Duration::from_secs(5))
                .stale_if_error(Duration::from_secs(60))
                .tag("prices"),
            _ => CacheDecision::default().ttl(Duration::from_secs(30)),
        })
        .route_override(|parts| (parts.uri.path() == "/overridden").then_some(RouteOverride::Bypass))
        .build();
    let app = origin.app(layer.clone(), with_cache_control(&[b"max-age=3600"]));

    for call in 1..=2 {
        let response = send(&app, get("/health")).await;
        assert_eq!(
            cache_status(&response),
            format!("{NAME}; fwd=bypass; fwd-status=200; detail=route")
        );
        assert_eq!(origin.calls(), call);
    }
    assert_stored(&send(&app, get("/prices")).await);
    let hit = send(&app, get("/prices")).await;
    assert_hit(&hit);
    assert!(ttl(&hit) <= 5, "the policy's 5 s, not the origin's hour");
    // The policy's tag purges it.
    store.purge_tags(["prices"]).await.unwrap();
    let after = send(&app, get("/prices")).await;
    assert!(
        cache_status(&after).contains("detail=invalidated"),
        "{}",
        cache_status(&after)
    );
    // The route override applies on top of the policy's TTL.
    let overridden = send(&app, get("/overridden")).await;
    assert!(cache_status(&overridden).contains("detail=route"));
    assert_eq!(origin.calls(), 5);
}

/// A stale-if-error window the policy gives answers for a failing origin.
#[tokio::test]
async fn a_policy_stale_if_error_window_stands_in_for_a_failing_origin() {
    let origin = Origin::new();
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fails = failing.clone();
    let layer = CacheLayer::builder(MemoryStore::new())
        .policy(|_: &http::request::Parts| {
            CacheDecision::default()
                // Stale at once: kept only for its stale-if-error window.
                .ttl(Duration::ZERO)
                .stale_if_error(Duration::from_secs(600))
        })
        .build();
    let app = origin.app(layer, move |_| {
        if fails.load(std::sync::atomic::Ordering::SeqCst) {
            (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
        } else {
            "fresh".into_response()
        }
    });
    assert_stored(&send(&app, get("/page")).await);
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let response = send(&app, get("/page")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        cache_status(&response).contains("detail=stale-if-error"),
        "{}",
        cache_status(&response)
    );
    assert_eq!(text(response).await, "fresh");
}

/// `vary_by_header` and `key_with` give requests that differ in them their own entries.
#[tokio::test]
async fn key_hooks_separate_entries() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_header(http::HeaderName::from_static("x-tenant"))
        .key_with(|parts| parts.headers.get("x-cohort")?.to_str().ok().map(str::to_owned))
        .build();
    let app = origin.app(layer.clone(), with_cache_control(&[b"max-age=60"]));
    let requests: [&[(&str, &str)]; 5] = [
        &[],
        &[("x-tenant", "a")],
        &[("x-tenant", "b")],
        &[("x-tenant", "a"), ("x-cohort", "blue")],
        &[("x-tenant", "a"), ("x-cohort", "green")],
    ];
    for headers in requests {
        assert_stored(&send(&app, get_with("/page", headers)).await);
    }
    for headers in requests {
        assert_hit(&send(&app, get_with("/page", headers)).await);
    }
    assert_eq!(origin.calls(), 5);
    // Spacing in a varied header does not make another entry.
    assert_hit(&send(&app, get_with("/page", &[("x-tenant", " a ")])).await);
    let key = |headers: &[(&str, &str)]| {
        let (parts, _) = get_with("/page", headers).into_parts();
        layer.cache_key(&parts)
    };
    assert_ne!(key(&[("x-cohort", "blue")]), key(&[("x-cohort", "green")]));
    assert_ne!(key(&[]), key(&[("x-cohort", "")]));
}
