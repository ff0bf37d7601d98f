//! The purge log of a spread namespace ([`RedisStoreBuilder::spread_namespace`]): purges
//! appended to a Redis stream, mirrored in every instance, and checked locally on each read,
//! so that entries can live in their own hash slots (all over a cluster's shards) while a hit
//! stays one round trip.
//!
//! Layout, under a namespace `ns` (the log's keys share the hash tag `{ns}`, one slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:log` | stream | one purge per entry: `m` mode (`h`, `s`, `*` for purge-all), `s` stamp (µs, Redis's clock plus the skew margin), `t` tags, one per line |
//! | `{ns}:logm` | hash | `f` floor (µs): entries whose request started at or before it cannot be judged by the log (its start, or the stamps of what was trimmed); `t` trim threshold (every entry with a lower ID was trimmed); `m` largest stamp offset used |
//! | `{ns}:scratch` | none | never holds a value (a purge's first write, as in the store's purge script) |
//!
//! Each instance's mirror keeps the latest hard and soft stamp of every purged tag (by a
//! keyed digest) and a floor, bounded in entries: past the bound, the oldest half of the
//! stamps goes and the floor rises to the newest of them (entries older than that become
//! misses, never hits). The log is bounded too, in entries ([`LOG_MAX_LEN`] by default) and in age (the
//! longest an entry can live): what is trimmed raises `f`, which a mirror applies when it
//! may not have read what was trimmed.
//!
//! **Liveness.** The mirror waits on the log with a blocking `XREAD` ([`BLOCK`]) and, on
//! every wake-up, reads what follows its position with a script that also returns `f`, `t`
//! and the log's last ID (so that a trim or a lost log is noticed). A call sent at instant
//! `s` that finds the mirror caught up (a page shorter than [`PAGE`], or a blocking read that
//! timed out with nothing new) proves that every purge completed before `s` is applied: it
//! becomes the mirror's *fence*. Reads are judged only while the fence is less than
//! [`MIRROR_WINDOW`] old; otherwise an entry read back is only [`Lookup::Unverified`]
//! (served where a stale entry may stand in for an origin error, never as a hit).
//!
//! [`RedisStoreBuilder::spread_namespace`]: super::RedisStoreBuilder::spread_namespace
//! [`Lookup::Unverified`]: super::Lookup::Unverified

use super::stamps::{now_micros, Verdict};
use super::PurgeMode;
use ::redis::aio::ConnectionLike;
use ::redis::{Script, Value};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How old the mirror's fence may be for reads to be judged by it: the bound on how long a
/// purge completed on another instance can go unseen, and on noticing a stalled log.
pub(crate) const MIRROR_WINDOW: Duration = Duration::from_millis(500);
/// How long one blocking read of the log waits for a new purge.
pub(crate) const BLOCK: Duration = Duration::from_millis(100);
/// Log entries read per call.
const PAGE: usize = 512;
/// The most entries the log keeps by default; older ones are trimmed as purges come.
pub(crate) const LOG_MAX_LEN: u64 = 100_000;
/// The most purged tags a mirror remembers; past it the oldest half goes under its floor.
const MIRROR_MAX_TAGS: usize = 200_000;
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);

/// Appends a purge to the log and trims it. Nothing is published: every instance, tiered or
/// not, learns of it by following the log.
///
/// `KEYS[1]` log, `KEYS[2]` log meta, `KEYS[3]` scratch; `ARGV[1]` `h`, `s` or `*`,
/// `ARGV[2]` stamp offset (µs: the skew margin less the purge's age), `ARGV[3]` most entries,
/// `ARGV[4]` longest age (ms), `ARGV[5..]` tags. Returns the stamp.
///
/// Its first write is a `DEL` of a key that never holds a value, so that the purge lands
/// even when Redis is out of memory under `noeviction` (as the store's own purge script).
static LOG_PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[3])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local offset = tonumber(ARGV[2])
local stamp = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]) + offset)
local meta = redis.call('HMGET', KEYS[2], 'f', 'm')
if not meta[1] then
  redis.call('HSET', KEYS[2], 'f', string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])), 't', '0-0')
