//! No resurrection for stores written outside this crate: [`PurgeStamps`], the purge
//! bookkeeping of [`MemoryStore`](super::MemoryStore), for any store whose entries live in
//! this process.

use super::stamps::{micros, Admission, Hold, TagStamps, Verdict};
use super::{request_clock, Entry, Lookup, PurgeMode};
use std::sync::Arc;
use std::time::Duration;

/// The purge bookkeeping a store needs to uphold the no-resurrection rule of [`Store`](super::Store),
/// for a store that keeps its entries in this process (a map, an arena, an embedded
/// database): the store calls it around its own reads and writes and keeps what it returns.
///
/// - `put`: [`admit`](Self::admit) the entry; `None` means the store must decline it (return
///   `Ok(false)`); otherwise keep the returned [`StampedEntry`] instead of the entry.
/// - `get`: [`judge`](Self::judge) the stamped entry found; on [`Lookup::Purged`] remove it
///   (dropping it releases its tags' records).
/// - `purge` and `purge_all`: forward them here (and, for `purge_all`, drop the entries if
///   you like: they are judged purged either way).
///
/// Purges cost O(tags), whatever the store holds, and the bookkeeping is bounded in bytes
/// (per stored entry, plus a fixed-size filter of recent purges), as in `MemoryStore`. Expiry
/// stays the store's job. Entries stored in another process are out of its reach: a store
/// shared by several processes needs its stamps where its entries are, as `RedisStore` keeps
/// them in Redis.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tower_response_cache::store::{Entry, Lookup, PurgeMode, PurgeStamps, StampedEntry, Store, StoreError};
/// use tower_response_cache::CacheKey;
///
/// #[derive(Clone, Default)]
/// struct MapStore {
///     entries: Arc<Mutex<HashMap<CacheKey, StampedEntry>>>,
///     stamps: PurgeStamps,
/// }
///
/// impl Store for MapStore {
///     async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
///         let found = self.entries.lock().unwrap().get(key).cloned();
///         let Some(stamped) = found else { return Ok(Lookup::Miss) };
///         let lookup = self.stamps.judge(&stamped);
///         if matches!(lookup, Lookup::Purged) {
///             self.entries.lock().unwrap().remove(key);
///         }
///         Ok(lookup)
///     }
///     async fn put(&self, key: CacheKey, entry: Entry, _ttl: Duration) -> Result<bool, StoreError> {
///         let Some(stamped) = self.stamps.admit(entry) else { return Ok(false) };
///         self.entries.lock().unwrap().insert(key, stamped);
///         Ok(true)
///     }
///     async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
///         self.entries.lock().unwrap().remove(key);
///         Ok(())
///     }
///     async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
///         self.stamps.purge(tags, mode);
///         Ok(())
///     }
///     async fn purge_all(&self) -> Result<(), StoreError> {
///         self.stamps.purge_all();
///         Ok(())
///     }
/// }
/// ```
///
/// (A real store also expires entries after their `ttl`, and bounds its size.) With the
/// `test-util` feature, [`conformance::run`](super::conformance::run) checks such a store.
#[derive(Clone)]
pub struct PurgeStamps {
    stamps: Arc<TagStamps>,
}

/// An entry admitted by [`PurgeStamps::admit`], with its claim on its tags' purge records:
/// what a store keeps in place of the [`Entry`]. Cheap to clone.
#[derive(Clone)]
pub struct StampedEntry {
    entry: Entry,
    started: u64,
    hold: Arc<Hold>,
}

impl StampedEntry {
    /// The entry, for the store's own use (its size, to bound the store). Reads go through
    /// [`PurgeStamps::judge`], never straight to this.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl std::fmt::Debug for PurgeStamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PurgeStamps")
            .field("tags", &self.tags())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl std::fmt::Debug for StampedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampedEntry")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl Default for PurgeStamps {
    fn default() -> Self {
        Self::new()
    }
}

impl PurgeStamps {
    /// Stamps that remember a purge for 60 s for the responses in flight when it was made,
    /// in a filter of at most 4 MiB (as `MemoryStore`'s defaults).
    pub fn new() -> Self {
        Self::with_limits(Duration::from_secs(60), 4 << 20)
    }

    /// Stamps with `MemoryStore`'s limits set:
    /// [`in_flight_horizon`](super::MemoryStoreBuilder::in_flight_horizon) and
    /// [`purge_filter_bytes`](super::MemoryStoreBuilder::purge_filter_bytes).
    pub fn with_limits(in_flight_horizon: Duration, purge_filter_bytes: usize) -> Self {
        PurgeStamps {
            stamps: TagStamps::new(in_flight_horizon, purge_filter_bytes),
        }
    }

