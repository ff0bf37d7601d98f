//! Per-tag invalidation stamps: the no-resurrection mechanism of an in-process store, bounded
//! in bytes whatever the tags and however many purges.
//!
//! A purge records "tag `t` invalidated at instant `p`". An entry that carries `t` and whose
//! request started at or before `p` is invalid, whenever it was written. Two kinds of entry
//! need that record:
//!
//! - **Entries the store holds.** Every tag carried by a held entry has a [`Record`], keyed by
//!   a 128-bit keyed digest of the tag (never the tag itself), with the instants of its last
//!   hard and soft purge and a count of the entries holding it. An entry holds its tags
//!   through a [`Hold`] kept in its slot; when the last entry carrying a tag leaves the store
//!   (read as purged, expired, evicted, replaced, removed, cleared), the record goes too.
//!   Records are thus bounded by what the store holds, and the store charges each entry for
//!   its hold and a record's bytes per tag ([`HOLD_BYTES`], [`RECORD_BYTES`]), so they count
//!   against its `max_bytes`.
//! - **Responses in flight**, whose request started before a purge and which are written
//!   after it. A purge of a tag no held entry carries has nothing to invalidate in the store;
//!   it only has to outlive the requests in flight when it was made. Every purge is therefore
//!   also filed in a [`RecentPurges`] filter: a ring of [`SLOTS`] sketches, one per interval
//!   of `horizon / 2`, each a fixed array of 32-bit cells holding the latest instant of the
//!   purges whose digests select them, Bloom-style, so that 1,000,000 purges
//!   cost what 10 do. A write consults it only for a tag whose record is younger than the
//!   request (or has none), and is refused if the sketch says a purge of that tag may have
//!   come at or after the request's start. A false positive (other purges filled all the
//!   tag's cells with later instants) thus refuses a write, the safe side, and never
//!   invalidates a stored entry; a flood of purges only refuses writes of requests that
//!   were in flight during it. When the ring moves on, the oldest interval's purges are
//!   forgotten, and from then on writes whose request started before that interval's end
//!   are refused (`forgot`): a response to a request that started more than the in-flight
//!   horizon ago (default 60 s) is not stored if purges happened since.
//!
//! A purge-all raises a floor (writes whose request started before it are refused) and
//! starts a new epoch: entries admitted in an earlier epoch are invalid, so an entry that
//! raced the store being cleared is not served either.
//!
//! Nothing here degrades toward serving a purged entry: past a bound, writes are refused or
//! entries dropped, and an entry is only ever invalidated by a purge of a tag it carries (or
//! of a tag whose 128-bit keyed digest equals one it carries, a 2^-128 chance per pair).
//!
//! A purge is O(tags); a read takes the lock only when a purge happened after its entry's
//! request started and since the entry was last judged valid, and then looks up one record
//! per tag.

use super::PurgeMode;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

pub(crate) fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How a set of tags judges an entry that started at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Valid,
    SoftPurged,
    Purged,
}

/// A keyed 128-bit digest of a tag.
type Digest = u128;

/// The bytes an entry is charged for each of its tags: its digest in the hold, and its share
/// of the record table (key, record, control byte, load-factor slack).
pub(crate) const RECORD_BYTES: u64 = 80;

/// The bytes an entry is charged for its hold (the shared allocation and its digest list).
pub(crate) const HOLD_BYTES: u64 = 104;

/// Bitmaps in the recent-purge ring. Each covers `horizon / 2`, so the three intervals
/// before the newest one always cover the horizon, plus up to `horizon / 2` of stamps made
/// ahead of the clock (a remote store's clock-skew margin).
const SLOTS: u64 = 4;

/// The instants of a carried tag's purges, and how many held entries carry it.
#[derive(Debug, Clone, Copy)]
struct Record {
    holds: u32,
    /// Every purge of this tag stamped after this instant is recorded here; purges before
    /// it may predate the record and are only in the filter.
    complete_after: u64,
    hard: u64,
    soft: u64,
}

/// Digests are already keyed hashes: the table uses their low bits as they are.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

type Records = HashMap<Digest, Record, BuildHasherDefault<DigestHasher>>;

