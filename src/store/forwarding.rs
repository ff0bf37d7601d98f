//! Purges passed on beyond the process: [`PurgeForwarding`] wraps a store and hands every
//! purge it has applied to a [`PurgeSink`] (a CDN in front, another cache), off the
//! response path, through a bounded queue with retries.

use super::{Entry, LeaseAttempt, LeaseToken, Lookup, PurgeMode, Store, StoreError};
use crate::CacheKey;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

tokio::task_local! {
    static ORIGIN: PurgeOrigin;
    /// The forwarding store a purge is being made through.
    static FORWARDER: u64;
}

/// The [`PurgeForwarding`] the purge under way is made through, if any.
#[cfg(feature = "redis")]
pub(crate) fn current_forwarder() -> Option<u64> {
    FORWARDER.try_with(|id| *id).ok()
}

/// Runs `purge` as one a successful mutation made, so that a [`PurgeForwarding`] store
/// reports it as [`PurgeOrigin::Mutation`].
pub(crate) fn as_mutation<F: Future>(purge: F) -> impl Future<Output = F::Output> {
    ORIGIN.scope(PurgeOrigin::Mutation, purge)
}

/// What made a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PurgeOrigin {
    /// An [`InvalidateLayer`](crate::InvalidateLayer) or a [`CacheLayer`](crate::CacheLayer)
    /// after a successful unsafe request.
    Mutation,
    /// A call on the store from code (a `PurgeEndpoint` among them).
    Programmatic,
    /// A purge made through this forwarding store that could not reach Redis, passed on
    /// again once it landed there (and reached every memory tier of a tiered fleet): until
    /// then other instances could still read (and a CDN fetch again) what it invalidates. It
    /// was passed on first, as a mutation's or a call's, when it was made.
    Replayed,
}

/// One purge applied to the local store, as a [`PurgeSink`] receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeEvent {
    /// Tags purged, apart from the path tags below.
    pub tags: Vec<String>,
    /// Paths purged in all their variants (`/books/1`): [`Store::purge_uri`], the paths a
    /// mutation invalidates (RFC 9111 §4.4), and any tag of the form `path:/…`.
    pub paths: Vec<String>,
    /// Hard or soft.
    pub mode: PurgeMode,
    /// Everything was purged ([`Store::purge_all`]); `tags` and `paths` are then empty.
    pub all: bool,
    /// What made the purge.
    pub origin: PurgeOrigin,
}

impl PurgeEvent {
    /// An event for `tags`, split into tags and paths as [`PurgeForwarding`] does; for
    /// testing a sink.
    ///
    /// ```
    /// use tower_response_cache::store::{PurgeEvent, PurgeOrigin};
    /// use tower_response_cache::PurgeMode;
    /// let event = PurgeEvent::new(["books", "path:/books/1"], PurgeMode::Hard, PurgeOrigin::Programmatic);
    /// assert_eq!(event.tags, ["books"]);
    /// assert_eq!(event.paths, ["/books/1"]);
    /// ```
    pub fn new<I>(tags: I, mode: PurgeMode, origin: PurgeOrigin) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let (mut plain, mut paths) = (Vec::new(), Vec::new());
        for tag in tags {
            let tag: String = tag.into();
            match tag.strip_prefix("path:").filter(|path| path.starts_with('/')) {
                Some(path) => paths.push(path.to_owned()),
                None => plain.push(tag),
            }
        }
        PurgeEvent {
            tags: plain,
            paths,
            mode,
            all: false,
            origin,
        }
    }

    /// An event for a purge of everything.
    pub fn all(origin: PurgeOrigin) -> Self {
        PurgeEvent {
            tags: Vec::new(),
            paths: Vec::new(),
            mode: PurgeMode::Hard,
            all: true,
            origin,
        }
    }
}

