//! Purges that could not reach Redis: applied at once to what this instance reads from Redis,
//! kept in a bounded queue and retried until they land, each with the instant it was requested.
//!
//! The queue is bounded in bytes. A purge that would pass the bound turns the whole queue into
//! one purge-all (the safe side: it invalidates at least everything the dropped purges did),
//! which lands like any other queued purge.

use super::PurgeMode;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes a queued tag costs beyond its text: its string, its slot in the purge and in the
/// index that judges reads.
const TAG_OVERHEAD: usize = 64;

/// What a queued purge invalidates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PendingKind {
    Tags { tags: Vec<String>, mode: PurgeMode },
    All,
}

/// A purge waiting to land in Redis.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    id: u64,
    pub(crate) kind: PendingKind,
    /// When it was requested, on the monotonic clock: its age when it lands sets its stamp.
    pub(crate) requested: Instant,
    /// The `PurgeForwarding` it was made through, which passes it on again once it lands;
    /// `None` for a purge made on the store itself, or one the queue made up (a purge-all
    /// replacing purges past its bound), which is not passed on again.
    pub(crate) forwarder: Option<u64>,
}

/// The instant of a purge request on both clocks: the monotonic one gives its age when it is
/// retried, the request clock (µs since the epoch) judges reads meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requested {
    pub(crate) at: Instant,
    pub(crate) micros: u64,
}

impl Requested {
    pub(crate) fn now() -> Self {
        Requested {
            at: Instant::now(),
            micros: micros(super::request_clock()),
        }
    }
}

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[derive(Debug, Default, Clone, Copy)]
struct Stamp {
    hard: u64,
    soft: u64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    next_id: u64,
    /// Bytes of the tags queued since the queue was last empty (the index keeps them until then).
    bytes: usize,
    /// Every tag queued since the queue was last empty, with its latest local stamp.
    by_tag: HashMap<Box<str>, Stamp>,
    /// Entries that started at or before this instant are invalid (a queued purge-all).
    floor: u64,
    /// Purges that landed and are waiting for the memory tiers of other instances to apply
    /// them (a tiered store's coherence window): still pending, still judging reads.
    settling: u64,
    /// Whether a task is retrying the queue.
    retrying: bool,
}

/// What the retry task does next.
#[derive(Debug)]
pub(crate) enum Next {
    Retry(Pending),
    /// The queue is empty but this many landed purges are settling: wait, then `settled`.
    Settle(u64),
    /// Nothing left: the task ends.
    Done,
}

/// The purges of one store that have not reached Redis yet.
#[derive(Debug)]
pub(crate) struct PurgeQueue {
    state: Mutex<State>,
    /// Whether anything is queued: reads skip the lock when not.
    active: AtomicBool,
    max_bytes: usize,
    /// Local stamps are put this far ahead, as Redis's are (clock skew between instances).
    margin_us: u64,
    retried: AtomicU64,
    degraded: AtomicU64,
    landed: AtomicU64,
}

/// Counts for the store's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    pub(crate) pending: u64,
    pub(crate) retried: u64,
    pub(crate) degraded: u64,
    pub(crate) landed: u64,
}

