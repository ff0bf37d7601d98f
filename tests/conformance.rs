//! Shared-cache conformance through a real axum Router, with the layer configured as the
//! README's reverse-proxy example: the rules of RFC 9111, 9110 (dates, conditionals, ranges)
//! and 9213 (targeted fields) a reverse-proxy cache must keep, each with what must not be
//! reused.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
mod common;
use common::{cache_status, send, text};
use std::time::{Duration, SystemTime};
use tower_response_cache::{CacheLayer, CacheLayerBuilder, MemoryStore};

/// The README's reverse-proxy configuration.
fn reverse_proxy_builder() -> CacheLayerBuilder<MemoryStore> {
    CacheLayer::builder(MemoryStore::new())
        .honor_request_directives(true)
        .default_ttl(Duration::ZERO)
        .max_ttl(Duration::from_secs(1 << 31))
        .targeted_cache_control([http::HeaderName::from_static("cdn-cache-control")])
}

fn reverse_proxy() -> CacheLayer<MemoryStore> {
    reverse_proxy_builder().build()
}

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
        .layer(reverse_proxy())
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

/// An HTTP-date `offset` seconds from now (negative: in the past).
fn date_from_now(offset: i64) -> String {
    let now = SystemTime::now();
    let at = if offset < 0 {
        now - Duration::from_secs(offset.unsigned_abs())
    } else {
        now + Duration::from_secs(offset as u64)
    };
    httpdate::fmt_http_date(at)
}

