//! Which gRPC methods are cached or invalidate, and how to read their request messages.

use super::read::{Read, RequestReader};
use super::{is_grpc, single_message};
use crate::metrics::BypassReason;
use crate::CacheBody;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::request;
use http_body::Body;
use std::any::{type_name, Any};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub(crate) type TagsFn = dyn Fn(&GrpcRequest<'_>) -> Vec<String> + Send + Sync;
type Predicate = dyn Fn(&str) -> bool + Send + Sync;

/// The gRPC methods a [`CacheLayer`](crate::CacheLayer) caches and an
/// [`InvalidateLayer`](crate::InvalidateLayer) purges after (see the
/// [module docs](crate::grpc)).
///
/// Give the same value to both layers: each uses the methods that concern it. Rules are
/// tried in the order they were added; the first that matches a call decides. Calls that
/// match none pass through untouched.
///
/// | setting | default |
/// |---|---|
/// | [`method`](Self::method) / [`matching`](Self::matching) | none: every call passes through |
/// | [`request_body`](Self::request_body) | none: opted-in calls bypass, with a warning |
/// | [`max_message_bytes`](Self::max_message_bytes) | 64 KiB |
/// | [`vary_metadata`](Self::vary_metadata) | none |
#[derive(Clone)]
#[must_use]
pub struct GrpcMethods {
    rules: Vec<(Matcher, GrpcMethod)>,
    max_message_bytes: usize,
    vary_metadata: Vec<HeaderName>,
    /// A `RequestReader<B>` for the request body type `B` given to `request_body`.
    reader: Option<Arc<dyn Any + Send + Sync>>,
    reader_type: Option<&'static str>,
    warned: Arc<AtomicBool>,
}

#[derive(Clone)]
enum Matcher {
    Path(Box<str>),
    Predicate(Arc<Predicate>),
}

impl Matcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Path(exact) => **exact == *path,
            Matcher::Predicate(predicate) => predicate(path),
        }
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Path(path) => write!(f, "{path:?}"),
            Matcher::Predicate(_) => f.write_str("<predicate>"),
        }
    }
}

impl Default for GrpcMethods {
    fn default() -> Self {
        GrpcMethods {
            rules: Vec::new(),
            max_message_bytes: 64 << 10,
            vary_metadata: Vec::new(),
            reader: None,
            reader_type: None,
            warned: Arc::default(),
        }
    }
}

impl fmt::Debug for GrpcMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcMethods")
            .field("rules", &self.rules)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("vary_metadata", &self.vary_metadata)
            .field("request_body", &self.reader_type)
            .finish()
    }
}

impl GrpcMethods {
    /// No methods: every gRPC call passes through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opts in the method with this full path, such as `/catalog.Catalog/GetBook` (the
    /// request's URI path: package, service and method as the `.proto` spells them).
    pub fn method(mut self, path: impl Into<String>, method: GrpcMethod) -> Self {
        let path: String = path.into();
        if !path.starts_with('/') {
            tracing::warn!(path, "gRPC method paths start with '/': this rule never matches");
        }
        self.rules.push((Matcher::Path(path.into()), method));
        self
    }

