//! `CacheLayer`: configuration only, built once and shared by every service it makes.

use crate::coalesce::Coalescer;
use crate::key::KeyConfig;
use crate::metrics::{CacheStats, Counters};
use crate::policy::{PolicyConfig, RouteOverride, DEFAULT_CACHEABLE_STATUSES};
use crate::service::CacheService;
use crate::status::{CacheStatusHeader, CacheStatusName};
use crate::tags::TagLimits;
#[cfg(feature = "grpc")]
use crate::GrpcMethods;
use crate::{CacheKey, Store};
use http::{request, response, HeaderName, StatusCode};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

type IdentityFn = dyn Fn(&request::Parts) -> Option<String> + Send + Sync;
type RouteFn = dyn Fn(&request::Parts) -> Option<RouteOverride> + Send + Sync;
type TagFn = dyn Fn(&request::Parts, &response::Parts) -> Vec<String> + Send + Sync;

/// Everything a [`CacheService`] needs, shared by the layer and all its services.
pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) config: Config,
    pub(crate) counters: Counters,
    pub(crate) coalescer: Arc<Coalescer>,
}

pub(crate) struct Config {
    pub(crate) policy: PolicyConfig,
    pub(crate) key: KeyConfig,
    pub(crate) max_body_bytes: usize,
    pub(crate) identity: Option<Arc<IdentityFn>>,
    pub(crate) route_override: Option<Arc<RouteFn>>,
    pub(crate) tag_fn: Option<Arc<TagFn>>,
    pub(crate) tag_limits: TagLimits,
    pub(crate) honor_request_directives: bool,
    pub(crate) strip_targeted: bool,
    pub(crate) status_name: CacheStatusName,
    pub(crate) status_header: CacheStatusHeader,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) remember_uncacheable: Duration,
    pub(crate) origin_timeout: Option<Duration>,
    #[cfg(feature = "grpc")]
    pub(crate) grpc: Option<GrpcMethods>,
}

impl<St> Shared<St> {
    pub(crate) fn stats(&self) -> CacheStats {
        let mut stats = self.counters.snapshot();
        stats.waiting = self.coalescer.waiting();
        stats
    }
}

impl Config {
    pub(crate) fn identity(&self, parts: &request::Parts) -> Option<String> {
        self.identity.as_ref().and_then(|f| f(parts))
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Config");
        f.field("policy", &self.policy)
            .field("key", &self.key)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("identity", &self.identity.is_some())
            .field("route_override", &self.route_override.is_some())
            .field("tag_fn", &self.tag_fn.is_some())
            .field("tag_limits", &self.tag_limits)
            .field("honor_request_directives", &self.honor_request_directives)
            .field("strip_targeted", &self.strip_targeted)
            .field("status_name", &self.status_name)
            .field("status_header", &self.status_header)
            .field("coalesce", &self.coalesce)
            .field("coalesce_timeout", &self.coalesce_timeout)
            .field("remember_uncacheable", &self.remember_uncacheable)
            .field("origin_timeout", &self.origin_timeout);
        #[cfg(feature = "grpc")]
        f.field("grpc", &self.grpc);
        f.finish()
    }
}

