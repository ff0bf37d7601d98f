//! Counters shared by every clone of a layer, the snapshot users read, and (with the `metrics`
//! feature) the same counts and the layer's latencies recorded through the `metrics` facade.

use crate::status::MissKind;
use std::collections::BTreeMap;
use std::future::Future;
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
///
/// # Metrics
///
/// With the `metrics` feature, the same counts (and the latencies of store and origin calls)
/// are recorded through the [`metrics`](https://docs.rs/metrics) facade. A layer registers its
/// metrics with the recorder installed when it is [built](crate::CacheLayerBuilder::build),
/// labelled `cache` with its [`Cache-Status` name](crate::CacheLayerBuilder::cache_status_name);
/// install the recorder first, and name each layer of a process apart. Every counter of a
/// layer starts at zero. No label ever carries a URL, a key or a tag.
///
/// | name | type | labels | counts |
/// |---|---|---|---|
/// | `tower_response_cache_hits_total` | counter | `cache` | [`hits`](Self::hits) |
/// | `tower_response_cache_stale_hits_total` | counter | `cache` | [`stale_hits`](Self::stale_hits) |
/// | `tower_response_cache_misses_total` | counter | `cache`, `kind` (`miss`, `vary-miss`, `invalidated`, `stale`, `request`) | [`misses`](Self::misses) by kind |
/// | `tower_response_cache_stores_total` | counter | `cache` | [`stores`](Self::stores) |
/// | `tower_response_cache_bypasses_total` | counter | `cache`, `reason` ([`BypassReason::as_str`]) | [`bypasses`](Self::bypasses) |
/// | `tower_response_cache_not_stored_total` | counter | `cache`, `reason` ([`BypassReason::as_str`]) | [`not_stored`](Self::not_stored) |
/// | `tower_response_cache_store_errors_total` | counter | `cache` | [`store_errors`](Self::store_errors) |
/// | `tower_response_cache_coalesced_total` | counter | `cache` | [`coalesced`](Self::coalesced) |
/// | `tower_response_cache_failures_shared_total` | counter | `cache` | [`failures_shared`](Self::failures_shared) |
/// | `tower_response_cache_background_refreshes_total` | counter | `cache` | [`background_refreshes`](Self::background_refreshes) |
/// | `tower_response_cache_revalidations_total` | counter | `cache` | [`revalidations`](Self::revalidations) |
/// | `tower_response_cache_errors_absorbed_total` | counter | `cache` | [`errors_absorbed`](Self::errors_absorbed) |
/// | `tower_response_cache_cdn_tags_dropped_total` | counter | `cache` | [`cdn_tags_dropped`](Self::cdn_tags_dropped) |
/// | `tower_response_cache_store_duration_seconds` | histogram | `cache`, `op` (`get`, `put`, `purge`) | store calls made by the layer (not the reads a store answers at once) |
/// | `tower_response_cache_origin_duration_seconds` | histogram | `cache` | inner-service calls on a miss, until the response head arrived |
/// | `tower_response_cache_purges_total` | counter | | [`InvalidateStats::purges`](crate::invalidate::InvalidateStats::purges) |
/// | `tower_response_cache_purged_tags_total` | counter | | [`InvalidateStats::tags_purged`](crate::invalidate::InvalidateStats::tags_purged) |
/// | `tower_response_cache_purges_skipped_total` | counter | | [`InvalidateStats::skipped`](crate::invalidate::InvalidateStats::skipped) |
/// | `tower_response_cache_purge_errors_total` | counter | | [`InvalidateStats::errors`](crate::invalidate::InvalidateStats::errors) |
/// | `tower_response_cache_memory_purges_total` | counter | `kind` (`tags`, `all`) | purges applied by memory stores and memory tiers ([`MemoryStoreStats::purges`](crate::store::MemoryStoreStats::purges)) |
/// | `tower_response_cache_redis_errors_total` | counter | `kind` (`error`, `timeout`, `refused`, `corrupt`, `out-of-memory`) | the Redis store's failed operations |
/// | `tower_response_cache_redis_breaker_trips_total` | counter | | times the Redis store's circuit breaker opened |
///
/// ```
/// use tower_response_cache::{CacheLayer, CacheStatusName, MemoryStore};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Cargo.toml: tower-response-cache = { version = "0.1", features = ["metrics"] }
/// let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
/// let layer = CacheLayer::builder(MemoryStore::new())
///     .cache_status_name(CacheStatusName::new("pages")?)
///     .build();
/// // Serve `prometheus.render()` on `/metrics` (see `examples/prometheus.rs`):
/// # #[cfg(feature = "metrics")]
/// assert!(prometheus.render().contains(r#"tower_response_cache_hits_total{cache="pages"} 0"#));
/// # Ok(()) }
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
    /// Refreshes run in the background while a stale entry was served, or ahead of a hot
    /// entry's expiry ([`RefreshAhead`](crate::RefreshAhead)).
    pub background_refreshes: u64,
    /// Conditional requests that revalidated a stored entry (the origin answered 304).
    pub revalidations: u64,
    /// Origin errors, timeouts and 5xx answers replaced by a stale entry.
    pub errors_absorbed: u64,
    /// Tags left out of the [`CdnTags`](crate::CdnTags) header (they could not stand in it, or
    /// did not fit).
    pub cdn_tags_dropped: u64,
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

