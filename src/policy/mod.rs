//! RFC 9111 decisions: may this response be stored, and for how long is it fresh?

pub(crate) mod cache_control;
mod decision;
mod http_date;

pub use decision::{CacheDecision, CachePolicy, DefaultPolicy, Scope};

use crate::metrics::BypassReason;
use cache_control::CacheControl;
use http::header::{HeaderMap, HeaderName, AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{response, StatusCode};
use std::time::{Duration, SystemTime};

/// A per-route decision that overrides the response's own caching headers.
///
/// Return it from the layer's [`route_override`](crate::CacheLayerBuilder::route_override)
/// hook, or from a handler as a response extension. Safety rules still apply: an override
/// never makes a `no-store`, `private` or `Set-Cookie` response shareable.
///
/// The scope of a response to a request with an identity (see
/// [`vary_by_identity`](crate::CacheLayerBuilder::vary_by_identity)) is chosen by the
/// response: per identity, unless it is explicitly shareable (`public` or `s-maxage`, fresh
/// by the origin's word). [`PerIdentity`](Self::PerIdentity) and [`Shared`](Self::Shared)
/// force it.
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use std::time::Duration;
/// use tower_response_cache::RouteOverride;
///
/// async fn prices() -> (Extension<RouteOverride>, &'static str) {
///     (Extension(RouteOverride::Ttl(Duration::from_secs(5))), "42.00")
/// }
/// let app: Router = Router::new().route("/prices", get(prices));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteOverride {
    /// Neither serve from nor store in the cache.
    Bypass,
    /// Use this freshness lifetime instead of the one the headers give.
    Ttl(Duration),
    /// Store the response to a request with an identity for that identity alone, even if it
    /// is marked shareable. Requests without an identity are not affected.
    PerIdentity,
    /// The response is the same for everyone: treat it as `public` with the origin's
    /// freshness, so that the answer to a request with an identity or with credentials is
    /// one entry for everyone. A `private` response is still stored per identity (and not
    /// at all for a request without one).
    Shared,
}

/// The statuses the layer stores on freshness it supplies itself (`default_ttl`, a route's
/// TTL): RFC 9110 §15.1 "heuristically cacheable", less 206.
pub(crate) const DEFAULT_CACHEABLE_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The statuses RFC 9110 §15.1 calls heuristically cacheable (206 aside, never stored): the
/// only ones the RFC heuristic (a tenth of the time since `Last-Modified`) may apply to,
/// whatever `cacheable_statuses` says, unless the response is `public`.
const HEURISTICALLY_CACHEABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The final statuses whose caching rules this cache knows (RFC 9110 §15), for
/// `must-understand` (RFC 9111 §5.2.2.3). 206 and 304 are never stored.
const UNDERSTOOD: &[u16] = &[
    200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410,
    411, 412, 413, 414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503, 504, 505,
];

/// Where a response's freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `s-maxage`, `max-age` or `Expires`: the origin's own word.
    Explicit,
    /// `default_ttl` or a route's TTL: the application's configuration.
    Configured,
    /// RFC 9111 §4.2.2: a tenth of the time since `Last-Modified`.
    Heuristic,
}

/// The policy knobs that come from the layer's configuration.
#[derive(Debug, Clone)]
pub(crate) struct PolicyConfig {
    pub(crate) default_ttl: Duration,
    /// `default_ttl` for 4xx answers (never longer than it).
    pub(crate) negative_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) cacheable_statuses: Vec<u16>,
    /// Targeted cache-control fields this cache obeys, in order of precedence (RFC 9213).
    pub(crate) targeted: Vec<HeaderName>,
}

/// Facts about the request that decide whether its response may be shared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestFacts {
    /// The request carried `Authorization` or `Cookie`.
    pub(crate) credentials: bool,
    /// The layer found an identity for the caller: a response may be stored for it alone.
    pub(crate) identity: bool,
    pub(crate) request_time: SystemTime,
}

