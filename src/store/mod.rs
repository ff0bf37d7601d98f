//! Where responses live: the [`Store`] trait and its implementations.
//!
//! A store is a cheap-to-clone handle: the same store serves several layers, an
//! invalidation layer and programmatic purges. Stores know nothing of HTTP semantics beyond
//! [`CachedResponse`]: the layer decides what to keep and for how long.
//!
//! A store is chosen at compile time (`CacheLayer<MemoryStore>`), or at run time behind a
//! [`BoxStore`]; an `Arc<S>` of a store is a store too. A store written outside this crate
//! gets the no-resurrection rule from [`PurgeStamps`] instead of re-implementing it.
//! [`PurgeForwarding`] wraps a store to pass its purges on to a [`PurgeSink`], such as a
//! CDN in front (`HttpPurgeSink`, feature `cdn-http`).
//!
//! Every store must pass `conformance::run` (feature `test-util`), the suite the crate's own
//! stores run.

mod boxed;
#[cfg(feature = "redis")]
mod breaker;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
#[cfg(feature = "redis")]
mod feed;
mod forwarding;
#[cfg(feature = "cdn-http")]
mod http_sink;
#[cfg(feature = "redis")]
mod lease_releases;
mod memory;
#[cfg(feature = "redis")]
mod purge_log;
#[cfg(feature = "redis")]
mod purge_queue;
mod purge_stamps;
#[cfg(feature = "redis")]
mod redis;
mod stamps;
#[cfg(feature = "redis")]
mod tiered;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{MaxmemoryPolicy, RedisStore, RedisStoreBuilder, RedisStoreStats};
pub use boxed::BoxStore;
pub(crate) use forwarding::as_mutation;
pub use forwarding::{
    PurgeEvent, PurgeForwarding, PurgeForwardingBuilder, PurgeForwardingStats, PurgeOrigin, PurgeSink, PurgeSinkError,
};
#[cfg(feature = "cdn-http")]
#[cfg_attr(docsrs, doc(cfg(feature = "cdn-http")))]
pub use http_sink::HttpPurgeSink;
pub use memory::{MemoryStore, MemoryStoreBuilder, MemoryStoreStats};
pub use purge_stamps::{PurgeStamps, StampedEntry};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tiered::{TieredStore, TieredStoreStats};

pub use crate::entry::{CachedResponse, DecodeError, Entry};

/// What [`Store::try_lease`] found: the fleet-wide lease on a key's call to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseAttempt {
    /// The store has no leases (one process uses it), or could not answer in time: each
    /// process coalesces its own misses only.
    Unsupported,
    /// This caller holds the lease until it releases it or the lease expires.
    Acquired(LeaseToken),
    /// Another caller (another instance) holds it: wait for the entry it will store.
    Held,
}

/// Proof of holding a lease: only its holder can renew or release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u64);

use crate::CacheKey;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The instant a request starts, on the clock that purge stamps use (never going backwards
/// within the process), so that "started before the purge" is decided without ambiguity.
pub(crate) fn request_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(stamps::now_micros())
}

/// How a purge treats the entries it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurgeMode {
    /// The next read is a miss.
    Hard,
    /// Entries turn stale: they may still be served under `stale-while-revalidate` or
    /// `stale-if-error` while a refresh runs; otherwise they miss like a hard purge.
    Soft,
}

/// The result of a [`Store::get`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Lookup {
    /// Nothing under this key.
    Miss,
    /// A valid entry.
    Found(Entry),
    /// A response that a soft purge turned stale.
    SoftPurged(Arc<CachedResponse>),
    /// A response existed but a hard purge invalidated it.
    Purged,
    /// A response the store holds but cannot vouch for now: a purge made elsewhere may have
    /// invalidated it unseen (a `TieredStore` whose invalidation feed is not proven live,
    /// with Redis unreachable). The layer serves it only where it would serve a stale entry
    /// in place of an origin error (its `stale-if-error` window), never as a hit.
    Unverified(Arc<CachedResponse>),
}

/// A store operation failed. The layer logs and counts it and serves from the inner service.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            source: None,
        }
    }

    /// An error caused by another error.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A place to keep cached responses.
