//! Refresh-ahead: hot entries refreshed in the background shortly before they expire, so
//! that a key read all the time does not miss.
//!
//! An entry is due once it is in the last part of its freshness lifetime (the window), has
//! been read there often enough (counted in a small table of counters, touched only by
//! reads in a window), and a random draw, likelier as expiry nears, says so: instances
//! that read the same hot key then refresh at different moments, and the fleet-wide lease
//! lets one of them call the origin.

use crate::entry::CachedResponse;
use crate::key::CacheKey;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters in the table of reads: enough that the hot keys of one window rarely share one.
const SLOTS: usize = 4096;

/// The count of a slot whose entry has had its refresh started: it is not started again.
const STARTED: u64 = u32::MAX as u64;

/// Refreshes entries read often shortly before they expire, in the background, so that hot
/// keys do not miss. Off by default; turned on by
/// [`CacheLayerBuilder::refresh_ahead`](crate::CacheLayerBuilder::refresh_ahead).
///
/// An entry is refreshed ahead when a request reads it fresh within the last
/// [`window`](Self::window) of the freshness it had when it arrived (10% by default), after
/// at least [`min_reads`](Self::min_reads) reads there (3 by default), with a probability
/// that grows from 0 at the window's start to 1 at expiry. The refresh is the one
/// stale-while-revalidate makes (one per key in a process, one per fleet with a store that
/// leases; conditional when the entry has a validator), while every request keeps being
/// answered from the entry. It is tried once per stored entry: if it fails (an origin error,
/// an answer not stored) the entry expires as usual. A key read fewer times in its window is
/// never refreshed: it expires and misses.
///
/// A HEAD request never starts one; neither does a request that must reach the origin
/// anyway (ranges, request directives asking for newer), nor one with credentials or an
/// identity reading an entry stored for everyone (the origin's answer to it could be its
/// own, and would take the shared entry's place).
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::{CacheLayer, MemoryStore, RefreshAhead};
///
/// let layer = CacheLayer::builder(MemoryStore::new())
///     .refresh_ahead(RefreshAhead::new().window(0.2).min_reads(5))
///     .build();
/// # drop(layer);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshAhead {
    window: f64,
    min_reads: u32,
}

impl Default for RefreshAhead {
    fn default() -> Self {
        Self::new()
    }
}

impl RefreshAhead {
    /// The last 10% of the lifetime, 3 reads.
    pub const fn new() -> Self {
        RefreshAhead {
            window: 0.1,
            min_reads: 3,
        }
    }

    /// The part of an entry's freshness lifetime, at its end, in which reads may refresh it:
    /// a fraction from 0 to 1 (clamped; not a number counts as 0, which refreshes nothing).
    pub fn window(mut self, fraction: f64) -> Self {
        self.window = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// Reads of an entry within its window before one may refresh it (at least 1).
    pub const fn min_reads(mut self, reads: u32) -> Self {
        self.min_reads = if reads == 0 { 1 } else { reads };
        self
    }
}

/// A layer's refresh-ahead: its settings and its table of reads in windows.
pub(crate) struct Ahead {
    settings: RefreshAhead,
    /// Per slot: the fingerprint of the entry counted (high half) and its reads (low half).
    reads: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Ahead {
    pub(crate) fn new(settings: RefreshAhead) -> Self {
        Ahead {
            settings,
            reads: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    /// Whether this read of the fresh `entry` under `key` starts a refresh ahead of expiry:
    /// true once per stored entry at most, so that a refresh that fails (an origin error, a
    /// response not stored) is not made again and again; the entry then expires as usual.
    /// Outside the window it reads nothing shared.
    pub(crate) fn due(&self, key: &CacheKey, entry: &CachedResponse, now: SystemTime) -> bool {
        // The window is a part of the freshness the entry had when it arrived: a copy that
        // came from a cache upstream with most of its lifetime spent is not due at once.
        let fresh_on_arrival = entry.lifetime.saturating_sub(entry.initial_age).as_secs_f64();
        let window = fresh_on_arrival * self.settings.window;
        let left = entry.ttl(now).as_secs_f64();
        if window <= 0.0 || left >= window || entry.no_cache {
            return false;
        }
        // One count per stored response, named as every store keeps it (to the µs): a
        // refreshed entry starts from zero, a copy of the same one does not.
        let mut hasher = self.hasher.build_hasher();
        key.hash(&mut hasher);
        micros(entry.response_time).hash(&mut hasher);
        let hash = hasher.finish();
        let fingerprint = hash >> 32;
        let slot = &self.reads[(hash as usize) % SLOTS];
        let cap = u64::from(self.settings.min_reads);
        let Some(current) = count(slot, fingerprint, cap) else {
            return false;
        };
        // Likelier as expiry nears: 0 at the window's start, 1 at its end.
        let into = 1.0 - left / window;
        // Of the reads drawn at once, the one that marks the slot starts the refresh.
        draw(hash, now) < into
            && slot
                .compare_exchange(current, (fingerprint << 32) | STARTED, Relaxed, Relaxed)
                .is_ok()
    }
}

/// The same stored response, as far as every store can tell (times to the µs).
pub(crate) fn same_response(a: &CachedResponse, b: &CachedResponse) -> bool {
    micros(a.response_time) == micros(b.response_time) && micros(a.request_time) == micros(b.request_time)
}

fn micros(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// Counts one read of the entry `fingerprint` in `slot` (taking the slot over from another
/// entry), up to `cap`. Returns the slot's value once `cap` reads are counted and its
/// refresh has not been started, `None` otherwise.
fn count(slot: &AtomicU64, fingerprint: u64, cap: u64) -> Option<u64> {
    let mut current = slot.load(Relaxed);
    loop {
        let reads = if current >> 32 == fingerprint {
            current & u64::from(u32::MAX)
        } else {
            0
        };
        if reads == STARTED {
            return None;
        }
        if reads >= cap {
            // Counted enough: no more writes to a slot that every read of a hot key shares.
            return Some(current);
        }
        let next = (fingerprint << 32) | (reads + 1);
        match slot.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) if reads + 1 >= cap => return Some(next),
            Ok(_) => return None,
            Err(seen) => current = seen,
        }
    }
}

/// A number in [0, 1), different on every call.
fn draw(hash: u64, now: SystemTime) -> f64 {
    let nanos = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).subsec_nanos();
    let random = std::collections::hash_map::RandomState::new().hash_one((hash, nanos));
    (random >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::testing::response;

    fn key(path: &str) -> CacheKey {
        CacheKey::from_bytes(path.as_bytes().to_vec())
    }

    #[test]
    fn outside_the_window_nothing_is_due() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(1));
        let entry = response("x", &[], Duration::from_secs(100));
        let now = entry.response_time + Duration::from_secs(50);
        assert!((0..1000).all(|_| !ahead.due(&key("/a"), &entry, now)));
        assert!(
            ahead.reads.iter().all(|slot| slot.load(Relaxed) == 0),
            "nothing counted"
        );
    }

