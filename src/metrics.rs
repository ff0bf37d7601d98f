//! Counters shared by every clone of a layer, and the snapshot users read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a request was not answered from the cache, or its response was not stored.
///
/// The name ([`as_str`](Self::as_str)) appears as the `detail` of the `Cache-Status` header.
/// [`CacheStats::bypasses`] counts requests the cache did not look up, by reason, and
/// [`CacheStats::not_stored`] responses it did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BypassReason {
    /// The method is not GET or HEAD.
    Method,
    /// The request carried `Authorization` or `Cookie` and no identity scoped the key, and
    /// the response was not explicitly shareable (`public`, `s-maxage`, `must-revalidate`).
    Credentials,
    /// A `Range` request or a `206 Partial Content` response.
    Range,
    /// The request asked for `no-store` and request directives are honoured.
    RequestNoStore,
    /// A route override said so.
    Route,
    /// A HEAD request missed: its response has no body to store.
    Head,
    /// The response said `no-store`.
    NoStore,
    /// The response said `private` and the key was not scoped to an identity.
    Private,
    /// The response set a cookie.
    SetCookie,
    /// The response varies on `*`, or on a field name that cannot be read.
    VaryStar,
    /// The status code is not in the cacheable set.
    Status,
    /// The response had no freshness and no stale window: nothing to keep.
    NotFresh,
    /// The response's `Cache-Control` could not be read.
    Unreadable,
    /// The body was larger than `max_body_bytes` and was streamed through.
    BodyTooLarge,
    /// The body is a stream of events (`text/event-stream`) and was streamed through, or a
    /// gRPC request or response is not exactly one message.
    Streaming,
    /// The body ended in an error.
    BodyError,
    /// The store failed; the request went to the inner service.
    StoreError,
    /// The response's tags could not all be recorded (too many, too long, or a malformed
    /// `Cache-Groups` field); storing it could leave it unpurgeable.
    Tags,
    /// A gRPC request message was larger than the configured bound; it was forwarded intact.
    RequestTooLarge,
    /// A gRPC request message could not be read: no request body type configured for it
    /// (see [`GrpcMethods::request_body`](crate::GrpcMethods::request_body)), the body
    /// failed, or it is not a well-formed gRPC message.
    RequestBody,
    /// A gRPC response without `grpc-status: 0` in its trailers: an error, a trailers-only
    /// response, or not a gRPC response at all.
    GrpcStatus,
}

impl BypassReason {
    const ALL: [BypassReason; 21] = [
        Self::Method,
        Self::Credentials,
        Self::Range,
        Self::RequestNoStore,
        Self::Route,
        Self::Head,
        Self::NoStore,
        Self::Private,
        Self::SetCookie,
        Self::VaryStar,
        Self::Status,
        Self::NotFresh,
        Self::Unreadable,
        Self::BodyTooLarge,
        Self::Streaming,
        Self::BodyError,
        Self::StoreError,
        Self::Tags,
        Self::RequestTooLarge,
        Self::RequestBody,
        Self::GrpcStatus,
    ];

    /// The short name used in `Cache-Status` details and in stats.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Credentials => "credentials",
            Self::Range => "range",
            Self::RequestNoStore => "request-no-store",
            Self::Route => "route",
            Self::Head => "head",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary",
            Self::Status => "status",
            Self::NotFresh => "not-fresh",
            Self::Unreadable => "unreadable",
            Self::BodyTooLarge => "too-large",
            Self::Streaming => "streaming",
            Self::BodyError => "body-error",
            Self::StoreError => "store-error",
            Self::Tags => "tags",
            Self::RequestTooLarge => "request-too-large",
            Self::RequestBody => "request-body",
            Self::GrpcStatus => "grpc-status",
        }
    }
}

