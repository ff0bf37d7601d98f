//! Cache keys: an unambiguous, length-prefixed encoding of the parts of a request that select
//! a response.
//!
//! Every field is written as a 4-byte length followed by its bytes, so no choice of path,
//! query or header value can make one request's fields read as another's. Identities and
//! credential-bearing header values are hashed (SHA-256) so that no secret is kept in a key.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE, HOST, PROXY_AUTHORIZATION};
use http::{request, Method};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// Format version: bump when the encoding changes so that old entries in a shared store miss.
const KEY_VERSION: &[u8] = b"trc2";

/// The selecting dimension of responses stored per identity: listed with the `Vary` names of
/// such an entry, its value is the request's identity (hashed), never a request header.
pub(crate) const IDENTITY: HeaderName = HeaderName::from_static("tower-response-cache-identity");

/// The key under which a response is stored.
///
/// Built by the layer from the request: method class (GET and HEAD share), host (unless
/// disabled), path, normalised query and, for responses with `Vary`, the values of the named
/// request headers, and for responses stored per identity, the identity (hashed). Cheap to
/// clone.
///
/// ```
/// use tower_response_cache::{CacheLayer, MemoryStore};
///
/// let layer = CacheLayer::builder(MemoryStore::new()).ignore_query_param("utm_*").build();
/// let key = |uri: &str| {
///     let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
///     layer.cache_key(&parts)
/// };
/// assert_eq!(key("/books?b=2&a=1&utm_source=x"), key("/books?a=1&b=2"));
/// assert_ne!(key("/books?a=1"), key("/books?a=2"));
/// ```
#[derive(Clone)]
pub struct CacheKey(Repr);

/// Keys up to this many bytes are held inline, so that building one for a lookup (a hit)
/// allocates nothing; longer ones share their bytes. (Stores keep the bytes, not the key.)
const INLINE: usize = 94;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Bytes),
}

impl CacheKey {
    /// The encoded key.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(bytes) => bytes,
        }
    }

    /// The encoded key as shared bytes (copied once if it was held inline), for a store to
    /// keep.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self.0 {
            Repr::Inline { len, bytes } => Bytes::copy_from_slice(&bytes[..usize::from(len)]),
            Repr::Shared(bytes) => bytes,
        }
    }

    /// Rebuilds a key from bytes produced by [`as_bytes`](Self::as_bytes) (for remote stores).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        CacheKey(Repr::Shared(bytes.into()))
    }
}

// Equality and hashing are the encoded bytes', however they are held.
impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// Where a primary key is written: a buffer on the stack when the key fits [`INLINE`]
/// (its exact length is known first), else a `Vec`.
trait KeyOut {
    fn put(&mut self, bytes: &[u8]);
    fn put_lowercased(&mut self, bytes: &[u8]);
}

impl KeyOut for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    #[inline]
    fn put_lowercased(&mut self, bytes: &[u8]) {
        self.extend(bytes.iter().map(u8::to_ascii_lowercase));
    }
}

/// A key of at most [`INLINE`] bytes being written.
struct InlineKey {
    len: usize,
    bytes: [u8; INLINE],
}

impl KeyOut for InlineKey {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
    #[inline]
    fn put_lowercased(&mut self, bytes: &[u8]) {
        let start = self.len;
        self.put(bytes);
        self.bytes[start..self.len].make_ascii_lowercase();
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys hold only hashes of secrets, but may be long: show a readable prefix.
        let text = String::from_utf8_lossy(self.as_bytes());
        let shown: String = text
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .take(96)
            .collect();
        write!(f, "CacheKey({shown:?})")
    }
}

/// Which parts of the request take part in the key.
#[derive(Clone)]
pub(crate) struct KeyConfig {
    pub(crate) include_host: bool,
    /// Query parameter names left out of the key; a trailing `*` matches a prefix.
    pub(crate) ignored_query_params: Vec<String>,
    /// Request headers every key includes (normalised as `Vary` values are).
    pub(crate) headers: Vec<HeaderName>,
    /// An application's own component of every key.
    pub(crate) extra: Option<Arc<KeyFn>>,
}