    #[test]
    fn fewer_reads_than_the_minimum_are_never_due() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(3));
        let entry = response("x", &[], Duration::from_secs(100));
        // At the very end of the window, where a counted entry is due with certainty.
        let now = entry.response_time + Duration::from_micros(99_999_999);
        assert!(!ahead.due(&key("/a"), &entry, now));
        assert!(!ahead.due(&key("/a"), &entry, now));
        assert!(ahead.due(&key("/a"), &entry, now), "the third read is due");
        // Another key (or a refreshed entry of the same key) counts from zero.
        assert!(!ahead.due(&key("/b"), &entry, now));
        let refreshed = response("x", &[], Duration::from_secs(100));
        let now = refreshed.response_time + Duration::from_micros(99_999_999);
        assert!(!ahead.due(&key("/a"), &refreshed, now));
    }

    #[test]
    fn an_entry_is_due_once() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(1));
        let entry = response("x", &[], Duration::from_secs(100));
        let now = entry.response_time + Duration::from_micros(99_999_999);
        assert!(ahead.due(&key("/a"), &entry, now));
        assert!(
            (0..1000).all(|_| !ahead.due(&key("/a"), &entry, now)),
            "not started again"
        );
        assert!(ahead.due(&key("/b"), &entry, now), "another key is due on its own");
    }

    #[test]
    fn the_window_is_a_part_of_the_freshness_left_on_arrival() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(1));
        let mut entry = response("x", &[], Duration::from_secs(100));
        // Arrived with 90 s of its 100 s spent: 10 s fresh, the last 1 s of them the window.
        entry.initial_age = Duration::from_secs(90);
        let at = |ms| entry.response_time + Duration::from_millis(ms);
        assert!((0..1000).all(|_| !ahead.due(&key("/a"), &entry, at(8_500))));
        assert!(ahead.due(
            &key("/a"),
            &entry,
            entry.response_time + Duration::from_micros(9_999_999)
        ));
        entry.initial_age = Duration::from_secs(100);
        assert!(!ahead.due(&key("/c"), &entry, entry.response_time));
    }

    #[test]
    fn due_grows_likelier_towards_expiry() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(1));
        let entry = response("x", &[], Duration::from_secs(100));
        let share = |into_window_ms: u64| {
            // A key per draw: each entry is due once at most.
            let now = entry.response_time + Duration::from_millis(90_000 + into_window_ms);
            let due = (0..4000)
                .filter(|i| ahead.due(&key(&format!("/{into_window_ms}/{i}")), &entry, now))
                .count();
            due as f64 / 4000.0
        };
        let (early, middle, late) = (share(1_000), share(5_000), share(9_900));
        assert!(early < 0.2, "{early}");
        assert!((0.4..0.6).contains(&middle), "{middle}");
        assert!(late > 0.95, "{late}");
    }

    #[test]
    fn settings_are_clamped() {
        assert_eq!(RefreshAhead::new().window(f64::NAN).window, 0.0);
        assert_eq!(RefreshAhead::new().window(3.0).window, 1.0);
        assert_eq!(RefreshAhead::new().min_reads(0).min_reads, 1);
        let ahead = Ahead::new(RefreshAhead::new().window(0.0).min_reads(1));
        let entry = response("x", &[], Duration::from_secs(100));
        assert!(!ahead.due(&key("/a"), &entry, entry.response_time + Duration::from_millis(99_999)));
    }
}