/// Recent purges of any tag, by interval, in fixed-size sketches of their instants.
///
/// Each slot holds one interval of `width` µs in 32-bit cells. A purge of digest `d` at
/// instant `p` raises the four cells `d` selects to `p`, stored as 1 + its offset in µs from
/// the interval's start (0 means empty). A write that started at `s` may be concerned iff `s`
/// is at or before the smallest of its four cells: exact for a tag purged once, never too
/// early, too late only when other purges at or after `s` filled all four cells (a false
/// positive: the write is refused). Requests that start after a burst of purges are
/// therefore never refused by it.
#[derive(Debug)]
struct RecentPurges {
    /// Length of one interval, µs (below 2^32).
    width: u64,
    /// Cells per slot minus one (a power of two minus one).
    mask: u64,
    /// Per slot: the interval it holds and its cells (allocated on first use).
    slots: [(Option<u64>, Box<[u32]>); SLOTS as usize],
    /// Writes whose request started before this instant are refused: purges up to it were
    /// dropped from the ring.
    forgot: u64,
}

impl RecentPurges {
    fn new(horizon: Duration, bytes: usize) -> Self {
        let width = (micros_of(horizon) / 2).clamp(1, u64::from(u32::MAX - 1));
        let per_slot = (bytes as u64 / SLOTS / 4).clamp(1 << 10, 1 << 32);
        // Round down to a power of two, so that a position is a mask of the digest.
        let cells = 1u64 << (63 - per_slot.leading_zeros());
        RecentPurges {
            width,
            mask: cells - 1,
            slots: Default::default(),
            forgot: 0,
        }
    }

    fn positions(&self, digest: Digest) -> [usize; 4] {
        std::array::from_fn(|i| (((digest >> (32 * i)) as u64 & 0xFFFF_FFFF) & self.mask) as usize)
    }

    fn file(&mut self, digest: Digest, at: u64) {
        let interval = at / self.width;
        let cells = (self.mask + 1) as usize;
        let positions = self.positions(digest);
        let width = self.width;
        let (held, sketch) = &mut self.slots[(interval % SLOTS) as usize];
        match *held {
            Some(h) if h == interval => {}
            Some(h) if h > interval => {
                // Older than what this slot can hold (a purge stamped with an instant long
                // past): refuse every write it could concern instead.
                self.forgot = self.forgot.max(at.saturating_add(1));
                return;
            }
            previous => {
                if let Some(h) = previous {
                    // The interval this slot held is forgotten: so are writes from before its end.
                    self.forgot = self.forgot.max((h + 1).saturating_mul(width));
                    sketch.fill(0);
                } else {
                    *sketch = vec![0u32; cells].into_boxed_slice();
                }
                *held = Some(interval);
            }
        }
        // At most u32::MAX: `at - start` is below `width`.
        let value = (at - interval * width + 1) as u32;
        for p in positions {
            sketch[p] = sketch[p].max(value);
        }
    }

    /// Whether a purge of `digest` may have been stamped at or after `started`.
    fn may_hold(&self, digest: Digest, started: u64) -> bool {
        let positions = self.positions(digest);
        self.slots.iter().any(|(held, sketch)| match held {
            Some(h) => {
                let least = positions.iter().map(|&p| sketch[p]).min().unwrap_or(0);
                least > 0 && started < (h * self.width).saturating_add(u64::from(least))
            }
            None => false,
        })
    }

    fn bytes(&self) -> usize {
        self.slots.iter().map(|(_, s)| s.len() * 4).sum()
    }
}

#[derive(Debug)]
struct Inner {
    records: Records,
    recent: RecentPurges,
    /// Writes whose request started at or before this instant are refused (purge-all).
    floor: u64,
    /// When the floor was last raised.
    floor_raised: u64,
    /// The furthest ahead of the clock any purge was stamped.
    max_ahead: u64,
}

/// The stamps of one store. Shared (`Arc`) with the holds of the entries it admitted.
#[derive(Debug)]
pub(crate) struct TagStamps {
    inner: Mutex<Inner>,
    /// The latest stamp of any kind: entries younger than this need no lookup.
    latest: AtomicU64,
    /// Purge-alls so far: entries admitted in an earlier epoch are invalid.
    epoch: AtomicU64,
    /// Purges so far, counted once each has stamped its records: a hold judged valid at one
    /// count stays valid until it moves.
    purges: AtomicU64,
    horizon: u64,
    keys: (RandomState, RandomState),
}