/// An application's own key component for a request.
pub(crate) type KeyFn = dyn Fn(&request::Parts) -> Option<String> + Send + Sync;

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("include_host", &self.include_host)
            .field("ignored_query_params", &self.ignored_query_params)
            .field("headers", &self.headers)
            .field("extra", &self.extra.is_some())
            .finish()
    }
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig {
            include_host: true,
            ignored_query_params: Vec::new(),
            headers: Vec::new(),
            extra: None,
        }
    }
}

impl KeyConfig {
    /// The primary key: method class, host, path and normalised query.
    pub(crate) fn primary(&self, parts: &request::Parts) -> CacheKey {
        let path = parts.uri.path();
        let pairs = match parts.uri.query() {
            None | Some("") => Vec::new(),
            Some(query) => self.query_pairs(query),
        };
        let method = method_class(&parts.method).as_bytes();
        let (scheme, host) = if self.include_host {
            let host = parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes())
                .or_else(|| parts.headers.get(HOST).map(|h| h.as_bytes()));
            (
                parts.uri.scheme_str().unwrap_or("").as_bytes(),
                host.unwrap_or_default(),
            )
        } else {
            (&b""[..], &b""[..])
        };
        let len = KEY_VERSION.len()
            + 1
            + [method, scheme, host, path.as_bytes()]
                .iter()
                .map(|f| 4 + f.len())
                .sum::<usize>()
            + 4
            + pairs.iter().map(|p| 4 + p.len()).sum::<usize>();
        let fields = PrimaryFields {
            method,
            scheme,
            host,
            path: path.as_bytes(),
            pairs: &pairs,
        };
        if len <= INLINE && self.headers.is_empty() && self.extra.is_none() {
            // The whole key, on the stack: a lookup allocates nothing for it.
            let mut key = InlineKey {
                len: 0,
                bytes: [0; INLINE],
            };
            write_primary(&mut key, &fields);
            return CacheKey(Repr::Inline {
                len: key.len as u8,
                bytes: key.bytes,
            });
        }
        // Sized for the common fields, so that a key without extras needs no reallocation.
        let mut buf = Vec::with_capacity(len);
        write_primary(&mut buf, &fields);
        if !self.headers.is_empty() {
            buf.push(b'H');
            write_fields(&mut buf, self.headers.iter(), self.headers.len(), &parts.headers);
        }
        if let Some(extra) = &self.extra {
            // Hashed: the component may hold anything (a tenant, a token's claims).
            match extra(parts) {
                Some(component) => {
                    buf.push(b'X');
                    buf.extend_from_slice(&Sha256::digest(component.as_bytes()));
                }
                None => buf.push(b'x'),
            }
        }
        CacheKey(Repr::Shared(buf.into()))
    }

    /// Non-empty `name=value` pairs, without ignored names, stably sorted by name so that
    /// repeated parameters keep their relative order (which applications may rely on).
    fn query_pairs<'q>(&self, query: &'q str) -> Vec<&'q str> {
        // Names split out once, not on every comparison.
        let mut pairs: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| (param_name(p), p))
            .filter(|(name, _)| !self.is_ignored(name))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        pairs.into_iter().map(|(_, pair)| pair).collect()
    }

    fn is_ignored(&self, name: &str) -> bool {
        self.ignored_query_params
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == pattern,
            })
    }
}

