//! Building responses: from a stored entry (full, HEAD or 304), or forwarded as they came.

use super::lookup::Lookout;
use crate::entry::CachedResponse;
use crate::layer::Shared;
use crate::metrics::BypassReason;
use crate::policy;
use crate::status::{self, CacheOutcome, MissKind, Outcome};
use crate::CacheBody;
use http::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES,
    IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::{response, Extensions, HeaderName, Response, StatusCode};
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
    from_entry_with(shared, entry, lookout, outcome, age, Extensions::new())
}

/// [`from_entry`], the response's extensions starting as `extensions` (an emptied map that
/// saves allocating one).
pub(super) fn from_entry_with<St, B: Body>(
    shared: &Shared<St>,
    entry: &CachedResponse,
    lookout: &Lookout,
    outcome: Outcome,
    age: Option<Duration>,
    extensions: Extensions,
) -> Response<CacheBody<B>> {
    // Preconditions apply only to responses that would be 2xx (RFC 9110 §13.2.1).
    if entry.status.is_success() && not_modified(lookout, &entry.headers) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.extensions_mut() = extensions;
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
    *response.extensions_mut() = extensions;
    // Room for Cache-Status and Age, so that adding them does not grow the map. (Cloning
    // the stored map would then grow it: a clone has no room to spare.)
    let headers = response.headers_mut();
    headers.reserve(entry.headers.len() + 2);
    for (name, value) in &entry.headers {
        headers.append(name.clone(), value.clone());
    }
    if lookout.head && !entry.headers.contains_key(CONTENT_LENGTH) {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    if let Some(cdn) = &shared.config.cdn_tags {
        shared
            .counters
            .cdn_tags_dropped(cdn.write(response.headers_mut(), entry));
    }
    finish(shared, response, outcome, age)
}

/// A `206` or `416` answer to a `Range` request from a complete stored `200` (RFC 9110 §14),
/// or `None` when the full response is the answer: a matching conditional (its `304` comes
/// first), several ranges or an unreadable one (ignored, as §14.2 allows), or an `If-Range`
/// that does not match with a strong validator.
pub(super) fn ranged<St, B: Body>(
    shared: &Shared<St>,
    entry: &CachedResponse,
    lookout: &Lookout,
    request: &HeaderMap,
    outcome: Outcome,
    age: Duration,
) -> Option<Response<CacheBody<B>>> {
    if entry.status != StatusCode::OK || not_modified(lookout, &entry.headers) {
        return None;
    }
    if let Some(if_range) = request.get(IF_RANGE) {
        if !if_range_matches(if_range.as_bytes(), &entry.headers) {
            return None;
        }
    }
    let length = entry.body.len() as u64;
    let range = ByteRange::parse(request.get(RANGE)?.as_bytes())?;
    let Some((first, last)) = range.within(length) else {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        let unsatisfied = HeaderValue::try_from(format!("bytes */{length}")).ok()?;
        response.headers_mut().insert(CONTENT_RANGE, unsatisfied);
        return Some(finish(shared, response, outcome, Some(age)));
    };
    let body = if lookout.head {
        CacheBody::empty()
    } else {
        let part = entry.body.slice(first as usize..=last as usize);
        CacheBody::cached(part, None)
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        headers.append(name, value.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
    let content_range = HeaderValue::try_from(format!("bytes {first}-{last}/{length}")).ok()?;
    headers.insert(CONTENT_RANGE, content_range);
    Some(finish(shared, response, outcome, Some(age)))
}

/// One byte range of a `Range` field (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `first-last` or `first-` (`last` open).
    From(u64, Option<u64>),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// A single `bytes` range; `None` for several ranges, another unit, or bad syntax.
    fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let (unit, ranges) = text.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return None;
        }
        let mut specs = ranges.split(',').map(str::trim).filter(|s| !s.is_empty());
        let spec = specs.next()?;
        if specs.next().is_some() {
            return None;
        }
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (first, last) = spec.split_once('-')?;
        match (first.trim(), last.trim()) {
            ("", suffix) => Some(ByteRange::Suffix(number(suffix)?)),
            (first, "") => Some(ByteRange::From(number(first)?, None)),
            (first, last) => {
                let (first, last) = (number(first)?, number(last)?);
                (first <= last).then_some(ByteRange::From(first, Some(last)))
            }
        }
    }

    /// The first and last byte positions in a body of `length` bytes; `None` when the range
    /// is unsatisfiable there.
    fn within(self, length: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(first, _) if first >= length => None,
            ByteRange::From(first, last) => Some((first, last.map_or(length - 1, |l| l.min(length - 1)))),
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if length == 0 => None,
            ByteRange::Suffix(n) => Some((length - n.min(length), length - 1)),
        }
    }
}