/// An admitted entry's claim on the records of its tags, released when the entry leaves the
/// store (the last clone of its slot is dropped).
///
/// Never drop a hold while the stamps' lock is held: its `Drop` takes it.
#[derive(Debug)]
pub(crate) struct Hold {
    stamps: Arc<TagStamps>,
    digests: Box<[Digest]>,
    epoch: u64,
    /// 1 + the purge count at which the entry was last judged valid (0: never), so that
    /// reads after an unrelated purge take the lock once, not every time.
    valid_at: AtomicU64,
}

impl Hold {
    pub(crate) fn tags(&self) -> usize {
        self.digests.len()
    }

    /// The purge-all epoch the entry was admitted in.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut inner = self.stamps.lock();
        release(&mut inner.records, &self.digests);
    }
}

fn release(records: &mut Records, digests: &[Digest]) {
    for digest in digests {
        if let Some(record) = records.get_mut(digest) {
            record.holds -= 1;
            if record.holds == 0 {
                // Its purges stay in the filter for writes still in flight.
                records.remove(digest);
            }
        }
    }
    if records.capacity() > 1024 && records.len() * 4 < records.capacity() {
        records.shrink_to(records.len() * 2);
    }
}

/// How an entry offered to the store is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A response written after its request: refused if a purge of one of its tags (or a
    /// purge-all) came at or after its start, or if that can no longer be known.
    Write,
    /// A copy of an entry that a shared store has just judged valid (the memory tier of a
    /// tiered store refilling from Redis): its start may be long past, but every purge the
    /// shared store had not yet recorded when it answered is one this store learned within
    /// the horizon, so it is checked against the filter and a purge-all of the horizon only,
    /// instead of being refused as too old.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // only the tiered store copies
    Copy,
}