    /// Opts in every method whose full path satisfies `predicate`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_response_cache::{GrpcMethod, GrpcMethods};
    ///
    /// let methods = GrpcMethods::new().matching(
    ///     |path| path.starts_with("/catalog.Catalog/Get"),
    ///     GrpcMethod::ttl(Duration::from_secs(10)),
    /// );
    /// ```
    ///
    /// Only unary methods should match. A stream is never stored, but an opted-in one is
    /// held back until it ends or shows a second message: a client or bidirectional stream
    /// that waits for a reply to its first message before sending more would wait forever.
    pub fn matching<F>(mut self, predicate: F, method: GrpcMethod) -> Self
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.rules.push((Matcher::Predicate(Arc::new(predicate)), method));
        self
    }

    /// How to give the inner service its request body back once the layer has read the
    /// message: a constructor of the request body type from a [`CacheBody`] that replays
    /// the bytes read (and the rest of the original body, when the layer stopped early).
    ///
    /// For tonic, `tonic::body::Body::new`; for axum, `axum::body::Body::new`. The layers'
    /// `Service` impls take any request body, so this is how they learn to read one: if it
    /// is not set, or set for another type than the requests have, opted-in calls bypass the
    /// cache with a warning, and mutations purge without their message.
    pub fn request_body<B, F>(mut self, rebuild: F) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Send,
        F: Fn(CacheBody<B>) -> B + Send + Sync + 'static,
    {
        self.reader = Some(Arc::new(RequestReader::new(rebuild)));
        self.reader_type = Some(type_name::<B>());
        self
    }

    /// The largest request message read for a key, in bytes (prefix included); larger
    /// requests are forwarded intact and bypass the cache. Default 64 KiB.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Request metadata whose values select different responses, such as `x-tenant`. A
    /// call without the metadata is a different entry from one with an empty value.
    /// Credentials (`authorization`, `cookie`) are hashed before they enter a key.
    ///
    /// # Panics
    ///
    /// If a name is not a valid metadata (HTTP header) name: a misspelt name would silently
    /// share entries between callers that must not share them.
    pub fn vary_metadata<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for name in names {
            let name = name.as_ref();
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .unwrap_or_else(|_| panic!("invalid gRPC metadata name {name:?} in vary_metadata"));
            self.vary_metadata.push(parsed);
        }
        self.vary_metadata.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self.vary_metadata.dedup();
        self
    }

    /// The rule for a gRPC call, if one matches.
    fn find(&self, parts: &request::Parts) -> Option<&GrpcMethod> {
        if !is_grpc(parts) {
            return None;
        }
        let path = parts.uri.path();
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.matches(path))
            .map(|(_, method)| method)
    }

    /// The opted-in cached method a call is for.
    pub(crate) fn cached(&self, parts: &request::Parts) -> Option<&GrpcMethod> {
        self.find(parts).filter(|m| m.cached_ttl().is_some())
    }

    /// The declared mutation a call is for.
    pub(crate) fn mutation(&self, parts: &request::Parts) -> Option<&GrpcMethod> {
        self.find(parts).filter(|m| m.cached_ttl().is_none())
    }

    pub(crate) fn vary(&self) -> &[HeaderName] {
        &self.vary_metadata
    }

    /// Whether some rule caches, and nothing tells how to read request bodies.
    pub(crate) fn caches_without_reader(&self) -> bool {
        self.reader.is_none() && self.rules.iter().any(|(_, m)| m.cached_ttl().is_some())
    }

    /// Reads the request message: the body to hand on and the whole body when it is one
    /// message within the bound; otherwise the body to hand on (the same bytes) and why it
    /// could not be used.
    pub(crate) async fn read_request<B: Send + 'static>(&self, body: B) -> Result<(B, Bytes), (B, BypassReason)> {
        let reader = self
            .reader
            .as_deref()
            .and_then(|reader| <dyn Any>::downcast_ref::<RequestReader<B>>(reader));
        let Some(reader) = reader else {
            self.warn_unreadable(type_name::<B>());
            return Err((body, BypassReason::RequestBody));
        };
        match reader.read(body, self.max_message_bytes).await {
            Read::Message { body, frame } if single_message(&frame).is_some() => Ok((body, frame)),
            // Shorter than its prefix says, empty, or with an unknown flag: not one message.
            Read::Message { body, .. } => Err((body, BypassReason::RequestBody)),
            Read::Unread { body, reason } => Err((body, reason)),
        }
    }

    fn warn_unreadable(&self, body_type: &'static str) {
        let configured = self.reader_type.unwrap_or("none");
        if self.warned.swap(true, Relaxed) {
            tracing::debug!(
                body_type,
                configured,
                "gRPC request body cannot be read; call not cached"
            );
        } else {
            tracing::warn!(
                body_type,
                configured,
                "gRPC request bodies of this type cannot be read: set GrpcMethods::request_body \
                 for it (tonic: `tonic::body::Body::new`); opted-in calls bypass the cache"
            );
        }
    }
}

/// What the layers do with one gRPC method: cache it for a while, or purge after it.
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::GrpcMethod;
///
/// let get_book = GrpcMethod::ttl(Duration::from_secs(30)).tags(|_request| vec!["books".into()]);
/// let add_review = GrpcMethod::mutation().tags(|_request| vec!["books".into()]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct GrpcMethod {
    /// `Some` for a cached method, `None` for a mutation.
    ttl: Option<Duration>,
    tags: Option<Arc<TagsFn>>,
}

impl fmt::Debug for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = match self.ttl {
            Some(_) => f.debug_struct("Cached"),
            None => f.debug_struct("Mutation"),
        };
        if let Some(ttl) = &self.ttl {
            debug.field("ttl", ttl);
        }
        debug.field("tags", &self.tags.is_some()).finish()
    }
}

impl GrpcMethod {
    /// A unary method whose successful responses are fresh for `ttl`, whatever `max-age`
    /// the response metadata gives (capped by the layer's `max_ttl`; stale windows come from
    /// the layer). A [`RouteOverride`](crate::RouteOverride) from the layer's hook or the
    /// response takes precedence, and `cache-control: no-store` still keeps a response out.
    pub fn ttl(ttl: Duration) -> Self {
        GrpcMethod {
            ttl: Some(ttl),
            tags: None,
        }
    }

    /// A unary method that changes data: after it succeeds, the
    /// [`InvalidateLayer`](crate::InvalidateLayer) purges the tags [`tags`](Self::tags)
    /// names. The cache never stores it.
    pub fn mutation() -> Self {
        GrpcMethod { ttl: None, tags: None }
    }