/// How long a storable response stays usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Freshness {
    pub(crate) lifetime: Duration,
    pub(crate) initial_age: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) no_cache: bool,
    pub(crate) must_revalidate: bool,
    /// `public`, `s-maxage` or `must-revalidate`: may answer requests that carry credentials.
    pub(crate) shareable_with_credentials: bool,
    /// The `Vary` names, and [`key::IDENTITY`](crate::key::IDENTITY) for a response stored
    /// for the requester's identity alone.
    pub(crate) vary: Vec<HeaderName>,
    /// How long a stale entry with a validator is kept so that it can be revalidated.
    pub(crate) revalidation_grace: Duration,
}

/// How long a stale entry with `ETag` or `Last-Modified` is kept for a conditional request.
const REVALIDATION_GRACE: Duration = Duration::from_secs(300);

impl Freshness {
    /// How long the store should keep the entry: fresh time left, plus the stale windows or
    /// the time to revalidate it, whichever is longer.
    pub(crate) fn store_ttl(&self) -> Duration {
        let after_fresh = self
            .stale_while_revalidate
            .max(self.stale_if_error)
            .max(self.revalidation_grace);
        self.lifetime.saturating_sub(self.initial_age) + after_fresh
    }
}

/// Decides whether a response may be stored, and its freshness if so (RFC 9111 §3, §4.2).
pub(crate) fn storable(
    config: &PolicyConfig,
    request: &RequestFacts,
    response: &response::Parts,
    decided: &CacheDecision,
    response_time: SystemTime,
) -> Result<Freshness, BypassReason> {
    // A handler's own override, on top of what was decided for the request.
    let handler = response.extensions.get::<RouteOverride>().copied();
    let bypass = decided.bypass || handler == Some(RouteOverride::Bypass);
    let ttl = match handler {
        Some(RouteOverride::Ttl(ttl)) => Some(ttl),
        _ => decided.ttl,
    };
    let scope = match handler {
        Some(RouteOverride::PerIdentity) => Some(Scope::PerIdentity),
        Some(RouteOverride::Shared) => Some(Scope::Shared),
        _ => decided.scope,
    };
    if bypass {
        return Err(BypassReason::Route);
    }
    let status = response.status.as_u16();
    if response.status == StatusCode::PARTIAL_CONTENT {
        return Err(BypassReason::Range);
    }
    // Interim and 304 answers are never a response to store.
    if status < 200 || response.status == StatusCode::NOT_MODIFIED {
        return Err(BypassReason::Status);
    }
    let headers = &response.headers;
    if headers.contains_key(SET_COOKIE) {
        return Err(BypassReason::SetCookie);
    }
    // The first valid targeted field replaces `Cache-Control` and `Expires` (RFC 9213 §2.1).
    let targeted = config
        .targeted
        .iter()
        .find_map(|name| CacheControl::from_targeted(headers, name));
    let use_expires = targeted.is_none();
    let cc = targeted.unwrap_or_else(|| CacheControl::from_headers(headers, &CACHE_CONTROL));
    if cc.unreadable {
        return Err(BypassReason::Unreadable);
    }
    // `must-understand`: a status the cache does not know is not stored; one it knows is,
    // whatever `no-store` says (RFC 9111 §5.2.2.3).
    let understood = UNDERSTOOD.contains(&status);
    if cc.must_understand && !understood {
        return Err(BypassReason::Status);
    }
    if cc.no_store && !(cc.must_understand && understood) {
        return Err(BypassReason::NoStore);
    }
    if cc.private && !request.identity {
        return Err(BypassReason::Private);
    }
    let mut vary = vary_names(headers).ok_or(BypassReason::VaryStar)?;

    let (lifetime, source) = match ttl {
        Some(ttl) => (ttl, Source::Configured),
        None => freshness_lifetime(config, &cc, response, use_expires, response_time),
    };
    // Which statuses may be stored depends on whose word the freshness is (RFC 9111 §3,
    // §4.2.2): any final status on the origin's; on the application's, those it lists (or
    // a `public` one short of a server error); on the heuristic's, the heuristically
    // cacheable ones it lists, or a `public` one.
    let listed = config.cacheable_statuses.contains(&status);
    let status_storable = match source {
        Source::Explicit => true,
        Source::Configured => listed || (cc.public && status < 500),
        Source::Heuristic => (listed && HEURISTICALLY_CACHEABLE.contains(&status)) || cc.public,
    };
    if !status_storable {
        return Err(BypassReason::Status);
    }
    let lifetime = lifetime.min(config.max_ttl);
    let initial_age = initial_age(headers, request.request_time, response_time);
    // RFC 9111 §3.5: `public`, `s-maxage` and `must-revalidate` let an answer to a request
    // with credentials be shared, but only while it is fresh by the origin's own word (or
    // the route's): `default_ttl`, the heuristic and an expired or unreadable lifetime never
    // make one shareable.
    let explicit_freshness = matches!(source, Source::Explicit) || ttl.is_some();
    // A route declared the same for everyone counts as `public` with the origin's freshness.
    let declared_shared = scope == Some(Scope::Shared) && !cc.private;
    let explicitly_shareable = declared_shared
        || ((cc.public || cc.s_maxage.is_some() || cc.must_revalidate) && explicit_freshness && lifetime > initial_age);
    // A request with an identity counts as one with credentials. Its response is stored for
    // that identity alone unless it is explicitly shareable; a `private` one always is.
    let per_identity = request.identity && (cc.private || scope == Some(Scope::PerIdentity) || !explicitly_shareable);
    // Shared with requests that carry credentials only by that exception: never served past
    // that freshness (no stale windows, no `max-stale`), only revalidated.
    let shared_by_exception = (request.credentials || request.identity) && !per_identity;
    if request.credentials && !request.identity && !explicitly_shareable {
        return Err(BypassReason::Credentials);
    }
    if per_identity {
        vary.push(crate::key::IDENTITY);
    }
    // For a shared cache `s-maxage` also means `proxy-revalidate` (RFC 9111 §5.2.2.10).
    let revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || shared_by_exception;
    let may_serve_stale = !(revalidate || cc.no_cache);
    let window = |directive: Option<Duration>, default: Duration| {
        if may_serve_stale {
            directive.unwrap_or(default).min(config.max_ttl)
        } else {
            Duration::ZERO
        }
    };
    let freshness = Freshness {
        lifetime,
        initial_age,
        stale_while_revalidate: window(
            cc.stale_while_revalidate,
            decided.stale_while_revalidate.unwrap_or(config.stale_while_revalidate),
        ),
        stale_if_error: window(
            cc.stale_if_error,
            decided.stale_if_error.unwrap_or(config.stale_if_error),
        ),
        no_cache: cc.no_cache,
        must_revalidate: revalidate,
        shareable_with_credentials: explicitly_shareable,
        vary,
        revalidation_grace: if headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED) {
            REVALIDATION_GRACE.min(config.max_ttl)
        } else {
            Duration::ZERO
        },
    };
    if freshness.store_ttl().is_zero() {
        return Err(BypassReason::NotFresh);
    }
    Ok(freshness)
}