    /// Admits `entry` for storing, or `None` if the store must decline it: a purge of one of
    /// its tags (or a purge-all) came at or after its request started, or came so long ago
    /// that this can no longer be told.
    pub fn admit(&self, entry: Entry) -> Option<StampedEntry> {
        let (started, hold) = match &entry {
            Entry::Response(response) => {
                let started = micros(response.request_time);
                (started, self.stamps.admit(started, &response.tags, Admission::Write)?)
            }
            // Not a response, so no request of its own to judge: it counts from now, and
            // carries no tags, so only a purge-all invalidates it.
            Entry::Variants(_) => {
                let started = micros(request_clock());
                (started, self.stamps.admit(started, &[], Admission::Write)?)
            }
        };
        Some(StampedEntry {
            entry,
            started,
            hold: Arc::new(hold),
        })
    }

    /// What a read of `stamped` returns: [`Lookup::Found`], [`Lookup::SoftPurged`] or
    /// [`Lookup::Purged`] (then remove it from the store).
    pub fn judge(&self, stamped: &StampedEntry) -> Lookup {
        match (self.stamps.judge(stamped.started, &stamped.hold), &stamped.entry) {
            (Verdict::Valid, entry) => Lookup::Found(entry.clone()),
            (Verdict::SoftPurged, Entry::Response(response)) => Lookup::SoftPurged(response.clone()),
            (Verdict::SoftPurged, entry @ Entry::Variants(_)) => Lookup::Found(entry.clone()),
            (Verdict::Purged, _) => Lookup::Purged,
        }
    }

    /// Records a purge of `tags`, now.
    pub fn purge(&self, tags: &[String], mode: PurgeMode) {
        self.stamps.purge(tags, mode, 0);
    }

    /// Records a purge of everything, now.
    pub fn purge_all(&self) {
        self.stamps.purge_all(0);
    }

    /// Distinct tags carried by the entries admitted and still kept.
    pub fn tags(&self) -> usize {
        self.stamps.len()
    }

    /// Bytes of the bookkeeping: the records of kept entries' tags and the recent-purge filter.
    pub fn bytes(&self) -> u64 {
        self.stamps.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::testing::{response, started_at};

    fn entry(tags: &[&str]) -> Entry {
        Entry::Response(Arc::new(response("x", tags, Duration::from_secs(60))))
    }

    #[test]
    fn a_write_started_before_a_purge_of_its_tag_is_declined() {
        let stamps = PurgeStamps::new();
        let started = request_clock();
        stamps.purge(&["a".into()], PurgeMode::Hard);
        let late = |tags: &[&str]| Entry::Response(Arc::new(started_at(started, "x", tags, Duration::from_secs(60))));
        assert!(stamps.admit(late(&["a"])).is_none());
        assert!(stamps.admit(late(&["b"])).is_some());
        assert!(stamps.admit(entry(&["a"])).is_some(), "a request started after it");
    }

    #[test]
    fn reads_follow_purges_and_records_go_with_the_entries() {
        let stamps = PurgeStamps::new();
        let stamped = stamps.admit(entry(&["a", "b"])).unwrap();
        assert!(matches!(stamps.judge(&stamped), Lookup::Found(_)));
        assert_eq!(stamps.tags(), 2);
        stamps.purge(&["b".into()], PurgeMode::Soft);
        assert!(matches!(stamps.judge(&stamped), Lookup::SoftPurged(_)));
        stamps.purge(&["a".into()], PurgeMode::Hard);
        assert!(matches!(stamps.judge(&stamped), Lookup::Purged));
        let copy = stamped.clone();
        drop(stamped);
        assert_eq!(stamps.tags(), 2, "a clone still holds them");
        drop(copy);
        assert_eq!(stamps.tags(), 0);
    }

    #[test]
    fn purge_all_reaches_variants_entries_too() {
        let stamps = PurgeStamps::new();
        let variants = stamps
            .admit(Entry::Variants(vec![http::header::ACCEPT].into()))
            .unwrap();
        let response = stamps.admit(entry(&[])).unwrap();
        stamps.purge(&["a".into()], PurgeMode::Hard);
        assert!(matches!(stamps.judge(&variants), Lookup::Found(Entry::Variants(_))));
        stamps.purge_all();
        assert!(matches!(stamps.judge(&variants), Lookup::Purged));
        assert!(matches!(stamps.judge(&response), Lookup::Purged));
    }
}
