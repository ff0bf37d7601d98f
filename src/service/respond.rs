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

/// Whether the client's `If-None-Match` / `If-Modified-Since` match the entry (RFC 9110
/// §13.1.2, §13.1.3, §13.2.2): `If-None-Match` decides when present; `If-Modified-Since` is
/// judged against `Last-Modified`, or `Date` when the entry has none.
fn not_modified(lookout: &Lookout, headers: &HeaderMap) -> bool {
    if let Some(condition) = &lookout.if_none_match {
        let Some(etag) = headers.get(ETAG).and_then(|v| entity_tags(v.as_bytes()).next()) else {
            return false;
        };
        // `*` is a list of its own; a malformed list matches nothing.
        if condition.as_bytes().trim_ascii() == b"*" {
            return true;
        }
        return entity_tags(condition.as_bytes()).any(|candidate| weak_tag(candidate) == weak_tag(etag));
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
        .or_else(|| headers.get(DATE))
        .and_then(|v| policy::http_date(v.as_bytes()))
        .is_some_and(|modified| modified <= since)
}

/// The entity tags of a list (`W/"a,b", "c"`): a tag is quoted and may hold a comma, so the
/// list is read tag by tag, not split at commas. Reading stops at the first malformed one.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_ascii_start();
        while let Some(after) = rest.strip_prefix(b",") {
            rest = after.trim_ascii_start();
        }
        let start = rest;
        let quoted = rest.strip_prefix(b"W/").unwrap_or(rest).strip_prefix(b"\"")?;
        let end = quoted.iter().position(|b| *b == b'"')?;
        let tag_len = start.len() - quoted.len() + end + 1;
        let (tag, after) = start.split_at(tag_len);
        rest = after;
        Some(tag)
    })
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
    let config = &shared.config;
    if config.strip_targeted {
        for name in &config.policy.targeted {
            response.headers_mut().remove(name);
        }
    }
    status::decorate(response.headers_mut(), &config.status_name, outcome, age);
    response
}

#[cfg(test)]
mod tests {
    use super::entity_tags;

    #[test]
    fn entity_tags_may_hold_commas() {
        let tags: Vec<&[u8]> = entity_tags(br#"W/"a,b" , "c",,"d""#).collect();
        assert_eq!(tags, [&br#"W/"a,b""#[..], br#""c""#, br#""d""#]);
        assert_eq!(entity_tags(b"unquoted, \"x\"").count(), 0, "stops at a malformed tag");
        assert_eq!(entity_tags(br#""open"#).count(), 0);
    }
}