/// s-maxage > max-age > Expires − Date > configured default > heuristic (RFC 9111 §4.2.1-2).
fn freshness_lifetime(
    config: &PolicyConfig,
    cc: &CacheControl,
    response: &response::Parts,
    use_expires: bool,
    now: SystemTime,
) -> (Duration, Source) {
    let headers = &response.headers;
    if let Some(d) = cc.s_maxage.or(cc.max_age) {
        return (d, Source::Explicit);
    }
    let mut expires = headers.get_all(EXPIRES).iter().filter(|_| use_expires);
    if let Some(first) = expires.next() {
        // Several Expires lines, or one that is not an HTTP-date, mean "already expired".
        if expires.next().is_some() {
            return (Duration::ZERO, Source::Explicit);
        }
        let Some(expires) = http_date(first.as_bytes()) else {
            return (Duration::ZERO, Source::Explicit);
        };
        let date = headers.get(DATE).and_then(|d| http_date(d.as_bytes())).unwrap_or(now);
        return (expires.duration_since(date).unwrap_or(Duration::ZERO), Source::Explicit);
    }
    // A 404 from a typo'd URL or a 405 is kept briefly, not like a page.
    let configured = if response.status.is_client_error() {
        config.negative_ttl.min(config.default_ttl)
    } else {
        config.default_ttl
    };
    if !configured.is_zero() {
        return (configured, Source::Configured);
    }
    if !config.default_ttl.is_zero() {
        // `negative_ttl(ZERO)`: 4xx without freshness from the origin are not stored.
        return (Duration::ZERO, Source::Configured);
    }
    // Heuristic: a tenth of the time since Last-Modified, at most a day (RFC 9111 §4.2.2).
    let heuristic = headers
        .get(LAST_MODIFIED)
        .and_then(|lm| http_date(lm.as_bytes()))
        .and_then(|lm| now.duration_since(lm).ok())
        .map_or(Duration::ZERO, |since| (since / 10).min(Duration::from_secs(86_400)));
    (heuristic, Source::Heuristic)
}

