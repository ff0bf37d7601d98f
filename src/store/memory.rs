//! The in-process store: a byte-bounded quick_cache with expiry checked on read.

use super::stamps::{micros, TagStamps, Verdict};
use super::{Lookup, PurgeMode, Store, StoreError};
use crate::{CacheKey, Entry};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes a slot costs beyond its entry: key, deadline, index and queue bookkeeping.
const SLOT_OVERHEAD: u64 = 96;

#[derive(Clone)]
struct Slot {
    entry: Entry,
    expires: Instant,
}

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<CacheKey, Slot> for ByteWeighter {
    fn weight(&self, key: &CacheKey, slot: &Slot) -> u64 {
        SLOT_OVERHEAD + key.as_bytes().len() as u64 + slot.entry.weight() as u64
    }
}

#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<CacheKey, Slot> for CountEvictions {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: CacheKey, _: Slot) {
        self.0.fetch_add(1, Relaxed);
    }
}

type Inner = Cache<CacheKey, Slot, ByteWeighter, DefaultHashBuilder, CountEvictions>;

/// An in-process [`Store`]: entries weighted by their bytes (body, headers and a fixed
/// overhead) in a concurrent CLOCK-Pro cache bounded by `max_bytes`.
///
/// Cloning is cheap and every clone sees the same entries.
///
/// ```
/// use tower_response_cache::MemoryStore;
/// let store = MemoryStore::builder().max_bytes(256 << 20).build();
/// assert_eq!(store.stats().entries, 0);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    cache: Inner,
    stamps: TagStamps,
    evictions: Arc<AtomicU64>,
    purges: AtomicU64,
    invalidated: AtomicU64,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("stats", &self.stats()).finish()
    }
}

/// Configuration for a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_bytes: u64,
    max_tag_stamps: usize,
}

impl MemoryStoreBuilder {
    /// The byte budget for entries (default 64 MiB). Least valuable entries are evicted past it.
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// How many purged tags keep their own stamp (default 100,000). Past this, the oldest
    /// stamps fold into one, which may invalidate a little more than was purged, never less.
    pub fn max_tag_stamps(mut self, n: usize) -> Self {
        self.max_tag_stamps = n;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let evictions = Arc::new(AtomicU64::new(0));
        let max_bytes = self.max_bytes.max(1);
        let options = OptionsBuilder::new()
            // A guess at 4 KiB a response: it only sizes the initial tables.
            .estimated_items_capacity(((max_bytes / 4096) as usize).clamp(16, 1 << 20))
            .weight_capacity(max_bytes)
            .build()
            .expect("estimated capacity and weight capacity are set");
        let cache = Cache::with_options(
            options,
            ByteWeighter,
            DefaultHashBuilder::default(),
            CountEvictions(evictions.clone()),
        );
        MemoryStore {
            shared: Arc::new(Shared {
                cache,
                stamps: TagStamps::new(self.max_tag_stamps),
                evictions,
                purges: AtomicU64::new(0),
                invalidated: AtomicU64::new(0),
                max_bytes,
            }),
        }
    }
}

