//! Tags: the names a response is invalidated by.
//!
//! A stored response is tagged by the `Cache-Groups` response header (RFC 9875), a
//! [`CacheTags`] response extension, the layer's tag function, and implicitly by its path.

use http::header::{HeaderMap, HeaderName};
use http::{request, Request};

use crate::structured_field::{self, BareItem, Item, Member};

/// `Cache-Groups` (RFC 9875 §2): the groups a response belongs to.
pub(crate) const CACHE_GROUPS: HeaderName = HeaderName::from_static("cache-groups");
/// `Cache-Group-Invalidation` (RFC 9875 §3): groups to invalidate after an unsafe request.
pub(crate) const CACHE_GROUP_INVALIDATION: HeaderName = HeaderName::from_static("cache-group-invalidation");

/// Tags for a response, returned by a handler as a response extension.
///
/// ```
/// use axum::{extract::Path, routing::get, Extension, Router};
/// use tower_response_cache::CacheTags;
///
/// async fn book(Path(id): Path<u32>) -> (Extension<CacheTags>, String) {
///     (Extension(CacheTags::new([format!("book:{id}"), "books".into()])), format!("book {id}"))
/// }
/// let app: Router = Router::new().route("/books/{id}", get(book));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(Vec<String>);

impl CacheTags {
    /// Tags from any list of strings.
    pub fn new<I>(tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        CacheTags(tags.into_iter().map(Into::into).collect())
    }

    /// Adds a tag.
    pub fn push(&mut self, tag: impl Into<String>) {
        self.0.push(tag.into());
    }

    /// The tags.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl<T: Into<String>> FromIterator<T> for CacheTags {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        CacheTags::new(iter)
    }
}

/// Bounds on the tags of one entry, so that bookkeeping stays bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TagLimits {
    pub(crate) max_tags: usize,
    pub(crate) max_len: usize,
}

impl Default for TagLimits {
    fn default() -> Self {
        // RFC 9875 asks caches to support at least 32 groups of 32 characters.
        TagLimits {
            max_tags: 64,
            max_len: 1024,
        }
    }
}

impl TagLimits {
    /// Sorts and deduplicates `tags`; `None` when they cannot all be recorded.
    pub(crate) fn admit(&self, mut tags: Vec<String>) -> Option<Vec<String>> {
        tags.sort_unstable();
        tags.dedup();
        // Control characters are refused: remote stores separate tags with newlines.
        let valid = |t: &String| !t.is_empty() && t.len() <= self.max_len && !t.chars().any(char::is_control);
        let fits = tags.len() <= self.max_tags && tags.iter().all(valid);
        fits.then_some(tags)
    }
}

/// A field that is not a valid RFC 9651 List, or that has members other than Strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MalformedList {
    /// The String members that could be read, if the field was a List at all.
    pub(crate) readable: Vec<String>,
}

/// Reads every `name` line as one structured-field List of Strings.
pub(crate) fn string_list(headers: &HeaderMap, name: &HeaderName) -> Result<Vec<String>, MalformedList> {
    let mut lines = headers.get_all(name).iter().peekable();
    if lines.peek().is_none() {
        return Ok(Vec::new());
    }
    // Field lines combine with commas (RFC 9651 §4.2).
    let mut combined = Vec::new();
    for (i, line) in lines.enumerate() {
        if i > 0 {
            combined.extend_from_slice(b", ");
        }
        combined.extend_from_slice(line.as_bytes());
    }
    let list = structured_field::parse_list(&combined).map_err(|_| MalformedList { readable: Vec::new() })?;
    let mut strings = Vec::with_capacity(list.len());
    let mut malformed = false;
    for member in list {
        match member {
            Member::Item(Item {
                bare_item: BareItem::String(s),
                ..
            }) => strings.push(s),
            _ => malformed = true,
        }
    }
    if malformed {
        Err(MalformedList { readable: strings })
    } else {
        Ok(strings)
    }
}

/// A copy of the request head without its extensions, kept for decisions taken once the
/// response is known (tag and invalidation functions).
pub(crate) fn detached(parts: &request::Parts) -> request::Parts {
    let mut copy = Request::new(()).into_parts().0;
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn list(values: &[&[u8]]) -> Result<Vec<String>, MalformedList> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_GROUPS, HeaderValue::from_bytes(v).unwrap());
        }
        string_list(&h, &CACHE_GROUPS)
    }

    #[test]
    fn reads_lists_of_strings_across_lines() {
        assert_eq!(
            list(&[b"\"book:1\", \"books\"", b"\"reviews\""]).unwrap(),
            ["book:1", "books", "reviews"]
        );
        assert_eq!(list(&[b"\"a\";p=1"]).unwrap(), ["a"]);
        assert_eq!(list(&[]).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn rejects_malformed_fields_and_members() {
        assert_eq!(list(&[b"\"unterminated"]), Err(MalformedList { readable: vec![] }));
        assert_eq!(list(&[b"books"]), Err(MalformedList { readable: vec![] }));
        assert_eq!(
            list(&[b"\"a\", 42, (\"b\")"]),
            Err(MalformedList {
                readable: vec!["a".into()]
            })
        );
        assert!(list(&[b"\"\xff\""]).is_err());
    }

    #[test]
    fn limits_bound_count_and_length() {
        let limits = TagLimits {
            max_tags: 2,
            max_len: 4,
        };
        assert_eq!(
            limits.admit(vec!["b".into(), "a".into(), "b".into()]),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(limits.admit(vec!["a".into(), "b".into(), "c".into()]), None);
        assert_eq!(limits.admit(vec!["toolong".into()]), None);
        assert_eq!(limits.admit(vec![String::new()]), None);
        assert_eq!(limits.admit(vec!["a\nb".into()]), None);
    }
}