/// A sink failed to deliver a purge. Retried unless [`permanent`](Self::permanent).
#[derive(Debug)]
pub struct PurgeSinkError {
    message: String,
    permanent: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl PurgeSinkError {
    /// An error worth retrying (a timeout, a `503`).
    pub fn new(message: impl Into<String>) -> Self {
        PurgeSinkError {
            message: message.into(),
            permanent: false,
            source: None,
        }
    }

    /// An error caused by another error, worth retrying.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        PurgeSinkError {
            source: Some(Box::new(source)),
            ..Self::new(message)
        }
    }

    /// Marks the error as one a retry cannot fix (a `401`, a `400`): the purge is given up.
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether a retry cannot fix it.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for PurgeSinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.message, source),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PurgeSinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Where a [`PurgeForwarding`] store sends the purges it applied: a CDN's purge API, a
/// message bus. Implemented by closures `Fn(PurgeEvent) -> impl Future<Output =
/// Result<(), PurgeSinkError>>`, and by `HttpPurgeSink` (feature `cdn-http`).
///
/// Calls come one at a time, in the order the purges were applied, on a task of their own.
pub trait PurgeSink: Send + Sync + 'static {
    /// Delivers one purge. An error is retried (see [`PurgeForwardingBuilder::attempts`])
    /// unless it is [permanent](PurgeSinkError::permanent).
    fn deliver(&self, event: PurgeEvent) -> impl Future<Output = Result<(), PurgeSinkError>> + Send;
}