/// A snapshot of a [`MemoryStore`]'s occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStoreStats {
    /// Entries held (including expired ones not yet read or evicted).
    pub entries: usize,
    /// Weighted bytes held.
    pub bytes: u64,
    /// The byte budget.
    pub max_bytes: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
    /// Tags that currently hold an invalidation stamp.
    pub tag_stamps: usize,
    /// Purge operations (tag purges and purge-all).
    pub purges: u64,
    /// Entries found invalidated by a hard purge when read, and dropped.
    pub invalidated: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store with the default budget of 64 MiB.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            max_bytes: 64 << 20,
            max_tag_stamps: 100_000,
        }
    }

    /// Occupancy and eviction counts.
    pub fn stats(&self) -> MemoryStoreStats {
        MemoryStoreStats {
            entries: self.shared.cache.len(),
            bytes: self.shared.cache.weight(),
            max_bytes: self.shared.max_bytes,
            evictions: self.shared.evictions.load(Relaxed),
            tag_stamps: self.shared.stamps.len(),
            purges: self.shared.purges.load(Relaxed),
            invalidated: self.shared.invalidated.load(Relaxed),
        }
    }

    /// Purges as if it happened `ahead` from now: a tier under a remote store stamps like it,
    /// clock-skew margin included.
    pub(crate) fn purge_ahead(&self, tags: &[String], mode: PurgeMode, ahead: Duration) {
        self.shared.stamps.purge(tags, mode, micros_of(ahead));
        self.shared.purges.fetch_add(1, Relaxed);
    }

    pub(crate) fn purge_all_ahead(&self, ahead: Duration) {
        self.shared.stamps.purge_all(micros_of(ahead));
        self.shared.cache.clear();
        self.shared.purges.fetch_add(1, Relaxed);
    }

    /// Drops every entry but keeps the stamps: a tiered store starting afresh after its feed
    /// was lost refills from Redis, whose stamps judge the entries it reads back.
    #[cfg(feature = "redis")]
    pub(crate) fn clear(&self) {
        self.shared.cache.clear();
    }

    fn get_now(&self, key: &CacheKey) -> Lookup {
        let Some(slot) = self.shared.cache.get(key) else {
            return Lookup::Miss;
        };
        if slot.expires <= Instant::now() {
            self.shared.cache.remove(key);
            return Lookup::Miss;
        }
        match slot.entry {
            Entry::Response(response) => {
                match self.shared.stamps.judge(micros(response.request_time), &response.tags) {
                    Verdict::Valid => Lookup::Found(Entry::Response(response)),
                    Verdict::SoftPurged => Lookup::SoftPurged(response),
                    Verdict::Purged => {
                        self.shared.invalidated.fetch_add(1, Relaxed);
                        self.shared.cache.remove(key);
                        Lookup::Purged
                    }
                }
            }
            variants @ Entry::Variants(_) => Lookup::Found(variants),
        }
    }

    fn put_now(&self, key: CacheKey, entry: Entry, ttl: Duration) -> bool {
        if ttl.is_zero() {
            return false;
        }
        let stamps = &self.shared.stamps;
        stamps.retain_for(ttl.as_micros().min(u128::from(u64::MAX)) as u64);
        if let Entry::Response(response) = &entry {
            if !stamps.admits(micros(response.request_time), &response.tags) {
                return false;
            }
        }
        if ByteWeighter.weight(
            &key,
            &Slot {
                entry: entry.clone(),
                expires: Instant::now(),
            },
        ) > self.shared.max_bytes
        {
            return false;
        }
        let expires = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        self.shared.cache.insert(key, Slot { entry, expires });
        true
    }
}

fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

impl Store for MemoryStore {
    fn handle_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.shared) as usize)
    }

    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        Ok(self.get_now(key))
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.put_now(key, entry, ttl))
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.shared.cache.remove(key);
        Ok(())
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.purge_ahead(tags, mode, Duration::ZERO);
        Ok(())
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        self.purge_all_ahead(Duration::ZERO);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::testing::response;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::store::conformance::run(|| async { MemoryStore::new() }).await;
    }

    #[tokio::test]
    async fn stays_within_its_byte_budget() {
        let store = MemoryStore::builder().max_bytes(256 << 10).build();
        let body: &'static str = Box::leak("x".repeat(1024).into_boxed_str());
        for i in 0..2000u32 {
            let key = CacheKey::from_bytes(format!("k{i}").into_bytes());
            let entry = Entry::Response(Arc::new(response(body, &["t"], Duration::from_secs(60))));
            assert!(store.put(key, entry, Duration::from_secs(60)).await.unwrap());
        }
        let stats = store.stats();
        assert!(stats.bytes <= 256 << 10, "{stats:?}");
        assert!(stats.evictions > 0, "{stats:?}");
        assert!(stats.entries > 50 && stats.entries < 2000, "{stats:?}");
    }

    #[tokio::test]
    async fn refuses_entries_larger_than_the_budget() {
        let store = MemoryStore::builder().max_bytes(1000).build();
        let body: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
        let entry = Entry::Response(Arc::new(response(body, &[], Duration::from_secs(60))));
        assert!(!store
            .put(CacheKey::from_bytes(&b"k"[..]), entry, Duration::from_secs(60))
            .await
            .unwrap());
    }
}
