//! Tags for the cache in front: an entry's tags on the responses made from it, in the header a
//! CDN reads, so that a purge forwarded to the CDN (see `store::PurgeForwarding`) finds what
//! the CDN stored.

use crate::key::IDENTITY;
use crate::store::CachedResponse;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Which header carries an entry's tags to the CDN in front, and how. Off unless set with
/// [`CacheLayerBuilder::cdn_tags`](crate::CacheLayerBuilder::cdn_tags).
///
/// The implicit path tag (`path:/…`) and the tags of entries stored for one identity are never
/// exposed unless [`include_internal`](Self::include_internal) asks. A tag that cannot stand
/// in the header (the separator or a non-visible character in it), or that would take it past
/// [`max_bytes`](Self::max_bytes), is left out and counted
/// ([`CacheStats::cdn_tags_dropped`](crate::CacheStats::cdn_tags_dropped)); the header is never
/// broken. A `Cache-Groups` field (RFC 9875) the origin sent is passed through as it is.
///
/// ```
/// use tower_response_cache::{CacheLayer, CdnTags, MemoryStore};
///
/// // Fastly and Varnish (xkey) read space-separated `Surrogate-Key`; Cloudflare reads
/// // comma-separated `Cache-Tag`.
/// let fastly = CacheLayer::builder(MemoryStore::new()).cdn_tags(CdnTags::surrogate_key()).build();
/// let cloudflare = CacheLayer::builder(MemoryStore::new())
///     .cdn_tags(CdnTags::cache_tag().max_bytes(8 << 10))
///     .build();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct CdnTags {
    header: HeaderName,
    separator: u8,
    max_bytes: usize,
    internal: bool,
}

impl CdnTags {
    /// `Surrogate-Key: a b c` (Fastly, Varnish xkey); at most 16 KiB by default.
    pub fn surrogate_key() -> Self {
        CdnTags {
            header: HeaderName::from_static("surrogate-key"),
            separator: b' ',
            max_bytes: 16 << 10,
            internal: false,
        }
    }

    /// `Cache-Tag: a,b,c` (Cloudflare); at most 16 KiB by default.
    pub fn cache_tag() -> Self {
        CdnTags {
            header: HeaderName::from_static("cache-tag"),
            separator: b',',
            ..CdnTags::surrogate_key()
        }
    }

    /// Another header name, with the same format.
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// The longest the header's value may grow; tags past it are left out.
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Exposes the implicit path tag and the tags of per-identity entries too.
    pub fn include_internal(mut self, include: bool) -> Self {
        self.internal = include;
        self
    }

    /// Adds `entry`'s tags to `headers`; returns how many were left out.
    pub(crate) fn write(&self, headers: &mut HeaderMap, entry: &CachedResponse) -> u64 {
        self.write_tags(headers, &entry.tags, entry.vary.contains(&IDENTITY))
    }

    /// Adds the tags of an entry (stored for one identity if `per_identity`) to `headers`.
    pub(crate) fn write_tags(&self, headers: &mut HeaderMap, tags: &[String], per_identity: bool) -> u64 {
        if !self.internal && per_identity {
            return 0;
        }
        let mut value = Vec::new();
        let mut dropped = 0;
        for tag in tags {
            if !self.internal && tag.starts_with("path:") {
                continue;
            }
            let fits = !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_graphic() && b != self.separator)
                && value.len() + usize::from(!value.is_empty()) + tag.len() <= self.max_bytes;
            if !fits {
                dropped += 1;
                continue;
            }
            if !value.is_empty() {
                value.push(self.separator);
            }
            value.extend_from_slice(tag.as_bytes());
        }
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            if !value.is_empty() {
                headers.insert(self.header.clone(), value);
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(tags: &[&str]) -> CachedResponse {
        crate::entry::testing::response("x", tags, Duration::from_secs(60))
    }

    fn written(cdn: &CdnTags, entry: &CachedResponse) -> (Option<String>, u64) {
        let mut headers = HeaderMap::new();
        let dropped = cdn.write(&mut headers, entry);
        let value = headers.values().next().map(|v| v.to_str().unwrap().to_string());
        (value, dropped)
    }

    #[test]
    fn tags_are_written_in_the_cdns_format_without_internal_ones() {
        let e = entry(&["path:/books/1", "book:1", "books"]);
        assert_eq!(written(&CdnTags::surrogate_key(), &e), (Some("book:1 books".into()), 0));
        assert_eq!(written(&CdnTags::cache_tag(), &e), (Some("book:1,books".into()), 0));
        let all = CdnTags::surrogate_key().include_internal(true);
        assert_eq!(written(&all, &e), (Some("path:/books/1 book:1 books".into()), 0));
    }

    #[test]
    fn a_tag_that_cannot_stand_or_does_not_fit_is_dropped_and_counted() {
        let e = entry(&["a b", "ok", "caf\u{e9}", "", "last"]);
        assert_eq!(written(&CdnTags::surrogate_key(), &e), (Some("ok last".into()), 3));
        let comma = entry(&["a,b", "c d"]);
        assert_eq!(
            written(&CdnTags::cache_tag(), &comma),
            (None, 2),
            "and a space is not visible"
        );
        let long = entry(&["aaaa", "bbbb", "cccc"]);
        assert_eq!(
            written(&CdnTags::surrogate_key().max_bytes(9), &long),
            (Some("aaaa bbbb".into()), 1)
        );
    }

    #[test]
    fn per_identity_entries_expose_nothing() {
        let mut e = entry(&["user:alice"]);
        e.vary.push(IDENTITY);
        assert_eq!(written(&CdnTags::surrogate_key(), &e), (None, 0));
    }
}