///
/// Implementations must uphold the no-resurrection rule: after a purge of tag `t` at
/// instant `p`, a response tagged `t` whose [`request_time`](CachedResponse::request_time)
/// is at or before `p` is never returned as [`Lookup::Found`], even if it is `put` after
/// the purge.
pub trait Store: Clone + Send + Sync + 'static {
    /// Reads the entry under `key`, with expiry and purges applied.
    fn get(&self, key: &CacheKey) -> impl Future<Output = Result<Lookup, StoreError>> + Send;

    /// Reads the entry under `key` without waiting, as [`get`](Self::get) would, if the
    /// store can answer at once (an in-process store); `None`, the default, when it cannot,
    /// and the layer then awaits [`get`](Self::get). A layer answers a fresh hit read this way
    /// without boxing a future for it.
    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        let _ = key;
        None
    }

    /// Reads the entry under `key` as every instance sharing the store sees it now, past any
    /// copy this instance keeps of its own (a tiered store's memory tier). The layer reads
    /// this way before a background refresh, to learn whether another instance has just
    /// made it. The default is [`get`](Self::get).
    fn get_latest(&self, key: &CacheKey) -> impl Future<Output = Result<Lookup, StoreError>> + Send {
        self.get(key)
    }

    /// Writes `entry` under `key` for at most `ttl`. Returns `false` when the store declined
    /// it (a purge of one of its tags happened after its request started, or it is larger
    /// than the store can hold).
    fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the entry under `key`, if any.
    fn remove(&self, key: &CacheKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Invalidates every entry carrying one of `tags`, in time proportional to the number
    /// of tags, not of entries.
    fn purge(&self, tags: &[String], mode: PurgeMode) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Invalidates every entry.
    fn purge_all(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Names the store behind this handle, the same for all its clones, so that layers
    /// sharing it (an [`InvalidateLayer`](crate::InvalidateLayer) inside a
    /// [`CacheLayer`](crate::CacheLayer)) purge a mutated URI once, not twice. `None`, the
    /// default, when the store cannot tell: each layer then purges on its own.
    fn handle_id(&self) -> Option<usize> {
        None
    }

    /// Takes a lease of `ttl` on the call to the origin for `key`, so that of the instances
    /// sharing this store only one makes it (fleet-wide single flight). The default, for
    /// stores used by one process, is [`LeaseAttempt::Unsupported`]; a store that cannot
    /// answer (down, slow) must say `Unsupported` too, never hold the caller up.
    fn try_lease(&self, key: &CacheKey, ttl: Duration) -> impl Future<Output = LeaseAttempt> + Send {
        let _ = (key, ttl);
        async { LeaseAttempt::Unsupported }
    }

    /// Waits while another instance holds `key`'s lease: until the store hears that lease
    /// given back after `since` (when the caller's [`try_lease`](Self::try_lease) that found
    /// it held started), or a poll interval has passed: `poll`, or a longer one of the
    /// store's own while it expects word (`RedisStore`: 25 ms). The caller then reads the
    /// store and tries the lease again. The default, for stores that hear nothing, waits
    /// `poll`.
    fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) -> impl Future<Output = ()> + Send {
        let _ = (key, since);
        tokio::time::sleep(poll)
    }

    /// Extends a lease this caller holds; `false` when it is no longer held.
    fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> impl Future<Output = bool> + Send {
        let _ = (key, token, ttl);
        async { false }
    }

    /// Gives a lease back early (its holder's call is done, or was cancelled). Only the
    /// holder's token releases it.
    fn release_lease(&self, key: &CacheKey, token: LeaseToken) -> impl Future<Output = ()> + Send {
        let _ = (key, token);
        async {}
    }

    /// Hard-purges `tags`: the next read of any entry carrying one of them misses.
    ///
    /// ```
    /// # tokio_test_block_on(async {
    /// use tower_response_cache::{MemoryStore, Store};
    /// let store = MemoryStore::new();
    /// store.purge_tags(["books", "book:1"]).await?;
    /// # Ok::<_, tower_response_cache::StoreError>(()) });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f) }
    /// ```
    fn purge_tags<I>(&self, tags: I) -> impl Future<Output = Result<(), StoreError>> + Send
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        async move { self.purge(&tags, PurgeMode::Hard).await }
    }

    /// Soft-purges `tags`: entries carrying them turn stale (see [`PurgeMode::Soft`]).
    fn soft_purge_tags<I>(&self, tags: I) -> impl Future<Output = Result<(), StoreError>> + Send
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        async move { self.purge(&tags, PurgeMode::Soft).await }
    }

    /// Hard-purges every variant of every response stored for the path of `uri` (`/books/1`
    /// or `https://shop.example/books/1?x=1`): every query string, host, identity and
    /// `Vary` value of that path.
    fn purge_uri(&self, uri: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let path = match uri.parse::<http::Uri>() {
            Ok(parsed) if parsed.authority().is_some() || uri.starts_with('/') => parsed.path().to_owned(),
            _ => uri.split(['?', '#']).next().unwrap_or_default().to_owned(),
        };
        let tag = crate::key::path_tag(&path);
        async move { self.purge(&[tag], PurgeMode::Hard).await }
    }
}