/// The implicit tag every entry carries: its path, so that a path can be purged in all its
/// variants (every query, host, identity and `Vary` value).
pub(crate) fn path_tag(path: &str) -> String {
    format!("path:{path}")
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The secondary key of one variant: the primary key plus the values of the `Vary` fields,
/// and, where [`IDENTITY`] is among them, the request's identity.
pub(crate) fn variant(
    primary: &CacheKey,
    names: &[HeaderName],
    headers: &HeaderMap,
    identity: Option<&str>,
) -> CacheKey {
    let mut buf = Vec::with_capacity(primary.as_bytes().len() + 16 * names.len() + 40);
    buf.extend_from_slice(primary.as_bytes());
    buf.push(b'V');
    let varied = names.iter().filter(|name| **name != IDENTITY);
    write_fields(
        &mut buf,
        varied,
        names.iter().filter(|name| **name != IDENTITY).count(),
        headers,
    );
    if names.contains(&IDENTITY) {
        buf.push(b'I');
        match identity {
            Some(id) => {
                buf.push(1);
                buf.extend_from_slice(&Sha256::digest(id.as_bytes()));
            }
            // No identity is never the same variant as any identity.
            None => buf.push(0),
        }
    }
    CacheKey(Repr::Shared(buf.into()))
}

/// The key one identity's concurrent misses on `primary` coalesce on, when that resource is
/// stored per identity (other identities' calls are their own).
pub(crate) fn personal(primary: &CacheKey, identity: &str) -> CacheKey {
    let mut buf = Vec::with_capacity(primary.as_bytes().len() + 33);
    buf.extend_from_slice(primary.as_bytes());
    buf.push(b'U');
    buf.extend_from_slice(&Sha256::digest(identity.as_bytes()));
    CacheKey(Repr::Shared(buf.into()))
}

#[cfg(feature = "grpc")]
/// The metadata that selects how a gRPC response is encoded: its framing, the compression
/// of the request message, and the compressions the client can read.
static GRPC_ENCODING_FIELDS: [HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    HeaderName::from_static("grpc-encoding"),
    HeaderName::from_static("grpc-accept-encoding"),
];

#[cfg(feature = "grpc")]
/// The key of an opted-in gRPC call: the primary key (method, host, path, identity), then a
/// hash of the request body (the length-prefixed message), the encoding metadata and the
/// metadata named in `vary`.
pub(crate) fn grpc_call(primary: &CacheKey, frame: &[u8], headers: &HeaderMap, vary: &[HeaderName]) -> CacheKey {
    let mut buf = Vec::with_capacity(primary.as_bytes().len() + 64 + 32 * (vary.len() + GRPC_ENCODING_FIELDS.len()));
    buf.extend_from_slice(primary.as_bytes());
    buf.push(b'G');
    buf.extend_from_slice(&Sha256::digest(frame));
    let names = GRPC_ENCODING_FIELDS.iter().chain(vary);
    write_fields(&mut buf, names, GRPC_ENCODING_FIELDS.len() + vary.len(), headers);
    CacheKey(Repr::Shared(buf.into()))
}

/// Writes the number of fields, then each field's name and (normalised) value or absence.
fn write_fields<'n>(buf: &mut Vec<u8>, names: impl Iterator<Item = &'n HeaderName>, count: usize, headers: &HeaderMap) {
    buf.extend_from_slice(&(count as u32).to_le_bytes());
    let mut value = Vec::new();
    for name in names {
        field(buf, name.as_str().as_bytes());
        value.clear();
        normalised_value(&mut value, name, headers);
        if headers.contains_key(name) {
            buf.push(1);
            if is_credential(name) {
                field(buf, &Sha256::digest(&value));
            } else {
                field(buf, &value);
            }
        } else {
            // An absent header is not the same variant as an empty one.
            buf.push(0);
        }
    }
}

/// A field's value as one list (RFC 9111 §4.1): field lines and their members joined with
/// `,`, whitespace around members and empty members dropped, so that neither the split into
/// lines nor the spacing selects another variant. `Accept-*` members are also compared as a
/// set of case-insensitive tokens: lower-cased, without spaces around `;` and `=`, sorted
/// (their order and case say nothing; q-values do, and are kept).
fn normalised_value(value: &mut Vec<u8>, name: &HeaderName, headers: &HeaderMap) {
    let members = headers
        .get_all(name)
        .iter()
        .flat_map(|line| list_members(line.as_bytes()))
        .map(<[u8]>::trim_ascii)
        .filter(|member| !member.is_empty());
    if !name.as_str().starts_with("accept") {
        // Written as they come: no allocation beyond the key's own buffer.
        for (i, member) in members.enumerate() {
            if i > 0 {
                value.push(b',');
            }
            value.extend_from_slice(member);
        }
        return;
    }
    let mut tokens: Vec<Vec<u8>> = members
        .map(|member| {
            member
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(u8::to_ascii_lowercase)
                .collect()
        })
        .collect();
    tokens.sort();
    tokens.dedup();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            value.push(b',');
        }
        value.extend_from_slice(token);
    }
}

