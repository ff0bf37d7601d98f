//! Building responses: from a stored entry (full, HEAD or 304), or forwarded as they came.

use super::lookup::Lookout;
use crate::entry::CachedResponse;
use crate::layer::Shared;
use crate::metrics::BypassReason;
use crate::policy;
use crate::status::{self, MissKind, Outcome};
use crate::CacheBody;
use http::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY,
};
use http::{response, Response, StatusCode};
use http_body::Body;
use std::time::Duration;

/// A response built from a stored entry: the full response, headers only for HEAD, or a
/// `304 Not Modified` when the client's conditional matches.
pub(super) fn from_entry<St, B: Body>(
    shared: &Shared<St>,
    entry: &CachedResponse,
    lookout: &Lookout,
    outcome: Outcome,
    age: Option<Duration>,
) -> Response<CacheBody<B>> {
    // Preconditions apply only to responses that would be 2xx (RFC 9110 §13.2.1).
    if entry.status.is_success() && not_modified(lookout, &entry.headers) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        // RFC 9110 §15.4.5: the fields a 200 would have carried that describe the selection.
        for field in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for value in entry.headers.get_all(&field) {
                headers.append(field.clone(), value.clone());
            }
        }
        return finish(shared, response, outcome, age);
    }
    let body = if lookout.head {
        CacheBody::empty()
    } else {
        CacheBody::cached(entry.body.clone(), entry.trailers.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    // Room for Cache-Status and Age, so that adding them does not grow the map.
    let headers = response.headers_mut();
    headers.reserve(entry.headers.len() + 2);
    for (name, value) in &entry.headers {
        headers.append(name, value.clone());
    }
    if lookout.head && !entry.headers.contains_key(CONTENT_LENGTH) {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    finish(shared, response, outcome, age)
}

/// Whether the client's `If-None-Match` / `If-Modified-Since` match the entry (RFC 9110 §13.2.2).
fn not_modified(lookout: &Lookout, headers: &HeaderMap) -> bool {
    if let Some(condition) = &lookout.if_none_match {
        let Some(etag) = headers.get(ETAG) else {
            return false;
        };
        return condition
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|candidate| candidate == b"*" || weak_tag(candidate) == weak_tag(etag.as_bytes()));
    }
    let Some(since) = lookout
        .if_modified_since
        .as_ref()
        .and_then(|v| policy::http_date(v.as_bytes()))
    else {
        return false;
    };
    headers
        .get(LAST_MODIFIED)
        .and_then(|v| policy::http_date(v.as_bytes()))
        .is_some_and(|modified| modified <= since)
}

/// The opaque part of an entity tag, for weak comparison.
fn weak_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A forwarded response the policy or the body kept out of the store.
pub(super) fn not_stored<St, B>(
    shared: &Shared<St>,
    parts: response::Parts,
    body: B,
    reason: BypassReason,
    kind: MissKind,
) -> Response<B> {
    shared.counters.bypass(reason);
    tracing::debug!(reason = reason.as_str(), "response not stored");
    let outcome = Outcome::miss(kind, parts.status.as_u16()).detail(reason.as_str());
    finish(shared, Response::from_parts(parts, body), outcome, None)
}

/// The inner service's response, body untouched.
pub(super) fn streamed<St, B: Body>(
    shared: &Shared<St>,
    response: Response<B>,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    finish(shared, response.map(CacheBody::streamed), outcome, None)
}

/// Adds `Cache-Status` (and `Age`), and records the outcome as a response extension.
pub(super) fn finish<St, B>(
    shared: &Shared<St>,
    mut response: Response<B>,
    outcome: Outcome,
    age: Option<Duration>,
) -> Response<B> {
    status::decorate(response.headers_mut(), &shared.config.status_name, outcome, age);
    response
}