/// The age the response already had when it arrived (RFC 9111 §4.2.3).
fn initial_age(headers: &HeaderMap, request_time: SystemTime, response_time: SystemTime) -> Duration {
    let date = headers.get(DATE).and_then(|d| http_date(d.as_bytes()));
    let apparent = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let age_value = headers.get(AGE).map_or(0, |v| age_seconds(v.as_bytes()));
    let delay = response_time.duration_since(request_time).unwrap_or_default();
    apparent.max(Duration::from_secs(age_value) + delay)
}

/// An `Age` value in seconds (RFC 9111 §5.1): of a list, the first member; an invalid value
/// (anything but digits) is ignored; huge values are capped at 2^31.
fn age_seconds(value: &[u8]) -> u64 {
    let first = value.split(|b| *b == b',').next().unwrap_or_default().trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    // All digits: only an overflow can fail, and that is "very old".
    first
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        .map_or(1 << 31, |n| n.min(1 << 31))
}

/// The field names in `Vary`, lower-cased, sorted and deduplicated; `None` for `Vary: *`.
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(VARY) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            if item == b"*" {
                return None;
            }
            // A name that is not a valid field name can never match a request header:
            // treat the response as varying on everything.
            names.push(HeaderName::from_bytes(item).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Parses an HTTP-date; anything else is `None`.
pub(crate) fn http_date(bytes: &[u8]) -> Option<SystemTime> {
    http_date::parse(bytes, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Response};

    fn config() -> PolicyConfig {
        PolicyConfig {
            default_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            cacheable_statuses: DEFAULT_CACHEABLE_STATUSES.to_vec(),
            targeted: Vec::new(),
        }
    }

    fn facts() -> RequestFacts {
        RequestFacts {
            credentials: false,
            identity: false,
            request_time: SystemTime::now(),
        }
    }

    fn decide(status: u16, headers: &[(&str, &[u8])]) -> Result<Freshness, BypassReason> {
        decide_with(&config(), facts(), status, headers)
    }

    fn decide_with(
        config: &PolicyConfig,
        facts: RequestFacts,
        status: u16,
        headers: &[(&str, &[u8])],
    ) -> Result<Freshness, BypassReason> {
        decide_full(config, facts, status, headers, None)
    }

    fn decide_full(
        config: &PolicyConfig,
        facts: RequestFacts,
        status: u16,
        headers: &[(&str, &[u8])],
        route: Option<RouteOverride>,
    ) -> Result<Freshness, BypassReason> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        let mut decided = CacheDecision::default();
        if let Some(route) = route {
            decided.apply(route);
        }
        storable(config, &facts, &parts, &decided, facts.request_time)
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires_beats_default() {
        let now = httpdate::fmt_http_date(SystemTime::now());
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
        let lifetime = |h: &[(&str, &[u8])]| decide(200, h).unwrap().lifetime;
        assert_eq!(
            lifetime(&[("cache-control", b"max-age=10, s-maxage=20")]),
            Duration::from_secs(20)
        );
        assert_eq!(
            lifetime(&[("cache-control", b"max-age=10"), ("expires", later.as_bytes())]),
            Duration::from_secs(10)
        );
        let from_expires = lifetime(&[("expires", later.as_bytes()), ("date", now.as_bytes())]);
        assert!((299..=300).contains(&from_expires.as_secs()), "{from_expires:?}");
        assert_eq!(lifetime(&[]), Duration::from_secs(60));
    }

    #[test]
    fn invalid_or_repeated_expires_is_already_expired() {
        assert_eq!(decide(200, &[("expires", b"0")]), Err(BypassReason::NotFresh));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(300));
        let mut builder = Response::builder();
        builder = builder
            .header("expires", later.as_str())
            .header("expires", later.as_str());
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        assert_eq!(
            storable(
                &config(),
                &facts(),
                &parts,
                &CacheDecision::default(),
                SystemTime::now()
            ),
            Err(BypassReason::NotFresh)
        );
    }

    #[test]
    fn heuristic_only_without_default_ttl() {
        let mut config = config();
        config.default_ttl = Duration::ZERO;
        let last_modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(1000));
        let f = decide_with(&config, facts(), 200, &[("last-modified", last_modified.as_bytes())]).unwrap();
        assert!((99..=100).contains(&f.lifetime.as_secs()));
        assert_eq!(decide_with(&config, facts(), 200, &[]), Err(BypassReason::NotFresh));
    }

    #[test]
    fn unsafe_responses_are_refused() {
        assert_eq!(
            decide(200, &[("cache-control", b"no-store")]),
            Err(BypassReason::NoStore)
        );
        assert_eq!(
            decide(200, &[("cache-control", b"private")]),
            Err(BypassReason::Private)
        );
        assert_eq!(decide(200, &[("set-cookie", b"a=b")]), Err(BypassReason::SetCookie));
        assert_eq!(decide(200, &[("vary", b"accept, *")]), Err(BypassReason::VaryStar));
        assert_eq!(decide(206, &[]), Err(BypassReason::Range));
        assert_eq!(decide(500, &[]), Err(BypassReason::Status));
        assert_eq!(decide(201, &[]), Err(BypassReason::Status));
        assert_eq!(
            decide(200, &[("cache-control", b"max-age=5, \xfe")]),
            Err(BypassReason::Unreadable)
        );
    }

    #[test]
    fn private_is_stored_only_per_identity() {
        let signed_in = RequestFacts {
            identity: true,
            ..facts()
        };
        let f = decide_with(&config(), signed_in, 200, &[("cache-control", b"private, max-age=5")]).unwrap();
        assert!(f.vary.contains(&crate::key::IDENTITY));
        assert_eq!(
            decide_with(&config(), facts(), 200, &[("cache-control", b"private, max-age=5")]),
            Err(BypassReason::Private)
        );
    }

    #[test]
    fn the_response_chooses_the_scope_of_an_answer_to_an_identity() {
        let signed_in = RequestFacts {
            identity: true,
            ..facts()
        };
        let scope = |facts: RequestFacts, cc: &[u8], route: Option<RouteOverride>| {
            let headers = [("cache-control", cc)];
            decide_full(&config(), facts, 200, &headers, route).map(|f| f.vary.contains(&crate::key::IDENTITY))
        };
        // Explicitly shareable: one entry for everyone.
        assert_eq!(scope(signed_in, b"public, max-age=60", None), Ok(false));
        assert_eq!(scope(signed_in, b"s-maxage=60", None), Ok(false));
        // Anything else, and `private` always: per identity.
        assert_eq!(scope(signed_in, b"max-age=60", None), Ok(true));
        assert_eq!(scope(signed_in, b"", None), Ok(true));
        assert_eq!(
            scope(signed_in, b"private, max-age=60", Some(RouteOverride::Shared)),
            Ok(true)
        );
        // `public` needs the origin's freshness: `default_ttl` does not make it shareable.
        assert_eq!(scope(signed_in, b"public", None), Ok(true));
        // The route forces either scope.
        assert_eq!(
            scope(signed_in, b"public, max-age=60", Some(RouteOverride::PerIdentity)),
            Ok(true)
        );
        assert_eq!(scope(signed_in, b"max-age=60", Some(RouteOverride::Shared)), Ok(false));
        // Requests without an identity: never per identity.
        assert_eq!(
            scope(facts(), b"max-age=60", Some(RouteOverride::PerIdentity)),
            Ok(false)
        );
        let creds = RequestFacts {
            credentials: true,
            ..facts()
        };
        assert_eq!(scope(creds, b"max-age=60", None), Err(BypassReason::Credentials));
        assert_eq!(
            scope(creds, b"private, max-age=60", Some(RouteOverride::Shared)),
            Err(BypassReason::Private)
        );
    }

    #[test]
    fn credentials_need_an_explicitly_shareable_response() {
        let creds = RequestFacts {
            credentials: true,
            ..facts()
        };
        assert_eq!(decide_with(&config(), creds, 200, &[]), Err(BypassReason::Credentials));
        for cc in [&b"public, max-age=5"[..], b"s-maxage=5", b"must-revalidate, max-age=5"] {
            let f = decide_with(&config(), creds, 200, &[("cache-control", cc)]).unwrap();
            assert!(f.shareable_with_credentials);
        }
        let expires = [
            ("cache-control", &b"public"[..]),
            ("expires", b"Thu, 01 Jan 2099 00:00:00 GMT"),
        ];
        assert!(
            decide_with(&config(), creds, 200, &expires)
                .unwrap()
                .shareable_with_credentials
        );
    }

    #[test]
    fn default_ttl_and_heuristic_never_share_a_credentialed_response() {
        let creds = RequestFacts {
            credentials: true,
            ..facts()
        };
        let last_modified = ("last-modified", &b"Thu, 01 Jan 2015 00:00:00 GMT"[..]);
        for cc in [&b"public"[..], b"must-revalidate"] {
            // `config()` has a default TTL; the heuristic would apply without one.
            assert_eq!(
                decide_with(&config(), creds, 200, &[("cache-control", cc)]),
                Err(BypassReason::Credentials)
            );
            let heuristic = PolicyConfig {
                default_ttl: Duration::ZERO,
                ..config()
            };
            assert_eq!(
                decide_with(&heuristic, creds, 200, &[("cache-control", cc), last_modified]),
                Err(BypassReason::Credentials)
            );
            // Without credentials the same response is stored, but not for credentialed reuse.
            let f = decide_with(&config(), facts(), 200, &[("cache-control", cc)]).unwrap();
            assert!(!f.shareable_with_credentials);
        }
    }

    #[test]
    fn age_uses_the_first_member_and_ignores_invalid_values() {
        for (value, seconds) in [
            (&b"60"[..], 60),
            (b" 60 ", 60),
            (b"60, 7200", 60),
            (b"0, old", 0),
            (b"0, 0", 0),
            (b"abc", 0),
            (b"-7200", 0),
            (b"7200.0", 0),
            (b"", 0),
            (b"99999999999999999999999", 1 << 31),
        ] {
            assert_eq!(age_seconds(value), seconds, "{:?}", String::from_utf8_lossy(value));
        }
        let f = decide(200, &[("cache-control", b"max-age=60"), ("age", b"abc")]).unwrap();
        assert_eq!(f.initial_age, Duration::ZERO, "an invalid Age is not read as very old");
    }

    #[test]
    fn the_time_the_origin_took_counts_in_the_initial_age() {
        // RFC 9111 §4.2.3: corrected initial age = Age + (response time - request time).
        let (parts, ()) = Response::builder()
            .header("cache-control", "max-age=60")
            .header("age", "5")
            .body(())
            .unwrap()
            .into_parts();
        let facts = facts();
        let answered = facts.request_time + Duration::from_secs(10);
        let f = storable(&config(), &facts, &parts, &CacheDecision::default(), answered).unwrap();
        assert_eq!(f.initial_age, Duration::from_secs(15));
        // Longer than the lifetime: stale on arrival, and nothing keeps it.
        let late = facts.request_time + Duration::from_secs(60);
        assert_eq!(
            storable(&config(), &facts, &parts, &CacheDecision::default(), late),
            Err(BypassReason::NotFresh)
        );
    }

    #[test]
    fn s_maxage_forbids_serving_stale() {
        for cc in [
            &b"s-maxage=1, stale-while-revalidate=60"[..],
            b"s-maxage=1, stale-if-error=60",
        ] {
            let f = decide(200, &[("cache-control", cc)]).unwrap();
            assert_eq!(f.stale_while_revalidate, Duration::ZERO);
            assert_eq!(f.stale_if_error, Duration::ZERO);
            assert!(f.must_revalidate);
        }
        let f = decide(200, &[("cache-control", b"max-age=1, stale-while-revalidate=60")]).unwrap();
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(60));
    }

    #[test]
    fn explicit_freshness_stores_any_final_status_and_configured_freshness_only_listed_ones() {
        for status in [403, 500, 502, 503, 418, 299] {
            assert!(decide(status, &[("cache-control", b"max-age=5")]).is_ok(), "{status}");
            assert!(
                decide(status, &[("expires", b"Thu, 01 Jan 2099 00:00:00 GMT")]).is_ok(),
                "{status}"
            );
            assert_eq!(
                decide(status, &[]),
                Err(BypassReason::Status),
                "{status} on default_ttl"
            );
        }
        assert!(
            decide(403, &[("cache-control", b"public")]).is_ok(),
            "public, on default_ttl"
        );
        assert_eq!(decide(503, &[("cache-control", b"public")]), Err(BypassReason::Status));
        for status in [100, 304] {
            assert_eq!(
                decide(status, &[("cache-control", b"max-age=5")]),
                Err(BypassReason::Status)
            );
        }
    }

    #[test]
    fn widening_the_list_never_lets_the_heuristic_store_an_error() {
        let heuristic = PolicyConfig {
            default_ttl: Duration::ZERO,
            cacheable_statuses: (200..600).collect(),
            ..config()
        };
        let last_modified = ("last-modified", &b"Thu, 01 Jan 2015 00:00:00 GMT"[..]);
        for status in [403, 502] {
            assert_eq!(
                decide_with(&heuristic, facts(), status, &[last_modified]),
                Err(BypassReason::Status)
            );
            let public = [last_modified, ("cache-control", b"public")];
            assert!(
                decide_with(&heuristic, facts(), status, &public).is_ok(),
                "{status} public"
            );
        }
        assert!(decide_with(&heuristic, facts(), 200, &[last_modified]).is_ok());
    }

    #[test]
    fn client_errors_get_the_short_negative_ttl() {
        assert_eq!(decide(404, &[]).unwrap().lifetime, Duration::from_secs(5));
        assert_eq!(decide(200, &[]).unwrap().lifetime, Duration::from_secs(60));
        assert_eq!(
            decide(404, &[("cache-control", b"max-age=600")]).unwrap().lifetime,
            Duration::from_secs(600),
            "the origin's own freshness wins"
        );
        let off = PolicyConfig {
            negative_ttl: Duration::ZERO,
            ..config()
        };
        assert_eq!(decide_with(&off, facts(), 404, &[]), Err(BypassReason::NotFresh));
        let short_default = PolicyConfig {
            default_ttl: Duration::from_secs(2),
            ..config()
        };
        assert_eq!(
            decide_with(&short_default, facts(), 405, &[]).unwrap().lifetime,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn must_understand_overrides_no_store_for_known_statuses() {
        let cc = ("cache-control", &b"must-understand, no-store, max-age=60"[..]);
        assert!(decide(200, &[cc]).is_ok());
        assert_eq!(
            decide(299, &[cc]),
            Err(BypassReason::Status),
            "an unknown status is not stored"
        );
        assert_eq!(
            decide(200, &[("cache-control", b"no-store, max-age=60")]),
            Err(BypassReason::NoStore)
        );
    }

    #[test]
    fn absurd_values_never_panic_and_are_capped() {
        let f = decide(200, &[("cache-control", b"max-age=99999999999999999999")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(86_400));
        assert_eq!(
            decide(200, &[("cache-control", b"max-age=-1")]),
            Err(BypassReason::NotFresh)
        );
        let f = decide(
            200,
            &[("age", b"garbage"), ("cache-control", b"max-age=60, stale-if-error=60")],
        )
        .unwrap();
        assert_eq!(
            f.initial_age,
            Duration::ZERO,
            "an invalid Age is ignored (RFC 9111 §5.1)"
        );
        assert!(decide(200, &[("vary", b"\xff")]).is_err());
    }

    #[test]
    fn must_revalidate_and_no_cache_forbid_stale_windows() {
        let mut config = config();
        config.stale_while_revalidate = Duration::from_secs(30);
        let f = decide_with(
            &config,
            facts(),
            200,
            &[("cache-control", b"max-age=5, must-revalidate")],
        )
        .unwrap();
        assert_eq!(f.stale_while_revalidate, Duration::ZERO);
        let f = decide_with(
            &config,
            facts(),
            200,
            &[("cache-control", b"no-cache"), ("etag", b"\"x\"")],
        )
        .unwrap();
        assert!(f.no_cache);
        let f = decide_with(&config, facts(), 200, &[("cache-control", b"max-age=5")]).unwrap();
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(30));
    }

    #[test]
    fn vary_names_are_normalised() {
        let (parts, ()) = Response::builder()
            .header("vary", "Accept-Encoding, accept-language")
            .header("vary", "ACCEPT-encoding")
            .body(())
            .unwrap()
            .into_parts();
        let names = vary_names(&parts.headers).unwrap();
        assert_eq!(
            names,
            vec![
                HeaderName::from_static("accept-encoding"),
                HeaderName::from_static("accept-language")
            ]
        );
    }

    #[test]
    fn route_override_sets_ttl_or_bypasses() {
        let (mut parts, ()) = Response::new(()).into_parts();
        let seven = CacheDecision::default().ttl(Duration::from_secs(7));
        let f = storable(&config(), &facts(), &parts, &seven, SystemTime::now());
        assert_eq!(f.unwrap().lifetime, Duration::from_secs(7));
        parts.extensions.insert(RouteOverride::Bypass);
        let f = storable(&config(), &facts(), &parts, &seven, SystemTime::now());
        assert_eq!(f, Err(BypassReason::Route));
    }

    #[test]
    fn a_decision_sets_the_stale_windows_the_response_does_not() {
        let (parts, ()) = Response::builder()
            .header("cache-control", "max-age=10")
            .body(())
            .unwrap()
            .into_parts();
        let decided = CacheDecision::default().stale_if_error(Duration::from_secs(90));
        let f = storable(&config(), &facts(), &parts, &decided, SystemTime::now()).unwrap();
        assert_eq!(f.stale_if_error, Duration::from_secs(90));
        let (parts, ()) = Response::builder()
            .header("cache-control", "max-age=10, stale-if-error=5")
            .body(())
            .unwrap()
            .into_parts();
        let f = storable(&config(), &facts(), &parts, &decided, SystemTime::now()).unwrap();
        assert_eq!(
            f.stale_if_error,
            Duration::from_secs(5),
            "the response's own directive wins"
        );
    }
}
