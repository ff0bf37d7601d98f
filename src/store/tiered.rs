//! The tiered store: an in-process `MemoryStore` (L1) in each instance over a shared
//! `RedisStore` (L2), kept coherent through Redis pub/sub.
//!
//! Reads try L1, then L2 (filling L1); writes go to both. A purge on any instance stamps the
//! tags in Redis and is published; every instance applies it to its L1. While the
//! subscription is down L1 is not trusted (reads go to L2, whose stamps decide), and when it
//! comes back L1 is emptied, since messages may have been lost in between. When Redis itself
//! is unreachable, L1 answers alone: no purge can be recorded anywhere meanwhile.

use super::{Lookup, MemoryStore, PurgeMode, RedisStore, Store, StoreError};
use crate::{CacheKey, Entry};
use futures_util::StreamExt;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A [`Store`] with a per-instance memory tier over a shared Redis tier.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use tower_response_cache::{store::{RedisStore, TieredStore}, CacheLayer, MemoryStore};
/// let l2 = RedisStore::builder("redis://127.0.0.1:6379").namespace("shop").connect().await?;
/// let store = TieredStore::new(MemoryStore::builder().max_bytes(64 << 20).build(), l2);
/// let layer = CacheLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    l1: MemoryStore,
    l2: RedisStore,
    sync: Arc<Subscription>,
}

/// The invalidation subscription shared by the clones of one tiered store.
struct Subscription {
    subscribed: AtomicBool,
    subscriptions: AtomicU64,
    messages: AtomicU64,
    task: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// A snapshot of a [`TieredStore`]'s synchronisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStoreStats {
    /// Whether the invalidation subscription is up (L1 is trusted).
    pub subscribed: bool,
    /// Times the subscription was (re)established; each emptied L1.
    pub subscriptions: u64,
    /// Invalidation messages applied to L1.
    pub messages: u64,
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("sync", &self.stats())
            .finish()
    }
}

impl TieredStore {
    /// Puts `l1` in front of `l2` and subscribes to `l2`'s invalidations. Must be called
    /// within a Tokio runtime (the subscription runs as a task, ended with the last clone).
    pub fn new(l1: MemoryStore, l2: RedisStore) -> Self {
        let sync = Arc::new(Subscription {
            subscribed: AtomicBool::new(false),
            subscriptions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            task: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(subscribe(l1.clone(), l2.clone(), Arc::downgrade(&sync)));
        let _ = sync.task.set(task);
        TieredStore { l1, l2, sync }
    }

    /// The memory tier.
    pub fn l1(&self) -> &MemoryStore {
        &self.l1
    }

    /// The Redis tier.
    pub fn l2(&self) -> &RedisStore {
        &self.l2
    }

    /// The state of the invalidation subscription.
    pub fn stats(&self) -> TieredStoreStats {
        TieredStoreStats {
            subscribed: self.sync.subscribed.load(Relaxed),
            subscriptions: self.sync.subscriptions.load(Relaxed),
            messages: self.sync.messages.load(Relaxed),
        }
    }

    fn l1_trusted(&self) -> bool {
        self.sync.subscribed.load(Relaxed) || self.l2.breaker_open()
    }
}

/// Time left for an entry read from L2, for its L1 copy.
fn l1_ttl(entry: &Entry) -> Duration {
    match entry {
        Entry::Response(r) => {
            let windows = r.stale_while_revalidate().max(r.stale_if_error());
            (r.lifetime + windows).saturating_sub(r.age(SystemTime::now()))
        }
        Entry::Variants(_) => Duration::from_secs(60),
    }
}

impl Store for TieredStore {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let local = self.l1.get(key).await?;
        if self.l1_trusted() && matches!(local, Lookup::Found(_) | Lookup::SoftPurged(_)) {
            return Ok(local);
        }
        match self.l2.get(key).await {
            Ok(Lookup::Found(entry)) => {
                let ttl = l1_ttl(&entry);
                // A copy Redis judged valid just now: L1 checks it against the purges it
                // learned recently, not against the age of its request.
                self.l1.put_copy(key.clone(), entry.clone(), ttl);
                Ok(Lookup::Found(entry))
            }
            Ok(other) => Ok(other),
            // Redis failed. L1 answers only while it is trusted: subscribed, or Redis known
            // to be down (no purge can be recorded anywhere then).
            Err(error) => match local {
                Lookup::Found(_) | Lookup::SoftPurged(_) if self.l1_trusted() => Ok(local),
                _ => Err(error),
            },
        }
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        match self.l2.put(key.clone(), entry.clone(), ttl).await {
            // Redis holds it; L1 may still refuse it (a purge it just learned of), which only
            // costs this instance a round trip later.
            Ok(true) => {
                self.l1.put(key, entry, ttl).await?;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(error) => {
                self.l1.put(key, entry, ttl).await?;
                Err(error)
            }
        }
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.l1.remove(key).await?;
        self.l2.remove(key).await
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        // This instance sees its own purge at once; the others through the message. L1
        // stamps with Redis's clock-skew margin, as Redis does.
        self.l1.purge_ahead(tags, mode, self.l2.skew_margin());
        self.l2.purge(tags, mode).await
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        self.l1.purge_all_ahead(self.l2.skew_margin());
        self.l2.purge_all().await
    }
}

/// Applies published purges to L1, resubscribing after every disconnection.
async fn subscribe(l1: MemoryStore, l2: RedisStore, sync: std::sync::Weak<Subscription>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok(mut pubsub) = l2.pubsub_client().get_async_pubsub().await {
            if pubsub.subscribe(l2.channel()).await.is_ok() {
                backoff = Duration::from_millis(50);
                // Messages may have been missed while unsubscribed: start L1 afresh.
                // (Without the skew margin: reads that refill L1 are judged by Redis's stamps.)
                l1.purge_all_ahead(Duration::ZERO);
                let Some(state) = sync.upgrade() else { return };
                state.subscribed.store(true, Relaxed);
                state.subscriptions.fetch_add(1, Relaxed);
                drop(state);
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Some(state) = sync.upgrade() else { return };
                    apply(&l1, l2.skew_margin(), message.get_payload_bytes());
                    state.messages.fetch_add(1, Relaxed);
                }
            }
        }
        let Some(state) = sync.upgrade() else { return };
        state.subscribed.store(false, Relaxed);
        drop(state);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A message is `*` (purge all), or `h` / `s` followed by one tag per line.
fn apply(l1: &MemoryStore, margin: Duration, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let mut lines = text.split('\n');
    let mode = match lines.next() {
        Some("*") => {
            l1.purge_all_ahead(margin);
            return;
        }
        Some("h") => PurgeMode::Hard,
        Some("s") => PurgeMode::Soft,
        _ => {
            // Unknown format: forget everything rather than miss a purge.
            l1.purge_all_ahead(margin);
            return;
        }
    };
    let tags: Vec<String> = lines.filter(|t| !t.is_empty()).map(str::to_owned).collect();
    l1.purge_ahead(&tags, mode, margin);
}