impl TagStamps {
    /// Stamps that remember purges of tags no held entry carries for at least `horizon`, in
    /// a filter of `filter_bytes`.
    pub(crate) fn new(horizon: Duration, filter_bytes: usize) -> Arc<Self> {
        Arc::new(TagStamps {
            inner: Mutex::new(Inner {
                records: Records::default(),
                recent: RecentPurges::new(horizon, filter_bytes),
                floor: 0,
                floor_raised: 0,
                max_ahead: 0,
            }),
            latest: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            horizon: micros_of(horizon),
            keys: (RandomState::new(), RandomState::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(&self, tag: &str) -> Digest {
        let half = |keys: &RandomState| {
            let mut h = keys.build_hasher();
            h.write(tag.as_bytes());
            h.finish()
        };
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    /// Admits an entry whose request started at `started`, carrying `tags`: returns its hold,
    /// or `None` if it must not be stored.
    pub(crate) fn admit(self: &Arc<Self>, started: u64, tags: &[String], how: Admission) -> Option<Hold> {
        let digests: Box<[Digest]> = tags.iter().map(|t| self.digest(t)).collect();
        let now = now_micros();
        let mut inner = self.lock();
        let floor_applies = how == Admission::Write || inner.floor_raised.saturating_add(self.horizon) >= now;
        if floor_applies && started <= inner.floor {
            return None;
        }
        let complete_after = now.saturating_add(inner.max_ahead);
        let inner = &mut *inner;
        for (i, digest) in digests.iter().enumerate() {
            let record = inner.records.entry(*digest).or_insert(Record {
                holds: 0,
                complete_after,
                hard: 0,
                soft: 0,
            });
            record.holds += 1;
            let refused = started <= record.hard
                || (started <= record.complete_after
                    && ((how == Admission::Write && started < inner.recent.forgot)
                        || inner.recent.may_hold(*digest, started)));
            if refused {
                release(&mut inner.records, &digests[..=i]);
                return None;
            }
        }
        Some(Hold {
            stamps: self.clone(),
            digests,
            epoch: self.epoch.load(Ordering::Acquire),
            valid_at: AtomicU64::new(0),
        })
    }

    /// Judges a held entry whose request started at `started`.
    pub(crate) fn judge(&self, started: u64, hold: &Hold) -> Verdict {
        self.judge_in(started, hold.epoch, hold)
    }

    /// Judges a held entry whose request started at `started`, admitted in `epoch` (its
    /// hold's, copied beside the entry so that a read touches the hold only when a purge
    /// came after the request started).
    pub(crate) fn judge_in(&self, started: u64, epoch: u64, hold: &Hold) -> Verdict {
        if epoch != self.epoch.load(Ordering::Acquire) {
            return Verdict::Purged;
        }
        if started > self.latest.load(Ordering::Acquire) {
            return Verdict::Valid;
        }
        // Read before the lock: every purge it counts has stamped its records by then.
        let purges = self.purges.load(Ordering::Acquire);
        if hold.valid_at.load(Ordering::Relaxed) == purges + 1 {
            return Verdict::Valid;
        }
        let inner = self.lock();
        let mut verdict = Verdict::Valid;
        for digest in hold.digests.iter() {
            // A held entry's records exist; one missing could not be judged.
            let Some(record) = inner.records.get(digest) else {
                return Verdict::Purged;
            };
            if started <= record.hard {
                return Verdict::Purged;
            }
            if started <= record.soft {
                verdict = Verdict::SoftPurged;
            }
        }
        if verdict == Verdict::Valid {
            hold.valid_at.store(purges + 1, Ordering::Relaxed);
        }
        verdict
    }

    /// Stamps `tags` now, or `ahead_us` later (to match a remote store's clock-skew margin).
    /// Returns the stamp.
    pub(crate) fn purge(&self, tags: &[String], mode: PurgeMode, ahead_us: u64) -> u64 {
        self.purge_at(tags, mode, now_micros().saturating_add(ahead_us))
    }

    /// Stamps `tags` at instant `at` (µs), which may lie ahead of the clock or behind it (a
    /// purge requested earlier and applied late).
    pub(crate) fn purge_at(&self, tags: &[String], mode: PurgeMode, at: u64) -> u64 {
        let digests: Vec<Digest> = tags.iter().map(|t| self.digest(t)).collect();
        let now = now_micros();
        let mut inner = self.lock();
        inner.max_ahead = inner.max_ahead.max(at.saturating_sub(now));
        for digest in digests {
            if let Some(record) = inner.records.get_mut(&digest) {
                let stamp = match mode {
                    PurgeMode::Hard => &mut record.hard,
                    PurgeMode::Soft => &mut record.soft,
                };
                *stamp = (*stamp).max(at);
            }
            inner.recent.file(digest, at);
        }
        self.latest.fetch_max(at, Ordering::AcqRel);
        // Last, under the lock: a read that sees this count sees the records above.
        self.purges.fetch_add(1, Ordering::AcqRel);
        at
    }

    /// Invalidates everything that started until now (or `ahead_us` later).
    pub(crate) fn purge_all(&self, ahead_us: u64) {
        let now = now_micros();
        let at = now.saturating_add(ahead_us);
        let mut inner = self.lock();
        inner.floor = inner.floor.max(at);
        inner.floor_raised = now;
        inner.max_ahead = inner.max_ahead.max(ahead_us);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.latest.fetch_max(at, Ordering::AcqRel);
        self.purges.fetch_add(1, Ordering::AcqRel);
    }

    /// Tags carried by held entries.
    pub(crate) fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Bytes of the record table and the filter.
    pub(crate) fn bytes(&self) -> u64 {
        let inner = self.lock();
        let slot = std::mem::size_of::<(Digest, Record)>() + 1;
        (inner.records.capacity() * slot + inner.recent.bytes()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn stamps() -> Arc<TagStamps> {
        TagStamps::new(MINUTE, 1 << 20)
    }

    #[test]
    fn entries_started_before_a_purge_are_invalid() {
        let stamps = stamps();
        let before = now_micros();
        let held = stamps.admit(before, &tags(&["a", "b"]), Admission::Write).unwrap();
        let other = stamps.admit(before, &tags(&["b"]), Admission::Write).unwrap();
        let at = stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        assert!(at >= before);
        assert_eq!(stamps.judge(before, &held), Verdict::Purged);
        assert_eq!(stamps.judge(before, &other), Verdict::Valid);
        let later = stamps.admit(now_micros() + 1, &tags(&["a"]), Admission::Write).unwrap();
        assert_eq!(stamps.judge(now_micros() + 1, &later), Verdict::Valid);
    }

    #[test]
    fn soft_purge_makes_stale_and_hard_wins() {
        let stamps = stamps();
        let started = now_micros();
        let held = stamps.admit(started, &tags(&["a", "b"]), Admission::Write).unwrap();
        stamps.purge(&tags(&["a"]), PurgeMode::Soft, 0);
        assert_eq!(stamps.judge(started, &held), Verdict::SoftPurged);
        stamps.purge(&tags(&["b"]), PurgeMode::Hard, 0);
        assert_eq!(stamps.judge(started, &held), Verdict::Purged);
    }

    #[test]
    fn a_write_that_started_before_a_purge_of_an_uncarried_tag_is_refused() {
        let stamps = stamps();
        let started = now_micros();
        stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        assert_eq!(stamps.len(), 0, "no entry carries the tag: nothing is recorded for it");
        assert!(stamps.admit(started, &tags(&["a"]), Admission::Write).is_none());
        assert!(stamps.admit(started, &tags(&["b"]), Admission::Write).is_some());
        assert!(stamps
            .admit(now_micros() + 1, &tags(&["a"]), Admission::Write)
            .is_some());
        // Soft purges refuse such writes too (the safe side).
        let started = now_micros();
        stamps.purge(&tags(&["c"]), PurgeMode::Soft, 0);
        assert!(stamps.admit(started, &tags(&["c"]), Admission::Write).is_none());
    }

    #[test]
    fn a_record_created_after_a_purge_does_not_hide_it() {
        let stamps = stamps();
        let slow = now_micros();
        stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        // A fresh entry creates the record after the purge; the slow one is still refused.
        let _fresh = stamps.admit(now_micros() + 1, &tags(&["a"]), Admission::Write).unwrap();
        assert!(stamps.admit(slow, &tags(&["a"]), Admission::Write).is_none());
    }

    #[test]
    fn records_go_with_the_last_entry_carrying_them() {
        let stamps = stamps();
        let started = now_micros();
        let one = stamps.admit(started, &tags(&["a", "b"]), Admission::Write).unwrap();
        let two = stamps.admit(started, &tags(&["a"]), Admission::Write).unwrap();
        assert_eq!(stamps.len(), 2);
        drop(one);
        assert_eq!(stamps.len(), 1);
        stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        drop(two);
        assert_eq!(stamps.len(), 0);
        // The purge is still known to writes in flight.
        assert!(stamps.admit(started, &tags(&["a"]), Admission::Write).is_none());
    }

    #[test]
    fn a_refused_write_leaves_no_record() {
        let stamps = stamps();
        let started = now_micros();
        stamps.purge(&tags(&["z"]), PurgeMode::Hard, 0);
        assert!(stamps
            .admit(started, &tags(&["x", "y", "z"]), Admission::Write)
            .is_none());
        assert_eq!(stamps.len(), 0);
    }

    #[test]
    fn a_purge_does_not_refuse_the_refill_that_follows_it() {
        let stamps = stamps();
        let old = stamps.admit(now_micros(), &tags(&["page"]), Admission::Write).unwrap();
        stamps.purge(&tags(&["page"]), PurgeMode::Hard, 0);
        drop(old); // read as purged and dropped
        assert!(stamps
            .admit(now_micros() + 1, &tags(&["page"]), Admission::Write)
            .is_some());
    }

    #[test]
    fn a_flood_of_purges_of_uncarried_tags_costs_no_more_than_one() {
        let stamps = TagStamps::new(MINUTE, 4 << 20);
        let started = now_micros();
        let held = stamps.admit(started, &tags(&["page"]), Admission::Write).unwrap();
        stamps.purge(&tags(&["first"]), PurgeMode::Hard, 0);
        let one = stamps.bytes();
        let long = "x".repeat(4096);
        for i in 0..200_000 {
            let tag = if i % 100 == 0 {
                format!("path:/{i}/{long}")
            } else {
                format!("path:/{i}")
            };
            stamps.purge(&[tag], PurgeMode::Hard, 0);
        }
        // One sketch of 1 MiB, or two if the flood crossed into the next interval: at most
        // four, whatever comes after.
        assert!(
            stamps.bytes() <= one + (1 << 20),
            "{} after, {one} before",
            stamps.bytes()
        );
        assert!(one <= 2 << 20, "{one}");
        assert_eq!(stamps.len(), 1);
        assert_eq!(
            stamps.judge(started, &held),
            Verdict::Valid,
            "an unrelated entry stays valid"
        );
        // Requests that start after the flood are never refused by it.
        let after = now_micros() + 1;
        assert!((0..10_000).all(|i| stamps.admit(after, &[format!("new:{i}")], Admission::Write).is_some()));
        // Requests in flight during it may be (false positives, the safe side): with 800,000
        // cell writes into 262,144 cells per slot, most are.
        let refused = (0..10_000)
            .filter(|i| stamps.admit(started, &[format!("new:{i}")], Admission::Write).is_none())
            .count();
        eprintln!("in-flight writes of new tags refused after the flood: {refused} of 10000");
        assert_eq!(stamps.len(), 1, "refused writes leave no record");
    }

    #[test]
    fn purges_forgotten_by_the_ring_refuse_older_writes() {
        let stamps = TagStamps::new(Duration::from_millis(2), 1 << 16);
        let started = now_micros();
        // Purges in six successive intervals of 1 ms: four slots cannot hold them all.
        for i in 0..6 {
            stamps.purge(&[format!("t{i}")], PurgeMode::Hard, 0);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(stamps.admit(started, &tags(&["unrelated"]), Admission::Write).is_none());
        assert!(stamps
            .admit(now_micros(), &tags(&["unrelated"]), Admission::Write)
            .is_some());
    }

    #[test]
    fn a_purge_stamped_long_ago_refuses_writes_from_before_it() {
        let stamps = TagStamps::new(Duration::from_millis(10), 1 << 16);
        let old = now_micros() - 1_000_000;
        stamps.purge(&tags(&["now"]), PurgeMode::Hard, 0);
        stamps.purge_at(&tags(&["late"]), PurgeMode::Hard, old);
        assert!(stamps.admit(old - 1, &tags(&["late"]), Admission::Write).is_none());
        assert!(stamps.admit(now_micros(), &tags(&["late"]), Admission::Write).is_some());
    }

    #[test]
    fn copies_of_old_entries_are_checked_against_the_filter_only() {
        let stamps = stamps();
        let long_ago = now_micros() - 3_600_000_000;
        stamps.purge(&tags(&["a"]), PurgeMode::Hard, 0);
        assert!(stamps.admit(long_ago, &tags(&["a"]), Admission::Copy).is_none());
        assert!(stamps.admit(long_ago, &tags(&["b"]), Admission::Copy).is_some());
    }

    #[test]
    fn purge_all_invalidates_admitted_entries_and_refuses_older_writes() {
        let stamps = stamps();
        let started = now_micros();
        let held = stamps.admit(started, &tags(&[]), Admission::Write).unwrap();
        stamps.purge_all(0);
        assert_eq!(stamps.judge(started, &held), Verdict::Purged);
        assert!(stamps.admit(started, &tags(&[]), Admission::Write).is_none());
        let fresh = now_micros() + 1;
        let held = stamps.admit(fresh, &tags(&["a"]), Admission::Write).unwrap();
        assert_eq!(stamps.judge(fresh, &held), Verdict::Valid);
    }

    #[test]
    fn a_valid_verdict_is_kept_only_until_the_next_purge() {
        let stamps = stamps();
        let started = now_micros();
        let held = stamps.admit(started, &tags(&["a"]), Admission::Write).unwrap();
        stamps.purge(&tags(&["other"]), PurgeMode::Hard, 0);
        assert_eq!(stamps.judge(started, &held), Verdict::Valid);
        assert_eq!(stamps.judge(started, &held), Verdict::Valid, "kept");
        // A purge stamped in the past moves no `latest`, but is seen all the same.
        stamps.purge_at(&tags(&["a"]), PurgeMode::Soft, started);
        assert_eq!(stamps.judge(started, &held), Verdict::SoftPurged);
        stamps.purge_at(&tags(&["a"]), PurgeMode::Hard, started);
        assert_eq!(stamps.judge(started, &held), Verdict::Purged);
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