impl PurgeQueue {
    pub(crate) fn new(max_bytes: usize, margin: Duration) -> Self {
        PurgeQueue {
            state: Mutex::default(),
            active: AtomicBool::new(false),
            max_bytes,
            margin_us: u64::try_from(margin.as_micros()).unwrap_or(u64::MAX),
            retried: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            landed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a purge that failed. Returns whether the caller must start a retry task (none
    /// is running).
    pub(crate) fn push(&self, kind: PendingKind, requested: Requested, forwarder: Option<u64>) -> bool {
        let mut state = self.lock();
        let at = requested.micros.saturating_add(self.margin_us);
        match kind {
            PendingKind::Tags { tags, mode } => {
                let bytes: usize = tags.iter().map(|t| t.len() + TAG_OVERHEAD).sum();
                if state.bytes + bytes > self.max_bytes {
                    // Past the bound: one purge-all, no older than any purge it replaces.
                    let newest = state.queue.iter().map(|p| p.requested).max();
                    let newest = newest.map_or(requested.at, |n| n.max(requested.at));
                    self.degraded.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        max_bytes = self.max_bytes,
                        "queue of purges waiting for Redis is full: they become one purge-all"
                    );
                    self.replace_with_all(&mut state, newest, at, None);
                } else {
                    for tag in &tags {
                        let stamp = state.by_tag.entry(tag.as_str().into()).or_default();
                        match mode {
                            PurgeMode::Hard => stamp.hard = stamp.hard.max(at),
                            PurgeMode::Soft => stamp.soft = stamp.soft.max(at),
                        }
                    }
                    state.bytes += bytes;
                    let id = state.next_id;
                    state.next_id += 1;
                    state.queue.push_back(Pending {
                        id,
                        kind: PendingKind::Tags { tags, mode },
                        requested: requested.at,
                        forwarder,
                    });
                }
            }
            // A purge-all covers every tag purge requested before it.
            PendingKind::All => self.replace_with_all(&mut state, requested.at, at, forwarder),
        }
        self.active.store(true, Ordering::Release);
        !std::mem::replace(&mut state.retrying, true)
    }

    fn replace_with_all(&self, state: &mut State, requested: Instant, at: u64, forwarder: Option<u64>) {
        state.floor = state.floor.max(at);
        state.queue.clear();
        state.by_tag.clear();
        state.bytes = 0;
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Pending {
            id,
            kind: PendingKind::All,
            requested,
            forwarder,
        });
    }

    /// The next purge to retry (counted as a retry), or the settling to wait for; `Done` when
    /// nothing is left, and then the retry task must end (it is marked as ended under the
    /// same lock as the check).
    pub(crate) fn next_retry(&self) -> Next {
        let mut state = self.lock();
        match state.queue.front() {
            Some(next) => {
                self.retried.fetch_add(1, Ordering::Relaxed);
                Next::Retry(next.clone())
            }
            None if state.settling > 0 => Next::Settle(state.settling),
            None => {
                state.retrying = false;
                Next::Done
            }
        }
    }

    /// Notes that no retry task runs (none could be started): the next failure starts one.
    pub(crate) fn retries_ended(&self) {
        self.lock().retrying = false;
    }

    /// Marks `pending` as landed in Redis. Once the queue is empty Redis's stamps judge alone.
    pub(crate) fn landed(&self, pending: &Pending) {
        let mut state = self.lock();
        if let Some(index) = state.queue.iter().position(|p| p.id == pending.id) {
            state.queue.remove(index);
            self.landed.fetch_add(1, Ordering::Relaxed);
        }
        self.clear_if_done(&mut state);
    }

    /// Marks `pending` as landed in Redis but not yet applied by every memory tier: it stays
    /// pending until [`Self::settled`].
    pub(crate) fn landed_settling(&self, pending: &Pending) {
        let mut state = self.lock();
        if let Some(index) = state.queue.iter().position(|p| p.id == pending.id) {
            state.queue.remove(index);
            state.settling += 1;
        }
    }

    /// `count` settling purges have been applied everywhere (their window has passed).
    pub(crate) fn settled(&self, count: u64) {
        let mut state = self.lock();
        let count = count.min(state.settling);
        state.settling -= count;
        self.landed.fetch_add(count, Ordering::Relaxed);
        self.clear_if_done(&mut state);
    }

    fn clear_if_done(&self, state: &mut State) {
        if state.queue.is_empty() && state.settling == 0 {
            state.by_tag.clear();
            state.bytes = 0;
            state.floor = 0;
            self.active.store(false, Ordering::Release);
        }
    }

    /// How the queued purges judge an entry whose request started at `started` (µs):
    /// `None` valid, `Some(Hard)` purged, `Some(Soft)` stale.
    pub(crate) fn judge<'t>(&self, started: u64, tags: impl IntoIterator<Item = &'t String>) -> Option<PurgeMode> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        let state = self.lock();
        if started <= state.floor {
            return Some(PurgeMode::Hard);
        }
        let mut verdict = None;
        for tag in tags {
            if let Some(stamp) = state.by_tag.get(tag.as_str()) {
                if started <= stamp.hard {
                    return Some(PurgeMode::Hard);
                }
                if started <= stamp.soft {
                    verdict = Some(PurgeMode::Soft);
                }
            }
        }
        verdict
    }

    pub(crate) fn counts(&self) -> QueueCounts {
        let pending = {
            let state = self.lock();
            state.queue.len() as u64 + state.settling
        };
        QueueCounts {
            pending,
            retried: self.retried.load(Ordering::Relaxed),
            degraded: self.degraded.load(Ordering::Relaxed),
            landed: self.landed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn next(queue: &PurgeQueue) -> Pending {
        match queue.next_retry() {
            Next::Retry(pending) => pending,
            other => panic!("expected a purge to retry, got {other:?}"),
        }
    }

    fn hard(t: &[&str]) -> PendingKind {
        PendingKind::Tags {
            tags: tags(t),
            mode: PurgeMode::Hard,
        }
    }

    #[test]
    fn queued_purges_judge_reads_until_they_land() {
        let queue = PurgeQueue::new(1 << 20, Duration::ZERO);
        let before = Requested::now().micros;
        assert!(
            queue.push(hard(&["a"]), Requested::now(), None),
            "the first failure starts a retry task"
        );
        assert!(!queue.push(
            PendingKind::Tags {
                tags: tags(&["b"]),
                mode: PurgeMode::Soft
            },
            Requested::now(),
            None
        ));
        assert_eq!(queue.judge(before, &tags(&["a"])), Some(PurgeMode::Hard));
        assert_eq!(queue.judge(before, &tags(&["b"])), Some(PurgeMode::Soft));
        assert_eq!(queue.judge(before, &tags(&["c"])), None);
        assert_eq!(queue.judge(Requested::now().micros + 1, &tags(&["a"])), None);
        assert_eq!(queue.counts().pending, 2);

        let first = next(&queue);
        assert_eq!(first.kind, hard(&["a"]));
        queue.landed(&first);
        // Until the queue is empty every queued tag still judges reads (the safe side).
        assert_eq!(queue.judge(before, &tags(&["a"])), Some(PurgeMode::Hard));
        let second = next(&queue);
        queue.landed(&second);
        assert_eq!(queue.judge(before, &tags(&["a", "b"])), None);
        assert!(matches!(queue.next_retry(), Next::Done), "empty: the retry task ends");
        assert!(
            queue.push(hard(&["a"]), Requested::now(), None),
            "and the next failure starts another"
        );
        let counts = queue.counts();
        assert_eq!((counts.pending, counts.retried, counts.landed), (1, 2, 2));
    }

    #[test]
    fn past_its_bound_the_queue_becomes_one_purge_all() {
        let queue = PurgeQueue::new(3 * (TAG_OVERHEAD + 2), Duration::ZERO);
        let before = Requested::now().micros;
        for i in 0..3 {
            queue.push(hard(&[&format!("t{i}")]), Requested::now(), None);
        }
        assert_eq!(queue.counts().degraded, 0);
        let last = Requested::now();
        queue.push(hard(&["t3"]), last, None);
        let counts = queue.counts();
        assert_eq!((counts.pending, counts.degraded), (1, 1));
        let all = next(&queue);
        assert_eq!(all.kind, PendingKind::All);
        assert!(all.requested >= last.at, "no older than the newest purge it replaces");
        // Every entry that started before the dropped purges is invalid, whatever its tags.
        assert_eq!(queue.judge(before, &tags(&["unrelated"])), Some(PurgeMode::Hard));
        assert_eq!(queue.judge(last.micros, &tags(&[])), Some(PurgeMode::Hard));
        assert_eq!(queue.judge(Requested::now().micros + 1, &tags(&["t0"])), None);
    }

    #[test]
    fn a_queued_purge_all_replaces_the_tag_purges_before_it() {
        let queue = PurgeQueue::new(1 << 20, Duration::from_millis(1));
        queue.push(hard(&["a"]), Requested::now(), None);
        let requested = Requested::now();
        queue.push(PendingKind::All, requested, None);
        assert_eq!(queue.counts().pending, 1);
        assert_eq!(
            queue.judge(requested.micros + 999, &tags(&[])),
            Some(PurgeMode::Hard),
            "margin"
        );
        assert_eq!(queue.counts().degraded, 0);
    }

    #[test]
    fn a_landed_purge_that_settles_stays_pending_and_judging_until_settled() {
        let queue = PurgeQueue::new(1 << 20, Duration::ZERO);
        let before = Requested::now().micros;
        queue.push(hard(&["a"]), Requested::now(), None);
        let first = next(&queue);
        queue.landed_settling(&first);
        assert_eq!(queue.counts().pending, 1, "landed, not yet applied everywhere");
        assert_eq!(queue.judge(before, &tags(&["a"])), Some(PurgeMode::Hard));
        assert!(matches!(queue.next_retry(), Next::Settle(1)));
        queue.settled(1);
        let counts = queue.counts();
        assert_eq!((counts.pending, counts.landed), (0, 1));
        assert_eq!(queue.judge(before, &tags(&["a"])), None);
        assert!(matches!(queue.next_retry(), Next::Done));
    }
}