/// A [`Layer`] that caches responses of the services it wraps in a [`Store`].
///
/// Safe by default: only GET and HEAD, never requests with credentials unless an identity
/// scopes the key, never `no-store`, `private`, `Set-Cookie`, `Vary: *`, ranges, oversize or
/// failed bodies. Every response carries a `Cache-Status` header saying what happened.
///
/// ```
/// use axum::{routing::get, Router};
/// use std::time::Duration;
/// use tower_response_cache::{CacheLayer, MemoryStore};
///
/// let store = MemoryStore::new();
/// let app: Router = Router::new()
///     .route("/books", get(|| async { "[]" }))
///     .layer(CacheLayer::builder(store.clone()).default_ttl(Duration::from_secs(30)).build());
/// ```
#[must_use]
pub struct CacheLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for CacheLayer<St> {
    fn clone(&self) -> Self {
        CacheLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for CacheLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<St: Store> CacheLayer<St> {
    /// A layer with the default configuration (see [`CacheLayerBuilder`]).
    pub fn new(store: St) -> Self {
        Self::builder(store).build()
    }

    /// Starts configuring a layer.
    pub fn builder(store: St) -> CacheLayerBuilder<St> {
        CacheLayerBuilder {
            store,
            config: Config {
                policy: PolicyConfig {
                    default_ttl: Duration::from_secs(60),
                    negative_ttl: Duration::from_secs(5),
                    max_ttl: Duration::from_secs(86_400),
                    stale_while_revalidate: Duration::ZERO,
                    stale_if_error: Duration::ZERO,
                    cacheable_statuses: DEFAULT_CACHEABLE_STATUSES.to_vec(),
                    targeted: Vec::new(),
                },
                key: KeyConfig::default(),
                max_body_bytes: 1 << 20,
                identity: None,
                route_override: None,
                tag_fn: None,
                tag_limits: TagLimits::default(),
                honor_request_directives: false,
                strip_targeted: false,
                status_name: CacheStatusName::default(),
                status_header: CacheStatusHeader::Always,
                coalesce: true,
                coalesce_timeout: Duration::from_secs(10),
                remember_uncacheable: Duration::from_secs(5),
                origin_timeout: None,
                #[cfg(feature = "grpc")]
                grpc: None,
            },
        }
    }

    /// Counters of hits, misses, stores and bypasses, shared by every clone of this layer
    /// and every service it made.
    pub fn stats(&self) -> CacheStats {
        self.shared.stats()
    }

    /// The store this layer reads and writes.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The primary key the layer would use for a request (identity included; `Vary`
    /// values, which depend on the response, are not).
    pub fn cache_key(&self, parts: &request::Parts) -> CacheKey {
        let config = &self.shared.config;
        config.key.primary(parts, config.identity(parts).as_deref())
    }
}

impl<S, St> Layer<S> for CacheLayer<St> {
    type Service = CacheService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.shared.clone())
    }
}

/// Configures a [`CacheLayer`]. Every setting has a safe default.
///
/// | setting | default |
/// |---|---|
/// | [`default_ttl`](Self::default_ttl) | 60 s |
/// | [`negative_ttl`](Self::negative_ttl) | 5 s |
/// | [`max_ttl`](Self::max_ttl) | 24 h |
/// | [`max_body_bytes`](Self::max_body_bytes) | 1 MiB |
/// | [`cacheable_statuses`](Self::cacheable_statuses) | 200 203 204 300 301 308 404 405 410 414 501 |
/// | [`key_host`](Self::key_host) | `true` |
/// | [`ignore_query_param`](Self::ignore_query_param) | none |
/// | [`vary_by_identity`](Self::vary_by_identity) | none: requests with credentials bypass |
/// | [`route_override`](Self::route_override) | none |
/// | [`tag_with`](Self::tag_with) | none (tags come from `Cache-Groups` and [`CacheTags`](crate::CacheTags)) |
/// | [`max_tags_per_entry`](Self::max_tags_per_entry) | 64 |
/// | [`max_tag_len`](Self::max_tag_len) | 1024 bytes |
/// | [`stale_while_revalidate`](Self::stale_while_revalidate) | 0 (only the response's directive) |
/// | [`stale_if_error`](Self::stale_if_error) | 0 (only the response's directive) |
/// | [`origin_timeout`](Self::origin_timeout) | none |
/// | [`coalesce`](Self::coalesce) | `true` |
/// | [`coalesce_timeout`](Self::coalesce_timeout) | 10 s |
/// | [`remember_uncacheable`](Self::remember_uncacheable) | 5 s |
/// | [`honor_request_directives`](Self::honor_request_directives) | `false` |
/// | [`cache_status_name`](Self::cache_status_name) | `tower-response-cache` |
/// | [`cache_status`](Self::cache_status) | [`CacheStatusHeader::Always`] |
/// | `grpc` (feature `grpc`) | none: every gRPC call passes through |
#[must_use]
pub struct CacheLayerBuilder<St> {
    store: St,
    config: Config,
}

