//! Per-tag invalidation stamps: the no-resurrection mechanism of an in-process store.
//!
//! A purge records "tag `t` invalidated at instant `p`". An entry whose request started at or
//! before `p` and that carries `t` is invalid, whenever it was written. A purge is therefore
//! O(tags), and the bookkeeping is bounded: stamps older than the longest entry lifetime are
//! dropped (no live entry can predate them without having been refused when written), and
//! when too many tags are stamped the oldest stamps fold into one global floor, which can
//! only invalidate more, never less.

use super::PurgeMode;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, never going backwards within the process, so that a
/// purge is always stamped after every request that started before it.
pub(crate) fn now_micros() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let wall = micros(SystemTime::now());
    let prev = LAST.fetch_max(wall, Ordering::AcqRel);
    wall.max(prev)
}

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// How a set of tags judges an entry that started at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    SoftPurged,
    Purged,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stamp {
    hard: u64,
    soft: u64,
}

impl Stamp {
    fn latest(self) -> u64 {
        self.hard.max(self.soft)
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_tag: HashMap<Box<str>, Stamp>,
    /// (latest stamp, tag), to find the oldest stamps.
    by_age: BTreeSet<(u64, Box<str>)>,
    /// Entries that started at or before this instant are invalid (purge-all, folded stamps).
    floor: u64,
    /// Stamps before this instant were dropped as older than any live entry; an entry that
    /// started before it cannot be checked any more and is refused when written.
    write_floor: u64,
}

#[derive(Debug)]
pub(crate) struct TagStamps {
    inner: Mutex<Inner>,
    /// The latest stamp of any kind: entries younger than this need no lookup.
    latest: AtomicU64,
    /// The longest lifetime of any entry written, in microseconds.
    retention: AtomicU64,
    max_tags: usize,
}

impl TagStamps {
    pub(crate) fn new(max_tags: usize) -> Self {
        TagStamps {
            inner: Mutex::default(),
            latest: AtomicU64::new(0),
            retention: AtomicU64::new(0),
            max_tags: max_tags.max(1),
        }
    }

    /// Notes that an entry may live for `ttl_micros` past its write.
    pub(crate) fn retain_for(&self, ttl_micros: u64) {
        self.retention.fetch_max(ttl_micros, Ordering::Relaxed);
    }

    pub(crate) fn judge<'t>(&self, started: u64, tags: impl IntoIterator<Item = &'t String>) -> Verdict {
        if started > self.latest.load(Ordering::Acquire) {
            return Verdict::Valid;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if started <= inner.floor {
            return Verdict::Purged;
        }
        let mut verdict = Verdict::Valid;
        for tag in tags {
            if let Some(stamp) = inner.by_tag.get(tag.as_str()) {
                if started <= stamp.hard {
                    return Verdict::Purged;
                }
                if started <= stamp.soft {
                    verdict = Verdict::SoftPurged;
                }
            }
        }
        verdict
    }

    /// Whether an entry that started at `started` may still be written.
    pub(crate) fn admits<'t>(&self, started: u64, tags: impl IntoIterator<Item = &'t String>) -> bool {
        let write_floor = self.inner.lock().unwrap_or_else(|p| p.into_inner()).write_floor;
        started >= write_floor && self.judge(started, tags) != Verdict::Purged
    }