    /// Tags from the call: for a cached method, the tags its stored responses carry (with
    /// `cache-groups` response metadata, a [`CacheTags`](crate::CacheTags) extension and the
    /// implicit `path:` tag); for a mutation, the tags to purge once it succeeds.
    pub fn tags<F>(mut self, tags: F) -> Self
    where
        F: Fn(&GrpcRequest<'_>) -> Vec<String> + Send + Sync + 'static,
    {
        self.tags = Some(Arc::new(tags));
        self
    }

    pub(crate) fn cached_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    pub(crate) fn tags_fn(&self) -> Option<&Arc<TagsFn>> {
        self.tags.as_ref()
    }
}

/// A gRPC call as tag functions see it: its method, its metadata and its request message.
#[derive(Clone, Copy)]
pub struct GrpcRequest<'a> {
    parts: &'a request::Parts,
    message: Option<&'a [u8]>,
}

impl fmt::Debug for GrpcRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcRequest")
            .field("method", &self.method())
            .field("message_len", &self.message.map(<[u8]>::len))
            .finish_non_exhaustive()
    }
}

impl<'a> GrpcRequest<'a> {
    pub(crate) fn new(parts: &'a request::Parts, message: Option<&'a [u8]>) -> Self {
        GrpcRequest { parts, message }
    }

    /// The full method path, such as `/catalog.Catalog/GetBook`.
    pub fn method(&self) -> &'a str {
        self.parts.uri.path()
    }

    /// The request metadata (HTTP/2 headers).
    pub fn metadata(&self) -> &'a HeaderMap {
        &self.parts.headers
    }

    /// The encoded request message (protobuf bytes, without the gRPC length prefix), for
    /// `prost::Message::decode`. `None` when the client compressed it, or when it could not
    /// be read (a mutation whose request was too large, or no
    /// [`request_body`](GrpcMethods::request_body)): fall back to broader tags then.
    pub fn message(&self) -> Option<&'a [u8]> {
        self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::read::tests::{body_of, frame};
    use http::Request;

    fn call(path: &str) -> request::Parts {
        Request::post(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    fn methods() -> GrpcMethods {
        GrpcMethods::new()
            .method("/a.A/Get", GrpcMethod::ttl(Duration::from_secs(5)))
            .method("/a.A/Set", GrpcMethod::mutation())
            .matching(|p| p.starts_with("/a.A/"), GrpcMethod::ttl(Duration::from_secs(9)))
    }

    #[test]
    fn first_matching_rule_decides() {
        let m = methods();
        assert_eq!(
            m.cached(&call("/a.A/Get")).and_then(GrpcMethod::cached_ttl),
            Some(Duration::from_secs(5))
        );
        assert!(m.cached(&call("/a.A/Set")).is_none());
        assert!(m.mutation(&call("/a.A/Set")).is_some());
        assert_eq!(
            m.cached(&call("/a.A/List")).and_then(GrpcMethod::cached_ttl),
            Some(Duration::from_secs(9))
        );
        assert!(m.cached(&call("/b.B/Get")).is_none());
        let (mut not_grpc, ()) = Request::post("/a.A/Get").body(()).unwrap().into_parts();
        assert!(m.cached(&not_grpc).is_none());
        not_grpc
            .headers
            .insert("content-type", "application/grpc-web".parse().unwrap());
        assert!(m.cached(&not_grpc).is_none());
    }

    #[test]
    fn vary_metadata_is_normalised() {
        let m = GrpcMethods::new().vary_metadata(["X-Tenant", "x-tenant", "a-region"]);
        let names: Vec<&str> = m.vary().iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["a-region", "x-tenant"]);
    }

    #[test]
    #[should_panic(expected = "invalid gRPC metadata name")]
    fn invalid_metadata_names_are_refused() {
        let _ = GrpcMethods::new().vary_metadata(["x tenant"]);
    }

    #[tokio::test]
    async fn requests_are_read_only_for_the_configured_body_type() {
        type Full = http_body_util::Full<Bytes>;
        let message = frame(b"hello");
        let unconfigured = methods();
        let (body, reason) = unconfigured.read_request(body_of(&message)).await.unwrap_err();
        assert_eq!(reason, BypassReason::RequestBody);
        assert_eq!(
            crate::grpc::read::tests::read(body).await,
            message,
            "handed back intact"
        );

        let other_type = methods().request_body(|_: CacheBody<Full>| Full::default());
        assert!(other_type.read_request(body_of(&message)).await.is_err());

        let configured = methods().request_body(crate::grpc::read::tests::rebuild);
        let (body, frame) = configured.read_request(body_of(&message)).await.unwrap();
        assert_eq!(&frame[..], &message[..]);
        assert_eq!(crate::grpc::read::tests::read(body).await, message);
    }
}