end
local m = math.max(tonumber(meta[2] or '0') or 0, offset, 0)
redis.call('HSET', KEYS[2], 'm', string.format('%.0f', m))
local tags = {}
for i = 5, #ARGV do tags[#tags + 1] = ARGV[i] end
local text = table.concat(tags, '\n')
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 's', stamp, 't', text)
-- Trimming: entries below a threshold ID go, and the floor rises past every stamp they had
-- (a stamp is at most its ID's millisecond, plus 999 µs, plus the largest offset).
local function raise(threshold_ms, threshold_id)
  local floor = string.format('%.0f', threshold_ms * 1000 + 999 + m)
  local old = tonumber(redis.call('HGET', KEYS[2], 'f') or '0') or 0
  if tonumber(floor) > old then redis.call('HSET', KEYS[2], 'f', floor) end
  redis.call('HSET', KEYS[2], 't', threshold_id)
  redis.call('XTRIM', KEYS[1], 'MINID', threshold_id)
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[3])
if excess > 0 then
  local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess + 1)
  local keep = head[#head][1]
  raise(tonumber(string.match(keep, '^(%d+)')), keep)
end
local cut = now_ms - tonumber(ARGV[4])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if first and tonumber(string.match(first[1], '^(%d+)')) < cut then
  raise(cut, string.format('%.0f', cut) .. '-0')
end
return stamp
",
    )
});

/// Reads the log after an ID, with what decides whether the reader may have missed some.
///
/// `KEYS[1]` log, `KEYS[2]` log meta; `ARGV[1]` last ID read (exclusive), `ARGV[2]` count.
/// Returns `{f, t, created, last ID of the log, now (µs) + largest offset, entries}`.
/// Creates the meta when missing (a new namespace, or a Redis that lost it): then `f` is now.
static LOG_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local created = 0
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'f', now, 't', '0-0', 'm', '0')
  created = 1
end
local meta = redis.call('HMGET', KEYS[2], 'f', 't', 'm')
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local ahead = string.format('%.0f', tonumber(now) + (tonumber(meta[3] or '0') or 0))
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
return {meta[1] or now, meta[2] or '0-0', created, last and last[1] or '0-0', ahead, entries}
",
    )
});

/// A stream ID, compared as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What the mirror knows of purges.
struct Table {
    /// Latest hard and soft stamp per tag digest.
    stamps: HashMap<u128, (u64, u64)>,
    /// Entries whose request started at or before it are invalid.
    floor: u64,
    /// The last log entry applied; `None` before the first read.
    position: Option<StreamId>,
}