    /// Stamps `tags` now, or `ahead_us` later (to match a remote store's clock-skew margin).
    /// Returns the stamp.
    pub(crate) fn purge(&self, tags: &[String], mode: PurgeMode, ahead_us: u64) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_micros();
        let at = now.saturating_add(ahead_us);
        for tag in tags {
            let stamp = inner.by_tag.entry(tag.as_str().into()).or_default();
            let old = stamp.latest();
            match mode {
                PurgeMode::Hard => stamp.hard = stamp.hard.max(at),
                PurgeMode::Soft => stamp.soft = stamp.soft.max(at),
            }
            let new = stamp.latest();
            inner.by_age.remove(&(old, tag.as_str().into()));
            inner.by_age.insert((new, tag.as_str().into()));
        }
        self.prune(&mut inner, now);
        self.latest.fetch_max(at, Ordering::AcqRel);
        at
    }

    /// Invalidates everything that started until now (or `ahead_us` later).
    pub(crate) fn purge_all(&self, ahead_us: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let at = now_micros().saturating_add(ahead_us);
        inner.floor = inner.floor.max(at);
        inner.by_tag.clear();
        inner.by_age.clear();
        self.latest.fetch_max(at, Ordering::AcqRel);
    }

    fn prune(&self, inner: &mut Inner, now: u64) {
        let horizon = now.saturating_sub(self.retention.load(Ordering::Relaxed));
        while let Some(first) = inner.by_age.first() {
            let (at, _) = *first;
            let expired = at < horizon;
            if !expired && inner.by_age.len() <= self.max_tags {
                break;
            }
            let (at, tag) = inner.by_age.pop_first().expect("checked non-empty");
            inner.by_tag.remove(&tag);
            if expired {
                inner.write_floor = inner.write_floor.max(at + 1);
            } else {
                // Forgetting a live stamp must not forget the invalidation it carried.
                inner.floor = inner.floor.max(at);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_tag.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_started_before_a_purge_are_invalid() {
        let stamps = TagStamps::new(100);
        stamps.retain_for(60_000_000);
        let before = now_micros();
        let at = stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        assert!(at >= before);
        assert_eq!(stamps.judge(before, &tags(&["a", "b"])), Verdict::Purged);
        assert_eq!(stamps.judge(before, &tags(&["b"])), Verdict::Valid);
        assert_eq!(stamps.judge(now_micros(), &tags(&["a"])), Verdict::Valid);
    }

    #[test]
    fn soft_purge_makes_stale_and_hard_wins() {
        let stamps = TagStamps::new(100);
        stamps.retain_for(60_000_000);
        let started = now_micros();
        stamps.purge(&tags(&["a"]), PurgeMode::Soft, 0);
        assert_eq!(stamps.judge(started, &tags(&["a"])), Verdict::SoftPurged);
        stamps.purge(&tags(&["b"]), PurgeMode::Hard, 0);
        assert_eq!(stamps.judge(started, &tags(&["a", "b"])), Verdict::Purged);
    }

    #[test]
    fn overflowing_tags_fold_into_the_floor() {
        let stamps = TagStamps::new(3);
        stamps.retain_for(u64::MAX / 4);
        let started = now_micros();
        for i in 0..10 {
            stamps.purge(&tags(&[&format!("t{i}")]), PurgeMode::Hard, 0);
        }
        assert_eq!(stamps.len(), 3);
        // t0 was forgotten, yet what it invalidated stays invalid.
        assert_eq!(stamps.judge(started, &tags(&["t0"])), Verdict::Purged);
        assert_eq!(stamps.judge(now_micros(), &tags(&["t0"])), Verdict::Valid);
    }

    #[test]
    fn stamps_older_than_any_entry_are_dropped() {
        let stamps = TagStamps::new(1000);
        stamps.retain_for(0);
        for i in 0..50 {
            stamps.purge(&tags(&[&format!("t{i}")]), PurgeMode::Hard, 0);
        }
        assert!(stamps.len() <= 2, "{}", stamps.len());
    }

    #[test]
    fn a_write_that_started_before_a_dropped_stamp_is_refused() {
        let stamps = TagStamps::new(1000);
        let started = now_micros();
        // No entry lives yet, so the stamp is dropped at once; the slow write must not pass.
        stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        stamps.purge(&tags(&["b"]), PurgeMode::Hard, 0);
        assert!(!stamps.admits(started, &tags(&["a"])));
        assert!(stamps.admits(now_micros() + 1, &tags(&["a"])));
    }

    #[test]
    fn clock_never_goes_backwards() {
        let mut last = 0;
        for _ in 0..1000 {
            let now = now_micros();
            assert!(now >= last);
            last = now;
        }
    }
}