/// `If-Range` (RFC 9110 §13.1.5): an entity tag matches by strong comparison; a date only
/// the stored `Last-Modified`, exactly, and only when that is a strong validator.
fn if_range_matches(if_range: &[u8], stored: &HeaderMap) -> bool {
    let if_range = if_range.trim_ascii();
    if if_range.starts_with(b"\"") || if_range.starts_with(b"W/") {
        // Strong comparison: neither tag may be weak.
        let etag = stored.get(ETAG).map(|v| v.as_bytes().trim_ascii());
        return if_range.starts_with(b"\"") && etag.is_some_and(|etag| etag.starts_with(b"\"") && etag == if_range);
    }
    let Some(date) = policy::http_date(if_range) else {
        return false;
    };
    let header_date = |name: HeaderName| stored.get(name).and_then(|v| policy::http_date(v.as_bytes()));
    let (Some(modified), Some(sent)) = (header_date(LAST_MODIFIED), header_date(DATE)) else {
        return false;
    };
    // RFC 9110 §8.8.2.2: for a cache, `Last-Modified` is strong when the stored `Date` is at
    // least one second after it (both are the origin's, taken as one clock's).
    let strong = sent.duration_since(modified).is_ok_and(|d| d >= Duration::from_secs(1));
    strong && date == modified
}

/// Whether the client's `If-None-Match` / `If-Modified-Since` match the entry (RFC 9110
/// §13.1.2, §13.1.3, §13.2.2): `If-None-Match` decides when present; `If-Modified-Since` is
/// judged against `Last-Modified`, or `Date` when the entry has none.
fn not_modified(lookout: &Lookout, headers: &HeaderMap) -> bool {
    if let Some(condition) = &lookout.if_none_match {
        // `*` matches any stored representation, with or without an `ETag` (RFC 9110
        // §13.1.2); a malformed list matches nothing.
        if condition.as_bytes().trim_ascii() == b"*" {
            return true;
        }
        let Some(etag) = headers.get(ETAG).and_then(|v| entity_tags(v.as_bytes()).next()) else {
            return false;
        };
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
    shared.counters.not_stored(reason);
    tracing::debug!(reason = reason.as_str(), "response not stored");
    let outcome = Outcome::miss(kind, parts.status.as_u16()).refused(reason);
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

/// Records the outcome as a response extension (`Cache-Status` is written from it once the
/// response leaves the service, if it is sent at all) and adds `Age` to a stored response.
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
    if let Some(age) = age {
        status::write_age(response.headers_mut(), age);
    }
    response.extensions_mut().insert(CacheOutcome::new(outcome, age));
    response
}

#[cfg(test)]
mod tests {
    use super::entity_tags;

    #[test]
    fn a_date_if_range_matches_only_a_strong_last_modified() {
        use super::if_range_matches;
        use http::header::{HeaderMap, DATE, ETAG, LAST_MODIFIED};
        let modified = "Sun, 06 Nov 1994 08:49:37 GMT";
        let stored = |date: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(LAST_MODIFIED, modified.parse().unwrap());
            headers.insert(ETAG, "\"e\"".parse().unwrap());
            if let Some(date) = date {
                headers.insert(DATE, date.parse().unwrap());
            }
            headers
        };
        let date = modified.as_bytes();
        assert!(if_range_matches(date, &stored(Some("Sun, 06 Nov 1994 08:49:38 GMT"))));
        assert!(if_range_matches(date, &stored(Some("Mon, 07 Nov 1994 08:49:37 GMT"))));
        // Date less than a second after Last-Modified, before it, or absent: weak.
        for weak in [Some(modified), Some("Sun, 06 Nov 1994 08:49:36 GMT"), None] {
            assert!(!if_range_matches(date, &stored(weak)), "Date: {weak:?}");
        }
        // Strong, but another date.
        let later = stored(Some("Mon, 07 Nov 1994 08:49:37 GMT"));
        assert!(!if_range_matches(b"Sun, 06 Nov 1994 08:49:38 GMT", &later));
        // An entity tag needs no Date.
        assert!(if_range_matches(b"\"e\"", &stored(None)));
    }

    #[test]
    fn entity_tags_may_hold_commas() {
        let tags: Vec<&[u8]> = entity_tags(br#"W/"a,b" , "c",,"d""#).collect();
        assert_eq!(tags, [&br#"W/"a,b""#[..], br#""c""#, br#""d""#]);
        assert_eq!(entity_tags(b"unquoted, \"x\"").count(), 0, "stops at a malformed tag");
        assert_eq!(entity_tags(br#""open"#).count(), 0);
    }

    #[test]
    fn byte_ranges_and_what_they_select() {
        use super::ByteRange::{self, From, Suffix};
        assert_eq!(ByteRange::parse(b"bytes=0-9"), Some(From(0, Some(9))));
        assert_eq!(ByteRange::parse(b"Bytes = 5-"), Some(From(5, None)));
        assert_eq!(ByteRange::parse(b"bytes=-3"), Some(Suffix(3)));
        for ignored in [
            &b"bytes=0-1,5-6"[..],
            b"items=0-1",
            b"bytes=5-1",
            b"bytes=a-b",
            b"bytes=-",
            b"0-1",
        ] {
            assert_eq!(
                ByteRange::parse(ignored),
                None,
                "{:?}",
                String::from_utf8_lossy(ignored)
            );
        }
        assert_eq!(From(0, Some(99)).within(10), Some((0, 9)));
        assert_eq!(From(10, None).within(10), None);
        assert_eq!(Suffix(3).within(10), Some((7, 9)));
        assert_eq!(Suffix(30).within(10), Some((0, 9)));
        assert_eq!(Suffix(0).within(10), None);
        assert_eq!(Suffix(1).within(0), None);
    }
}
