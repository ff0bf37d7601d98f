//! The per-request policy hook: what the application decides for a request before the cache
//! looks it up (bypass, freshness, stale windows, extra tags, scope).

use super::RouteOverride;
use http::request;
use std::time::Duration;

/// Decides, per request, what the layer's settings and the response's headers do not: set it
/// with [`CacheLayerBuilder::policy`](crate::CacheLayerBuilder::policy).
///
/// Implemented for closures `Fn(&http::request::Parts) -> CacheDecision`; [`DefaultPolicy`]
/// decides nothing. The safety rules still apply to what a policy decides: it never makes a
/// `no-store`, `Set-Cookie` or (for anyone but its identity) `private` response shareable.
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::{CacheDecision, CacheLayer, MemoryStore};
///
/// let layer = CacheLayer::builder(MemoryStore::new())
///     .policy(|request: &http::request::Parts| match request.uri.path() {
///         "/health" => CacheDecision::bypass(),
///         path if path.starts_with("/prices/") => CacheDecision::default()
///             .ttl(Duration::from_secs(5))
///             .stale_if_error(Duration::from_secs(60))
///             .tag("prices"),
///         path if path.starts_with("/me") => CacheDecision::default().per_identity(),
///         _ => CacheDecision::default(),
///     })
///     .build();
/// ```
pub trait CachePolicy: Send + Sync + 'static {
    /// What to do with `request` (its extensions included).
    fn decide(&self, request: &request::Parts) -> CacheDecision;
}

impl<F> CachePolicy for F
where
    F: Fn(&request::Parts) -> CacheDecision + Send + Sync + 'static,
{
    fn decide(&self, request: &request::Parts) -> CacheDecision {
        self(request)
    }
}

/// The policy that decides nothing: the layer's settings and the response's headers rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl CachePolicy for DefaultPolicy {
    fn decide(&self, _request: &request::Parts) -> CacheDecision {
        CacheDecision::default()
    }
}

/// Which entries a response to a request with an identity goes to (see
/// [`vary_by_identity`](crate::CacheLayerBuilder::vary_by_identity)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// For the identity alone, even if the response is marked shareable.
    PerIdentity,
    /// One entry for everyone, as if the response were `public` (never a `private` one).
    Shared,
}

/// What a [`CachePolicy`] decided for one request; the default decides nothing.
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::CacheDecision;
///
/// let decision = CacheDecision::default().ttl(Duration::from_secs(30)).tag("catalogue");
/// assert_eq!(decision.ttl_override(), Some(Duration::from_secs(30)));
/// assert!(!decision.bypasses());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct CacheDecision {
    pub(crate) bypass: bool,
    pub(crate) ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) tags: Vec<String>,
    pub(crate) scope: Option<Scope>,
}

impl CacheDecision {
    /// Neither serve from nor store in the cache.
    pub fn bypass() -> Self {
        CacheDecision {
            bypass: true,
            ..CacheDecision::default()
        }
    }

    /// This freshness lifetime instead of the one the headers give (counted as the origin's
    /// word, as [`RouteOverride::Ttl`] is).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// This `stale-while-revalidate` window instead of the layer's default (a directive in
    /// the response still takes precedence).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// This `stale-if-error` window instead of the layer's default (a directive in the
    /// response still takes precedence).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Adds a tag to the stored response.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Stores the answer to a request with an identity for that identity alone.
    pub fn per_identity(mut self) -> Self {
        self.scope = Some(Scope::PerIdentity);
        self
    }

    /// Stores the answer to a request with an identity (or credentials) as one entry for
    /// everyone: the response is the same whoever asks.
    pub fn shared(mut self) -> Self {
        self.scope = Some(Scope::Shared);
        self
    }

    /// Whether the request bypasses the cache.
    pub fn bypasses(&self) -> bool {
        self.bypass
    }

    /// The freshness lifetime decided, if any.
    pub fn ttl_override(&self) -> Option<Duration> {
        self.ttl
    }

    /// The tags added.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The scope decided, if any.
    pub fn scope(&self) -> Option<Scope> {
        self.scope
    }

    /// Applies a [`RouteOverride`] on top of this decision.
    pub(crate) fn apply(&mut self, route: RouteOverride) {
        match route {
            RouteOverride::Bypass => self.bypass = true,
            RouteOverride::Ttl(ttl) => self.ttl = Some(ttl),
            RouteOverride::PerIdentity => self.scope = Some(Scope::PerIdentity),
            RouteOverride::Shared => self.scope = Some(Scope::Shared),
        }
    }
}