/// The local mirror of a namespace's purge log.
pub(crate) struct Mirror {
    table: Mutex<Table>,
    keys: (RandomState, RandomState),
    /// How long before now a stamp can still judge an entry (`max_entry_ttl` + `in_flight_horizon`).
    retention_us: u64,
    origin: Instant,
    /// When the newest call that found the mirror caught up was sent (ns since `origin`, plus
    /// one); 0 while none has.
    fence: AtomicU64,
    applied: AtomicU64,
    resyncs: AtomicU64,
    /// Woken when the fence moves.
    caught_up: Notify,
    task: OnceLock<JoinHandle<()>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("live", &self.is_live())
            .field("applied", &self.applied.load(SeqCst))
            .finish_non_exhaustive()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

/// The keys of one namespace's log.
#[derive(Debug, Clone)]
pub(crate) struct LogKeys {
    pub(crate) log: Vec<u8>,
    pub(crate) meta: Vec<u8>,
    pub(crate) scratch: Vec<u8>,
    /// The most entries the log keeps.
    pub(crate) max_len: u64,
}

impl Mirror {
    /// An empty mirror, not live until its first read of the log.
    pub(crate) fn new(retention: Duration) -> Arc<Mirror> {
        Arc::new(Mirror {
            table: Mutex::new(Table {
                stamps: HashMap::new(),
                floor: 0,
                position: None,
            }),
            keys: (RandomState::new(), RandomState::new()),
            retention_us: u64::try_from(retention.as_micros()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            fence: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            caught_up: Notify::new(),
            task: OnceLock::new(),
        })
    }

    /// Starts following the log over `conn` (a connection of its own: the blocking reads hold
    /// it). The task ends with the mirror.
    pub(crate) fn follow<C>(self: &Arc<Self>, conn: C, keys: LogKeys, op_timeout: Duration)
    where
        C: ConnectionLike + Clone + Send + 'static,
    {
        let task = tokio::spawn(follow(Arc::downgrade(self), conn, keys, op_timeout));
        let _ = self.task.set(task);
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn digest(&self, tag: &str) -> u128 {
        // As the log writes it: a long tag is known by its digest there.
        let tag = log_tag(tag);
        let half = |keys: &RandomState| {
            let mut h = keys.build_hasher();
            h.write(tag.as_bytes());
            h.finish()
        };
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Whether a call sent less than [`MIRROR_WINDOW`] ago found the mirror caught up.
    pub(crate) fn is_live(&self) -> bool {
        let fence = self.fence.load(SeqCst);
        fence != 0 && self.now().saturating_sub(fence) < MIRROR_WINDOW.as_nanos() as u64
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(SeqCst)
    }

    pub(crate) fn resyncs(&self) -> u64 {
        self.resyncs.load(SeqCst)
    }

    /// How purges judge an entry whose request started at `started` (µs) and carries `tags`.
    pub(crate) fn judge<'t>(&self, started: u64, tags: impl IntoIterator<Item = &'t String>) -> Verdict {
        let digests: Vec<u128> = tags.into_iter().map(|t| self.digest(t)).collect();
        let table = self.lock();
        if started <= table.floor {
            return Verdict::Purged;
        }
        let mut verdict = Verdict::Valid;
        for digest in digests {
            if let Some(&(hard, soft)) = table.stamps.get(&digest) {
                if started <= hard {
                    return Verdict::Purged;
                }
                if started <= soft {
                    verdict = Verdict::SoftPurged;
                }
            }
        }
        verdict
    }

    /// Applies a purge of `tags` stamped `at` (µs).
    pub(crate) fn purge(&self, tags: &[String], mode: PurgeMode, at: u64) {
        let digests: Vec<u128> = tags.iter().map(|t| self.digest(t)).collect();
        let mut table = self.lock();
        for digest in digests {
            let stamps = table.stamps.entry(digest).or_insert((0, 0));
            let stamp = match mode {
                PurgeMode::Hard => &mut stamps.0,
                PurgeMode::Soft => &mut stamps.1,
            };
            *stamp = (*stamp).max(at);
        }
        if table.stamps.len() > MIRROR_MAX_TAGS {
            // Stamps older than any entry that can still be read judge nothing: dropped
            // first, so that the bound costs misses only to a flood of recent purges.
            let horizon = super::purge_queue::micros(super::request_clock()).saturating_sub(self.retention_us);
            table.stamps.retain(|_, (hard, soft)| (*hard).max(*soft) > horizon);
        }
        if table.stamps.len() > MIRROR_MAX_TAGS {
            forget_oldest_half(&mut table);
        }
    }

    /// Raises the floor to `at` (a purge-all, or purges the mirror may have missed).
    pub(crate) fn raise_floor(&self, at: u64) {
        let mut table = self.lock();
        table.floor = table.floor.max(at);
        let floor = table.floor;
        // Stamps under the floor decide nothing any more.
        table.stamps.retain(|_, (hard, soft)| *hard > floor || *soft > floor);
    }

    /// Applies one page of the log read by [`LOG_READ`]; returns whether it was the last
    /// page (the mirror is caught up as of the call).
    fn apply_page(&self, reply: Value) -> Result<bool, &'static str> {
        let Value::Array(items) = reply else {
            return Err("unexpected reply from the log read");
        };
        let [f, t, created, last, ahead, entries] = <[Value; 6]>::try_from(items).map_err(|_| "short log read")?;
        let number = |v: &Value| text(v).and_then(|s| s.parse::<u64>().ok());
        let (Some(f), Some(t), Some(last), Some(ahead)) = (
            number(&f),
            text(&t).and_then(|s| StreamId::parse(&s)),
            text(&last).and_then(|s| StreamId::parse(&s)),
            number(&ahead),
        ) else {
            return Err("unreadable log meta");
        };
        let created = matches!(created, Value::Int(1));
        let Value::Array(entries) = entries else {
            return Err("unreadable log entries");
        };
        let position = self.lock().position;
        match position {
            // First read: the log holds nothing from before `f`.
            None => self.raise_floor(f),
            Some(at) => {
                if created || at < t {
                    // The meta was lost (so was the log), or entries not read yet were trimmed.
                    self.resyncs.fetch_add(1, SeqCst);
                    self.raise_floor(f);
                }
                if last < at {
                    // The log lost entries this mirror read (a failover, a flush): purges after
                    // them may be lost too.
                    self.resyncs.fetch_add(1, SeqCst);
                    self.raise_floor(ahead);
                    self.lock().position = Some(last);
                }
            }
        }
        let full = entries.len() >= PAGE;
        let mut newest = self.lock().position.unwrap_or_default();
        for entry in entries {
            let Some((id, fields)) = log_entry(entry) else {
                // Not ours: invalidate everything rather than miss a purge.
                self.raise_floor(ahead);
                continue;
            };
            self.apply_entry(&fields, ahead);
            newest = newest.max(id);
            self.applied.fetch_add(1, SeqCst);
        }
        self.lock().position = Some(newest);
        Ok(!full)
    }

    fn apply_entry(&self, fields: &HashMap<String, String>, ahead: u64) {
        let stamp = fields.get("s").and_then(|s| s.parse::<u64>().ok());
        let tags: Vec<String> = fields
            .get("t")
            .map(|t| t.split('\n').filter(|t| !t.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        match (fields.get("m").map(String::as_str), stamp) {
            (Some("h"), Some(stamp)) => self.purge(&tags, PurgeMode::Hard, stamp),
            (Some("s"), Some(stamp)) => self.purge(&tags, PurgeMode::Soft, stamp),
            (Some("*"), Some(stamp)) => self.raise_floor(stamp),
            // A format this version does not know: forget everything rather than miss a purge.
            _ => self.raise_floor(ahead),
        }
    }

    fn position(&self) -> StreamId {
        self.lock().position.unwrap_or_default()
    }

    fn set_fence(&self, sent: u64) {
        self.fence.fetch_max(sent, SeqCst);
        self.caught_up.notify_waiters();
    }

    /// Waits (at most `within`) until the mirror is live; returns whether it is.
    pub(crate) async fn wait_live(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let mut notified = std::pin::pin!(self.caught_up.notified());
                notified.as_mut().enable();
                if self.is_live() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    fn lost(&self) {
        self.fence.store(0, SeqCst);
    }
}

/// Longest tag the log holds as it is; longer ones are held as a digest, so that an entry of
/// the log is bounded in bytes whatever the tags' length (a path tag's, say, which a client
/// chooses). Digests are no longer than this, so a tag read back from the log maps to itself.
const LOG_TAG_MAX: usize = 80;

/// A tag as the log holds it.
pub(crate) fn log_tag(tag: &str) -> std::borrow::Cow<'_, str> {
    use sha2::{Digest, Sha256};
    if tag.len() <= LOG_TAG_MAX {
        return std::borrow::Cow::Borrowed(tag);
    }
    let digest = Sha256::digest(tag.as_bytes());
    let mut text = String::with_capacity(65);
    text.push('~');
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    std::borrow::Cow::Owned(text)
}

fn forget_oldest_half(table: &mut Table) {
    let mut newest: Vec<u64> = table.stamps.values().map(|&(h, s)| h.max(s)).collect();
    let middle = newest.len() / 2;
    let (_, &mut cut, _) = newest.select_nth_unstable(middle);
    table.floor = table.floor.max(cut);
    let floor = table.floor;
    table.stamps.retain(|_, (hard, soft)| *hard > floor || *soft > floor);
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `[id, [field, value, ...]]`.
fn log_entry(entry: Value) -> Option<(StreamId, HashMap<String, String>)> {
    let Value::Array(parts) = entry else { return None };
    let [id, fields] = <[Value; 2]>::try_from(parts).ok()?;
    let id = StreamId::parse(&text(&id)?)?;
    let Value::Array(flat) = fields else { return None };
    let mut map = HashMap::new();
    for pair in flat.chunks(2) {
        if let [name, value] = pair {
            map.insert(text(name)?, text(value)?);
        }
    }
    Some((id, map))
}

/// Appends a purge to the log (see [`LOG_PURGE`]); returns the subscribers that heard it.
pub(crate) async fn append<C: ConnectionLike>(
    conn: &mut C,
    keys: &LogKeys,
    mode: &str,
    offset_us: i64,
    retention: Duration,
    tags: &[String],
) -> ::redis::RedisResult<()> {
    let mut invocation = LOG_PURGE.key(&keys.log[..]);
    invocation
        .key(&keys.meta[..])
        .key(&keys.scratch[..])
        .arg(mode)
        .arg(offset_us)
        .arg(keys.max_len.max(1))
        .arg(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
    for tag in tags {
        invocation.arg(log_tag(tag).as_ref());
    }
    let _stamp: String = invocation.invoke_async(conn).await?;
    Ok(())
}

/// Follows the log: a blocking read to wait, then pages of [`LOG_READ`] until caught up.
async fn follow<C>(mirror: Weak<Mirror>, mut conn: C, keys: LogKeys, op_timeout: Duration)
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let mut backoff = RETRY_MIN;
    let mut caught_up = false;
    loop {
        let Some(state) = mirror.upgrade() else { return };
        let sent = state.now();
        let position = state.position();
        drop(state);
        let outcome = if caught_up {
            // Wait for a purge after the position; nothing new within BLOCK proves the
            // mirror caught up as of `sent`.
            let mut xread = ::redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(100))
                .arg("STREAMS")
                .arg(&keys.log[..])
                .arg(position.to_string());
            match tokio::time::timeout(BLOCK + op_timeout, xread.query_async::<Value>(&mut conn)).await {
                Ok(Ok(Value::Nil)) => Ok(true),
                Ok(Ok(_)) => Ok(false),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("blocking read of the purge log timed out".to_owned()),
            }
        } else {
            let mut invocation = LOG_READ.key(&keys.log[..]);
            invocation.key(&keys.meta[..]).arg(position.to_string()).arg(PAGE);
            match tokio::time::timeout(op_timeout, invocation.invoke_async::<Value>(&mut conn)).await {
                Ok(Ok(reply)) => match mirror.upgrade() {
                    Some(state) => state.apply_page(reply).map_err(str::to_owned),
                    None => return,
                },
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("read of the purge log timed out".to_owned()),
            }
        };
        let Some(state) = mirror.upgrade() else { return };
        match outcome {
            Ok(done) => {
                backoff = RETRY_MIN;
                if done {
                    state.set_fence(sent);
                }
                // After a wake-up, read what came; after a last page, wait again.
                caught_up = done;
            }
            Err(error) => {
                tracing::warn!(%error, "purge log unreadable: entries read back are unverified until it is");
                state.lost();
                drop(state);
                caught_up = false;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The request clock now plus `ahead` (µs), as a local stamp.
pub(crate) fn local_stamp(ahead: Duration) -> u64 {
    now_micros().saturating_add(u64::try_from(ahead.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_redis_does() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(StreamId::parse("nonsense").is_none());
    }

    #[test]
    fn a_purge_judges_entries_that_started_at_or_before_it() {
        let mirror = Mirror::new(Duration::from_secs(86_400));
        let tags = vec!["a".to_owned()];
        mirror.purge(&tags, PurgeMode::Hard, 100);
        assert_eq!(mirror.judge(100, &tags), Verdict::Purged);
        assert_eq!(mirror.judge(101, &tags), Verdict::Valid);
        mirror.purge(&tags, PurgeMode::Soft, 200);
        assert_eq!(mirror.judge(150, &tags), Verdict::SoftPurged);
        mirror.raise_floor(300);
        assert_eq!(mirror.judge(250, &["b".to_owned()]), Verdict::Purged);
        assert!(!mirror.is_live(), "not live before reading the log");
    }

    #[test]
    fn forgetting_stamps_raises_the_floor_past_them() {
        let mirror = Mirror::new(Duration::from_secs(86_400));
        // Recent purges (within the retention): the bound forgets the older half of them.
        let now = super::super::purge_queue::micros(super::super::request_clock());
        for i in 0..=MIRROR_MAX_TAGS as u64 {
            mirror.purge(&[format!("t{i}")], PurgeMode::Hard, now + i);
        }
        let table = mirror.lock();
        assert!(table.stamps.len() <= MIRROR_MAX_TAGS / 2 + 1);
        let floor = table.floor;
        drop(table);
        assert!(floor > now, "the floor rose");
        // Whatever was forgotten is judged by the floor: still purged.
        assert_eq!(mirror.judge(now, &["t0".to_owned()]), Verdict::Purged);
        assert_eq!(mirror.judge(floor, &["anything".to_owned()]), Verdict::Purged);
    }

    #[test]
    fn stamps_older_than_any_readable_entry_go_before_the_floor_rises() {
        // A retention of one hour: stamps two hours old judge nothing that can still be read.
        let mirror = Mirror::new(Duration::from_secs(3_600));
        let now = super::super::purge_queue::micros(super::super::request_clock());
        let old = now - 7_200_000_000;
        for i in 0..MIRROR_MAX_TAGS as u64 {
            mirror.purge(&[format!("old{i}")], PurgeMode::Hard, old + i);
        }
        mirror.purge(&["new".to_owned()], PurgeMode::Hard, now);
        let table = mirror.lock();
        assert_eq!(
            (table.stamps.len(), table.floor),
            (1, 0),
            "no floor raised, no entry flushed"
        );
        drop(table);
        assert_eq!(mirror.judge(now - 1_000_000, &["unrelated".to_owned()]), Verdict::Valid);
        assert_eq!(mirror.judge(now, &["new".to_owned()]), Verdict::Purged);
    }

    #[test]
    fn a_long_tag_is_held_by_its_digest_and_judges_as_itself() {
        let long = format!("path:/{}", "x".repeat(10_000));
        let held = log_tag(&long).into_owned();
        assert_eq!(held.len(), 65);
        assert_eq!(log_tag(&held), held, "read back from the log, it maps to itself");
        assert_eq!(log_tag("short"), "short");
        let mirror = Mirror::new(Duration::from_secs(86_400));
        // Another instance's purge, as applied from the log's text.
        mirror.purge(std::slice::from_ref(&held), PurgeMode::Hard, 100);
        assert_eq!(mirror.judge(100, &[long]), Verdict::Purged);
        assert_eq!(mirror.judge(100, &["path:/other".to_owned()]), Verdict::Valid);
    }
}
