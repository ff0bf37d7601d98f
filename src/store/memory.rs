//! The in-process store: a byte-bounded quick_cache with expiry checked on read.
//!
//! Each slot keeps the [`Hold`] its entry got when admitted by the tag stamps (see
//! `stamps.rs`): the entry's tag digests, released when the slot leaves the cache, so the
//! stamps keep exact records for exactly the tags the store holds, and the weigher charges
//! each entry for its records.

use super::stamps::{micros, micros_of, Admission, Hold, TagStamps, Verdict, HOLD_BYTES, RECORD_BYTES};
use super::Entry;
use super::{Lookup, PurgeMode, Store, StoreError};
use crate::CacheKey;
use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes a slot costs beyond what its entry's own weight counts: the key's and the slot's
/// allocations, the cache's index and its resident and ghost queues, the response's structures
/// (its `Arc`, header tables, tag strings) and the allocator's bookkeeping of each. Measured
/// with `examples/memory_budget` (resident growth per entry held, empty bodies to 64 KiB).
const SLOT_OVERHEAD: u64 = 512;

/// The share of a body's bytes that the allocator spends on top of them (rounding, and the
/// gaps that bodies of evicted entries leave), measured likewise: 1/32.
const BODY_SLACK_SHIFT: u32 = 5;

/// What the cache holds under a key, behind one `Arc`: a read counts one reference, and
/// touches the hold only when a purge may concern the entry.
#[derive(Clone)]
struct Slot(Arc<Held>);

struct Held {
    entry: Entry,
    expires: Instant,
    /// When the response's request started, µs (what its stamps are judged against).
    started: u64,
    /// The purge-all epoch it was admitted in (a copy of its hold's).
    epoch: u64,
    /// The entry's claim on its tags' stamps (responses only).
    hold: Option<Hold>,
}

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<Bytes, Slot> for ByteWeighter {
    fn weight(&self, key: &Bytes, slot: &Slot) -> u64 {
        weight(key.len(), &slot.0.entry, slot.0.hold.as_ref().map(|h| h.tags()))
    }
}

/// An entry's weight, with the purge bookkeeping of its `tags` if it has a hold.
fn weight(key_len: usize, entry: &Entry, tags: Option<usize>) -> u64 {
    let stamps = tags.map_or(0, |n| HOLD_BYTES + n as u64 * RECORD_BYTES);
    let slack = match entry {
        Entry::Response(response) => response.body.len() as u64 >> BODY_SLACK_SHIFT,
        Entry::Variants(_) => 0,
    };
    SLOT_OVERHEAD + key_len as u64 + entry.weight() as u64 + slack + stamps
}

#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<Bytes, Slot> for CountEvictions {
    type RequestState = ();
    fn on_evict(&self, _: &mut (), _: Bytes, _: Slot) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// Keys are held as their encoded bytes, shared (a `CacheKey` may keep a short key inline,
/// which every slot would pay for); lookups borrow the request's key as a slice.
type Inner = Cache<Bytes, Slot, ByteWeighter, DefaultHashBuilder, CountEvictions>;

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
    stamps: Arc<TagStamps>,
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
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_bytes(256 << 20)
///     .in_flight_horizon(Duration::from_secs(120))
///     .purge_filter_bytes(1 << 20)
///     .build();
/// assert_eq!(store.stats().entries, 0);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_bytes: u64,
    in_flight_horizon: Duration,
    purge_filter_bytes: usize,
}

impl MemoryStoreBuilder {
    /// The byte budget for entries (default 64 MiB), their tags' purge records included.
    /// Least valuable entries are evicted past it.
    ///
    /// See the [example](MemoryStoreBuilder#example).
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// How long a purge is remembered for the responses in flight when it was made (default
    /// 60 s). A purge of a tag that stored entries carry is kept with them as long as they
    /// are; a purge of any other tag only matters to a response whose request started
    /// before it and that is written after it, so it is kept this long (at least), in the
    /// fixed-size filter of [`purge_filter_bytes`](Self::purge_filter_bytes). A response
    /// whose request started longer ago than that is not stored if purges were forgotten
    /// since; keep it above the layer's `origin_timeout` and `coalesce_timeout`.
    ///
    /// See the [example](MemoryStoreBuilder#example).
    pub fn in_flight_horizon(mut self, horizon: Duration) -> Self {
        self.in_flight_horizon = horizon;
        self
    }

    /// The bytes of the recent-purge filter (default 4 MiB), allocated as purges come: all
    /// that 1,000,000 purges of tags no entry carries cost. A fuller filter refuses more
    /// writes of responses that were in flight during a burst of purges, never an entry
    /// already stored.
    ///
    /// See the [example](MemoryStoreBuilder#example).
    pub fn purge_filter_bytes(mut self, bytes: usize) -> Self {
        self.purge_filter_bytes = bytes;
        self
    }