/// One count: the layer's own, and with the `metrics` feature the same count exported
/// through a handle registered when the layer was built (an atomic add, no lookup).
#[derive(Debug)]
pub(crate) struct Tally {
    n: AtomicU64,
    #[cfg(feature = "metrics")]
    exported: metrics::Counter,
}

impl Tally {
    fn new(names: &Names, name: &'static str, label: Option<(&'static str, &'static str)>) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (names, name, label);
        Tally {
            n: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            exported: names.counter(name, label),
        }
    }

    fn add(&self) {
        self.n.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.n.load(Relaxed)
    }
}

/// A count that every hit adds to, spread over cache-line-sized shards: each thread adds to
/// its own shard, so that hits on several threads do not pass one cache line between cores.
#[derive(Debug)]
pub(crate) struct SpreadTally {
    shards: Box<[Shard; SHARDS]>,
    #[cfg(feature = "metrics")]
    exported: metrics::Counter,
}

const SHARDS: usize = 16;

/// One shard, alone on its cache line (two lines: adjacent-line prefetching pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(AtomicU64);

/// This thread's shard: threads take the next one in turn when they first count.
fn shard_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
            }
            shard.get()
        })
        .unwrap_or(0)
}

impl SpreadTally {
    fn new(names: &Names, name: &'static str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = (names, name);
        SpreadTally {
            shards: Box::default(),
            #[cfg(feature = "metrics")]
            exported: names.counter(name, None),
        }
    }

    fn add(&self) {
        self.shards[shard_index()].0.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        self.exported.increment(1);
    }

    fn get(&self) -> u64 {
        self.shards.iter().map(|shard| shard.0.load(Relaxed)).sum()
    }
}

/// What a layer times (with the `metrics` feature): store calls and the origin's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Timed {
    StoreGet,
    StorePut,
    StorePurge,
    /// The inner service on a miss, until the response's head arrives.
    Origin,
}

/// The kinds of miss, in `Counters::misses` order, with their label values.
const MISS_KINDS: [(MissKind, &str); 5] = [
    (MissKind::Miss, "miss"),
    (MissKind::VaryMiss, "vary-miss"),
    (MissKind::Invalidated, "invalidated"),
    (MissKind::Stale, "stale"),
    (MissKind::Request, "request"),
];