impl<F, Fut> PurgeSink for F
where
    F: Fn(PurgeEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), PurgeSinkError>> + Send,
{
    fn deliver(&self, event: PurgeEvent) -> impl Future<Output = Result<(), PurgeSinkError>> + Send {
        self(event)
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// A snapshot of a [`PurgeForwarding`] store's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeForwardingStats {
    /// Purges the sink accepted.
    pub delivered: u64,
    /// Purges given up: every attempt failed, or one failed permanently (each logged).
    pub failed: u64,
    /// Purges not queued because the queue was full (each logged).
    pub dropped: u64,
    /// Attempts made again after a failure.
    pub retries: u64,
}

/// A store that passes on every purge it applies to a [`PurgeSink`]: purges made by the
/// layers after mutations ([`PurgeOrigin::Mutation`]) and by code calling the store
/// ([`PurgeOrigin::Programmatic`]).
///
/// A purge is passed on only once the store inside has applied it, and without waiting:
/// it goes into a bounded queue that one task drains, calling the sink with retries and
/// exponential backoff. A full queue drops the purge, a sink that keeps failing has it
/// given up; both are counted ([`stats`](Self::stats)) and logged, and neither fails or
/// delays a request. Purges other instances made (learnt through Redis) are not passed on:
/// the instance that made each one does. A purge that a Redis store behind this one had to
/// queue (Redis unreachable) is passed on when it is made and again, as
/// [`PurgeOrigin::Replayed`], once it lands in Redis.
///
/// Give this store (or its clones) to every layer and to the code that purges: a purge made
/// through the store inside is not seen. It has the [`handle_id`](Store::handle_id) of the
/// store inside.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_response_cache::store::{PurgeEvent, PurgeForwarding, PurgeSinkError};
/// use tower_response_cache::{CacheLayer, InvalidateLayer, MemoryStore, Store};
///
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let sink = move |event: PurgeEvent| {
///     let tx = tx.clone();
///     async move { tx.send(event).map_err(|_| PurgeSinkError::new("receiver gone")) }
/// };
/// let store = PurgeForwarding::new(MemoryStore::new(), sink);
/// let _invalidate = InvalidateLayer::new(store.clone());
/// let _cache = CacheLayer::new(store.clone());
///
/// store.purge_tags(["books"]).await?;
/// assert_eq!(rx.recv().await.unwrap().tags, ["books"]);
/// # Ok::<(), tower_response_cache::StoreError>(()) }).unwrap();
/// ```
pub struct PurgeForwarding<S> {
    inner: S,
    queue: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
    /// How long after a purge returns other instances may still serve what it purged (a
    /// spread Redis namespace's window): the sink is told only then.
    settle: Duration,
    /// Names this forwarding store (and its clones) to the stores inside it.
    id: u64,
}

impl<S: Clone> Clone for PurgeForwarding<S> {
    fn clone(&self) -> Self {
        PurgeForwarding {
            inner: self.inner.clone(),
            queue: self.queue.clone(),
            counters: self.counters.clone(),
            settle: self.settle,
            id: self.id,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for PurgeForwarding<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeForwarding")
            .field("inner", &self.inner)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S: Store> PurgeForwarding<S> {
    /// Wraps `store`, passing its purges on to `sink` with the defaults of
    /// [`PurgeForwardingBuilder`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the queue is drained by a task spawned here.
    pub fn new<K: PurgeSink>(store: S, sink: K) -> Self {
        Self::builder(store, sink).build()
    }

    /// Starts configuring the queue and the retries.
    pub fn builder<K: PurgeSink>(store: S, sink: K) -> PurgeForwardingBuilder<S, K> {
        PurgeForwardingBuilder {
            store,
            sink,
            queue: 1024,
            attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

impl<S> PurgeForwarding<S> {
    /// The store inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Counters shared by every clone.
    pub fn stats(&self) -> PurgeForwardingStats {
        let c = &self.counters;
        PurgeForwardingStats {
            delivered: c.delivered.load(Relaxed),
            failed: c.failed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            retries: c.retries.load(Relaxed),
        }
    }

    fn forward(&self, event: PurgeEvent) {
        enqueue(&self.queue, &self.counters, event, self.settle);
    }
}

/// A purge waiting for the sink, and when it may be delivered.
#[derive(Debug)]
struct Queued {
    event: PurgeEvent,
    due: tokio::time::Instant,
}

fn enqueue(queue: &mpsc::Sender<Queued>, counters: &Counters, event: PurgeEvent, settle: Duration) {
    let queued = Queued {
        event,
        due: tokio::time::Instant::now() + settle,
    };
    match queue.try_send(queued) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(Queued { event, .. })) => {
            counters.dropped.fetch_add(1, Relaxed);
            tracing::warn!(?event, "purge not forwarded: the forwarding queue is full");
        }
        Err(mpsc::error::TrySendError::Closed(Queued { event, .. })) => {
            counters.dropped.fetch_add(1, Relaxed);
            // The task ends only with its runtime, or when the sink panicked.
            tracing::error!(?event, "purge not forwarded: the forwarding task has ended");
        }
    }
}

/// Passes on, as [`PurgeOrigin::Replayed`], each purge made through this forwarding store
/// that the Redis store behind `store` (a `RedisStore`, a `TieredStore`, either in a
/// `BoxStore` or an `Arc`) queued and then landed. A purge-all the queue made of purges past
/// its bound is not passed on again: the purges it replaced were, when they were made.
/// Returns how long after a purge returns the sink may be told of it.
#[cfg(feature = "redis")]
fn attach_redis<S: Store>(
    store: &S,
    forwarder: u64,
    queue: &mpsc::Sender<Queued>,
    counters: &Arc<Counters>,
) -> Duration {
    use super::purge_queue::PendingKind;
    use super::{BoxStore, RedisStore, TieredStore};
    use std::any::Any;
    fn redis_of(any: &dyn Any) -> Option<&RedisStore> {
        if let Some(redis) = any.downcast_ref::<RedisStore>() {
            return Some(redis);
        }
        if let Some(tiered) = any.downcast_ref::<TieredStore>() {
            return Some(tiered.l2());
        }
        if let Some(boxed) = any.downcast_ref::<BoxStore>() {
            return boxed
                .downcast_ref::<RedisStore>()
                .or_else(|| boxed.downcast_ref::<TieredStore>().map(TieredStore::l2));
        }
        None
    }
    let any: &dyn Any = store;
    let redis = redis_of(any)
        .or_else(|| any.downcast_ref::<Arc<RedisStore>>().map(|a| &**a))
        .or_else(|| any.downcast_ref::<Arc<TieredStore>>().map(|a| a.l2()));
    let Some(redis) = redis else {
        return Duration::ZERO;
    };
    let settle = redis.purge_settle();
    let (queue, counters) = (queue.downgrade(), Arc::downgrade(counters));
    let landed = move |kind: Option<&PendingKind>| {
        // The forwarding store is gone with its queue: nothing to pass on.
        let (Some(queue), Some(counters)) = (queue.upgrade(), counters.upgrade()) else {
            return false;
        };
        let event = match kind {
            None => return true,
            Some(PendingKind::Tags { tags, mode }) => {
                PurgeEvent::new(tags.iter().cloned(), *mode, PurgeOrigin::Replayed)
            }
            Some(PendingKind::All) => PurgeEvent::all(PurgeOrigin::Replayed),
        };
        enqueue(&queue, &counters, event, settle);
        true
    };
    redis.on_landed(super::redis::LandedHook {
        forwarder,
        landed: Box::new(landed),
    });
    settle
}

/// Configures a [`PurgeForwarding`] store; made by [`PurgeForwarding::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`queue`](Self::queue) | 1024 purges |
/// | [`attempts`](Self::attempts) | 5 |
/// | [`backoff`](Self::backoff) | 200 ms, doubling up to 10 s |
/// | [`timeout`](Self::timeout) | 10 s per attempt |
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tower_response_cache::store::{PurgeEvent, PurgeForwarding};
/// use tower_response_cache::MemoryStore;
///
/// let store = PurgeForwarding::builder(MemoryStore::new(), |_event: PurgeEvent| async { Ok(()) })
///     .queue(100)
///     .attempts(3)
///     .backoff(Duration::from_millis(50), Duration::from_secs(1))
///     .timeout(Duration::from_secs(2))
///     .build();
/// # drop(store) });
/// ```
#[must_use]
pub struct PurgeForwardingBuilder<S, K> {
    store: S,
    sink: K,
    queue: usize,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

impl<S, K> fmt::Debug for PurgeForwardingBuilder<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeForwardingBuilder")
            .field("queue", &self.queue)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S: Store, K: PurgeSink> PurgeForwardingBuilder<S, K> {
    /// Purges waiting for the sink at most; past it new ones are dropped (at least 1).
    pub fn queue(mut self, purges: usize) -> Self {
        self.queue = purges.max(1);
        self
    }

    /// Attempts per purge, the first included (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait before the first retry, doubled for each next one up to `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// How long one attempt may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The store, its queue drained by a task spawned now.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn build(self) -> PurgeForwarding<S> {
        let (queue, events) = mpsc::channel(self.queue);
        let counters = Arc::new(Counters::default());
        let retry = Retry {
            attempts: self.attempts,
            backoff: self.backoff,
            max_backoff: self.max_backoff,
            timeout: self.timeout,
        };
        tokio::spawn(drain(self.sink, events, retry, counters.clone()));
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Relaxed);
        #[cfg(feature = "redis")]
        let settle = attach_redis(&self.store, id, &queue, &counters);
        #[cfg(not(feature = "redis"))]
        let settle = Duration::ZERO;
        PurgeForwarding {
            id,
            settle,
            inner: self.store,
            queue,
            counters,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

/// Delivers queued purges one at a time, in order; ends once every store clone is gone.
async fn drain<K: PurgeSink>(sink: K, mut events: mpsc::Receiver<Queued>, retry: Retry, counters: Arc<Counters>) {
    while let Some(Queued { event, due }) = events.recv().await {
        tokio::time::sleep_until(due).await;
        let mut wait = retry.backoff;
        for attempt in 1..=retry.attempts {
            let error = match tokio::time::timeout(retry.timeout, sink.deliver(event.clone())).await {
                Ok(Ok(())) => {
                    counters.delivered.fetch_add(1, Relaxed);
                    break;
                }
                Ok(Err(error)) => error,
                Err(_) => PurgeSinkError::new(format!("no answer within {:?}", retry.timeout)),
            };
            if error.is_permanent() || attempt == retry.attempts {
                counters.failed.fetch_add(1, Relaxed);
                tracing::error!(%error, ?event, attempt, "purge not forwarded: the sink failed");
                break;
            }
            tracing::debug!(%error, attempt, "purge forwarding failed, retrying");
            counters.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(retry.max_backoff);
        }
    }
}

fn origin() -> PurgeOrigin {
    ORIGIN.try_with(|origin| *origin).unwrap_or(PurgeOrigin::Programmatic)
}

impl<S: Store> Store for PurgeForwarding<S> {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        self.inner.get(key).await
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.put(key, entry, ttl).await
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.inner.remove(key).await
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        let origin = origin();
        FORWARDER.scope(self.id, self.inner.purge(tags, mode)).await?;
        self.forward(PurgeEvent::new(tags.iter().cloned(), mode, origin));
        Ok(())
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        let origin = origin();
        FORWARDER.scope(self.id, self.inner.purge_all()).await?;
        self.forward(PurgeEvent::all(origin));
        Ok(())
    }

    // `purge_uri` keeps its default: it purges the path tag through `purge` above.

    fn handle_id(&self) -> Option<usize> {
        self.inner.handle_id()
    }

    // The inner store's fast reads and fleet leases, unchanged: forwarding only watches purges.
    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        self.inner.get_now(key)
    }

    async fn get_latest(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        self.inner.get_latest(key).await
    }

    async fn try_lease(&self, key: &CacheKey, ttl: Duration) -> LeaseAttempt {
        self.inner.try_lease(key, ttl).await
    }

    async fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) {
        self.inner.lease_released(key, since, poll).await
    }

    async fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> bool {
        self.inner.renew_lease(key, token, ttl).await
    }

    async fn release_lease(&self, key: &CacheKey, token: LeaseToken) {
        self.inner.release_lease(key, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::sync::Mutex;

    /// A store with leases (all held elsewhere), to see that the wrapper asks it.
    #[derive(Clone)]
    struct Leasing(MemoryStore);

    impl Store for Leasing {
        async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
            self.0.get(key).await
        }
        async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
            self.0.put(key, entry, ttl).await
        }
        async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
            self.0.remove(key).await
        }
        async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
            self.0.purge(tags, mode).await
        }
        async fn purge_all(&self) -> Result<(), StoreError> {
            self.0.purge_all().await
        }
        async fn try_lease(&self, _key: &CacheKey, _ttl: Duration) -> LeaseAttempt {
            LeaseAttempt::Held
        }
    }

    /// Wrapping a store keeps what it does besides purges: answering at once (the hit path)
    /// and fleet leases.
    #[tokio::test]
    async fn the_inner_stores_fast_reads_and_leases_are_kept() {
        let memory = MemoryStore::new();
        let key = CacheKey::from_bytes(&b"k"[..]);
        let entry = crate::entry::testing::response("x", &[], Duration::from_secs(60));
        memory
            .put(key.clone(), Entry::Response(Arc::new(entry)), Duration::from_secs(60))
            .await
            .unwrap();
        let forwarding = PurgeForwarding::new(memory, |_event: PurgeEvent| async { Ok(()) });
        assert!(matches!(forwarding.get_now(&key), Some(Lookup::Found(_))));
        let leasing = PurgeForwarding::new(Leasing(MemoryStore::new()), |_event: PurgeEvent| async { Ok(()) });
        assert_eq!(
            leasing.try_lease(&key, Duration::from_secs(1)).await,
            LeaseAttempt::Held
        );
    }

    fn recording() -> (impl PurgeSink, Arc<Mutex<Vec<PurgeEvent>>>, Arc<tokio::sync::Notify>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(tokio::sync::Notify::new());
        let (s, n) = (seen.clone(), notify.clone());
        let sink = move |event: PurgeEvent| {
            s.lock().unwrap().push(event);
            n.notify_one();
            async { Ok(()) }
        };
        (sink, seen, notify)
    }

    async fn until(notify: &tokio::sync::Notify, seen: &Mutex<Vec<PurgeEvent>>, count: usize) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.lock().unwrap().len() < count {
                notify.notified().await;
            }
        })
        .await
        .expect("the sink received the purges in time");
    }

    #[tokio::test]
    async fn a_forwarding_store_passes_the_conformance_suite() {
        crate::store::conformance::run(|| async {
            PurgeForwarding::new(MemoryStore::new(), |_: PurgeEvent| async { Ok(()) })
        })
        .await;
    }

    #[tokio::test]
    async fn every_kind_of_purge_arrives_in_order_with_its_origin() {
        let (sink, seen, notify) = recording();
        let store = PurgeForwarding::new(MemoryStore::new(), sink);
        store.purge_tags(["books", "book:1"]).await.unwrap();
        store.soft_purge_tags(["reviews"]).await.unwrap();
        store.purge_uri("https://shop.example/books/1?page=2").await.unwrap();
        as_mutation(store.purge(&["path:/books/2".into(), "books".into()], PurgeMode::Hard))
            .await
            .unwrap();
        store.purge_all().await.unwrap();
        until(&notify, &seen, 5).await;

        let seen = seen.lock().unwrap();
        let programmatic = PurgeOrigin::Programmatic;
        assert_eq!(
            seen[0],
            PurgeEvent::new(["books", "book:1"], PurgeMode::Hard, programmatic)
        );
        assert_eq!(seen[1], PurgeEvent::new(["reviews"], PurgeMode::Soft, programmatic));
        assert_eq!(
            (seen[2].paths.as_slice(), seen[2].tags.len()),
            (&["/books/1".to_string()][..], 0)
        );
        assert_eq!(seen[3].origin, PurgeOrigin::Mutation);
        assert_eq!(
            (seen[3].tags.as_slice(), seen[3].paths.as_slice()),
            (&["books".to_string()][..], &["/books/2".to_string()][..])
        );
        assert!(seen[4].all && seen[4].tags.is_empty());
        assert_eq!(store.stats().delivered, 5);
    }

    #[tokio::test]
    async fn purges_the_layers_make_after_a_mutation_say_so() {
        use tower::ServiceExt;
        let (sink, seen, notify) = recording();
        let store = PurgeForwarding::new(MemoryStore::new(), sink);
        let origin = tower::service_fn(|_: http::Request<()>| async {
            let mut response = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
            response
                .extensions_mut()
                .insert(crate::Invalidate::tags(["book:1"]).soft());
            Ok::<_, std::convert::Infallible>(response)
        });
        let app = tower::ServiceBuilder::new()
            .layer(crate::CacheLayer::new(store.clone()))
            .layer(crate::InvalidateLayer::new(store.clone()))
            .service(origin);
        let request = http::Request::post("/books/1/reviews").body(()).unwrap();
        app.oneshot(request).await.unwrap();
        store.purge_tags(["later"]).await.unwrap();
        until(&notify, &seen, 3).await;

        let seen = seen.lock().unwrap();
        let (origins, modes): (Vec<_>, Vec<_>) = seen.iter().map(|e| (e.origin, e.mode)).unzip();
        use PurgeOrigin::{Mutation, Programmatic};
        assert_eq!(origins, [Mutation, Mutation, Programmatic]);
        assert_eq!(modes, [PurgeMode::Hard, PurgeMode::Soft, PurgeMode::Hard]);
        assert_eq!(
            seen[0].paths,
            ["/books/1/reviews"],
            "the target, once: the CacheLayer saw it purged"
        );
        assert_eq!(seen[1].tags, ["book:1"]);
    }

    #[tokio::test]
    async fn the_inner_store_is_purged_before_the_sink_hears_of_it_and_keeps_its_id() {
        let memory = MemoryStore::new();
        let key = CacheKey::from_bytes(b"k".to_vec());
        let response = crate::entry::testing::response("body", &["t"], Duration::from_secs(60));
        memory
            .put(
                key.clone(),
                Entry::Response(Arc::new(response)),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let check = memory.clone();
        let sink = move |_: PurgeEvent| {
            let (check, key, tx) = (check.clone(), key.clone(), tx.clone());
            async move {
                tx.send(check.get(&key).await.unwrap()).ok();
                Ok(())
            }
        };
        let store = PurgeForwarding::new(memory.clone(), sink);
        assert_eq!(store.handle_id(), memory.handle_id());
        store.purge_tags(["t"]).await.unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !matches!(seen, Lookup::Found(_)),
            "the sink saw the entry still there: {seen:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_backoff_then_given_up_and_counted() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let sink = move |_: PurgeEvent| {
            let n = c.fetch_add(1, Relaxed) + 1;
            async move {
                match n {
                    1 => Err(PurgeSinkError::new("503")),
                    2 => Ok(()),
                    3 => Err(PurgeSinkError::new("401").permanent()),
                    _ => Err(PurgeSinkError::new("down")),
                }
            }
        };
        let store = PurgeForwarding::builder(MemoryStore::new(), sink)
            .attempts(3)
            .backoff(Duration::from_secs(1), Duration::from_secs(4))
            .build();
        store.purge_tags(["a"]).await.unwrap(); // fails once, then delivered
        store.purge_tags(["b"]).await.unwrap(); // permanent: given up at once
        store.purge_tags(["c"]).await.unwrap(); // fails three times
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls.load(Relaxed), 6);
        assert_eq!(
            store.stats(),
            PurgeForwardingStats {
                delivered: 1,
                failed: 2,
                dropped: 0,
                retries: 3,
            }
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_purges_without_waiting() {
        let (release, released) = tokio::sync::watch::channel(false);
        let sink = move |_: PurgeEvent| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(())
            }
        };
        let store = PurgeForwarding::builder(MemoryStore::new(), sink).queue(2).build();
        for i in 0..10 {
            let purge = store.purge_tags([format!("t{i}")]);
            tokio::time::timeout(Duration::from_secs(5), purge)
                .await
                .expect("a purge never waits for the sink")
                .unwrap();
        }
        let dropped = store.stats().dropped;
        // One purge may be in the sink and two in the queue; the rest are dropped.
        assert!((7..=8).contains(&dropped), "dropped {dropped}");
        release.send(true).unwrap();
    }
}
