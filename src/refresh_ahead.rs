//! Refresh-ahead: hot entries refreshed in the background shortly before they expire, so
//! that a key read all the time never misses.
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

/// Refreshes entries read often shortly before they expire, in the background, so that hot
/// keys never miss. Off by default; turned on by
/// [`CacheLayerBuilder::refresh_ahead`](crate::CacheLayerBuilder::refresh_ahead).
///
/// An entry is refreshed ahead when a request reads it fresh within the last
/// [`window`](Self::window) of its freshness lifetime (10% by default), after at least
/// [`min_reads`](Self::min_reads) reads there (3 by default), with a probability that grows
/// from 0 at the window's start to 1 at expiry. The refresh is the one stale-while-revalidate
/// makes (one per key in a process, one per fleet with a store that leases; conditional
/// when the entry has a validator), while every request keeps being answered from the
/// entry. A key read fewer times in its window is never refreshed: it expires and misses.
///
/// A HEAD request never starts one; neither does a request that must reach the origin
/// anyway (ranges, request directives asking for newer).
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

    /// Whether this read of the fresh `entry` under `key` starts a refresh ahead of expiry.
    /// Outside the window it reads nothing shared.
    pub(crate) fn due(&self, key: &CacheKey, entry: &CachedResponse, now: SystemTime) -> bool {
        let lifetime = entry.lifetime.as_secs_f64();
        let window = lifetime * self.settings.window;
        let left = entry.ttl(now).as_secs_f64();
        if window <= 0.0 || left >= window || entry.no_cache {
            return false;
        }
        // One count per stored response: a refreshed entry starts from zero.
        let mut hasher = self.hasher.build_hasher();
        key.hash(&mut hasher);
        entry.response_time.hash(&mut hasher);
        let hash = hasher.finish();
        let fingerprint = hash >> 32;
        let slot = &self.reads[(hash as usize) % SLOTS];
        if count(slot, fingerprint, self.settings.min_reads) < self.settings.min_reads {
            return false;
        }
        // Likelier as expiry nears: 0 at the window's start, 1 at its end.
        let into = 1.0 - left / window;
        draw(hash, now) < into
    }
}

/// Counts one read of the entry `fingerprint` in `slot` (taking the slot over from another
/// entry), up to `cap`; returns the reads counted.
fn count(slot: &AtomicU64, fingerprint: u64, cap: u32) -> u32 {
    let mut current = slot.load(Relaxed);
    loop {
        let reads = if current >> 32 == fingerprint {
            (current & u64::from(u32::MAX)) as u32
        } else {
            0
        };
        if reads >= cap {
            // Counted enough: no more writes to a slot that every read of a hot key shares.
            return reads;
        }
        let next = (fingerprint << 32) | u64::from(reads + 1);
        match slot.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return reads + 1,
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
        let now = entry.response_time + Duration::from_millis(99_999);
        assert!(!ahead.due(&key("/a"), &entry, now));
        assert!(!ahead.due(&key("/a"), &entry, now));
        assert!(ahead.due(&key("/a"), &entry, now), "the third read is due");
        // Another key (or a refreshed entry of the same key) counts from zero.
        assert!(!ahead.due(&key("/b"), &entry, now));
        let refreshed = response("x", &[], Duration::from_secs(100));
        let now = refreshed.response_time + Duration::from_millis(99_999);
        assert!(!ahead.due(&key("/a"), &refreshed, now));
    }

    #[test]
    fn due_grows_likelier_towards_expiry() {
        let ahead = Ahead::new(RefreshAhead::new().min_reads(1));
        let entry = response("x", &[], Duration::from_secs(100));
        let share = |into_window_ms: u64| {
            let now = entry.response_time + Duration::from_millis(90_000 + into_window_ms);
            (0..4000).filter(|_| ahead.due(&key("/a"), &entry, now)).count() as f64 / 4000.0
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