    /// Builds the store.
    ///
    /// See the [example](MemoryStoreBuilder#example).
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
                stamps: TagStamps::new(self.in_flight_horizon, self.purge_filter_bytes),
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
    /// Distinct tags carried by held entries, each with its purge record.
    pub tag_stamps: usize,
    /// Bytes of the purge bookkeeping: the records of carried tags (also counted in
    /// `bytes`, as each entry is charged for its tags) and the recent-purge filter (at most
    /// [`purge_filter_bytes`](MemoryStoreBuilder::purge_filter_bytes)). It does not grow with
    /// the number of purges or the length of tags.
    pub stamp_bytes: u64,
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
            in_flight_horizon: Duration::from_secs(60),
            purge_filter_bytes: 4 << 20,
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
            stamp_bytes: self.shared.stamps.bytes(),
            purges: self.shared.purges.load(Relaxed),
            invalidated: self.shared.invalidated.load(Relaxed),
        }
    }

    /// Purges as if it happened `ahead` from now: a tier under a remote store stamps like it,
    /// clock-skew margin included.
    pub(crate) fn purge_ahead(&self, tags: &[String], mode: PurgeMode, ahead: Duration) {
        self.shared.stamps.purge(tags, mode, micros_of(ahead));
        self.shared.purges.fetch_add(1, Relaxed);
        crate::metrics::export_count!("tower_response_cache_memory_purges_total", "kind" => "tags"; 1);
    }

    pub(crate) fn purge_all_ahead(&self, ahead: Duration) {
        self.shared.stamps.purge_all(micros_of(ahead));
        self.shared.cache.clear();
        self.shared.purges.fetch_add(1, Relaxed);
        crate::metrics::export_count!("tower_response_cache_memory_purges_total", "kind" => "all"; 1);
    }

    /// Drops every entry but keeps the stamps: a tiered store starting afresh after its feed
    /// was lost refills from Redis, whose stamps judge the entries it reads back.
    #[cfg(feature = "redis")]
    pub(crate) fn clear(&self) {
        self.shared.cache.clear();
    }

    fn read(&self, key: &CacheKey) -> Lookup {
        let Some(slot) = self.shared.cache.get(key.as_bytes()) else {
            return Lookup::Miss;
        };
        let held = &*slot.0;
        if held.expires <= Instant::now() {
            drop(slot);
            self.shared.cache.remove(key.as_bytes());
            return Lookup::Miss;
        }
        match (&held.entry, &held.hold) {
            (Entry::Response(response), Some(hold)) => {
                match self.shared.stamps.judge_in(held.started, held.epoch, hold) {
                    Verdict::Valid => Lookup::Found(Entry::Response(response.clone())),
                    Verdict::SoftPurged => Lookup::SoftPurged(response.clone()),
                    Verdict::Purged => {
                        self.shared.invalidated.fetch_add(1, Relaxed);
                        self.shared.cache.remove(key.as_bytes());
                        Lookup::Purged
                    }
                }
            }
            (Entry::Response(_), None) => Lookup::Miss,
            (variants @ Entry::Variants(_), _) => Lookup::Found(variants.clone()),
        }
    }

    fn put_now(&self, key: CacheKey, entry: Entry, ttl: Duration, how: Admission) -> bool {
        if ttl.is_zero() {
            return false;
        }
        let tags = match &entry {
            Entry::Response(response) => Some(response.tags.len()),
            Entry::Variants(_) => None,
        };
        if weight(key.as_bytes().len(), &entry, tags) > self.shared.max_bytes {
            return false;
        }
        let (hold, started) = match &entry {
            Entry::Response(response) => {
                let started = micros(response.request_time);
                match self.shared.stamps.admit(started, &response.tags, how) {
                    Some(hold) => (Some(hold), started),
                    None => return false,
                }
            }
            Entry::Variants(_) => (None, 0),
        };
        let expires = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        let epoch = hold.as_ref().map_or(0, Hold::epoch);
        let slot = Slot(Arc::new(Held {
            entry,
            expires,
            started,
            epoch,
            hold,
        }));
        self.shared.cache.insert(key.into_bytes(), slot);
        true
    }

    /// Stores a copy of an entry that a shared store judged valid just now (the memory tier of
    /// a tiered store, refilled from Redis): its request may have started long ago, and it is
    /// checked against the purges this store learned recently instead of being refused for
    /// its age. Returns whether it was stored.
    #[cfg(feature = "redis")]
    pub(crate) fn put_copy(&self, key: CacheKey, entry: Entry, ttl: Duration) -> bool {
        self.put_now(key, entry, ttl, Admission::Copy)
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

impl Store for MemoryStore {
    fn handle_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.shared) as usize)
    }

    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        Ok(self.read(key))
    }

    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        Some(self.read(key))
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.put_now(key, entry, ttl, Admission::Write))
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.shared.cache.remove(key.as_bytes());
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