impl std::fmt::Display for BypassReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a layer's counters, from [`CacheLayer::stats`](crate::CacheLayer::stats).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use axum::{body::Body, routing::get, Router};
/// use http_body_util::BodyExt;
/// use tower::ServiceExt;
/// use tower_response_cache::{CacheLayer, MemoryStore};
///
/// let layer = CacheLayer::new(MemoryStore::new());
/// let app = Router::new().route("/", get(|| async { "hello" })).layer(layer.clone());
/// for _ in 0..2 {
///     let request = http::Request::get("/").body(Body::empty()).unwrap();
///     let response = app.clone().oneshot(request).await.unwrap();
///     response.into_body().collect().await.unwrap();
/// }
/// let stats = layer.stats();
/// assert_eq!((stats.misses, stats.stores, stats.hits), (1, 1, 1));
/// # });
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered from a fresh entry.
    pub hits: u64,
    /// Requests that looked up the cache and went to the inner service.
    pub misses: u64,
    /// Misses whose entry had been invalidated by a purge.
    pub invalidated_misses: u64,
    /// Responses written to the store.
    pub stores: u64,
    /// Requests the cache did not look up (a method other than GET/HEAD, a route override,
    /// a request's `no-store`...), by reason.
    pub bypasses: BTreeMap<BypassReason, u64>,
    /// Responses from the inner service that were not stored (`no-store`, `private`, a
    /// status that may not be stored, a body too large, a store error...), by reason.
    pub not_stored: BTreeMap<BypassReason, u64>,
    /// Store operations that failed (the request was served anyway).
    pub store_errors: u64,
    /// Requests answered from a stale entry (stale-while-revalidate, soft purge, or
    /// stale-if-error).
    pub stale_hits: u64,
    /// Misses that waited for another request's call to the inner service instead of
    /// making their own.
    pub coalesced: u64,
    /// Requests waiting for another request's call right now (a gauge, not a counter).
    pub waiting: u64,
    /// Waiters answered with their leader's origin failure (a 5xx, or `502` for an error)
    /// instead of each calling a failing origin.
    pub failures_shared: u64,
    /// Refreshes run in the background while a stale entry was served.
    pub background_refreshes: u64,
    /// Conditional requests that revalidated a stored entry (the origin answered 304).
    pub revalidations: u64,
    /// Origin errors, timeouts and 5xx answers replaced by a stale entry.
    pub errors_absorbed: u64,
}

impl CacheStats {
    /// Every request not looked up, whatever its reason.
    pub fn total_bypasses(&self) -> u64 {
        self.bypasses.values().sum()
    }

    /// Every response not stored, whatever its reason.
    pub fn total_not_stored(&self) -> u64 {
        self.not_stored.values().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidated_misses: AtomicU64,
    stores: AtomicU64,
    store_errors: AtomicU64,
    pub(crate) stale_hits: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) failures_shared: AtomicU64,
    pub(crate) background_refreshes: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) errors_absorbed: AtomicU64,
    bypasses: [AtomicU64; BypassReason::ALL.len()],
    not_stored: [AtomicU64; BypassReason::ALL.len()],
}

impl Counters {
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }
    pub(crate) fn miss(&self, invalidated: bool) {
        self.misses.fetch_add(1, Relaxed);
        if invalidated {
            self.invalidated_misses.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn stored(&self) {
        self.stores.fetch_add(1, Relaxed);
    }
    pub(crate) fn store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
    /// A request not looked up.
    pub(crate) fn bypass(&self, reason: BypassReason) {
        self.bypasses[reason as usize].fetch_add(1, Relaxed);
    }
    /// A response not stored.
    pub(crate) fn not_stored(&self, reason: BypassReason) {
        self.not_stored[reason as usize].fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            invalidated_misses: self.invalidated_misses.load(Relaxed),
            stores: self.stores.load(Relaxed),
            store_errors: self.store_errors.load(Relaxed),
            stale_hits: self.stale_hits.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            waiting: 0,
            failures_shared: self.failures_shared.load(Relaxed),
            background_refreshes: self.background_refreshes.load(Relaxed),
            revalidations: self.revalidations.load(Relaxed),
            errors_absorbed: self.errors_absorbed.load(Relaxed),
            bypasses: by_reason(&self.bypasses),
            not_stored: by_reason(&self.not_stored),
        }
    }
}

fn by_reason(counts: &[AtomicU64; BypassReason::ALL.len()]) -> BTreeMap<BypassReason, u64> {
    BypassReason::ALL
        .iter()
        .map(|r| (*r, counts[*r as usize].load(Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot() {
        for (i, r) in BypassReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let c = Counters::default();
        c.not_stored(BypassReason::StoreError);
        c.bypass(BypassReason::Method);
        c.bypass(BypassReason::Method);
        let s = c.snapshot();
        assert_eq!(s.bypasses.get(&BypassReason::Method), Some(&2));
        assert_eq!(s.total_bypasses(), 2, "responses not stored are counted apart");
        assert_eq!(s.not_stored.get(&BypassReason::StoreError), Some(&1));
        assert_eq!(s.total_not_stored(), 1);
    }
}