/// The members of a comma-separated list; a comma inside a quoted string does not split.
fn list_members(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let text = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in text.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

fn is_credential(name: &HeaderName) -> bool {
    name == AUTHORIZATION || name == COOKIE || name == PROXY_AUTHORIZATION
}

/// Method class, scheme, host (lower-cased), path and query pairs, each length-prefixed.
fn write_primary(out: &mut impl KeyOut, fields: &PrimaryFields<'_>) {
    let field = |out: &mut _, bytes: &[u8]| {
        KeyOut::put(out, &(bytes.len() as u32).to_le_bytes());
        KeyOut::put(out, bytes);
    };
    out.put(KEY_VERSION);
    out.put(b"P");
    field(out, fields.method);
    field(out, fields.scheme);
    out.put(&(fields.host.len() as u32).to_le_bytes());
    out.put_lowercased(fields.host);
    field(out, fields.path);
    out.put(&(fields.pairs.len() as u32).to_le_bytes());
    for pair in fields.pairs {
        field(out, pair.as_bytes());
    }
}

/// What a primary key is made of, before the optional header and application components.
struct PrimaryFields<'a> {
    method: &'a [u8],
    scheme: &'a [u8],
    host: &'a [u8],
    path: &'a [u8],
    pairs: &'a [&'a str],
}

