//! What a store keeps: a complete response with the facts needed to judge its age.

mod codec;

pub use codec::DecodeError;

use crate::policy::Freshness;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, AGE, CONNECTION, TRANSFER_ENCODING, UPGRADE};
use http::{response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One value in a [`Store`](crate::Store).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Entry {
    /// A stored response.
    Response(Arc<CachedResponse>),
    /// The first level of a two-level `Vary` lookup: the field names whose request values
    /// select the variant, stored under the primary key.
    Variants(Arc<[HeaderName]>),
}

impl Entry {
    /// Bytes this entry holds, for stores that bound their memory.
    pub fn weight(&self) -> usize {
        match self {
            Entry::Response(r) => r.weight(),
            Entry::Variants(names) => names.iter().map(|n| n.as_str().len() + 16).sum(),
        }
    }
}

/// A complete, storable response: status, headers (hop-by-hop fields removed), body,
/// trailers, tags and the times that give its age and freshness.
#[derive(Debug, Clone)]
pub struct CachedResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) tags: Vec<String>,
    pub(crate) vary: Vec<HeaderName>,
    /// When the request that produced this response started: purges after it win.
    pub(crate) request_time: SystemTime,
    pub(crate) response_time: SystemTime,
    pub(crate) initial_age: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) no_cache: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) shareable_with_credentials: bool,
}

/// Headers a cache must not store or forward from storage (RFC 9110 §7.6.1), plus `Age`,
/// which the cache computes itself.
fn is_hop_by_hop(name: &HeaderName, connection_listed: &[Vec<u8>]) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == AGE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection" | "te" | "trailer")
        || connection_listed
            .iter()
            .any(|n| n.as_slice() == name.as_str().as_bytes())
}

impl CachedResponse {
    pub(crate) fn new(
        parts: &response::Parts,
        body: Bytes,
        trailers: Option<HeaderMap>,
        freshness: Freshness,
        tags: Vec<String>,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Self {
        let connection_listed: Vec<Vec<u8>> = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|n| n.trim_ascii().to_ascii_lowercase())
            .collect();
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name, &connection_listed) {
                headers.append(name.clone(), value.clone());
            }
        }
        CachedResponse {
            status: parts.status,
            headers,
            body,
            trailers,
            tags,
            vary: freshness.vary,
            request_time,
            response_time,
            initial_age: freshness.initial_age,
            lifetime: freshness.lifetime,
            stale_while_revalidate: freshness.stale_while_revalidate,
            stale_if_error: freshness.stale_if_error,
            no_cache: freshness.no_cache,
            must_revalidate: freshness.must_revalidate,
            shareable_with_credentials: freshness.shareable_with_credentials,
        }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The stored headers (without hop-by-hop fields).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
    /// The complete body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// The trailers, if the response had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }
    /// The tags this entry is invalidated by.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    /// When the request that produced this response started. A purge of one of the entry's
    /// tags at or after this instant invalidates it.
    pub fn request_time(&self) -> SystemTime {
        self.request_time
    }

    /// How long past its freshness the entry may be served while one refresh runs.
    pub fn stale_while_revalidate(&self) -> Duration {
        self.stale_while_revalidate
    }
    /// How long past its freshness the entry may stand in for a failing origin.
    pub fn stale_if_error(&self) -> Duration {
        self.stale_if_error
    }
    /// The response said `must-revalidate` or `proxy-revalidate`: never served stale.
    pub fn must_revalidate(&self) -> bool {
        self.must_revalidate
    }

    /// The entry's current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Time left before the entry turns stale; zero once stale.
    pub fn ttl(&self, now: SystemTime) -> Duration {
        self.lifetime.saturating_sub(self.age(now))
    }

    /// Fresh and servable without asking the origin.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.is_fresh_at(self.age(now))
    }

    /// [`is_fresh`](Self::is_fresh), at an age read already.
    pub(crate) fn is_fresh_at(&self, age: Duration) -> bool {
        !self.no_cache && age < self.lifetime
    }

    /// Approximate bytes held: body, headers, trailers, tags and a fixed overhead.
    pub fn weight(&self) -> usize {
        const OVERHEAD: usize = 256;
        let map = |h: &HeaderMap| h.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum::<usize>();
        OVERHEAD
            + self.body.len()
            + map(&self.headers)
            + self.trailers.as_ref().map_or(0, map)
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.vary.len() * 24
    }
}

#[cfg(any(test, feature = "test-util"))]
pub(crate) mod testing {
    //! Entries for unit tests and the store conformance suite.
    use super::*;

    /// A fresh 200 response with `body`, `tags` and a lifetime of `ttl`, whose request
    /// started now.
    pub(crate) fn response(body: &'static str, tags: &[&str], ttl: Duration) -> CachedResponse {
        started_at(crate::store::request_clock(), body, tags, ttl)
    }

    /// Like [`response`], for a request that started at `started`.
    /// Plain freshness: `ttl`, no stale windows, no flags.
    pub(crate) fn fresh_for(ttl: Duration) -> Freshness {
        Freshness {
            lifetime: ttl,
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            no_cache: false,
            must_revalidate: false,
            shareable_with_credentials: false,
            vary: Vec::new(),
            revalidation_grace: Duration::ZERO,
        }
    }

    pub(crate) fn started_at(started: SystemTime, body: &'static str, tags: &[&str], ttl: Duration) -> CachedResponse {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts
            .headers
            .insert("x-conformance", http::HeaderValue::from_static("1"));
        let now = SystemTime::now().max(started);
        let freshness = fresh_for(ttl);
        let tags = tags.iter().map(|t| t.to_string()).collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        CachedResponse::new(
            &parts,
            Bytes::from_static(body.as_bytes()),
            Some(trailers),
            freshness,
            tags,
            started,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let (parts, ()) = http::Response::builder()
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("transfer-encoding", "chunked")
            .header("age", "10")
            .header("etag", "\"a\"")
            .body(())
            .unwrap()
            .into_parts();
        let mut r = testing::response("x", &[], Duration::from_secs(1));
        r = CachedResponse::new(
            &parts,
            r.body.clone(),
            None,
            testing::fresh_for(r.lifetime),
            Vec::new(),
            r.request_time,
            r.response_time,
        );
        let names: Vec<&str> = r.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, vec!["etag"]);
    }

    #[test]
    fn age_and_freshness_follow_the_clock() {
        let r = testing::response("x", &[], Duration::from_secs(10));
        let t = r.response_time;
        assert!(r.is_fresh(t));
        assert_eq!(r.ttl(t + Duration::from_secs(4)), Duration::from_secs(6));
        assert!(!r.is_fresh(t + Duration::from_secs(10)));
        // A clock that goes backwards never makes an entry younger than its initial age.
        assert_eq!(r.age(t - Duration::from_secs(5)), Duration::ZERO);
    }
}