impl<St: fmt::Debug> fmt::Debug for CacheLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl<St: Store> CacheLayerBuilder<St> {
    /// Freshness for responses that give none (no `s-maxage`, `max-age` or `Expires`).
    /// `Duration::ZERO` leaves them to the RFC 9111 heuristic (a tenth of the time since
    /// `Last-Modified`), and uncached without it.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.default_ttl = ttl;
        self
    }

    /// Freshness for 4xx responses that give none (a 404 for a mistyped URL, a 405 for a GET
    /// on a POST-only route): kept briefly, not like pages. Never longer than `default_ttl`;
    /// `Duration::ZERO` stores no 4xx without freshness from the origin. Default 5 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.negative_ttl = ttl;
        self
    }

    /// The longest freshness or stale window the layer grants, whatever the origin says.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.max_ttl = ttl;
        self
    }

    /// Bodies larger than this are streamed through, not stored.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// The status codes stored on freshness the layer supplies (`default_ttl`, a route's
    /// TTL) or the RFC heuristic, which applies only to heuristically cacheable statuses in
    /// this list (RFC 9110 §15.1), so widening it never lets the heuristic keep a 403 or a
    /// 502. A response with freshness from the origin (`max-age`, `s-maxage`, `Expires`) may
    /// be stored whatever its final status (RFC 9111 §3); 206 and 304 never are.
    pub fn cacheable_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.policy.cacheable_statuses = statuses
            .into_iter()
            .filter(|s| *s != StatusCode::PARTIAL_CONTENT)
            .map(|s| s.as_u16())
            .collect();
        self
    }

    /// Whether the host (and scheme, when the URI has one) is part of the key. Turn off only
    /// when every host serves the same content.
    pub fn key_host(mut self, include: bool) -> Self {
        self.config.key.include_host = include;
        self
    }

    /// Leaves a query parameter out of the key (a trailing `*` matches a prefix, as in
    /// `utm_*`). The inner service still receives it.
    pub fn ignore_query_param(mut self, name: impl Into<String>) -> Self {
        self.config.key.ignored_query_params.push(name.into());
        self
    }

    /// Scopes entries to the identity this function returns for a request. Requests with an
    /// identity may carry credentials and may be answered `private` responses, each from
    /// their own entries; the identity is hashed before it enters a key.
    pub fn vary_by_identity<F>(mut self, identity: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.identity = Some(Arc::new(identity));
        self
    }

    /// A per-route decision, taken before the request is looked up: bypass the cache, or
    /// fix the freshness lifetime. A handler can decide the same with a [`RouteOverride`]
    /// response extension.
    pub fn route_override<F>(mut self, route: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<RouteOverride> + Send + Sync + 'static,
    {
        self.config.route_override = Some(Arc::new(route));
        self
    }

    /// Adds tags to every stored response, from the request (without its extensions) and
    /// the response head. They join the tags of `Cache-Groups`, of a
    /// [`CacheTags`](crate::CacheTags) extension, and the implicit path tag.
    ///
    /// ```
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .tag_with(|req, _res| match req.uri.path().starts_with("/books") {
    ///         true => vec!["books".to_string()],
    ///         false => vec![],
    ///     })
    ///     .build();
    /// ```
    pub fn tag_with<F>(mut self, tags: F) -> Self
    where
        F: Fn(&request::Parts, &response::Parts) -> Vec<String> + Send + Sync + 'static,
    {
        self.config.tag_fn = Some(Arc::new(tags));
        self
    }

    /// The most tags one entry may carry (the implicit path tag included). A response with
    /// more is not stored, since some of its purges could not reach it.
    pub fn max_tags_per_entry(mut self, n: usize) -> Self {
        self.config.tag_limits.max_tags = n;
        self
    }

    /// The longest tag, in bytes. A response with a longer tag is not stored.
    pub fn max_tag_len(mut self, bytes: usize) -> Self {
        self.config.tag_limits.max_len = bytes;
        self
    }

    /// How long past its freshness a response may be served while one background request
    /// refreshes it, when the response gives no `stale-while-revalidate` directive
    /// (RFC 5861 §3). Never for `must-revalidate` or `no-cache` responses.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.policy.stale_while_revalidate = window;
        self
    }

    /// How long past its freshness a response may stand in for an origin that errors,
    /// times out (see [`origin_timeout`](Self::origin_timeout)) or answers 5xx, when the
    /// response gives no `stale-if-error` directive (RFC 5861 §4).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.policy.stale_if_error = window;
        self
    }

    /// How long to wait for the origin before answering from a stale entry that may stand
    /// in for errors. Without such an entry the layer waits as long as the origin takes.
    pub fn origin_timeout(mut self, timeout: Duration) -> Self {
        self.config.origin_timeout = Some(timeout);
        self
    }

    /// Whether concurrent misses on one key share one call to the inner service.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.config.coalesce = coalesce;
        self
    }

    /// The deadline of a flight: how long, from the start of a leader's call, misses on the
    /// same key wait for it. Past it they make their own call, the next miss leads a new
    /// flight, and a background refresh still running is abandoned.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.config.coalesce_timeout = timeout;
        self
    }

    /// How long a key whose response could not be shared skips coalescing, so that
    /// requests for it do not queue one behind another.
    pub fn remember_uncacheable(mut self, duration: Duration) -> Self {
        self.config.remember_uncacheable = duration;
        self
    }

    /// Honours the client's `Cache-Control` (`no-store`, `no-cache`, `max-age=0`,
    /// `only-if-cached`), as a shared cache in front of trusted clients would. Off by
    /// default so that clients cannot force traffic onto the origin.
    pub fn honor_request_directives(mut self, honor: bool) -> Self {
        self.config.honor_request_directives = honor;
        self
    }

    /// Targeted cache-control fields this cache obeys, in order of precedence (RFC 9213):
    /// when one of them is present and valid (a structured-field dictionary), it replaces
    /// `Cache-Control` and `Expires` for every decision of this cache. An invalid one is
    /// ignored. The fields are passed on downstream unless
    /// [`strip_targeted_cache_control`](Self::strip_targeted_cache_control) is set.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// // Browsers get `Cache-Control: no-cache`; this cache keeps the page 60 s.
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .targeted_cache_control([HeaderName::from_static("app-cache-control"), HeaderName::from_static("cdn-cache-control")])
    ///     .build();
    /// ```
    pub fn targeted_cache_control(mut self, fields: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config.policy.targeted = fields.into_iter().collect();
        self
    }

    /// Removes the targeted fields this cache obeys from the responses it sends (they are
    /// passed on by default, so that a cache further downstream can use them too).
    pub fn strip_targeted_cache_control(mut self, strip: bool) -> Self {
        self.config.strip_targeted = strip;
        self
    }

    /// The name this cache gives itself in `Cache-Status`: a [`CacheStatusName`], which
    /// only a structured-field token can be.
    ///
    /// ```
    /// use tower_response_cache::{CacheLayer, CacheStatusName, MemoryStore};
    ///
    /// let name = CacheStatusName::new("edge-eu-1").expect("a token");
    /// let layer = CacheLayer::builder(MemoryStore::new()).cache_status_name(name).build();
    /// ```
    pub fn cache_status_name(mut self, name: CacheStatusName) -> Self {
        self.config.status_name = name;
        self
    }

    /// When `Cache-Status` is sent (every response by default). The typed
    /// [`CacheOutcome`](crate::CacheOutcome) extension is on every response either way.
    /// See [`CacheStatusHeader`] for an example.
    pub fn cache_status(mut self, when: CacheStatusHeader) -> Self {
        self.config.status_header = when;
        self
    }

    /// Caches the unary gRPC methods that `methods` opts in (see the [`grpc`](crate::grpc)
    /// module). Other gRPC calls pass through, as they do without this setting.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_response_cache::{CacheLayer, GrpcMethod, GrpcMethods, MemoryStore};
    ///
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .grpc(
    ///         GrpcMethods::new()
    ///             .request_body(tonic::body::Body::new)
    ///             .method("/catalog.Catalog/GetBook", GrpcMethod::ttl(Duration::from_secs(30))),
    ///     )
    ///     .build();
    /// ```
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn grpc(mut self, methods: GrpcMethods) -> Self {
        if methods.caches_without_reader() {
            tracing::warn!(
                "GrpcMethods without request_body: cached gRPC methods will bypass the cache \
                 (tonic: `.request_body(tonic::body::Body::new)`)"
            );
        }
        self.config.grpc = Some(methods);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> CacheLayer<St> {
        let coalescer = Arc::new(Coalescer::new(
            self.config.remember_uncacheable,
            self.config.coalesce_timeout,
        ));
        let counters = Counters::new(self.config.status_name.as_str());
        CacheLayer {
            shared: Arc::new(Shared {
                store: self.store,
                config: self.config,
                counters,
                coalescer,
            }),
        }
    }
}