/// Fresh for an hour, dated now: a weak entity tag holding a comma and no `Last-Modified`
/// (`/t`), or `Last-Modified` in 2015 and no entity tag (`/lm`).
async fn validated(State(calls): State<Arc<AtomicUsize>>, uri: http::Uri) -> axum::response::Response {
    calls.fetch_add(1, SeqCst);
    let validator = match uri.path() {
        "/t" => ("etag", r#"W/"v1,2""#),
        _ => ("last-modified", "Thu, 01 Jan 2015 00:00:00 GMT"),
    };
    let headers = [
        ("cache-control", "max-age=3600".to_string()),
        (validator.0, validator.1.to_string()),
        ("date", date_from_now(0)),
    ];
    axum::response::IntoResponse::into_response((headers, "body"))
}

#[tokio::test]
async fn conditional_requests_follow_rfc_9110_section_13() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/t", get(validated))
        .route("/lm", get(validated))
        .with_state(calls.clone())
        .layer(reverse_proxy());
    assert_eq!(send(&app, common::get("/t")).await.status(), StatusCode::OK);
    assert_eq!(send(&app, common::get("/lm")).await.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 2);
    // Every answer below comes from the fresh stored entry: a hit, the origin not called.
    let conditional = |uri: &'static str, headers: Vec<(&'static str, String)>| {
        let app = app.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let response = send(&app, common::get_with(uri, &headers)).await;
            assert!(
                cache_status(&response).contains("; hit"),
                "{uri} {headers:?}: {}",
                cache_status(&response)
            );
            response.status()
        }
    };
    let inm = |value: &str| vec![("if-none-match", value.to_string())];
    // A list of entity tags, one of which holds a comma; weak comparison.
    assert_eq!(
        conditional("/t", inm(r#""other", "v1,2""#)).await,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(
        conditional("/t", inm(r#""v1""#)).await,
        StatusCode::OK,
        "a tag is not split at its comma"
    );
    // A list sent as several field lines is the same list (RFC 9110 §5.3).
    assert_eq!(
        conditional(
            "/t",
            vec![
                ("if-none-match", r#""other""#.to_string()),
                ("if-none-match", r#""v1,2""#.to_string())
            ]
        )
        .await,
        StatusCode::NOT_MODIFIED
    );
    // `*` matches any stored representation, one without an entity tag too (§13.1.2).
    assert_eq!(conditional("/t", inm("*")).await, StatusCode::NOT_MODIFIED);
    assert_eq!(conditional("/lm", inm("*")).await, StatusCode::NOT_MODIFIED);
    assert_eq!(conditional("/lm", inm(r#""other""#)).await, StatusCode::OK);
    // No Last-Modified: If-Modified-Since is judged against Date (now).
    let ims = |value: String| vec![("if-modified-since", value)];
    assert_eq!(
        conditional("/t", ims(date_from_now(3600))).await,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!(conditional("/t", ims(date_from_now(-3600))).await, StatusCode::OK);
    // With Last-Modified, against it (not Date): a 2016 date is after it though before Date.
    for (since, status) in [
        ("Thu, 01 Jan 2015 00:00:00 GMT", StatusCode::NOT_MODIFIED),
        ("Fri, 01 Jan 2016 00:00:00 GMT", StatusCode::NOT_MODIFIED),
        ("Wed, 31 Dec 2014 23:59:59 GMT", StatusCode::OK),
    ] {
        assert_eq!(conditional("/lm", ims(since.into())).await, status, "{since}");
    }
    // If-None-Match takes precedence over If-Modified-Since.
    let both = |tag: &str, since: String| vec![("if-none-match", tag.to_string()), ("if-modified-since", since)];
    assert_eq!(
        conditional("/t", both(r#""other""#, date_from_now(3600))).await,
        StatusCode::OK
    );
    assert_eq!(
        conditional("/lm", both(r#""other""#, "Fri, 01 Jan 2016 00:00:00 GMT".into())).await,
        StatusCode::OK
    );
    assert_eq!(calls.load(SeqCst), 2, "every conditional was answered from the cache");
}

// RFC 9111 §5.2.1: request directives, when honoured (the reverse-proxy configuration).

#[derive(serde::Deserialize)]
struct Answer {
    cc: String,
    age: u64,
}

async fn answer(
    State(calls): State<Arc<AtomicUsize>>,
    axum::extract::Query(a): axum::extract::Query<Answer>,
) -> ([(&'static str, String); 3], String) {
    let call = calls.fetch_add(1, SeqCst) + 1;
    // The validator keeps a stale entry stored, so that it can be revalidated.
    let headers = [
        ("cache-control", a.cc),
        ("age", a.age.to_string()),
        ("etag", "\"x\"".into()),
    ];
    (headers, format!("call {call}"))
}

#[tokio::test]
async fn request_directives_are_honoured_as_rfc_9111_section_5_2_1_says() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/d", get(answer))
        .with_state(calls.clone())
        .layer(reverse_proxy());
    let ask = |uri: &'static str, cc: &'static str| {
        let app = app.clone();
        async move {
            let response = send(&app, common::get_with(uri, &[("cache-control", cc)])).await;
            (cache_status(&response).to_string(), response.status())
        }
    };
    let calls_now = || calls.load(SeqCst);
    // Fresh, 30 s old, 30 s left.
    let fresh = "/d?cc=max-age%3D60&age=30";
    assert_eq!(text(send(&app, common::get(fresh)).await).await, "call 1");
    for accepted in [
        "max-age=60",
        "max-age=3600",
        "min-fresh=10",
        "max-age = 1",
        "min-fresh = 50",
    ] {
        let (status, _) = ask(fresh, accepted).await;
        assert!(status.contains("; hit"), "{accepted}: {status}");
    }
    assert_eq!(calls_now(), 1);
    for refused in ["max-age=10", "min-fresh=40", "no-cache", "max-age=0"] {
        let before = calls_now();
        let (status, _) = ask(fresh, refused).await;
        assert!(status.contains("fwd=request"), "{refused}: {status}");
        assert_eq!(calls_now(), before + 1, "{refused} reaches the origin");
    }
    // `only-if-cached` is answered by a fresh stored entry (the last refused call's
    // answer), without the origin.
    let before = calls_now();
    let stored = format!("call {before}");
    let cached = send(&app, common::get_with(fresh, &[("cache-control", "only-if-cached")])).await;
    assert!(cache_status(&cached).contains("; hit"), "{}", cache_status(&cached));
    assert_eq!(text(cached).await, stored);
    assert_eq!(calls_now(), before);
    // `no-store`: not served from the cache, and its answer is not stored.
    let (status, _) = ask(fresh, "no-store").await;
    assert!(!status.contains("; hit"), "no-store: {status}");
    assert_eq!(calls_now(), before + 1, "no-store reaches the origin");
    let kept = send(&app, common::get(fresh)).await;
    assert_eq!(text(kept).await, stored, "the stored entry is not replaced");
    let unstored = "/d?cc=max-age%3D60&age=0";
    ask(unstored, "no-store").await;
    let after = send(&app, common::get(unstored)).await;
    assert!(!cache_status(&after).contains("; hit"), "{}", cache_status(&after));

    // Stale by about a second.
    let stale = "/d?cc=max-age%3D60&age=61";
    send(&app, common::get(stale)).await;
    let before = calls_now();
    for accepted in ["max-stale", "max-stale=30", "max-stale=30, max-age=3600"] {
        let (status, _) = ask(stale, accepted).await;
        assert!(
            status.contains("fwd=stale") && status.contains("max-stale"),
            "{accepted}: {status}"
        );
    }
    assert_eq!(calls_now(), before, "accepted stale answers never reach the origin");
    for refused in ["max-stale=0", "max-stale, max-age=30", "max-stale, min-fresh=1"] {
        let (status, _) = ask(stale, refused).await;
        assert!(!status.contains("max-stale"), "{refused}: {status}");
    }
    let (status, code) = ask(stale, "only-if-cached").await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{status}");

    // `must-revalidate` (and `s-maxage`) forbid it whatever the client accepts.
    for uri in [
        "/d?cc=max-age%3D60,must-revalidate&age=61",
        "/d?cc=s-maxage%3D60&age=61",
    ] {
        send(&app, common::get(uri)).await;
        let before = calls_now();
        let (status, _) = ask(uri, "max-stale").await;
        assert!(!status.contains("max-stale"), "{uri}: {status}");
        assert_eq!(calls_now(), before + 1);
    }
}

// RFC 9213: targeted cache-control fields.

#[derive(serde::Deserialize)]
struct Targeted {
    cc: String,
    cdn: String,
}

async fn targeted(axum::extract::Query(t): axum::extract::Query<Targeted>) -> [(&'static str, String); 3] {
    [
        ("cache-control", t.cc),
        ("cdn-cache-control", t.cdn),
        ("expires", "Thu, 01 Jan 2099 00:00:00 GMT".into()),
    ]
}

#[tokio::test]
async fn a_targeted_field_replaces_cache_control_and_expires_for_this_cache() {
    let app = |strip: bool| {
        Router::new()
            .route("/t", get(targeted))
            .layer(reverse_proxy_builder().strip_targeted_cache_control(strip).build())
    };
    let twice = |app: Router, uri: &'static str| async move {
        send(&app, common::get(uri)).await;
        send(&app, common::get(uri)).await
    };
    // Browsers are told `no-cache`; this cache keeps the page on the targeted field's word.
    let kept = twice(app(false), "/t?cc=no-cache&cdn=max-age%3D60").await;
    assert!(cache_status(&kept).contains("; hit"), "{}", cache_status(&kept));
    assert_eq!(kept.headers()["cache-control"], "no-cache");
    assert_eq!(
        kept.headers()["cdn-cache-control"],
        "max-age=60",
        "passed on by default"
    );
    let stripped = twice(app(true), "/t?cc=no-cache&cdn=max-age%3D60").await;
    assert!(cache_status(&stripped).contains("; hit"));
    assert!(!stripped.headers().contains_key("cdn-cache-control"));
    // Its `no-store` wins over `Cache-Control`, and `Expires` is ignored with it.
    for refused in ["/t?cc=max-age%3D60&cdn=no-store", "/t?cc=max-age%3D60&cdn=private"] {
        let response = twice(app(false), refused).await;
        assert!(
            !cache_status(&response).contains("; hit"),
            "{refused}: {}",
            cache_status(&response)
        );
    }
    // `Expires` alone would keep it (there is no default TTL); with a targeted field it may not.
    let no_default = app(false);
    let expires_ignored = twice(no_default, "/t?cc=public&cdn=public").await;
    assert!(
        !cache_status(&expires_ignored).contains("; hit"),
        "{}",
        cache_status(&expires_ignored)
    );
    // An invalid targeted field is ignored: `Cache-Control` decides.
    let invalid = twice(app(false), "/t?cc=max-age%3D60&cdn=max-age%3D60%2C").await;
    assert!(cache_status(&invalid).contains("; hit"), "{}", cache_status(&invalid));
    let invalid = twice(app(false), "/t?cc=no-store&cdn=max-age%20%3D%2060").await;
    assert!(!cache_status(&invalid).contains("; hit"), "{}", cache_status(&invalid));
}

// RFC 9110 §14: ranges served from the cache.

const DIGITS: &str = "0123456789";

async fn digits(State(calls): State<Arc<AtomicUsize>>) -> ([(&'static str, String); 4], &'static str) {
    calls.fetch_add(1, SeqCst);
    let headers = [
        ("cache-control", "max-age=60".into()),
        ("etag", "\"d1\"".into()),
        ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT".into()),
        ("date", date_from_now(0)),
    ];
    (headers, DIGITS)
}

#[tokio::test]
async fn ranges_are_cut_from_a_stored_complete_response() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/digits", get(digits))
        .with_state(calls.clone())
        .layer(reverse_proxy());
    let range = |headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        async move { send(&app, common::get_with("/digits", headers)).await }
    };
    // A miss is forwarded untouched (this origin ignores ranges) and not stored as a range.
    let miss = range(&[("range", "bytes=0-3")]).await;
    assert!(cache_status(&miss).contains("detail=range"), "{}", cache_status(&miss));
    assert_eq!(text(miss).await, DIGITS);
    assert_eq!(calls.load(SeqCst), 1);
    send(&app, common::get("/digits")).await;
    assert_eq!(calls.load(SeqCst), 2);

    for (spec, body, content_range) in [
        ("bytes=0-3", "0123", "bytes 0-3/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=-2", "89", "bytes 8-9/10"),
        ("bytes=5-100", "56789", "bytes 5-9/10"),
    ] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("range", spec)]));
        let partial = range(headers).await;
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(partial.headers()["content-range"], content_range);
        assert_eq!(partial.headers()["content-length"], body.len().to_string().as_str());
        assert_eq!(partial.headers()["etag"], "\"d1\"", "the stored response's headers");
        assert!(cache_status(&partial).contains("; hit"));
        assert_eq!(text(partial).await, body, "{spec}");
    }
    let unsatisfiable = range(&[("range", "bytes=10-")]).await;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(unsatisfiable.headers()["content-range"], "bytes */10");
    // Several ranges, or an unreadable one, get the full 200.
    for ignored in ["bytes=0-1,4-5", "bytes=5-1", "lines=1-2"] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("range", ignored)]));
        let full = range(headers).await;
        assert_eq!(full.status(), StatusCode::OK, "{ignored}");
        assert_eq!(text(full).await, DIGITS);
    }
    // If-Range: a matching strong validator or date (`Last-Modified` is strong here, years
    // before `Date`) gets the range, anything else the 200.
    for (if_range, status) in [
        ("\"d1\"", StatusCode::PARTIAL_CONTENT),
        ("Sun, 06 Nov 1994 08:49:37 GMT", StatusCode::PARTIAL_CONTENT),
        ("W/\"d1\"", StatusCode::OK),
        ("\"d0\"", StatusCode::OK),
        ("Mon, 07 Nov 1994 08:49:37 GMT", StatusCode::OK),
    ] {
        let headers: &'static [(&str, &str)] = Box::leak(Box::new([("range", "bytes=0-3"), ("if-range", if_range)]));
        assert_eq!(range(headers).await.status(), status, "If-Range: {if_range}");
    }
    // A conditional that matches answers 304 before any range.
    let both = range(&[("range", "bytes=0-3"), ("if-none-match", "\"d1\"")]).await;
    assert_eq!(both.status(), StatusCode::NOT_MODIFIED);
    // Range handling is defined for GET only (§14.2): a HEAD's Range is ignored.
    let head = send(
        &app,
        common::request(http::Method::HEAD, "/digits", &[("range", "bytes=0-3")]),
    )
    .await;
    assert_eq!(head.status(), StatusCode::OK, "{}", cache_status(&head));
    assert!(head.headers().get("content-range").is_none());
    assert!(cache_status(&head).contains("; hit"), "{}", cache_status(&head));
    assert_eq!(calls.load(SeqCst), 2, "every range after the fill came from the cache");
}

#[derive(serde::Deserialize)]
struct Modified {
    /// Seconds between `Last-Modified` and `Date`; no `Date` at all when absent.
    before_date: Option<u64>,
}

/// The digits, fresh, with `Last-Modified` (and no entity tag) `before_date` seconds before
/// a `Date` of now.
async fn modified_digits(axum::extract::Query(m): axum::extract::Query<Modified>) -> axum::response::Response {
    let date = SystemTime::now();
    let mut response = axum::response::IntoResponse::into_response(DIGITS);
    let headers = response.headers_mut();
    headers.insert("cache-control", "max-age=60".parse().unwrap());
    let modified = date - Duration::from_secs(m.before_date.unwrap_or(1));
    headers.insert("last-modified", httpdate::fmt_http_date(modified).parse().unwrap());
    if m.before_date.is_some() {
        headers.insert("date", httpdate::fmt_http_date(date).parse().unwrap());
    }
    response
}

#[tokio::test]
async fn a_date_if_range_needs_a_strong_last_modified_rfc_9110_section_8_8_2_2() {
    let app = Router::new().route("/m", get(modified_digits)).layer(reverse_proxy());
    // A cache may take `Last-Modified` as strong only when the stored `Date` is at least one
    // second after it; otherwise a date `If-Range` gets the full 200.
    for (uri, expected) in [
        ("/m?before_date=1", StatusCode::PARTIAL_CONTENT),
        ("/m?before_date=3600", StatusCode::PARTIAL_CONTENT),
        ("/m?before_date=0", StatusCode::OK),
        ("/m", StatusCode::OK),
    ] {
        let stored = send(&app, common::get(uri)).await;
        assert!(
            cache_status(&stored).ends_with("; stored"),
            "{uri}: {}",
            cache_status(&stored)
        );
        let modified = stored.headers()["last-modified"].to_str().unwrap().to_string();
        let headers = [("range", "bytes=0-3"), ("if-range", modified.as_str())];
        let answer = send(&app, common::get_with(uri, &headers)).await;
        assert!(
            cache_status(&answer).contains("; hit"),
            "{uri}: {}",
            cache_status(&answer)
        );
        assert_eq!(answer.status(), expected, "{uri}");
        let body = if expected == StatusCode::OK { DIGITS } else { "0123" };
        assert_eq!(text(answer).await, body, "{uri}");
    }
}

// RFC 9111 §5.1 (Age), RFC 9110 §5.6.7 (dates), RFC 9111 §3 and §4.2.2 (statuses), §5.2.2.3
// (must-understand) and §4.1 (Vary), through a scriptable origin: the query says what it
// answers.

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct Scripted {
    status: Option<u16>,
    cc: Option<String>,
    age: Option<String>,
    expires: Option<String>,
    date: Option<String>,
    lm: Option<String>,
    vary: Option<String>,
    /// `CDN-Cache-Control`, the targeted field of the README's configuration.
    cdn: Option<String>,
    /// `App-Cache-Control`, a second targeted field some tests configure.
    app: Option<String>,
    cookie: Option<String>,
}

/// A request header that makes the scripted origin answer with this status instead (the
/// query, and so the key, stays the same).
const ORIGIN_STATUS: &str = "origin-status";

async fn scripted(
    State(calls): State<Arc<AtomicUsize>>,
    axum::extract::Query(s): axum::extract::Query<Scripted>,
    request: http::HeaderMap,
) -> axum::response::Response {
    let call = calls.fetch_add(1, SeqCst) + 1;
    let mut response =
        axum::response::IntoResponse::into_response(format!("call {call} for {:?}", request.get("accept-language")));
    let status = request
        .get(ORIGIN_STATUS)
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .or(s.status)
        .unwrap_or(200);
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let headers = response.headers_mut();
    for (name, value) in [
        ("cache-control", s.cc),
        ("age", s.age),
        ("expires", s.expires),
        ("date", s.date),
        ("last-modified", s.lm),
        ("vary", s.vary),
        ("cdn-cache-control", s.cdn),
        ("app-cache-control", s.app),
        ("set-cookie", s.cookie),
    ] {
        if let Some(value) = value {
            headers.insert(name, value.parse().unwrap());
        }
    }
    response
}

/// Sends `uri` twice (with `headers` on the second request): whether the second was a hit.
async fn second_is_hit(app: &Router, uri: &str, headers: &[(&str, &str)]) -> bool {
    send(app, common::get(uri)).await;
    let second = send(app, common::get_with(uri, headers)).await;
    cache_status(&second).contains("; hit")
}

fn scripted_app() -> Router {
    scripted_app_with(reverse_proxy())
}

fn scripted_app_with(layer: CacheLayer<MemoryStore>) -> Router {
    Router::new()
        .route("/s", get(scripted).post(scripted))
        .with_state(Arc::new(AtomicUsize::new(0)))
        .layer(layer)
}

/// The query-string form of a header value.
fn q(value: &str) -> String {
    value
        .replace('%', "%25")
        .replace(' ', "%20")
        .replace('=', "%3D")
        .replace(',', "%2C")
        .replace('+', "%2B")
        .replace('&', "%26")
        .replace('"', "%22")
}

#[tokio::test]
async fn rfc_9111_section_5_1_age_first_member_and_invalid_values() {
    let app = scripted_app();
    // Invalid values are ignored, not read as "very old": still fresh.
    for age in ["abc", "-7200", "7200.0"] {
        let uri = format!("/s?cc=max-age%3D60&age={age}");
        assert!(second_is_hit(&app, &uri, &[]).await, "Age: {age}");
    }
    // Of a list, the first member counts.
    assert!(second_is_hit(&app, "/s?cc=max-age%3D60&age=0,%20old", &[]).await);
    assert!(
        !second_is_hit(&app, "/s?cc=max-age%3D60&age=7200,%200", &[]).await,
        "7200 first: stale"
    );
}

#[tokio::test]
async fn rfc_9110_section_5_6_7_dates_in_every_format() {
    let app = scripted_app();
    for (expires, date) in [
        ("Thu, 01 Jan 2099 00:00:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Friday, 01-Jan-49 00:00:00 GMT", "Sunday, 06-Nov-94 08:49:37 GMT"),
        ("Fri Jan  1 00:00:00 2049", "Sun Nov  6 08:49:37 1994"),
        ("thu, 01 jan 2099 00:00:00 utc", "Mon, 06 Nov 1994 08:49:37 +0000"),
    ] {
        let uri = format!(
            "/s?expires={}&date={}",
            expires.replace(' ', "%20").replace('+', "%2B"),
            date.replace(' ', "%20").replace('+', "%2B")
        );
        assert!(second_is_hit(&app, &uri, &[]).await, "Expires: {expires}, Date: {date}");
    }
    // The weekday and the zone's spelling decide nothing in `Expires` either.
    let mismatched = "Mon, 01 Jan 2099 00:00:00 +0000";
    assert!(
        second_is_hit(&app, &format!("/s?expires={}", q(mismatched)), &[]).await,
        "{mismatched}"
    );
    // `Date` decides the apparent age: an old one, however written, makes `max-age=60`
    // stale on arrival (not stored, there is no validator)...
    for old in [
        "Mon, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "monday, 06-nov-94 08:49:37 utc",
    ] {
        let uri = format!("/s?cc=max-age%3D60&date={}", q(old));
        assert!(!second_is_hit(&app, &uri, &[]).await, "Date: {old}");
    }
    // ...and one 30 s ago, with the wrong weekday or UTC spelled otherwise, counts in `Age`.
    let recent = date_from_now(-30);
    let weekday = if recent.starts_with("Mon") { "Tue" } else { "Mon" };
    for date in [
        format!("{weekday}{}", &recent[3..]),
        recent.replace("GMT", "+0000"),
        format!("{weekday}{}", &recent[3..]).replace("GMT", "UTC"),
    ] {
        let uri = format!("/s?cc=max-age%3D60&date={}", q(&date));
        send(&app, common::get(&uri)).await;
        let hit = send(&app, common::get(&uri)).await;
        common::assert_hit(&hit);
        assert!(
            (30..60).contains(&common::age(&hit)),
            "Date: {date}: Age {}",
            common::age(&hit)
        );
    }
    // An Expires that is not a date means already expired, even where the heuristic would
    // otherwise give freshness (`Last-Modified`).
    let old_lm = q("Thu, 01 Jan 2015 00:00:00 GMT");
    assert!(second_is_hit(&app, &format!("/s?lm={old_lm}"), &[]).await);
    assert!(!second_is_hit(&app, &format!("/s?expires=soon&lm={old_lm}"), &[]).await);
}

#[tokio::test]
async fn rfc_9111_sections_3_and_4_2_2_which_statuses_are_stored() {
    let app = scripted_app();
    // With explicit freshness from the origin, any final status.
    for status in [403, 500, 503] {
        assert!(
            second_is_hit(&app, &format!("/s?status={status}&cc=max-age%3D60"), &[]).await,
            "{status}"
        );
    }
    // The heuristic only for heuristically cacheable statuses, unless `public`.
    let old = "Thu,%2001%20Jan%202015%2000:00:00%20GMT";
    assert!(second_is_hit(&app, &format!("/s?status=200&lm={old}"), &[]).await);
    assert!(second_is_hit(&app, &format!("/s?status=404&lm={old}"), &[]).await);
    for status in [403, 502] {
        assert!(
            !second_is_hit(&app, &format!("/s?status={status}&lm={old}"), &[]).await,
            "{status}"
        );
    }
    assert!(second_is_hit(&app, &format!("/s?status=403&cc=public&lm={old}"), &[]).await);

    // Widening `cacheable_statuses` does not widen the heuristic.
    let widened = [200, 403, 404, 502].map(|s| StatusCode::from_u16(s).unwrap());
    let app = scripted_app_with(reverse_proxy_builder().cacheable_statuses(widened).build());
    assert!(second_is_hit(&app, &format!("/s?status=200&lm={old}"), &[]).await);
    for status in [403, 502] {
        assert!(
            !second_is_hit(&app, &format!("/s?status={status}&lm={old}"), &[]).await,
            "{status} by the heuristic"
        );
        assert!(
            second_is_hit(&app, &format!("/s?status={status}&cc=max-age%3D60"), &[]).await,
            "{status} with max-age"
        );
    }
}

#[tokio::test]
async fn rfc_9111_sections_4_2_1_and_4_2_4_which_lifetime_counts_and_what_forbids_stale() {
    let app = scripted_app();
    // s-maxage > max-age > Expires.
    assert!(second_is_hit(&app, &format!("/s?cc={}", q("max-age=0, s-maxage=60")), &[]).await);
    assert!(!second_is_hit(&app, &format!("/s?cc={}", q("max-age=60, s-maxage=0")), &[]).await);
    let expires = q("Thu, 01 Jan 2099 00:00:00 GMT");
    assert!(!second_is_hit(&app, &format!("/s?cc=max-age%3D0&expires={expires}"), &[]).await);
    // Expires − Date, not Expires − now: an origin whose clock is an hour fast.
    let fast = SystemTime::now() + Duration::from_secs(3600);
    let (date, hour_later) = (
        httpdate::fmt_http_date(fast),
        httpdate::fmt_http_date(fast + Duration::from_secs(3600)),
    );
    let dated = format!("/s?expires={}&date={}", q(&hour_later), q(&date));
    send(&app, common::get(&dated)).await;
    let hit = send(&app, common::get(&dated)).await;
    common::assert_hit(&hit);
    assert!((3500..=3600).contains(&common::ttl(&hit)), "{}", cache_status(&hit));
    // Stale on arrival, with a stale-if-error window: each of these forbids using it.
    for forbids in ["must-revalidate", "proxy-revalidate", "no-cache", "s-maxage=60"] {
        let cc = format!("max-age=60, {forbids}, stale-if-error=600");
        let (status, cache_status) = after_a_failure(&app, &format!("/s?cc={}&age=61", q(&cc))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{forbids}: {cache_status}");
    }
    let (status, cache_status) =
        after_a_failure(&app, &format!("/s?cc={}&age=61", q("max-age=60, stale-if-error=600"))).await;
    assert_eq!(status, StatusCode::OK, "{cache_status}");
}

#[tokio::test]
async fn deliberate_deviations_of_the_reverse_proxy_configuration() {
    let app = scripted_app();
    // A response with Set-Cookie is never stored, even `public`.
    let cookie = format!("/s?cc={}&cookie=id%3D1", q("public, max-age=60"));
    assert!(!second_is_hit(&app, &cookie, &[]).await);
    // A request with credentials shares a response only when it is `public`, `s-maxage` or
    // `must-revalidate` and fresh by the origin's word.
    let bob = [("authorization", "Bearer bob")];
    for (cc, shared) in [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", true),
        ("must-revalidate, max-age=60", true),
    ] {
        let uri = format!("/s?cc={}", q(cc));
        send(&app, common::get_with(&uri, &[("authorization", "Bearer alice")])).await;
        let second = send(&app, common::get_with(&uri, &bob)).await;
        assert_eq!(
            cache_status(&second).contains("; hit"),
            shared,
            "{cc}: {}",
            cache_status(&second)
        );
    }
    let heuristic = format!("/s?cc=public&lm={}", q("Thu, 01 Jan 2015 00:00:00 GMT"));
    send(&app, common::get_with(&heuristic, &[("cookie", "a=1")])).await;
    let second = send(&app, common::get_with(&heuristic, &[("cookie", "b=2")])).await;
    assert!(
        !cache_status(&second).contains("; hit"),
        "heuristic freshness is not the origin's word"
    );
    // `no-cache="field"` and `private="field"` are read as their unqualified forms.
    for qualified in ["max-age=60, no-cache=\"set-cookie\"", "max-age=60, private=\"x-user\""] {
        let uri = format!("/s?cc={}", q(qualified));
        assert!(!second_is_hit(&app, &uri, &[]).await, "{qualified}");
    }
}

#[tokio::test]
async fn rfc_5861_a_5xx_in_the_stale_if_error_window_answers_stale_and_replaces_nothing() {
    let app = scripted_app();
    let uri = "/s?cc=max-age%3D60,%20stale-if-error%3D600&age=61";
    let first = text(send(&app, common::get(uri)).await).await;
    for _ in 0..2 {
        let failed = send(&app, common::get_with(uri, &[(ORIGIN_STATUS, "503")])).await;
        assert_eq!(failed.status(), StatusCode::OK, "{}", cache_status(&failed));
        assert!(
            cache_status(&failed).contains("detail=stale-if-error"),
            "{}",
            cache_status(&failed)
        );
        assert_eq!(text(failed).await, first);
    }
    // The stored response, read without the origin, is still the first one.
    let stored = send(
        &app,
        common::get_with(uri, &[("cache-control", "only-if-cached, max-stale")]),
    )
    .await;
    assert_eq!(stored.status(), StatusCode::OK, "{}", cache_status(&stored));
    assert_eq!(text(stored).await, first);
}

#[tokio::test]
async fn rfc_9111_section_5_2_response_directives_with_spaces_around_equals_are_invalid() {
    let app = scripted_app();
    assert!(second_is_hit(&app, "/s?cc=max-age%3D3600", &[]).await);
    // Ignored: no freshness is left (no default TTL, no Last-Modified), so not stored.
    assert!(!second_is_hit(&app, "/s?cc=max-age%20%3D%203600", &[]).await);
    assert!(!second_is_hit(&app, "/s?cc=s-maxage%20%3D3600", &[]).await);
}

#[tokio::test]
async fn rfc_9111_section_4_4_unsafe_methods_invalidate_the_target() {
    let app = scripted_app();
    let uri = "/s?cc=max-age%3D60";
    send(&app, common::get(uri)).await;
    let post = |status: &'static str| common::request(http::Method::POST, uri, &[(ORIGIN_STATUS, status)]);
    // A failed mutation purges nothing.
    send(&app, post("500")).await;
    assert!(cache_status(&send(&app, common::get(uri)).await).contains("; hit"));
    send(&app, post("200")).await;
    let after = send(&app, common::get(uri)).await;
    assert!(!cache_status(&after).contains("; hit"), "{}", cache_status(&after));
}

#[tokio::test]
async fn rfc_9111_section_5_2_2_3_must_understand_overrides_no_store() {
    let app = scripted_app();
    assert!(second_is_hit(&app, "/s?cc=must-understand,%20no-store,%20max-age%3D60", &[]).await);
    assert!(!second_is_hit(&app, "/s?cc=no-store,%20max-age%3D60", &[]).await);
    assert!(!second_is_hit(&app, "/s?status=299&cc=must-understand,%20max-age%3D60", &[]).await);
}

#[tokio::test]
async fn rfc_9111_section_4_1_vary_values_are_normalised() {
    let app = scripted_app();
    let uri = "/s?cc=max-age%3D60&vary=accept-language";
    send(&app, common::get_with(uri, &[("accept-language", "en, fr;q=0.5")])).await;
    for same in ["en,fr;q=0.5", "fr;q=0.5, EN", "en ,  fr;q=0.5"] {
        let response = send(&app, common::get_with(uri, &[("accept-language", same)])).await;
        assert!(
            cache_status(&response).contains("; hit"),
            "{same}: {}",
            cache_status(&response)
        );
    }
    let other = send(&app, common::get_with(uri, &[("accept-language", "en, fr;q=0.9")])).await;
    assert!(
        !cache_status(&other).contains("; hit"),
        "q-values select another variant"
    );

    let is_hit = |uri: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        async move { cache_status(&send(&app, common::get_with(uri, headers)).await).contains("; hit") }
    };
    // Several field lines select the variant their comma-joined line does, both ways round.
    let lines = "/s?cc=max-age%3D60&vary=accept-language&n=lines";
    assert!(!is_hit(lines, &[("accept-language", "en"), ("accept-language", "fr;q=0.5")]).await);
    assert!(is_hit(lines, &[("accept-language", "en, fr;q=0.5")]).await);
    let joined = "/s?cc=max-age%3D60&vary=accept-language&n=joined";
    assert!(!is_hit(joined, &[("accept-language", "de, it")]).await);
    assert!(is_hit(joined, &[("accept-language", "de"), ("accept-language", "it")]).await);
    assert!(
        !is_hit(joined, &[("accept-language", "de")]).await,
        "one line of two is another value"
    );

    // Accept-Encoding: a set of case-insensitive tokens, q-values kept.
    let encoding = "/s?cc=max-age%3D60&vary=accept-encoding";
    assert!(!is_hit(encoding, &[("accept-encoding", "gzip, br")]).await);
    for same in [
        &[("accept-encoding", "BR, GZIP")][..],
        &[("accept-encoding", "br"), ("accept-encoding", "gzip")],
        &[("accept-encoding", "Gzip,br")],
    ] {
        assert!(is_hit(encoding, same).await, "{same:?}");
    }
    for other in [
        &[("accept-encoding", "gzip")][..],
        &[("accept-encoding", "gzip, br;q=0.5")],
        &[("accept-encoding", "gzip, br, zstd")],
    ] {
        assert!(!is_hit(encoding, other).await, "{other:?}");
    }
}

// RFC 9213 through the scripted origin: what a targeted field says replaces what
// `Cache-Control` says, directive by directive.

/// Stores `uri`, then asks again with the origin failing: the second answer's status and
/// `Cache-Status`.
async fn after_a_failure(app: &Router, uri: &str) -> (StatusCode, String) {
    send(app, common::get(uri)).await;
    let second = send(app, common::get_with(uri, &[(ORIGIN_STATUS, "503")])).await;
    (second.status(), cache_status(&second).to_string())
}

fn targeted_uri(cc: &str, cdn: &str, age: u32) -> String {
    format!("/s?cc={}&cdn={}&age={age}", q(cc), q(cdn))
}

#[tokio::test]
async fn rfc_9213_targeted_directives_replace_what_cache_control_says() {
    let app = scripted_app();
    let hit = |cc: &str, cdn: &str| {
        let (app, uri) = (app.clone(), targeted_uri(cc, cdn, 0));
        async move { second_is_hit(&app, &uri, &[]).await }
    };
    // s-maxage gives freshness in the targeted field, and only there.
    assert!(hit("no-store", "s-maxage=60").await);
    assert!(!hit("s-maxage=60", "max-age=0").await);
    // no-cache.
    assert!(!hit("max-age=60", "max-age=60, no-cache").await);
    assert!(hit("max-age=60, no-cache", "max-age=60").await);

    // Stale on arrival; what the targeted field says about serving it stale on error holds.
    let on_error = |cc: &str, cdn: &str| {
        let (app, uri) = (app.clone(), targeted_uri(cc, cdn, 61));
        async move { after_a_failure(&app, &uri).await }
    };
    let served_stale = |(status, cache_status): (StatusCode, String)| {
        status == StatusCode::OK && cache_status.contains("detail=stale-if-error")
    };
    for (cc, cdn, stale) in [
        // stale-if-error
        ("max-age=60", "max-age=60, stale-if-error=600", true),
        ("max-age=60, stale-if-error=600", "max-age=60", false),
        // must-revalidate
        (
            "max-age=60, stale-if-error=600",
            "max-age=60, must-revalidate, stale-if-error=600",
            false,
        ),
        (
            "max-age=60, must-revalidate, stale-if-error=600",
            "max-age=60, stale-if-error=600",
            true,
        ),
        // s-maxage, which means proxy-revalidate here
        (
            "max-age=60, stale-if-error=600",
            "s-maxage=60, stale-if-error=600",
            false,
        ),
        (
            "s-maxage=60, stale-if-error=600",
            "max-age=60, stale-if-error=600",
            true,
        ),
    ] {
        let answer = on_error(cc, cdn).await;
        assert_eq!(served_stale(answer.clone()), stale, "{cc} / {cdn}: {answer:?}");
    }
    // stale-while-revalidate
    for (cc, cdn, stale) in [
        ("max-age=60", "max-age=60, stale-while-revalidate=600", true),
        ("max-age=60, stale-while-revalidate=600", "max-age=60", false),
    ] {
        let uri = targeted_uri(cc, cdn, 61);
        send(&app, common::get(&uri)).await;
        let second = send(&app, common::get(&uri)).await;
        assert_eq!(
            cache_status(&second).contains("detail=stale-while-revalidate"),
            stale,
            "{cc} / {cdn}: {}",
            cache_status(&second)
        );
    }
}

#[tokio::test]
async fn rfc_9213_targeted_fields_in_order_of_precedence() {
    let layer = reverse_proxy_builder()
        .targeted_cache_control(["app-cache-control", "cdn-cache-control"].map(http::HeaderName::from_static))
        .build();
    let app = scripted_app_with(layer);
    let hit = |cc: &str, app_cc: Option<&str>, cdn: &str| {
        let app_part = app_cc.map(|v| format!("&app={}", q(v))).unwrap_or_default();
        let uri = format!("/s?cc={}&cdn={}{app_part}", q(cc), q(cdn));
        let app = app.clone();
        async move { second_is_hit(&app, &uri, &[]).await }
    };
    // The first present wins.
    assert!(hit("no-store", Some("max-age=60"), "no-store").await);
    assert!(!hit("max-age=60", Some("no-store"), "max-age=60").await);
    // The second, when the first is absent or invalid.
    assert!(hit("no-store", None, "max-age=60").await);
    assert!(!hit("max-age=60", None, "no-store").await);
    for invalid in ["max-age=60,", "max-age = 60", "max-age=\"60"] {
        assert!(hit("no-store", Some(invalid), "max-age=60").await, "{invalid}");
        assert!(!hit("max-age=60", Some(invalid), "no-store").await, "{invalid}");
    }
    // Neither valid: Cache-Control decides.
    assert!(hit("max-age=60", Some("max-age=60,"), "max-age = 60").await);
    assert!(!hit("no-store", Some("max-age=60,"), "max-age = 60").await);
}