const fn miss_slot(kind: MissKind) -> usize {
    match kind {
        MissKind::Miss => 0,
        MissKind::VaryMiss => 1,
        MissKind::Invalidated => 2,
        MissKind::Stale => 3,
        MissKind::Request => 4,
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    hits: SpreadTally,
    /// By kind, in `MISS_KINDS` order.
    misses: [Tally; MISS_KINDS.len()],
    stores: Tally,
    store_errors: Tally,
    pub(crate) stale_hits: Tally,
    pub(crate) coalesced: Tally,
    pub(crate) failures_shared: Tally,
    pub(crate) background_refreshes: Tally,
    pub(crate) revalidations: Tally,
    pub(crate) errors_absorbed: Tally,
    cdn_tags_dropped: Tally,
    bypasses: [Tally; BypassReason::ALL.len()],
    not_stored: [Tally; BypassReason::ALL.len()],
    #[cfg(feature = "metrics")]
    timings: Timings,
}

impl Counters {
    /// The counters of the layer named `cache` (its `Cache-Status` name, the `cache` label of
    /// the exported metrics).
    pub(crate) fn new(cache: &str) -> Self {
        let names = Names::new(cache);
        let tally = |name| Tally::new(&names, name, None);
        let by_reason = |name| BypassReason::ALL.map(|r| Tally::new(&names, name, Some(("reason", r.as_str()))));
        Counters {
            hits: SpreadTally::new(&names, "tower_response_cache_hits_total"),
            misses: MISS_KINDS
                .map(|(_, kind)| Tally::new(&names, "tower_response_cache_misses_total", Some(("kind", kind)))),
            stores: tally("tower_response_cache_stores_total"),
            store_errors: tally("tower_response_cache_store_errors_total"),
            stale_hits: tally("tower_response_cache_stale_hits_total"),
            coalesced: tally("tower_response_cache_coalesced_total"),
            failures_shared: tally("tower_response_cache_failures_shared_total"),
            background_refreshes: tally("tower_response_cache_background_refreshes_total"),
            revalidations: tally("tower_response_cache_revalidations_total"),
            errors_absorbed: tally("tower_response_cache_errors_absorbed_total"),
            cdn_tags_dropped: tally("tower_response_cache_cdn_tags_dropped_total"),
            bypasses: by_reason("tower_response_cache_bypasses_total"),
            not_stored: by_reason("tower_response_cache_not_stored_total"),
            #[cfg(feature = "metrics")]
            timings: Timings::new(&names),
        }
    }

    pub(crate) fn hit(&self) {
        self.hits.add();
    }
    /// Tags left out of the header shown to a CDN.
    pub(crate) fn cdn_tags_dropped(&self, count: u64) {
        for _ in 0..count {
            self.cdn_tags_dropped.add();
        }
    }
    pub(crate) fn miss(&self, kind: MissKind) {
        self.misses[miss_slot(kind)].add();
    }
    pub(crate) fn stored(&self) {
        self.stores.add();
    }
    pub(crate) fn store_error(&self) {
        self.store_errors.add();
    }
    pub(crate) fn count(counter: &Tally) {
        counter.add();
    }
    /// A request not looked up.
    pub(crate) fn bypass(&self, reason: BypassReason) {
        self.bypasses[reason as usize].add();
    }
    /// A response not stored.
    pub(crate) fn not_stored(&self, reason: BypassReason) {
        self.not_stored[reason as usize].add();
    }

    /// Runs `operation`, recording how long it took (with the `metrics` feature; without it,
    /// `operation` itself is returned).
    #[cfg(not(feature = "metrics"))]
    #[inline(always)]
    pub(crate) fn timed<F: Future>(&self, what: Timed, operation: F) -> F {
        let _ = what;
        operation
    }

    /// Runs `operation`, recording how long it took.
    #[cfg(feature = "metrics")]
    pub(crate) async fn timed<F: Future>(&self, what: Timed, operation: F) -> F::Output {
        let started = std::time::Instant::now();
        let output = operation.await;
        self.timings.of(what).record(started.elapsed());
        output
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.iter().map(Tally::get).sum(),
            invalidated_misses: self.misses[miss_slot(MissKind::Invalidated)].get(),
            stores: self.stores.get(),
            store_errors: self.store_errors.get(),
            stale_hits: self.stale_hits.get(),
            coalesced: self.coalesced.get(),
            waiting: 0,
            failures_shared: self.failures_shared.get(),
            background_refreshes: self.background_refreshes.get(),
            revalidations: self.revalidations.get(),
            errors_absorbed: self.errors_absorbed.get(),
            cdn_tags_dropped: self.cdn_tags_dropped.get(),
            bypasses: by_reason(&self.bypasses),
            not_stored: by_reason(&self.not_stored),
        }
    }
}

