//! `CacheLayer`: built once, it holds the configuration and the state its services share (the
//! store handle, counters, in-flight misses), so clones of the layer and every service it
//! makes count and coalesce together.

use crate::coalesce::Coalescer;
use crate::key::KeyConfig;
use crate::metrics::{CacheStats, Counters};
use crate::policy::{CacheDecision, CachePolicy, PolicyConfig, RouteOverride, DEFAULT_CACHEABLE_STATUSES};
use crate::refresh_ahead::{Ahead, RefreshAhead};
use crate::service::CacheService;
use crate::status::{CacheStatusHeader, CacheStatusName};
use crate::tags::TagLimits;
use crate::CdnTags;
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
    pub(crate) policy_hook: Option<Arc<dyn CachePolicy>>,
    pub(crate) tag_fn: Option<Arc<TagFn>>,
    pub(crate) tag_limits: TagLimits,
    pub(crate) honor_request_directives: bool,
    pub(crate) strip_targeted: bool,
    pub(crate) status_name: CacheStatusName,
    pub(crate) status_header: CacheStatusHeader,
    pub(crate) coalesce: bool,
    pub(crate) fleet_coalesce: bool,
    pub(crate) cdn_tags: Option<CdnTags>,
    pub(crate) refresh_ahead: Option<Ahead>,
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

    /// What the policy hook, then the route override, decide for a request.
    pub(crate) fn decide(&self, parts: &request::Parts) -> CacheDecision {
        let mut decided = match &self.policy_hook {
            Some(policy) => policy.decide(parts),
            None => CacheDecision::default(),
        };
        if let Some(route) = self.route_override.as_ref().and_then(|f| f(parts)) {
            decided.apply(route);
        }
        decided
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
            .field("policy_hook", &self.policy_hook.is_some())
            .field("tag_fn", &self.tag_fn.is_some())
            .field("tag_limits", &self.tag_limits)
            .field("honor_request_directives", &self.honor_request_directives)
            .field("strip_targeted", &self.strip_targeted)
            .field("status_name", &self.status_name)
            .field("status_header", &self.status_header)
            .field("coalesce", &self.coalesce)
            .field("fleet_coalesce", &self.fleet_coalesce)
            .field("cdn_tags", &self.cdn_tags)
            .field("refresh_ahead", &self.refresh_ahead)
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
/// Safe by default: only GET and HEAD, never answers to requests with credentials unless
/// they are explicitly shareable or stored for the caller's identity alone, never
/// `no-store`, `Set-Cookie`, `Vary: *`, ranges, oversize or failed bodies, `private` only per
/// identity. Every response carries a [`CacheOutcome`](crate::CacheOutcome) extension and, by
/// default, a `Cache-Status` header saying what happened.
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
                policy_hook: None,
                tag_fn: None,
                tag_limits: TagLimits::default(),
                honor_request_directives: false,
                strip_targeted: false,
                status_name: CacheStatusName::default(),
                status_header: CacheStatusHeader::Always,
                coalesce: true,
                fleet_coalesce: true,
                cdn_tags: None,
                refresh_ahead: None,
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

    /// The primary key the layer would use for a request. `Vary` values and the identity,
    /// which select among a resource's entries as its responses say, are not part of it.
    pub fn cache_key(&self, parts: &request::Parts) -> CacheKey {
        let config = &self.shared.config;
        config.key.primary(parts)
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
/// | [`vary_by_header`](Self::vary_by_header) | none |
/// | [`key_with`](Self::key_with) | none |
/// | [`vary_by_identity`](Self::vary_by_identity) | none: answers to requests with credentials are stored only if explicitly shareable |
/// | [`policy`](Self::policy) | [`DefaultPolicy`](crate::DefaultPolicy): decides nothing |
/// | [`route_override`](Self::route_override) | none |
/// | [`tag_with`](Self::tag_with) | none (tags come from `Cache-Groups` and [`CacheTags`](crate::CacheTags)) |
/// | [`max_tags_per_entry`](Self::max_tags_per_entry) | 64 |
/// | [`max_tag_len`](Self::max_tag_len) | 1024 bytes |
/// | [`stale_while_revalidate`](Self::stale_while_revalidate) | 0 (only the response's directive) |
/// | [`stale_if_error`](Self::stale_if_error) | 0 (only the response's directive) |
/// | [`origin_timeout`](Self::origin_timeout) | none |
/// | [`coalesce`](Self::coalesce) | `true` |
/// | [`cdn_tags`](Self::cdn_tags) | none: tags stay in the process |
/// | [`fleet_coalesce`](Self::fleet_coalesce) | `true` (for stores with leases: `RedisStore`, `TieredStore`) |
/// | [`coalesce_timeout`](Self::coalesce_timeout) | 10 s |
/// | [`remember_uncacheable`](Self::remember_uncacheable) | 5 s |
/// | [`honor_request_directives`](Self::honor_request_directives) | `false` |
/// | [`cache_status_name`](Self::cache_status_name) | `tower-response-cache` |
/// | [`cache_status`](Self::cache_status) | [`CacheStatusHeader::Always`] |
/// | `grpc` (feature `grpc`) | none: every gRPC call passes through |
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use std::time::Duration;
/// use tower_response_cache::{CacheLayer, CacheStatusHeader, CacheStatusName, MemoryStore, RouteOverride};
///
/// let layer = CacheLayer::builder(MemoryStore::new())
///     .default_ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(2))
///     .max_ttl(Duration::from_secs(3600))
///     .max_body_bytes(4 << 20)
///     .cacheable_statuses([StatusCode::OK, StatusCode::NOT_FOUND])
///     .key_host(false)
///     .ignore_query_param("utm_*")
///     // The caller's identity; the header is a stand-in for real auth.
///     .vary_by_identity(|req| req.headers.get("x-user-id")?.to_str().ok().map(String::from))
///     .route_override(|req| req.uri.path().starts_with("/admin").then_some(RouteOverride::Bypass))
///     .max_tags_per_entry(16)
///     .max_tag_len(256)
///     .stale_while_revalidate(Duration::from_secs(30))
///     .stale_if_error(Duration::from_secs(300))
///     .origin_timeout(Duration::from_secs(2))
///     .coalesce(true)
///     .coalesce_timeout(Duration::from_secs(5))
///     .remember_uncacheable(Duration::from_secs(10))
///     .honor_request_directives(false)
///     .strip_targeted_cache_control(true)
///     .cache_status_name(CacheStatusName::new("edge").expect("a token"))
///     .cache_status(CacheStatusHeader::Always)
///     .build();
/// assert_eq!(layer.stats().hits, 0);
/// ```
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
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.default_ttl = ttl;
        self
    }

    /// Freshness for 4xx responses that give none (a 404 for a mistyped URL, a 405 for a GET
    /// on a POST-only route): kept briefly, not like pages. Never longer than `default_ttl`;
    /// `Duration::ZERO` stores no 4xx without freshness from the origin. Default 5 s.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.negative_ttl = ttl;
        self
    }

    /// The longest freshness or stale window the layer grants, whatever the origin says.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.max_ttl = ttl;
        self
    }

    /// Bodies larger than this are streamed through, not stored.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// The status codes stored on freshness the layer supplies (`default_ttl`, a route's
    /// TTL) or the RFC heuristic, which applies only to heuristically cacheable statuses in
    /// this list (RFC 9110 §15.1), so widening it never lets the heuristic keep a 403 or a
    /// 502. A response with freshness from the origin (`max-age`, `s-maxage`, `Expires`) may
    /// be stored whatever its final status (RFC 9111 §3); 206 and 304 never are.
    ///
    /// See the [example](CacheLayerBuilder#example).
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
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn key_host(mut self, include: bool) -> Self {
        self.config.key.include_host = include;
        self
    }

    /// Leaves a query parameter out of the key (a trailing `*` matches a prefix, as in
    /// `utm_*`). The inner service still receives it.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn ignore_query_param(mut self, name: impl Into<String>) -> Self {
        self.config.key.ignored_query_params.push(name.into());
        self
    }

    /// Makes `name` part of every key, as `Vary: name` would for every response: requests
    /// that differ in it never share an entry (values normalised as `Vary` values are;
    /// `Authorization` and `Cookie` values hashed). Opted-in gRPC calls also have
    /// `GrpcMethods::vary_metadata`.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .vary_by_header(HeaderName::from_static("x-tenant"))
    ///     .build();
    /// ```
    pub fn vary_by_header(mut self, name: HeaderName) -> Self {
        self.config.key.headers.push(name);
        self
    }

    /// Adds the application's own component to every key: requests for which `component`
    /// returns different values never share an entry (`None` is a value too). It is hashed
    /// before it enters the key.
    ///
    /// ```
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// // A/B test cohorts get their own entries.
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .key_with(|request| {
    ///         let cookie = request.headers.get("cookie")?.to_str().ok()?;
    ///         cookie.split("; ").find_map(|c| c.strip_prefix("cohort=")).map(str::to_owned)
    ///     })
    ///     .build();
    /// ```
    pub fn key_with<F>(mut self, component: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.key.extra = Some(Arc::new(component));
        self
    }

    /// The identity of a request's caller (a user id from a session, a verified token's
    /// subject), or `None` for an anonymous request.
    ///
    /// A request with an identity counts as one with credentials, and the response chooses
    /// its scope, as a `Vary` would: an explicitly shareable one (`public` or `s-maxage`,
    /// fresh by the origin's word) is one entry for everyone, found by signed-in and
    /// anonymous requests alike; any other, and a `private` one always, is stored for that
    /// identity alone and found by it alone. A [`RouteOverride`] can force either scope. A
    /// request with credentials but no identity never gets a per-identity entry. The
    /// identity is hashed before it enters a key.
    ///
    /// ```
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// let layer = CacheLayer::builder(MemoryStore::new())
    ///     .vary_by_identity(|request| {
    ///         let cookie = request.headers.get("cookie")?.to_str().ok()?;
    ///         cookie.split("; ").find_map(|c| c.strip_prefix("user=")).map(str::to_owned)
    ///     })
    ///     .build();
    /// ```
    ///
    /// (The cookie here stands for a session the application verifies: an identity must be
    /// one a client cannot claim for someone else.) See also the
    /// [example](CacheLayerBuilder#example).
    pub fn vary_by_identity<F>(mut self, identity: F) -> Self
    where
        F: Fn(&request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.config.identity = Some(Arc::new(identity));
        self
    }

    /// The per-request policy hook: bypass, freshness, stale windows, extra tags and scope,
    /// decided before the request is looked up (see [`CachePolicy`] for an example).
    /// [`route_override`](Self::route_override), if set too, applies on top of it.
    pub fn policy(mut self, policy: impl CachePolicy) -> Self {
        self.config.policy_hook = Some(Arc::new(policy));
        self
    }

    /// A per-route decision, taken before the request is looked up: bypass the cache, fix
    /// the freshness lifetime, or force a scope. A handler can decide the same with a
    /// [`RouteOverride`] response extension. ([`policy`](Self::policy) decides more at once.)
    ///
    /// See the [example](CacheLayerBuilder#example).
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
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn max_tags_per_entry(mut self, n: usize) -> Self {
        self.config.tag_limits.max_tags = n;
        self
    }

    /// The longest tag, in bytes. A response with a longer tag is not stored.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn max_tag_len(mut self, bytes: usize) -> Self {
        self.config.tag_limits.max_len = bytes;
        self
    }

    /// How long past its freshness a response may be served while one background request
    /// refreshes it, when the response gives no `stale-while-revalidate` directive
    /// (RFC 5861 §3). Never for `must-revalidate` or `no-cache` responses.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.policy.stale_while_revalidate = window;
        self
    }

    /// How long past its freshness a response may stand in for an origin that errors,
    /// times out (see [`origin_timeout`](Self::origin_timeout)) or answers 5xx, when the
    /// response gives no `stale-if-error` directive (RFC 5861 §4).
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.policy.stale_if_error = window;
        self
    }

    /// How long to wait for the origin before answering from a stale entry that may stand
    /// in for errors. Without such an entry the layer waits as long as the origin takes.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn origin_timeout(mut self, timeout: Duration) -> Self {
        self.config.origin_timeout = Some(timeout);
        self
    }

    /// Whether concurrent misses on one key share one call to the inner service.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.config.coalesce = coalesce;
        self
    }

    /// Shows each stored response's tags to the CDN in front, in the header it reads
    /// ([`CdnTags::surrogate_key`], [`CdnTags::cache_tag`]), on the responses made from the
    /// entry (misses that store it, hits). Off by default. See [`CdnTags`].
    pub fn cdn_tags(mut self, tags: CdnTags) -> Self {
        self.config.cdn_tags = Some(tags);
        self
    }

    /// Refreshes entries read often shortly before they expire, in the background, so that
    /// hot keys do not miss (off by default). See [`RefreshAhead`].
    pub fn refresh_ahead(mut self, settings: RefreshAhead) -> Self {
        self.config.refresh_ahead = Some(Ahead::new(settings));
        self
    }

    /// Coalesces cold misses across the instances sharing the store too (default `true`):
    /// each process's leader takes a short lease in the store, so that one instance calls
    /// the origin and the others wait for the entry it stores, for at most the
    /// `coalesce_timeout`. Stores without leases (`MemoryStore`) are unaffected; a store
    /// that cannot answer (Redis down or slow) leaves each process to itself.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn fleet_coalesce(mut self, fleet: bool) -> Self {
        self.config.fleet_coalesce = fleet;
        self
    }

    /// The deadline of a flight: how long, from the start of a leader's call, misses on the
    /// same key wait for it. Past it they make their own call, the next miss leads a new
    /// flight, and a background refresh still running is abandoned.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.config.coalesce_timeout = timeout;
        self
    }

    /// How long a key whose response could not be shared skips coalescing, so that
    /// requests for it do not queue one behind another.
    ///
    /// See the [example](CacheLayerBuilder#example).
    pub fn remember_uncacheable(mut self, duration: Duration) -> Self {
        self.config.remember_uncacheable = duration;
        self
    }

    /// Honours the client's `Cache-Control` (`no-store`, `no-cache`, `max-age=0`,
    /// `only-if-cached`), as a shared cache in front of trusted clients would. Off by
    /// default so that clients cannot force traffic onto the origin.
    ///
    /// See the [example](CacheLayerBuilder#example).
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
    ///
    /// See the [example](CacheLayerBuilder#example).
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
    ///
    /// See the [example](CacheLayerBuilder#example).
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