fn method_class(method: &Method) -> &str {
    if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    }
}

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use proptest::prelude::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn key(uri: &str) -> CacheKey {
        let config = KeyConfig {
            ignored_query_params: vec!["utm_*".into(), "fbclid".into()],
            ..KeyConfig::default()
        };
        config.primary(&parts("GET", uri, &[]))
    }

    #[test]
    fn inline_and_shared_keys_compare_and_hash_by_their_bytes() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let short = key("/a?x=1");
        assert!(matches!(short.0, Repr::Inline { .. }), "a short key is held inline");
        assert_eq!(short.clone().into_bytes(), short.as_bytes());
        let copy = CacheKey::from_bytes(short.as_bytes().to_vec());
        assert_eq!(short, copy);
        assert_eq!(hasher.hash_one(&short), hasher.hash_one(&copy));
        // Past the inline size, the same encoding, shared.
        let long_path = format!("/{}", "p".repeat(INLINE));
        let long = key(&long_path);
        assert!(matches!(long.0, Repr::Shared(_)));
        assert!(long.as_bytes().ends_with(&0u32.to_le_bytes()), "no query pairs");
        assert!(long
            .as_bytes()
            .windows(long_path.len())
            .any(|w| w == long_path.as_bytes()));
        // The encodings agree at the boundary: a key one byte longer than another's path.
        let (a, b) = (key("/ab"), key("/abc"));
        assert_eq!(a.as_bytes().len() + 1, b.as_bytes().len());
        let host = |h: &str| KeyConfig::default().primary(&parts("GET", "/a", &[("host", h)]));
        assert_eq!(host("A.Example"), host("a.example"), "inline keys lower-case the host");
    }

    #[test]
    fn get_and_head_share_other_methods_do_not() {
        let c = KeyConfig::default();
        assert_eq!(
            c.primary(&parts("GET", "/a", &[])),
            c.primary(&parts("HEAD", "/a", &[]))
        );
        assert_ne!(
            c.primary(&parts("GET", "/a", &[])),
            c.primary(&parts("POST", "/a", &[]))
        );
    }

    #[test]
    fn query_order_and_ignored_params_do_not_matter() {
        assert_eq!(key("/a?x=1&y=2"), key("/a?y=2&x=1"));
        assert_eq!(key("/a?x=1&utm_source=t&fbclid=9"), key("/a?x=1"));
        assert_eq!(key("/a?x=1&&"), key("/a?x=1"));
        assert_eq!(key("/a?"), key("/a"));
        // Repeated parameters keep their order: `x=1&x=2` is not `x=2&x=1`.
        assert_ne!(key("/a?x=1&x=2"), key("/a?x=2&x=1"));
        assert_ne!(key("/a?fbclidx=1"), key("/a"));
    }

    #[test]
    fn host_is_keyed_unless_disabled() {
        let c = KeyConfig::default();
        let a = c.primary(&parts("GET", "/a", &[("host", "a.example")]));
        let b = c.primary(&parts("GET", "/a", &[("host", "b.example")]));
        let upper = c.primary(&parts("GET", "/a", &[("host", "A.EXAMPLE")]));
        assert_ne!(a, b);
        assert_eq!(a, upper);
        let c = KeyConfig {
            include_host: false,
            ..KeyConfig::default()
        };
        assert_eq!(
            c.primary(&parts("GET", "/a", &[("host", "a.example")])),
            c.primary(&parts("GET", "/a", &[("host", "b.example")]))
        );
    }

    #[test]
    fn credentials_never_appear_in_keys() {
        let c = KeyConfig::default();
        let p = parts(
            "GET",
            "/a",
            &[("authorization", "Bearer s3cr3t-token"), ("cookie", "sid=hunter2")],
        );
        let primary = c.primary(&p);
        let names = [AUTHORIZATION, COOKIE, IDENTITY];
        let v = variant(&primary, &names, &p.headers, Some("user-secret-identity"));
        let text = String::from_utf8_lossy(v.as_bytes());
        for secret in ["s3cr3t-token", "hunter2", "user-secret-identity"] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }

    #[test]
    fn the_identity_dimension_is_the_identity_never_a_request_header() {
        let c = KeyConfig::default();
        let plain = parts("GET", "/me", &[]);
        let forged = parts("GET", "/me", &[("tower-response-cache-identity", "alice")]);
        let names = [IDENTITY];
        let key = |p: &request::Parts, id| variant(&c.primary(p), &names, &p.headers, id);
        assert_eq!(key(&plain, Some("alice")), key(&forged, Some("alice")));
        assert_eq!(
            key(&plain, None),
            key(&forged, None),
            "a header cannot claim an identity"
        );
        assert_ne!(key(&plain, None), key(&plain, Some("")));
        assert_ne!(key(&plain, Some("alice")), key(&plain, Some("bob")));
        assert_ne!(
            personal(&c.primary(&plain), "alice"),
            personal(&c.primary(&plain), "bob")
        );
    }

    #[test]
    fn variants_differ_by_value_and_by_presence() {
        let c = KeyConfig::default();
        let names = [HeaderName::from_static("accept-language")];
        let k = |h: &[(&str, &str)]| {
            let p = parts("GET", "/a", h);
            variant(&c.primary(&p), &names, &p.headers, None)
        };
        assert_ne!(k(&[("accept-language", "en")]), k(&[("accept-language", "fr")]));
        assert_ne!(k(&[("accept-language", "")]), k(&[]));
        assert_eq!(k(&[("accept-language", " en ")]), k(&[("accept-language", "en")]));
        assert_eq!(k(&[("x-other", "1")]), k(&[]));
    }

    #[test]
    fn vary_values_are_normalised_as_rfc_9111_section_4_1_allows() {
        let c = KeyConfig::default();
        let k = |name: &'static str, h: &[(&str, &str)]| {
            let p = parts("GET", "/a", h);
            variant(&c.primary(&p), &[HeaderName::from_static(name)], &p.headers, None)
        };
        let one = k("accept-language", &[("accept-language", "en, fr;q=0.5")]);
        for same in [
            &[("accept-language", "en,fr;q=0.5")][..],
            &[("accept-language", "en ,  fr;q=0.5 ,")],
            &[("accept-language", "en"), ("accept-language", "fr;q=0.5")],
            &[("accept-language", "fr; q=0.5, EN")],
        ] {
            assert_eq!(k("accept-language", same), one, "{same:?}");
        }
        assert_ne!(
            k("accept-language", &[("accept-language", "en, fr;q=0.9")]),
            one,
            "q-values count"
        );
        let gzip = k("accept-encoding", &[("accept-encoding", "gzip, br")]);
        assert_eq!(k("accept-encoding", &[("accept-encoding", "BR,gzip")]), gzip);
        // Other fields keep their order and case; only the list's spacing is ignored.
        let x = k("x-variant", &[("x-variant", "a, B")]);
        assert_eq!(k("x-variant", &[("x-variant", "a"), ("x-variant", "B")]), x);
        assert_ne!(k("x-variant", &[("x-variant", "B, a")]), x);
        assert_ne!(k("x-variant", &[("x-variant", "a, b")]), x);
        // A quoted comma is part of its member.
        assert_ne!(k("x-variant", &[("x-variant", "\"a,B\"")]), x);
    }

    #[test]
    #[cfg(feature = "grpc")]
    fn grpc_calls_are_keyed_by_message_encoding_and_varied_metadata() {
        let c = KeyConfig::default();
        let vary = [HeaderName::from_static("x-tenant")];
        let k = |message: &[u8], h: &[(&str, &str)]| {
            let mut headers = vec![("content-type", "application/grpc")];
            headers.extend_from_slice(h);
            let p = parts("POST", "/catalog.Catalog/GetBook", &headers);
            grpc_call(&c.primary(&p), message, &p.headers, &vary)
        };
        let base = k(b"\0\0\0\0\x01\x08", &[]);
        assert_eq!(
            base,
            k(b"\0\0\0\0\x01\x08", &[("grpc-timeout", "5S"), ("user-agent", "x")])
        );
        assert_ne!(base, k(b"\0\0\0\0\x01\x09", &[]));
        assert_ne!(base, k(b"\0\0\0\0\x01\x08", &[("grpc-encoding", "gzip")]));
        assert_ne!(base, k(b"\0\0\0\0\x01\x08", &[("grpc-accept-encoding", "gzip")]));
        assert_ne!(base, k(b"\0\0\0\0\x01\x08", &[("x-tenant", "a")]));
        assert_ne!(k(b"m", &[("x-tenant", "a")]), k(b"m", &[("x-tenant", "b")]));
        // A gRPC key never equals the plain key of the same path, nor one of its variants.
        let p = parts(
            "POST",
            "/catalog.Catalog/GetBook",
            &[("content-type", "application/grpc")],
        );
        let primary = c.primary(&p);
        assert_ne!(base, primary);
        assert_ne!(base, variant(&primary, &vary, &p.headers, None));
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9=&%/.-]{0,12}"
    }

    proptest! {
        /// Requests that differ in path, query, identity (where entries are per identity) or
        /// a varied header never share a key.
        #[test]
        fn distinct_requests_never_share_a_key(
            p1 in segment(), p2 in segment(), q1 in segment(), q2 in segment(),
            id1 in proptest::option::of("[a-z0-9|]{0,6}"), id2 in proptest::option::of("[a-z0-9|]{0,6}"),
            v1 in proptest::option::of("[a-z ,]{0,6}"), v2 in proptest::option::of("[a-z ,]{0,6}"),
        ) {
            let c = KeyConfig::default();
            let build = |p: &str, q: &str, id: &Option<String>, v: &Option<String>| {
                let uri = format!("/{p}?{q}");
                let headers: Vec<(&str, &str)> = v.iter().map(|v| ("accept", v.as_str())).collect();
                let parts = parts("GET", &uri, &headers);
                let primary = c.primary(&parts);
                let names = [http::header::ACCEPT, IDENTITY];
                (primary.clone(), variant(&primary, &names, &parts.headers, id.as_deref()), parts)
            };
            let (k1, var1, r1) = build(&p1, &q1, &id1, &v1);
            let (k2, var2, r2) = build(&p2, &q2, &id2, &v2);
            let same_path = r1.uri.path() == r2.uri.path();
            let same_query = c.query_pairs(r1.uri.query().unwrap_or("")) == c.query_pairs(r2.uri.query().unwrap_or(""));
            let same_primary = same_path && same_query;
            prop_assert_eq!(k1 == k2, same_primary);
            let norm = |v: &Option<String>| v.as_ref().map(|s| s.trim().to_string());
            prop_assert_eq!(var1 == var2, same_primary && id1 == id2 && norm(&v1) == norm(&v2));
        }

        /// Shuffling the query and adding ignored parameters never changes the key.
        #[test]
        fn equivalent_queries_share_a_key(
            params in proptest::collection::btree_map("[a-t]{1,4}", "[a-z0-9]{0,4}", 0..6),
            rotate in 0usize..6,
            utm in "[a-z0-9]{0,5}",
        ) {
            let mut pairs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let canonical = format!("/p?{}", pairs.join("&"));
            if !pairs.is_empty() {
                let r = rotate % pairs.len();
                pairs.rotate_left(r);
            }
            pairs.push(format!("utm_source={utm}"));
            let shuffled = format!("/p?{}", pairs.join("&"));
            prop_assert_eq!(key(&canonical), key(&shuffled));
        }
    }
}