/// Registers a layer's metrics under its name; nothing without the `metrics` feature.
struct Names {
    #[cfg(feature = "metrics")]
    cache: metrics::SharedString,
}

impl Names {
    fn new(cache: &str) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = cache;
        Names {
            #[cfg(feature = "metrics")]
            cache: metrics::SharedString::from(cache.to_owned()),
        }
    }

    #[cfg(feature = "metrics")]
    fn counter(&self, name: &'static str, label: Option<(&'static str, &'static str)>) -> metrics::Counter {
        let cache = self.cache.clone();
        match label {
            Some((key, value)) => metrics::counter!(name, "cache" => cache, key => value),
            None => metrics::counter!(name, "cache" => cache),
        }
    }

    #[cfg(feature = "metrics")]
    fn histogram(&self, name: &'static str, label: Option<(&'static str, &'static str)>) -> metrics::Histogram {
        let cache = self.cache.clone();
        match label {
            Some((key, value)) => metrics::histogram!(name, "cache" => cache, key => value),
            None => metrics::histogram!(name, "cache" => cache),
        }
    }
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Timings {
    store_get: metrics::Histogram,
    store_put: metrics::Histogram,
    store_purge: metrics::Histogram,
    origin: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Timings {
    fn new(names: &Names) -> Self {
        describe();
        let store = |op| names.histogram("tower_response_cache_store_duration_seconds", Some(("op", op)));
        Timings {
            store_get: store("get"),
            store_put: store("put"),
            store_purge: store("purge"),
            origin: names.histogram("tower_response_cache_origin_duration_seconds", None),
        }
    }

    fn of(&self, what: Timed) -> &metrics::Histogram {
        match what {
            Timed::StoreGet => &self.store_get,
            Timed::StorePut => &self.store_put,
            Timed::StorePurge => &self.store_purge,
            Timed::Origin => &self.origin,
        }
    }
}

/// Counts that no layer's [`Counters`] hold (the invalidation layer's, the Redis store's),
/// exported with static names and labels; nothing without the `metrics` feature.
macro_rules! export_count {
    ($name:literal $(, $key:literal => $value:literal)*; $n:expr) => {
        #[cfg(feature = "metrics")]
        ::metrics::counter!($name $(, $key => $value)*).increment($n);
    };
}
pub(crate) use export_count;

/// The help text of every exported metric, given to the recorder with each layer built.
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    let counters: [(&'static str, &'static str); 20] = [
        (
            "tower_response_cache_hits_total",
            "Requests answered from a fresh entry.",
        ),
        (
            "tower_response_cache_stale_hits_total",
            "Requests answered from a stale entry.",
        ),
        (
            "tower_response_cache_misses_total",
            "Requests looked up and sent to the inner service, by kind of miss.",
        ),
        ("tower_response_cache_stores_total", "Responses written to the store."),
        (
            "tower_response_cache_bypasses_total",
            "Requests the cache did not look up, by reason.",
        ),
        (
            "tower_response_cache_not_stored_total",
            "Responses from the inner service not stored, by reason.",
        ),
        (
            "tower_response_cache_store_errors_total",
            "Store operations that failed (the request was served anyway).",
        ),
        (
            "tower_response_cache_coalesced_total",
            "Misses answered by another request's call to the inner service.",
        ),
        (
            "tower_response_cache_failures_shared_total",
            "Waiters answered with their leader's origin failure.",
        ),
        (
            "tower_response_cache_background_refreshes_total",
            "Refreshes run in the background while a stale entry was served.",
        ),
        (
            "tower_response_cache_revalidations_total",
            "Stored entries revalidated by the origin (304).",
        ),
        (
            "tower_response_cache_errors_absorbed_total",
            "Origin errors, timeouts and 5xx answers replaced by a stale entry.",
        ),
        (
            "tower_response_cache_cdn_tags_dropped_total",
            "Tags left out of the header shown to a CDN.",
        ),
        (
            "tower_response_cache_purges_total",
            "Successful mutations that purged tags (InvalidateLayer).",
        ),
        (
            "tower_response_cache_purged_tags_total",
            "Tags purged by InvalidateLayer, over all purges.",
        ),
        (
            "tower_response_cache_purges_skipped_total",
            "Unsafe requests that failed and so purged nothing (InvalidateLayer).",
        ),
        (
            "tower_response_cache_purge_errors_total",
            "Purges the store failed (InvalidateLayer).",
        ),
        (
            "tower_response_cache_memory_purges_total",
            "Purges applied by memory stores (tiers included), by kind.",
        ),
        (
            "tower_response_cache_redis_errors_total",
            "Redis store operations that failed, by kind.",
        ),
        (
            "tower_response_cache_redis_breaker_trips_total",
            "Times the Redis store's circuit breaker opened.",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
    }
    describe_histogram!(
        "tower_response_cache_store_duration_seconds",
        Unit::Seconds,
        "Store operations made by the cache layer, by operation."
    );
    describe_histogram!(
        "tower_response_cache_origin_duration_seconds",
        Unit::Seconds,
        "Calls to the inner service on a miss, until the response head arrived."
    );
}

fn by_reason(counts: &[Tally; BypassReason::ALL.len()]) -> BTreeMap<BypassReason, u64> {
    BypassReason::ALL
        .iter()
        .map(|r| (*r, counts[*r as usize].get()))
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
        let c = Counters::new("test");
        c.not_stored(BypassReason::StoreError);
        c.bypass(BypassReason::Method);
        c.bypass(BypassReason::Method);
        let s = c.snapshot();
        assert_eq!(s.bypasses.get(&BypassReason::Method), Some(&2));
        assert_eq!(s.total_bypasses(), 2, "responses not stored are counted apart");
        assert_eq!(s.not_stored.get(&BypassReason::StoreError), Some(&1));
        assert_eq!(s.total_not_stored(), 1);
    }

    #[test]
    fn misses_are_counted_by_kind() {
        let c = Counters::new("test");
        c.miss(MissKind::Miss);
        c.miss(MissKind::Invalidated);
        c.miss(MissKind::VaryMiss);
        let s = c.snapshot();
        assert_eq!((s.misses, s.invalidated_misses), (3, 1));
        for (i, (kind, _)) in MISS_KINDS.iter().enumerate() {
            assert_eq!(miss_slot(*kind), i, "each kind has its own slot and label");
        }
    }

    #[cfg(feature = "metrics")]
    #[tokio::test]
    async fn counts_and_timings_are_exported_under_the_layer_name() {
        use metrics_exporter_prometheus::PrometheusBuilder;
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Handles are registered with the recorder current when the layer is built.
        let (edge, origin) =
            metrics::with_local_recorder(&recorder, || (Counters::new("edge"), Counters::new("origin")));
        edge.hit();
        edge.hit();
        origin.hit();
        edge.miss(MissKind::Stale);
        edge.not_stored(BypassReason::SetCookie);
        Counters::count(&edge.coalesced);
        assert_eq!(edge.timed(Timed::StoreGet, async { 7 }).await, 7);
        assert_eq!(edge.snapshot().hits, 2, "the layer's own counts still hold");
        let text = handle.render();
        for line in [
            r#"tower_response_cache_hits_total{cache="edge"} 2"#,
            r#"tower_response_cache_hits_total{cache="origin"} 1"#,
            r#"tower_response_cache_misses_total{cache="edge",kind="stale"} 1"#,
            r#"tower_response_cache_misses_total{cache="edge",kind="miss"} 0"#,
            r#"tower_response_cache_not_stored_total{cache="edge",reason="set-cookie"} 1"#,
            r#"tower_response_cache_coalesced_total{cache="edge"} 1"#,
            r#"tower_response_cache_store_duration_seconds_count{cache="edge",op="get"} 1"#,
            r#"tower_response_cache_store_duration_seconds_count{cache="edge",op="put"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
