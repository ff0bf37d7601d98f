//! The Redis store: entries shared by every instance of an application, with tag stamps in
//! Redis so that purges hold across instances.
//!
//! Layout, under a namespace `ns` (all keys share the hash tag `{ns}`, so that the scripts,
//! which touch an entry and its tags' records together, work on Redis Cluster):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `{ns}:e:<cache key>` | hash | `d` encoded entry, `b` request start (µs; empty for a `Vary` index), `g` its tags' digests, `i` the ids of the records it was admitted with | with the entry (`PX`) |
//! | `{ns}:r:<digest>` | hash | `c` record id, `h` / `s` last hard / soft purge (µs, Redis clock) | with the longest-lived entry carrying the tag |
//! | `{ns}:floor` | string | last purge-all (µs) | never |
//! | `{ns}:pf` | hash | the recent-purge filter's state: `k0`..`k3` interval each sketch holds, `cells`, `width` (µs), `m` largest clock-skew margin, `forgot` | never |
//! | `{ns}:pf:0`..`{ns}:pf:3` | string | the filter's sketches: 32-bit cells (`BITFIELD`) | never |
//! | `{ns}:scratch` | none | never holds a value (see [`PURGE`]) | |
//!
//! A tag is known by its digest, `redis.sha1hex(tag)` (40 hex digits), never by itself, so
//! that what a purge leaves behind does not grow with the tag. Two mechanisms make purges
//! hold, the same as in memory (see `stamps.rs`):
//!
//! - **Records for carried tags.** Writing an entry creates or extends a record for each of
//!   its tags, expiring with the longest-lived entry that carries it: records are bounded by
//!   what Redis holds, and they may be evicted like entries. An entry keeps the id of each
//!   record it was admitted with; a read serves it only if every one of those records is
//!   still there with that id and no purge after the entry's request start. A record that
//!   expired or was evicted thus makes the entries carrying it misses, never resurrects them.
//! - **A filter for purges in flight.** Every purge is also filed in fixed-size sketches (a
//!   ring of four, one per half in-flight horizon): a write whose tag has no record, or a
//!   record younger than its request, is refused if a purge of that tag may have come at or
//!   after its request started, or if its request started before an interval the ring has
//!   forgotten. The filter, the floor and their state have no TTL: under every
//!   `volatile-*` policy and `noeviction`, Redis never evicts them, and their size is fixed
//!   by the crate, not by the number of purges. Under an `allkeys-*` policy they can be
//!   evicted, and the guarantee is lost: the store logs that at error level when it connects
//!   and reports it in [`RedisStoreStats::stamps_evictable`].
//!
//! A read is one round trip: a script returns the entry only if none of its tags' records
//! (and no purge-all) has a purge at or after its request's start. Purges are stamped with
//! Redis's clock plus a margin for clock skew between instances, and published on
//! `{ns}:purge` for tiered stores. A purge is O(tags).
//!
//! With [`RedisStoreBuilder::spread_namespace`], entries and leases take a hash slot of their
//! own instead (`{<hash of the cache key>}` before the prefix), reads and writes are a plain
//! `GET` / `SET`, and purges go to a purge log mirrored in every instance
//! ([`purge_log`](super::purge_log)), which judges what is read.
//!
//! A purge that cannot reach Redis is queued ([`purge_queue`](super::purge_queue)) and retried
//! in the background until it lands, stamped with the instant it was requested; meanwhile the
//! entries this instance reads back from Redis are judged by it.

use super::breaker::{Breaker, Permit};
use super::lease_releases::LeaseReleases;
use super::purge_log::{self, LogKeys, Mirror};
use super::purge_queue::{self, Next, Pending, PendingKind, PurgeQueue, Requested};
use super::stamps::Verdict;
use super::{CachedResponse, Entry};
use super::{LeaseAttempt, LeaseToken, Lookup, PurgeMode, Store, StoreError};
use crate::metrics::export_count;
use crate::store::stamps::{micros, micros_of};
use crate::CacheKey;
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Script, Value};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Sketches in the recent-purge filter's ring (as in memory).
const FILTER_SLOTS: u64 = 4;

/// Lua shared by the write and purge scripts: the recent-purge filter.
///
/// The filter's state is the hash `KEYS[3]` / `KEYS[1]` (see the layout): which interval
/// each of the four sketches holds (`k<slot>`), the sketches' size (`cells`, `width`: fixed
/// by the first purge of the namespace, so that every instance files and reads alike), the
/// largest clock-skew margin any purge used (`m`), and `forgot`: writes whose request
/// started before it are refused, because purges up to it were dropped from the ring. A
/// purge at instant `p` of digest `d` raises the four cells `d` selects in the sketch of
/// `p`'s interval to `p` (stored as 1 + its offset from the interval's start; 0 is empty).
const FILTER_LUA: &str = r"
local SLOTS = 4
local function load_meta(key)
  local flat = redis.call('HGETALL', key)
  local meta = {}
  for i = 1, #flat, 2 do meta[flat[i]] = tonumber(flat[i + 1]) end
  return meta
end
-- The four cells of a digest: 32-bit slices of it, modulo the cells of a sketch.
local function cells_of(digest, cells)
  local p = {}
  for j = 0, 3 do p[j + 1] = '#' .. (tonumber(string.sub(digest, 8 * j + 1, 8 * j + 8), 16) % cells) end
  return p
end
-- Whether a purge of `digest` may have been stamped at or after `born`.
local function may_hold(meta, prefix, digest, born)
  if not meta.cells then return false end
  local p = cells_of(digest, meta.cells)
  for s = 0, SLOTS - 1 do
    local held = meta['k' .. s]
    local start = held and held * meta.width
    if held and born < start + meta.width then
      local sketch = prefix .. s
      -- A sketch gone while the state says it holds purges (evicted under allkeys-*):
      -- assume the worst.
      if redis.call('EXISTS', sketch) == 0 then return true end
      local v = redis.call('BITFIELD_RO', sketch, 'GET', 'u32', p[1], 'GET', 'u32', p[2],
        'GET', 'u32', p[3], 'GET', 'u32', p[4])
      local least = math.min(v[1], v[2], v[3], v[4])
      if least > 0 and born < start + least then return true end
    end
  end
  return false
end
";

/// Reads an entry and judges it against its tags' records and the floor, in one round trip.
///
/// `KEYS[1]` entry, `KEYS[2]` purge-all floor; `ARGV[1]` record key prefix.
/// Returns `{0}` miss, `{1, d}` found, `{2, d}` soft-purged, `{3}` purged, `{4}` foreign.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {4} end
local e = redis.call('HMGET', KEYS[1], 'd', 'b', 'g', 'i')
if not e[1] then return {4} end
local born = tonumber(e[2] or '')
if born then
  local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if born <= floor then redis.call('DEL', KEYS[1]) return {3} end
  -- Without digests and ids (written by an earlier layout) it cannot be judged.
  if not e[3] or not e[4] then redis.call('DEL', KEYS[1]) return {3} end
  local soft = false
  local n = 0
  for id in string.gmatch(e[4], '%S+') do
    local digest = string.sub(e[3], 40 * n + 1, 40 * n + 40)
    n = n + 1
    local r = redis.call('HMGET', ARGV[1] .. digest, 'c', 'h', 's')
    -- The record this entry was admitted with is gone (expired or evicted): purges of the
    -- tag since then cannot be known, so neither can the entry be served.
    if r[1] ~= id then redis.call('DEL', KEYS[1]) return {3} end
    if r[2] and born <= tonumber(r[2]) then redis.call('DEL', KEYS[1]) return {3} end
    if r[3] and born <= tonumber(r[3]) then soft = true end
  end
  if soft then return {2, e[1]} end
end
return {1, e[1]}
",
    )
});

/// Writes an entry unless a purge of one of its tags (or a purge-all) came at or after its
/// request's start, or its start is too old for the purges since to be still known.
///
/// `KEYS[1]` entry, `KEYS[2]` purge-all floor, `KEYS[3]` filter state; `ARGV[1]` encoded
/// entry, `ARGV[2]` request start (µs; empty for a `Vary` index), `ARGV[3]` TTL (ms),
/// `ARGV[4]` record key prefix, `ARGV[5]` filter sketch key prefix, `ARGV[6..]` tags.
/// Returns 1 stored, 0 refused.
///
/// Every check comes before the first write, the entry's `HSET`, which Redis refuses when
/// it is out of memory (`noeviction`, or nothing left to evict): the store reads that as a
/// refused write.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FILTER_LUA}{}",
        r"
local born = tonumber(ARGV[2])
local digests, ids, new = {}, {}, {}
if born then
  local floor = redis.call('GET', KEYS[2])
  if not floor then
    -- No floor, though the store set one when it connected: Redis lost what it knew of
    -- purges (a restart without persistence, a flush). A request that started before now
    -- may predate a purge it no longer knows, so now becomes the floor.
    local t = redis.call('TIME')
    floor = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
    redis.call('SET', KEYS[2], floor, 'NX')
  end
  if born <= (tonumber(floor) or 0) then return 0 end
  local meta, now
  for i = 6, #ARGV do
    local digest = redis.sha1hex(ARGV[i])
    local r = redis.call('HMGET', ARGV[4] .. digest, 'c', 'h')
    local id = r[1]
    if id and r[2] and born <= tonumber(r[2]) then return 0 end
    -- A record's id is the instant after which it holds every purge of its tag; purges
    -- before it (or without a record) are only in the filter.
    if not id or born <= tonumber(id) then
      meta = meta or load_meta(KEYS[3])
      if born < (meta.forgot or 0) or may_hold(meta, ARGV[5], digest, born) then return 0 end
      if not id then
        if not now then
          local t = redis.call('TIME')
          now = tonumber(t[1]) * 1000000 + tonumber(t[2])
        end
        id = string.format('%.0f', now + (meta.m or 0))
        new[#digests + 1] = true
      end
    end
    digests[#digests + 1] = digest
    ids[#ids + 1] = id
  end
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'b', ARGV[2], 'g', table.concat(digests), 'i', table.concat(ids, ' '))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local ttl = tonumber(ARGV[3])
for j, digest in ipairs(digests) do
  local record = ARGV[4] .. digest
  if new[j] then redis.call('HSET', record, 'c', ids[j]) end
  if redis.call('PTTL', record) < ttl then redis.call('PEXPIRE', record, ARGV[3]) end
end
return 1
"
    ))
});

/// Takes a lease if it is free; if it is held, marks it waited on, so that its release is
/// published (see [`LEASE_RELEASE`]).
///
/// `KEYS[1]` lease, `KEYS[2]` its waited-on mark; `ARGV[1]` token, `ARGV[2]` TTL (ms).
/// Returns 1 taken, 0 held.
static LEASE_TRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
         redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) \
         return 0",
    )
});

/// Extends a lease if its holder's token is still on it.
static LEASE_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
           return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
         end \
         return 0",
    )
});

/// Deletes a lease only for its holder (compare-and-delete), and if another instance waits
/// on it, publishes its key (see [`super::lease_releases`]); a refused publish (an ACL's
/// channel rules) leaves waiters to poll, and is no error.
///
/// `KEYS[1]` lease, `KEYS[2]` its waited-on mark; `ARGV[1]` token, `ARGV[2]` lease channel,
/// `ARGV[3]` the publishing command, `ARGV[4]` the cache key.
static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
         redis.call('DEL', KEYS[1]) \
         if redis.call('DEL', KEYS[2]) == 1 then redis.pcall(ARGV[3], ARGV[2], ARGV[4]) end \
         return 1",
    )
});

/// A token no other lease holder has (random enough to never collide in a lease's life).
fn lease_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Relaxed));
    hasher.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Stamps tags with Redis's clock (plus the skew margin), files them in the recent-purge
/// filter, and publishes the purge.
///
/// `KEYS[1]` filter state, `KEYS[2]` scratch key; `ARGV[1]` `h` or `s`, `ARGV[2]` clock-skew
/// margin (µs), `ARGV[3]` record key prefix, `ARGV[4]` filter sketch key prefix, `ARGV[5]`
/// channel, `ARGV[6]` cells per sketch, `ARGV[7]` interval per sketch (µs), `ARGV[8]` the
/// publishing command (`PUBLISH`, or `SPUBLISH` on a cluster), `ARGV[9..]` tags. Returns
/// how many subscribers heard it.
///
/// A purge must land even when Redis is out of memory under `noeviction`. Redis checks a
/// script's memory only until its first write, so the first write is a `DEL` of a key that
/// never holds a value: it frees and grows nothing, and what follows is bounded (fields of
/// existing records, sketches of a fixed size).
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{FILTER_LUA}{}",
        r"
-- ARGV[2] (µs, may be negative): the skew margin less the purge's age, so that a purge
-- retried after an outage keeps the instant it was requested, on Redis's clock. The age is
-- measured when the call is sent, so the stamp errs late (the safe side).
redis.call('DEL', KEYS[2])
local t = redis.call('TIME')
local margin = tonumber(ARGV[2])
local stamp = tonumber(t[1]) * 1000000 + tonumber(t[2]) + margin
local text = string.format('%.0f', stamp)
local meta = load_meta(KEYS[1])
if not meta.cells then
  meta.cells, meta.width = tonumber(ARGV[6]), tonumber(ARGV[7])
  redis.call('HSET', KEYS[1], 'cells', ARGV[6], 'width', ARGV[7])
end
if margin > (meta.m or 0) then redis.call('HSET', KEYS[1], 'm', ARGV[2]) end
-- The sketch of the stamp's interval; its slot's previous interval (four back) is forgotten.
local interval = math.floor(stamp / meta.width)
local slot = interval % SLOTS
local sketch = ARGV[4] .. slot
local held = meta['k' .. slot]
local forgot = meta.forgot or 0
local filed = true
if not held or held < interval then
  if held then forgot = math.max(forgot, (held + 1) * meta.width) end
  -- A fresh sketch, zeroed and at its full size at once.
  redis.call('DEL', sketch)
  redis.call('SETRANGE', sketch, string.format('%.0f', meta.cells * 4 - 1), '\0')
  redis.call('HSET', KEYS[1], 'k' .. slot, string.format('%.0f', interval))
elseif held > interval then
  -- Older than what the ring holds: refuse every write it could concern instead.
  forgot = math.max(forgot, stamp + 1)
  filed = false
end
if forgot > (meta.forgot or 0) then redis.call('HSET', KEYS[1], 'forgot', string.format('%.0f', forgot)) end
local value = stamp - interval * meta.width + 1
local message = ARGV[1]
for i = 9, #ARGV do
  local digest = redis.sha1hex(ARGV[i])
  local record = ARGV[3] .. digest
  local r = redis.call('HMGET', record, 'c', ARGV[1])
  if r[1] and stamp > (tonumber(r[2]) or 0) then redis.call('HSET', record, ARGV[1], text) end
  if filed then
    local p = cells_of(digest, meta.cells)
    local v = redis.call('BITFIELD_RO', sketch, 'GET', 'u32', p[1], 'GET', 'u32', p[2],
      'GET', 'u32', p[3], 'GET', 'u32', p[4])
    local set = {}
    for j = 1, 4 do
      if v[j] < value then
        set[#set + 1] = 'SET' set[#set + 1] = 'u32' set[#set + 1] = p[j]
        set[#set + 1] = string.format('%.0f', value)
      end
    end
    if #set > 0 then redis.call('BITFIELD', sketch, unpack(set)) end
  end
  message = message .. '\n' .. ARGV[i]
end
-- How many subscribers heard it: a tiered store waits for the others' memory tiers.
local receivers = redis.call(ARGV[8], ARGV[5], message)
return receivers
"
    ))
});

/// Sets the purge-all floor to Redis's clock if there is none, so that a floor found missing
/// later means Redis lost its purges (see [`PUT`]).
static FLOOR_INIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
redis.call('SET', KEYS[1], string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])), 'NX')
return 1
",
    )
});

/// Raises the floor: every entry whose request started before now is invalid.
///
/// `KEYS[1]` purge-all floor, `KEYS[2]` scratch key; `ARGV[1]` clock-skew margin (µs),
/// `ARGV[2]` channel, `ARGV[3]` the publishing command (as in [`PURGE`]). Its first write is a `DEL` of the scratch key, as in [`PURGE`].
static PURGE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- ARGV[1] (µs, may be negative): the skew margin less the purge's age, as in PURGE.
redis.call('DEL', KEYS[2])
local t = redis.call('TIME')
local stamp = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stamp > old then redis.call('SET', KEYS[1], string.format('%.0f', stamp)) end
return redis.call(ARGV[3], ARGV[2], '*')
",
    )
});

/// Whether an operation respects the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaking {
    Obey,
    Past,
}

pub(crate) type TellLanded = dyn Fn(Option<&PendingKind>) -> bool + Send + Sync;

/// A `PurgeForwarding` told of the purges made through it that were queued, once they
/// landed (and reached every memory tier).
pub(crate) struct LandedHook {
    pub(crate) forwarder: u64,
    /// Passes the purge on (`Some`), or only answers (`None`); `false` once the forwarding
    /// store is gone, and the hook is dropped.
    pub(crate) landed: Box<TellLanded>,
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A standalone or cluster connection, behind one type.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Standalone(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Standalone(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A [`Store`] in Redis (standalone or cluster), shared by every instance of an application.
///
/// Cheap to clone. Operations time out, and after repeated failures a circuit breaker stops
/// calling Redis for a while; the layer then serves from the inner service (fail open). The
/// connection comes back by itself when Redis does.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use tower_response_cache::{store::RedisStore, CacheLayer};
/// let store = RedisStore::builder("redis://127.0.0.1:6379").namespace("shop").connect().await?;
/// let layer = CacheLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    /// For the invalidation subscription of tiered stores.
    pubsub_client: ::redis::Client,
    entry_prefix: Vec<u8>,
    lease_prefix: Vec<u8>,
    /// Marks a lease another instance waits on.
    waited_prefix: Vec<u8>,
    /// Where releases of leases waited on are published.
    lease_channel: String,
    /// Started by the first lease taken.
    lease_releases: OnceLock<Arc<LeaseReleases>>,
    record_prefix: Vec<u8>,
    floor_key: Vec<u8>,
    filter_key: Vec<u8>,
    sketch_prefix: Vec<u8>,
    scratch_key: Vec<u8>,
    channel: String,
    op_timeout: Duration,
    max_entry_ttl: Duration,
    skew_margin: Duration,
    /// Cells per sketch and µs per interval of the recent-purge filter.
    filter_cells: u64,
    filter_width_us: u64,
    breaker: Breaker,
    counters: RedisCounters,
    /// Purges that failed, until they land.
    pending: PurgeQueue,
    /// Set when a tiered store puts a memory tier over this store: how long a landed queued
    /// purge takes to reach every memory tier.
    tier_window: OnceLock<Duration>,
    /// Told of queued purges once they land (the `PurgeForwarding`s over this store).
    on_landed: std::sync::Mutex<Vec<LandedHook>>,
    /// Queued purges landed and settling (see `tier_window`), with their forwarders, to tell
    /// of once they settle.
    settling_replays: std::sync::Mutex<Vec<(u64, PendingKind)>>,
    /// The `maxmemory-policy` read at connect, as a [`MaxmemoryPolicy`] index.
    policy: AtomicU8,
    stamps_evictable: AtomicBool,
    /// A spread namespace's purge log and its mirror (see [`purge_log`]).
    spread: Option<Spread>,
    /// On a cluster with sharded pub/sub: the nodes a sharded subscription starts from.
    sharded: Option<Vec<::redis::ConnectionInfo>>,
    /// Reads of a spread namespace answered while its mirror was not proven live.
    unverified: AtomicU64,
}

/// What a spread namespace needs: the purge log's keys, its mirror, and how long it keeps
/// purges.
struct Spread {
    keys: LogKeys,
    mirror: Arc<Mirror>,
    retention: Duration,
}

impl Inner {
    /// Tells each forwarding store over this one of the queued purges made through it that
    /// landed, and drops the hooks of forwarding stores that are gone.
    fn tell_landed(&self, landed: Vec<(u64, PendingKind)>) {
        if landed.is_empty() {
            return;
        }
        let mut hooks = lock(&self.on_landed);
        for (forwarder, kind) in &landed {
            hooks.retain(|hook| (hook.landed)((hook.forwarder == *forwarder).then_some(kind)));
        }
    }
}

#[derive(Default)]
struct RedisCounters {
    errors: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
    corrupt: AtomicU64,
    out_of_memory: AtomicU64,
}

/// Redis's `maxmemory-policy`, as read when the store connected.
///
/// Under `noeviction` and every `volatile-*` policy the no-resurrection guarantee holds:
/// what it depends on (the purge-all floor and the recent-purge filter) has no TTL, so Redis
/// never evicts it, and what Redis may evict (entries, tag records) only turns into misses.
/// Under an `allkeys-*` policy Redis may evict the floor and the filter, and a purge can then
/// be forgotten: the store logs an error when it connects and reports
/// [`RedisStoreStats::stamps_evictable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MaxmemoryPolicy {
    /// Not known: Redis has not answered yet, or refused `CONFIG GET` (as managed services
    /// may); check the policy by other means.
    Unknown,
    /// `noeviction`.
    NoEviction,
    /// `volatile-lru`.
    VolatileLru,
    /// `volatile-lfu`.
    VolatileLfu,
    /// `volatile-random`.
    VolatileRandom,
    /// `volatile-ttl`.
    VolatileTtl,
    /// `allkeys-lru`.
    AllKeysLru,
    /// `allkeys-lfu`.
    AllKeysLfu,
    /// `allkeys-random`.
    AllKeysRandom,
    /// A policy this crate does not know (its name is logged when the store connects).
    Other,
}

impl MaxmemoryPolicy {
    const ALL: [MaxmemoryPolicy; 10] = [
        MaxmemoryPolicy::Unknown,
        MaxmemoryPolicy::NoEviction,
        MaxmemoryPolicy::VolatileLru,
        MaxmemoryPolicy::VolatileLfu,
        MaxmemoryPolicy::VolatileRandom,
        MaxmemoryPolicy::VolatileTtl,
        MaxmemoryPolicy::AllKeysLru,
        MaxmemoryPolicy::AllKeysLfu,
        MaxmemoryPolicy::AllKeysRandom,
        MaxmemoryPolicy::Other,
    ];

    fn parse(name: &str) -> Self {
        match name.trim().to_ascii_lowercase().as_str() {
            "noeviction" => MaxmemoryPolicy::NoEviction,
            "volatile-lru" => MaxmemoryPolicy::VolatileLru,
            "volatile-lfu" => MaxmemoryPolicy::VolatileLfu,
            "volatile-random" => MaxmemoryPolicy::VolatileRandom,
            "volatile-ttl" => MaxmemoryPolicy::VolatileTtl,
            "allkeys-lru" => MaxmemoryPolicy::AllKeysLru,
            "allkeys-lfu" => MaxmemoryPolicy::AllKeysLfu,
            "allkeys-random" => MaxmemoryPolicy::AllKeysRandom,
            _ => MaxmemoryPolicy::Other,
        }
    }

    fn index(self) -> u8 {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0) as u8
    }

    fn from_index(i: u8) -> Self {
        Self::ALL
            .get(usize::from(i))
            .copied()
            .unwrap_or(MaxmemoryPolicy::Unknown)
    }
}

/// A snapshot of a [`RedisStore`]'s health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStoreStats {
    /// Operations Redis answered with an error (or that could not reach it).
    pub errors: u64,
    /// Operations that exceeded the operation timeout.
    pub timeouts: u64,
    /// Operations not attempted because the circuit breaker was open.
    pub refused: u64,
    /// Values that were corrupt, truncated or not written by this crate (read as misses).
    pub corrupt: u64,
    /// Writes Redis refused for lack of memory (`noeviction`, or nothing left to evict),
    /// counted as declined writes, not as errors.
    pub out_of_memory: u64,
    /// Whether the circuit breaker is open now.
    pub breaker_open: bool,
    /// How often the breaker opened.
    pub breaker_trips: u64,
    /// Purges that could not reach Redis and wait to be retried (applied to this instance's
    /// reads meanwhile). Under a [`TieredStore`](super::TieredStore), a queued purge that
    /// other instances heard stays pending for the coherence window after it lands, until
    /// their memory tiers have applied it.
    pub pending_purges: u64,
    /// Attempts to land a queued purge.
    pub retried_purges: u64,
    /// Queued purges that have landed (under a tiered store: and settled, as above).
    pub landed_purges: u64,
    /// Times the queue of pending purges passed its bound and became one purge-all.
    pub degraded_purges: u64,
    /// Redis's `maxmemory-policy`, read when the store connected.
    pub maxmemory_policy: MaxmemoryPolicy,
    /// Whether that policy lets Redis evict keys without a TTL (`allkeys-*`), which breaks
    /// the no-resurrection guarantee: a purge-all floor or the recent-purge filter evicted
    /// forgets purges. Logged at error level when the store connects.
    pub stamps_evictable: bool,
    /// Under [`spread_namespace`](RedisStoreBuilder::spread_namespace): whether the mirror of
    /// the purge log is proven live now (a read of the log found it caught up less than
    /// [`RedisStore::MIRROR_WINDOW`] ago), so that reads are judged by it. Always `false`
    /// otherwise.
    pub purge_log_live: bool,
    /// Purge log entries the mirror applied.
    pub purge_log_applied: u64,
    /// Times the mirror found it may have missed purges (the log trimmed past its position,
    /// or lost) and raised its floor instead: entries older than that became misses.
    pub purge_log_resyncs: u64,
    /// Reads of a spread namespace that found an entry while the mirror was not proven live:
    /// answered as [`Lookup::Unverified`] (served only in place of an origin error).
    pub unverified_reads: u64,
    /// Whether the subscription that hears fleet-wide leases given back is up (it starts
    /// with the first lease this store takes); while it is not, waiting instances poll.
    pub lease_releases_live: bool,
    /// Releases of waited-on leases (anywhere in the fleet) that the subscription heard.
    pub lease_releases_heard: u64,
    /// Waits on another instance's lease made while the subscription was up (each ends at
    /// word of the release, or at the poll interval).
    pub lease_waits: u64,
    /// Waits on another instance's lease that word of its release ended, rather than the
    /// poll interval.
    pub lease_waits_woken: u64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &String::from_utf8_lossy(&self.inner.entry_prefix))
            .field("stats", &self.stats())
            .finish()
    }
}

/// Configures a [`RedisStore`].
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use std::time::Duration;
/// use tower_response_cache::store::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .namespace("shop")
///     .op_timeout(Duration::from_millis(100))
///     .circuit_breaker(5, Duration::from_secs(2))
///     .max_entry_ttl(Duration::from_secs(3600))
///     .in_flight_horizon(Duration::from_secs(60))
///     .purge_filter_bytes(4 << 20)
///     .clock_skew_margin(Duration::from_millis(500))
///     .pending_purge_bytes(1 << 20)
///     .connect()
///     .await?;
/// // A Redis Cluster, given some of its nodes:
/// let cluster = RedisStore::cluster_builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    namespace: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    max_entry_ttl: Duration,
    skew_margin: Duration,
    pending_purge_bytes: usize,
    in_flight_horizon: Duration,
    purge_filter_bytes: usize,
    spread: bool,
    purge_log_max_len: u64,
    sharded_pubsub: bool,
}

/// What a builder connects to.
#[derive(Clone)]
enum Target {
    Urls {
        nodes: Vec<String>,
        cluster: bool,
    },
    Client(Box<::redis::Client>),
    /// A cluster, and a client for one of its nodes, for the invalidation subscription.
    ClusterClient(Box<(::redis::cluster::ClusterClient, ::redis::Client)>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Urls { nodes, cluster } => f
                .debug_struct("Urls")
                .field("nodes", nodes)
                .field("cluster", cluster)
                .finish(),
            Target::Client(client) => f.debug_tuple("Client").field(client).finish(),
            Target::ClusterClient(clients) => f.debug_tuple("ClusterClient").field(&clients.1).finish(),
        }
    }
}

impl RedisStore {
    /// Configures a store on a standalone Redis: `redis://host:port/db`, or, with the
    /// `redis-tls` feature, `rediss://host:port/db` for TLS.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Urls {
            nodes: vec![url.into()],
            cluster: false,
        })
    }

    /// Configures a store on a Redis Cluster, given some of its nodes.
    pub fn cluster_builder<I>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisStoreBuilder::new(Target::Urls {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
        })
    }

    /// Configures a store on a standalone Redis through a client you built: with your own
    /// credentials, TLS certificates (`Client::build_with_tls`, feature `redis-tls`) or
    /// protocol settings. The store's `op_timeout` still bounds every operation.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_response_cache::store::RedisStore;
    /// let client = redis::Client::open("redis://127.0.0.1:6379/2")?;
    /// let store = RedisStore::builder_with_client(client).namespace("shop").connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder_with_client(client: ::redis::Client) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Client(Box::new(client)))
    }

    /// Configures a store on a Redis Cluster through a cluster client you built, and a client
    /// for any one of its nodes, which carries the invalidation subscription of tiered
    /// stores (Redis Cluster forwards published messages to every node). The cluster
    /// client's own connection and response timeouts apply, and the store's `op_timeout`
    /// bounds every operation.
    pub fn cluster_builder_with_client(
        cluster: ::redis::cluster::ClusterClient,
        node: ::redis::Client,
    ) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::ClusterClient(Box::new((cluster, node))))
    }

    /// Under [`spread_namespace`](RedisStoreBuilder::spread_namespace), how old the proof
    /// that the purge-log mirror is caught up may be for reads to be judged by it: a purge
    /// completed on another instance holds on this one from this long after it returned.
    pub const MIRROR_WINDOW: Duration = purge_log::MIRROR_WINDOW;

    /// Errors, timeouts, corrupt values and the breaker's state.
    pub fn stats(&self) -> RedisStoreStats {
        let c = &self.inner.counters;
        let queue = self.inner.pending.counts();
        RedisStoreStats {
            errors: c.errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            refused: c.refused.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            out_of_memory: c.out_of_memory.load(Relaxed),
            breaker_open: self.inner.breaker.is_open(),
            breaker_trips: self.inner.breaker.trips(),
            pending_purges: queue.pending,
            retried_purges: queue.retried,
            landed_purges: queue.landed,
            degraded_purges: queue.degraded,
            maxmemory_policy: MaxmemoryPolicy::from_index(self.inner.policy.load(Relaxed)),
            stamps_evictable: self.inner.stamps_evictable.load(Relaxed),
            purge_log_live: self.inner.spread.as_ref().is_some_and(|s| s.mirror.is_live()),
            purge_log_applied: self.inner.spread.as_ref().map_or(0, |s| s.mirror.applied()),
            purge_log_resyncs: self.inner.spread.as_ref().map_or(0, |s| s.mirror.resyncs()),
            unverified_reads: self.inner.unverified.load(Relaxed),
            lease_releases_live: self.inner.lease_releases.get().is_some_and(|r| r.is_live()),
            lease_releases_heard: self.inner.lease_releases.get().map_or(0, |r| r.heard_count()),
            lease_waits: self.inner.lease_releases.get().map_or(0, |r| r.wait_count()),
            lease_waits_woken: self.inner.lease_releases.get().map_or(0, |r| r.woken_count()),
        }
    }

    pub(crate) fn skew_margin(&self) -> Duration {
        self.inner.skew_margin
    }

    /// The longest an entry is kept in Redis (copies elsewhere keep it no longer: a spread
    /// namespace's mirror forgets purges past it).
    pub(crate) fn max_entry_ttl(&self) -> Duration {
        self.inner.max_entry_ttl
    }

    /// A spread namespace's purge log mirror.
    pub(crate) fn spread_mirror(&self) -> Option<Arc<Mirror>> {
        self.inner.spread.as_ref().map(|s| s.mirror.clone())
    }

    pub(crate) fn pubsub_client(&self) -> &::redis::Client {
        &self.inner.pubsub_client
    }

    pub(crate) fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Publishes `payload` on `channel` over the store's connection (on a cluster, routed by
    /// the channel's slot: the namespace's, as the purges are), bounded by the operation
    /// timeout but outside the breaker (a heartbeat must test the link, not be refused).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        let mut conn = self.inner.connection.clone();
        let mut command = ::redis::cmd(self.publish_command());
        command.arg(channel).arg(payload);
        let publish = command.query_async::<i64>(&mut conn);
        matches!(tokio::time::timeout(self.inner.op_timeout, publish).await, Ok(Ok(_)))
    }

    /// The key of the fleet-wide lease on `key`'s call to the origin, and of its waited-on
    /// mark (in the slot of the entry).
    fn lease_keys(&self, key: &CacheKey) -> (Vec<u8>, Vec<u8>) {
        let of = |prefix: &[u8]| {
            let mut k = Vec::with_capacity(prefix.len() + key.as_bytes().len() + 18);
            self.own_slot(&mut k, key);
            k.extend_from_slice(prefix);
            k.extend_from_slice(key.as_bytes());
            k
        };
        (of(&self.inner.lease_prefix), of(&self.inner.waited_prefix))
    }

    fn entry_key(&self, key: &CacheKey) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.entry_prefix.len() + key.as_bytes().len() + 18);
        self.own_slot(&mut k, key);
        k.extend_from_slice(&self.inner.entry_prefix);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// In a spread namespace, a key's own hash tag comes first (Redis Cluster hashes the
    /// first `{...}` of a key): 64-bit FNV-1a of the cache key in hex, the same in every
    /// process, so that the namespace's keys spread evenly over the slots.
    fn own_slot(&self, k: &mut Vec<u8>, key: &CacheKey) {
        if self.inner.spread.is_none() {
            return;
        }
        let hash = key.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        k.extend_from_slice(format!("{{{hash:016x}}}").as_bytes());
    }

    /// Runs one Redis operation under the timeout and the breaker.
    async fn run<T, F>(&self, op: impl FnOnce(Connection) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = ::redis::RedisResult<T>>,
    {
        self.run_as(op, Breaking::Obey).await
    }

    /// Runs one Redis operation under the timeout; `Breaking::Past` tries it even while the
    /// breaker is open (without telling the breaker how it went).
    async fn run_as<T, F>(&self, op: impl FnOnce(Connection) -> F, breaking: Breaking) -> Result<T, StoreError>
    where
        F: Future<Output = ::redis::RedisResult<T>>,
    {
        let inner = &self.inner;
        let permit = inner.breaker.permit();
        let counted = permit != Permit::Refused;
        if !counted && breaking == Breaking::Obey {
            inner.counters.refused.fetch_add(1, Relaxed);
            export_count!("tower_response_cache_redis_errors_total", "kind" => "refused"; 1);
            return Err(StoreError::new("redis circuit breaker open"));
        }
        // A probe whose call is dropped before it ends (its request cancelled) must not leave
        // the breaker waiting for it forever: it counts as failed.
        let mut probe = ProbeGuard {
            breaker: &inner.breaker,
            pending: permit == Permit::Probe,
        };
        let outcome = tokio::time::timeout(inner.op_timeout, op(inner.connection.clone())).await;
        probe.pending = false;
        match outcome {
            Ok(Ok(value)) => {
                if counted {
                    inner.breaker.success(permit);
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                if counted {
                    inner.breaker.failure(permit);
                }
                inner.counters.errors.fetch_add(1, Relaxed);
                export_count!("tower_response_cache_redis_errors_total", "kind" => "error"; 1);
                Err(StoreError::with_source("redis operation failed", error))
            }
            Err(_) => {
                if counted {
                    inner.breaker.failure(permit);
                }
                inner.counters.timeouts.fetch_add(1, Relaxed);
                export_count!("tower_response_cache_redis_errors_total", "kind" => "timeout"; 1);
                Err(StoreError::new("redis operation timed out"))
            }
        }
    }

    /// Sends a purge to Redis, stamped `age` before Redis's clock (plus the skew margin).
    /// Returns how many subscribers Redis delivered it to.
    async fn send_purge(&self, kind: &PendingKind, age: Duration, breaking: Breaking) -> Result<i64, StoreError> {
        let inner = &self.inner;
        let age_us = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let offset_us = i64::try_from(inner.skew_margin.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_sub(age_us);
        if let Some(spread) = &inner.spread {
            return self.send_to_log(kind, offset_us, spread, breaking).await;
        }
        let (floor, scratch, channel) = (
            inner.floor_key.clone(),
            inner.scratch_key.clone(),
            inner.channel.clone(),
        );
        let publish = self.publish_command();
        match kind {
            PendingKind::Tags { tags, mode } => {
                let mode = match mode {
                    PurgeMode::Hard => "h",
                    PurgeMode::Soft => "s",
                };
                let filter = inner.filter_key.clone();
                let (records, sketches) = (inner.record_prefix.clone(), inner.sketch_prefix.clone());
                let (cells, width) = (inner.filter_cells, inner.filter_width_us);
                self.run_as(
                    |mut conn| async move {
                        let mut invocation = PURGE.key(filter);
                        invocation
                            .key(scratch)
                            .arg(mode)
                            .arg(offset_us)
                            .arg(records)
                            .arg(sketches)
                            .arg(channel)
                            .arg(cells)
                            .arg(width)
                            .arg(publish);
                        for tag in tags {
                            invocation.arg(tag.as_str());
                        }
                        invocation.invoke_async::<i64>(&mut conn).await
                    },
                    breaking,
                )
                .await
            }
            PendingKind::All => {
                self.run_as(
                    |mut conn| async move {
                        PURGE_ALL
                            .key(floor)
                            .key(scratch)
                            .arg(offset_us)
                            .arg(channel)
                            .arg(publish)
                            .invoke_async::<i64>(&mut conn)
                            .await
                    },
                    breaking,
                )
                .await
            }
        }
    }

    /// [`Store::purge`], saying how many subscribers heard it (see `purge_or_queue`).
    pub(crate) async fn purge_reaching(&self, tags: &[String], mode: PurgeMode) -> Option<u64> {
        if tags.is_empty() {
            return Some(0);
        }
        if let Some(spread) = &self.inner.spread {
            // This instance's reads are judged by it from now on.
            spread
                .mirror
                .purge(tags, mode, purge_log::local_stamp(self.inner.skew_margin));
        }
        let kind = PendingKind::Tags {
            tags: tags.to_vec(),
            mode,
        };
        self.purge_or_queue(kind).await
    }

    /// [`Store::purge_all`], saying how many subscribers heard it.
    pub(crate) async fn purge_all_reaching(&self) -> Option<u64> {
        if let Some(spread) = &self.inner.spread {
            spread
                .mirror
                .raise_floor(purge_log::local_stamp(self.inner.skew_margin));
        }
        self.purge_or_queue(PendingKind::All).await
    }

    /// A memory tier of a tiered store sits over this store: queued purges that land settle
    /// for `window` before they stop counting as pending.
    pub(crate) fn attach_tier(&self, window: Duration) {
        let _ = self.inner.tier_window.set(window);
    }

    /// Whether this store talks to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.inner.connection, Connection::Cluster(_))
    }

    /// The nodes a tiered store's sharded subscription starts from, when purges travel over
    /// sharded pub/sub ([`RedisStoreBuilder::sharded_pubsub`]).
    pub(crate) fn sharded_nodes(&self) -> Option<&[::redis::ConnectionInfo]> {
        self.inner.sharded.as_deref()
    }

    /// How purges and heartbeats are published: `SPUBLISH` reaches only the node that owns
    /// the namespace's slot, where sharded subscribers listen; `PUBLISH` on a cluster is
    /// forwarded to every node.
    fn publish_command(&self) -> &'static str {
        if self.inner.sharded.is_some() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Sends a purge; if Redis cannot be reached, queues it and makes sure it is retried.
    /// Returns how many subscribers to the purge channel Redis delivered it to (this store's
    /// own tiered subscription included; on a cluster, those of one node only), or `None`
    /// when it was queued.
    async fn purge_or_queue(&self, kind: PendingKind) -> Option<u64> {
        let requested = Requested::now();
        let error = match self.send_purge(&kind, Duration::ZERO, Breaking::Obey).await {
            Ok(receivers) => return Some(u64::try_from(receivers).unwrap_or(0)),
            Err(error) => error,
        };
        tracing::warn!(%error, "purge did not reach Redis: applied locally, queued and retried until it lands");
        if self
            .inner
            .pending
            .push(kind, requested, super::forwarding::current_forwarder())
        {
            self.spawn_retries();
        }
        None
    }

    /// Retries the queued purges, oldest first, with backoff, until the queue is empty. The
    /// task holds the store weakly: it ends with the last handle.
    fn spawn_retries(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no Tokio runtime to retry purges: they wait for the next failed purge");
            self.inner.pending.retries_ended();
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut backoff = RETRY_MIN;
            loop {
                tokio::time::sleep(backoff).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = RedisStore { inner };
                backoff = match store.inner.pending.next_retry() {
                    Next::Retry(next) => match store.retry(&next).await {
                        Ok(()) => Duration::ZERO,
                        Err(_) => (backoff * 2).clamp(RETRY_MIN, RETRY_MAX),
                    },
                    Next::Settle(count) => {
                        let window = store.inner.tier_window.get().copied().unwrap_or_default();
                        drop(store);
                        tokio::time::sleep(window).await;
                        let Some(inner) = weak.upgrade() else { return };
                        inner.pending.settled(count);
                        let settled = std::mem::take(&mut *lock(&inner.settling_replays));
                        inner.tell_landed(settled);
                        Duration::ZERO
                    }
                    Next::Done => return,
                };
            }
        });
    }

    /// One queued purge, tried past an open breaker: the retries are one call at a time with
    /// backoff, and must land as soon as Redis answers, before other instances read from it.
    /// Under a tiered store whose purge other subscriptions heard, it stays pending for the
    /// coherence window after landing, until their memory tiers have applied it (or stopped
    /// answering), as a direct purge through the tiered store returns only then.
    async fn retry(&self, pending: &Pending) -> Result<(), StoreError> {
        let age = pending.requested.elapsed();
        let heard = self.send_purge(&pending.kind, age, Breaking::Past).await?;
        // Over a spread namespace no one hears it: other instances read it from the log
        // within the mirror window, which a forwarder's replay waits for itself.
        let settling =
            self.inner.tier_window.get().is_some() && self.inner.spread.is_none() && (heard > 0 || self.is_cluster());
        if settling {
            self.inner.pending.landed_settling(pending);
        } else {
            self.inner.pending.landed(pending);
        }
        tracing::info!("a queued purge landed in Redis");
        if let Some(forwarder) = pending.forwarder {
            let landed = (forwarder, pending.kind.clone());
            if settling {
                // Told once every memory tier has applied it too, when it settles.
                lock(&self.inner.settling_replays).push(landed);
            } else {
                self.inner.tell_landed(vec![landed]);
            }
        }
        Ok(())
    }

    /// How long after a purge returns other instances may still serve what it purged: a
    /// spread namespace's mirror window, zero otherwise.
    pub(crate) fn purge_settle(&self) -> Duration {
        if self.inner.spread.is_some() {
            Self::MIRROR_WINDOW
        } else {
            Duration::ZERO
        }
    }

    /// Tells `hook` of the queued purges made through its forwarder, once they land.
    pub(crate) fn on_landed(&self, hook: LandedHook) {
        let mut hooks = lock(&self.inner.on_landed);
        hooks.retain(|hook| (hook.landed)(None));
        hooks.push(hook);
    }

    /// A read in a spread namespace: one `GET` on the entry's own shard, judged by the
    /// mirror of the purge log (and the purges still waiting for Redis).
    async fn get_spread(&self, key: &CacheKey, spread: &Spread) -> Result<Lookup, StoreError> {
        let entry_key = self.entry_key(key);
        let data: Option<Vec<u8>> = self
            .run(|mut conn| async move { ::redis::cmd("GET").arg(entry_key).query_async(&mut conn).await })
            .await?;
        let Some(entry) = data.and_then(|data| self.decode(data)) else {
            return Ok(Lookup::Miss);
        };
        let response = match entry {
            // Which headers select a variant: purges never reach these.
            Entry::Variants(_) => return Ok(Lookup::Found(entry)),
            Entry::Response(response) => response,
        };
        Ok(self.judge_spread(spread, response))
    }

    /// How a spread namespace's mirror (and the purges still waiting for Redis) judge a copy
    /// of an entry kept elsewhere, a tiered store's memory tier: `None` when the namespace is
    /// not spread. Purges made through plain stores reach the memory tier this way.
    pub(crate) fn judge_copy(&self, response: &Arc<CachedResponse>) -> Option<Lookup> {
        let spread = self.inner.spread.as_ref()?;
        Some(self.judge_spread(spread, response.clone()))
    }

    /// Judges an entry just read from a spread namespace.
    fn judge_spread(&self, spread: &Spread, response: Arc<CachedResponse>) -> Lookup {
        // Checked after the read: a fence this recent covers every purge completed more
        // than the window before the entry was judged.
        let live = spread.mirror.is_live();
        // Every purge this instance knows of judges the entry, live or not: a mirror that
        // cannot prove itself live only turns what they leave into a stand-in for errors.
        let lookup = match spread
            .mirror
            .judge(purge_queue::micros(response.request_time()), response.tags())
        {
            Verdict::Valid => Lookup::Found(Entry::Response(response)),
            Verdict::SoftPurged => Lookup::SoftPurged(response),
            Verdict::Purged => Lookup::Purged,
        };
        match self.judge_pending(lookup) {
            Lookup::Found(Entry::Response(response)) | Lookup::SoftPurged(response) if !live => {
                self.inner.unverified.fetch_add(1, Relaxed);
                Lookup::Unverified(response)
            }
            lookup => lookup,
        }
    }

    /// A write in a spread namespace: a plain `SET` with its TTL, unless this instance
    /// already knows it purged. Writes that race a purge are judged when read.
    async fn put_spread(
        &self,
        key: CacheKey,
        entry: Entry,
        ttl: Duration,
        spread: &Spread,
    ) -> Result<bool, StoreError> {
        if let Entry::Response(r) = &entry {
            let started = purge_queue::micros(r.request_time());
            if spread.mirror.judge(started, r.tags()) == Verdict::Purged
                || self.inner.pending.judge(started, r.tags()) == Some(PurgeMode::Hard)
            {
                return Ok(false);
            }
        }
        let data = entry.encode();
        let entry_key = self.entry_key(&key);
        let stored = self
            .run(|mut conn| async move {
                let set = ::redis::cmd("SET")
                    .arg(entry_key)
                    .arg(&data[..])
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async::<()>(&mut conn)
                    .await;
                match set {
                    Err(error) if error.code() == Some("OOM") => Ok(false),
                    Err(error) => Err(error),
                    Ok(()) => Ok(true),
                }
            })
            .await?;
        if !stored {
            self.inner.counters.out_of_memory.fetch_add(1, Relaxed);
            export_count!("tower_response_cache_redis_errors_total", "kind" => "out-of-memory"; 1);
        }
        Ok(stored)
    }

    /// Appends a purge to a spread namespace's log. No one hears it at once: every instance
    /// learns of it by following the log, so it returns 0 subscribers.
    async fn send_to_log(
        &self,
        kind: &PendingKind,
        offset_us: i64,
        spread: &Spread,
        breaking: Breaking,
    ) -> Result<i64, StoreError> {
        let (mode, tags) = match kind {
            PendingKind::Tags { tags, mode } => (
                match mode {
                    PurgeMode::Hard => "h",
                    PurgeMode::Soft => "s",
                },
                tags.clone(),
            ),
            PendingKind::All => ("*", Vec::new()),
        };
        let keys = spread.keys.clone();
        let retention = spread.retention;
        self.run_as(
            |mut conn| async move { purge_log::append(&mut conn, &keys, mode, offset_us, retention, &tags).await },
            breaking,
        )
        .await?;
        Ok(0)
    }

    /// How the purges still waiting for Redis judge an entry read from it.
    fn judge_pending(&self, lookup: Lookup) -> Lookup {
        let response = match &lookup {
            Lookup::Found(Entry::Response(r)) | Lookup::SoftPurged(r) => r,
            _ => return lookup,
        };
        match self
            .inner
            .pending
            .judge(purge_queue::micros(response.request_time()), response.tags())
        {
            None => lookup,
            Some(PurgeMode::Soft) => Lookup::SoftPurged(response.clone()),
            Some(PurgeMode::Hard) => Lookup::Purged,
        }
    }

    fn decode(&self, data: Vec<u8>) -> Option<Entry> {
        match Entry::decode_bytes(data.into()) {
            Ok(entry) => Some(entry),
            Err(error) => {
                self.inner.counters.corrupt.fetch_add(1, Relaxed);
                export_count!("tower_response_cache_redis_errors_total", "kind" => "corrupt"; 1);
                tracing::warn!(%error, "unreadable value in Redis read as a miss");
                None
            }
        }
    }
}

impl RedisStoreBuilder {
    fn new(target: Target) -> Self {
        RedisStoreBuilder {
            target,
            namespace: "trc".into(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(2),
            max_entry_ttl: Duration::from_secs(86_400),
            skew_margin: Duration::from_millis(500),
            pending_purge_bytes: 1 << 20,
            in_flight_horizon: Duration::from_secs(60),
            purge_filter_bytes: 4 << 20,
            spread: false,
            purge_log_max_len: purge_log::LOG_MAX_LEN,
            sharded_pubsub: false,
        }
    }

    /// The key prefix (default `trc`), so that several applications can share one Redis.
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest one operation may take before the layer gives up on it (default 250 ms).
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// After `failures` failed operations in a row, stop calling Redis for `cooldown`, then
    /// let one call through to test it (default 5 failures, 2 s).
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// The longest an entry is kept (default 24 h, as the layer's `max_ttl`).
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn max_entry_ttl(mut self, ttl: Duration) -> Self {
        self.max_entry_ttl = ttl;
        self
    }

    /// How long a purge is remembered for the responses in flight when it was made (default
    /// 60 s), as [`MemoryStoreBuilder::in_flight_horizon`](crate::store::MemoryStoreBuilder::in_flight_horizon).
    /// The first purge of a namespace fixes the filter's interval (half this) and size for
    /// every instance; later instances use what Redis holds.
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn in_flight_horizon(mut self, horizon: Duration) -> Self {
        self.in_flight_horizon = horizon;
        self
    }

    /// The bytes of the recent-purge filter in Redis (default 4 MiB, four sketches of a
    /// quarter each, allocated as purges come): all that 1,000,000 purges of tags no entry
    /// carries cost there. As [`MemoryStoreBuilder::purge_filter_bytes`](crate::store::MemoryStoreBuilder::purge_filter_bytes).
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn purge_filter_bytes(mut self, bytes: usize) -> Self {
        self.purge_filter_bytes = bytes;
        self
    }

    /// How far ahead of Redis's clock a purge is stamped (default 500 ms), to cover instances
    /// whose clocks run ahead: an entry whose request started that much after a purge is
    /// still refused.
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn clock_skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// How many bytes of tags the purges waiting for an unreachable Redis may hold (default
    /// 1 MiB; each tag costs its length plus 64 bytes). Past it they become one purge-all,
    /// sent when Redis is reachable again.
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub fn pending_purge_bytes(mut self, bytes: usize) -> Self {
        self.pending_purge_bytes = bytes;
        self
    }

    /// Spreads the namespace's entries over a cluster's shards (default off): each entry (and
    /// fleet lease) gets a hash slot of its own instead of the namespace's, and purges go to
    /// a purge log (a Redis stream in the namespace's slot) that every instance mirrors and
    /// checks on each read, so that a hit stays one `GET`. The README's "Redis Cluster"
    /// section states the consistency it gives: a purge holds at once on the instance that
    /// made it, and on every other instance from [`RedisStore::MIRROR_WINDOW`] after it
    /// returned; while an instance's mirror is not proven live, what it reads back is only
    /// [`Lookup::Unverified`]. Needs a Tokio runtime (the mirror runs as a task). Every
    /// instance of a namespace must agree on this setting (the layouts differ).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_response_cache::StoreError> {
    /// use tower_response_cache::store::RedisStore;
    /// let store = RedisStore::cluster_builder(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .namespace("shop")
    ///     .spread_namespace(true)
    ///     .connect()
    ///     .await?;
    /// assert!(store.stats().purge_log_applied == 0);
    /// # Ok(()) }
    /// ```
    pub fn spread_namespace(mut self, spread: bool) -> Self {
        self.spread = spread;
        self
    }

    /// Under [`spread_namespace`](Self::spread_namespace), the most purges the purge log keeps
    /// (default 100,000; it also drops those older than `max_entry_ttl` + `in_flight_horizon`).
    /// What is trimmed raises the log's floor: an instance that starts later (or falls that
    /// far behind) treats the entries whose requests started before the trimmed purges as
    /// misses, so a log shorter than the purges made over an entry's lifetime costs hits,
    /// never correctness.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_response_cache::StoreError> {
    /// use tower_response_cache::store::RedisStore;
    /// let store = RedisStore::cluster_builder(["redis://10.0.0.1:7000"])
    ///     .spread_namespace(true)
    ///     .purge_log_max_len(1_000_000)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn purge_log_max_len(mut self, entries: u64) -> Self {
        self.purge_log_max_len = entries.max(1);
        self
    }

    /// On a Redis Cluster, whether purges reach tiered stores' memory tiers over sharded
    /// pub/sub (default `false`). A purge is then published with `SPUBLISH` on the primary
    /// that owns the namespace's slot, and memory tiers subscribe there (following the slot
    /// through failovers), instead of the cluster forwarding every purge to every node. Needs
    /// Redis 7.0 and [`RedisStore::cluster_builder`]: [`connect`](Self::connect) fails
    /// otherwise, rather than broadcast. No effect on a standalone Redis, nor under
    /// [`spread_namespace`](Self::spread_namespace) (which publishes no purges).
    ///
    /// Every instance of a namespace must set it alike: a sharded purge is not heard by a
    /// memory tier subscribed with `SUBSCRIBE`, nor a broadcast one by a sharded subscriber.
    /// Switch a running fleet over all at once (or to a new namespace).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_response_cache::StoreError> {
    /// use tower_response_cache::store::RedisStore;
    /// let store = RedisStore::cluster_builder(["redis://10.0.0.1:7000"])
    ///     .sharded_pubsub(false)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn sharded_pubsub(mut self, sharded: bool) -> Self {
        self.sharded_pubsub = sharded;
        self
    }

    /// Connects. A standalone store connects lazily, so it can be built while Redis is down;
    /// a cluster store needs a node to answer now.
    ///
    /// It then reads Redis's `maxmemory-policy` (within the operation timeout; if Redis cannot
    /// be reached yet, in the background until it can) and logs at error level if the policy
    /// can evict the keys purges depend on (`allkeys-*`). A Redis that refuses `CONFIG GET`,
    /// as managed services may, is logged and used all the same.
    ///
    /// See the [example](RedisStoreBuilder#example).
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        // The mirror's blocking reads of the purge log wait up to `BLOCK` for a reply.
        let follower_timeout = self.op_timeout + purge_log::BLOCK;
        let standalone_with = |client: &::redis::Client, response_timeout: Duration| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map(Connection::Standalone)
                .map_err(|e| StoreError::with_source("cannot create a Redis connection", e))
        };
        let standalone = |client: &::redis::Client| standalone_with(client, self.op_timeout);
        let cluster = |client: ::redis::cluster::ClusterClient| async move {
            client
                .get_async_connection()
                .await
                .map(Connection::Cluster)
                .map_err(|e| StoreError::with_source("cannot connect to Redis Cluster", e))
        };
        let spread = self.spread;
        // A spread namespace's mirror follows the purge log over a connection of its own.
        let (pubsub_client, connection, follower) = match &self.target {
            Target::Urls {
                nodes,
                cluster: is_cluster,
            } => {
                let first = nodes.first().ok_or_else(|| StoreError::new("no Redis node given"))?;
                let client = ::redis::Client::open(first.as_str())
                    .map_err(|e| StoreError::with_source("invalid Redis URL", e))?;
                let cluster_client = |timeout: Duration| {
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(timeout)
                        .build()
                        .map_err(|e| StoreError::with_source("invalid Redis Cluster nodes", e))
                };
                let (connection, follower) = if *is_cluster {
                    let follower = match spread {
                        true => Some(cluster(cluster_client(follower_timeout)?).await?),
                        false => None,
                    };
                    (cluster(cluster_client(self.op_timeout)?).await?, follower)
                } else {
                    let follower = spread.then(|| standalone_with(&client, follower_timeout)).transpose()?;
                    (standalone(&client)?, follower)
                };
                (client, connection, follower)
            }
            Target::Client(client) => {
                let follower = spread.then(|| standalone_with(client, follower_timeout)).transpose()?;
                (client.as_ref().clone(), standalone(client)?, follower)
            }
            Target::ClusterClient(clients) => {
                let follower = match spread {
                    true => Some(cluster(clients.0.clone()).await?),
                    false => None,
                };
                (clients.1.clone(), cluster(clients.0.clone()).await?, follower)
            }
        };
        let spread = follower.map(|follower| {
            let keys = LogKeys {
                log: format!("{{{}}}:log", self.namespace).into_bytes(),
                meta: format!("{{{}}}:logm", self.namespace).into_bytes(),
                scratch: format!("{{{}}}:scratch", self.namespace).into_bytes(),
                max_len: self.purge_log_max_len,
            };
            let mirror = Mirror::new(self.max_entry_ttl.saturating_add(self.in_flight_horizon));
            mirror.follow(follower, keys.clone(), self.op_timeout);
            Spread {
                keys,
                mirror,
                retention: self.max_entry_ttl.saturating_add(self.in_flight_horizon),
            }
        });
        let ns = format!("{{{}}}:", self.namespace);
        let sharded = match &self.target {
            _ if spread.is_some() || !self.sharded_pubsub => None,
            Target::Urls { nodes, cluster: true } => Some(
                nodes
                    .iter()
                    .map(|n| n.as_str().into_connection_info())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::with_source("invalid Redis Cluster nodes", e))?,
            ),
            Target::ClusterClient(_) => return Err(StoreError::new(
                "sharded_pubsub needs RedisStore::cluster_builder: its subscription builds a cluster client of its own",
            )),
            _ => None,
        };
        if sharded.is_some() {
            // Every instance must publish and subscribe alike: fail rather than broadcast.
            shards_pubsub(&connection, &ns, self.op_timeout).await?;
        }
        let filter_width_us = (micros_of(self.in_flight_horizon) / 2).clamp(1, u64::from(u32::MAX - 1));
        let per_sketch = (self.purge_filter_bytes as u64 / FILTER_SLOTS / 4).clamp(1 << 10, 1 << 27);
        let store = RedisStore {
            inner: Arc::new(Inner {
                connection,
                pubsub_client,
                entry_prefix: format!("{ns}e:").into_bytes(),
                lease_prefix: format!("{ns}l:").into_bytes(),
                waited_prefix: format!("{ns}w:").into_bytes(),
                lease_channel: format!("{ns}leases"),
                lease_releases: OnceLock::new(),
                record_prefix: format!("{ns}r:").into_bytes(),
                floor_key: format!("{ns}floor").into_bytes(),
                filter_key: format!("{ns}pf").into_bytes(),
                sketch_prefix: format!("{ns}pf:").into_bytes(),
                scratch_key: format!("{ns}scratch").into_bytes(),
                channel: format!("{ns}purge"),
                op_timeout: self.op_timeout,
                max_entry_ttl: self.max_entry_ttl,
                skew_margin: self.skew_margin,
                // A power of two, as in memory.
                filter_cells: 1 << (63 - per_sketch.leading_zeros()),
                filter_width_us,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                counters: RedisCounters::default(),
                pending: PurgeQueue::new(self.pending_purge_bytes, self.skew_margin),
                tier_window: OnceLock::new(),
                on_landed: Default::default(),
                settling_replays: Default::default(),
                policy: AtomicU8::new(MaxmemoryPolicy::Unknown.index()),
                stamps_evictable: AtomicBool::new(false),
                spread,
                sharded,
                unverified: AtomicU64::new(0),
            }),
        };
        // Best effort: without it, the first write after connecting sets the floor instead.
        let floor = store.inner.floor_key.clone();
        let _ = store
            .run(|mut conn| async move { FLOOR_INIT.key(floor).invoke_async::<i64>(&mut conn).await })
            .await;
        if let Some(spread) = &store.inner.spread {
            // Reads right after connecting are judged, not unverified, if the log answers.
            if !spread.mirror.wait_live(self.connect_timeout).await {
                tracing::warn!("purge log not read yet: reads are unverified until it is");
            }
        }
        if store.check_policy().await == PolicyCheck::Unreachable {
            tokio::spawn(recheck_policy(Arc::downgrade(&store.inner)));
        }
        Ok(store)
    }
}

/// A cluster connection subscribed with `SSUBSCRIBE` to `channels` (it follows their slot
/// through failovers, and tells of every disconnection and resubscription), and the pushes
/// it receives; `None` if that took longer than `within` (the cluster client connects to
/// every seed and node first) or failed.
pub(crate) async fn sharded_subscription(
    nodes: Vec<::redis::ConnectionInfo>,
    channels: &[&str],
    connect_timeout: Duration,
    within: Duration,
) -> Option<(
    ClusterConnection,
    tokio::sync::mpsc::UnboundedReceiver<::redis::PushInfo>,
)> {
    let (sender, pushes) = tokio::sync::mpsc::unbounded_channel();
    let connect = async {
        let client = ::redis::cluster::ClusterClient::builder(nodes)
            .use_protocol(::redis::ProtocolVersion::RESP3)
            .push_sender(sender)
            .connection_timeout(connect_timeout)
            .response_timeout(connect_timeout)
            .build()?;
        let mut connection = client.get_async_connection().await?;
        connection.ssubscribe(channels).await?;
        Ok::<_, ::redis::RedisError>(connection)
    };
    match tokio::time::timeout(within, connect).await {
        Ok(Ok(connection)) => Some((connection, pushes)),
        _ => None,
    }
}

/// Checks that the cluster runs `SPUBLISH` for this store (Redis 7.0 and later, and an ACL
/// that allows it).
async fn shards_pubsub(connection: &Connection, ns: &str, timeout: Duration) -> Result<(), StoreError> {
    let mut conn = connection.clone();
    let mut probe = ::redis::cmd("SPUBLISH");
    probe.arg(format!("{ns}probe")).arg("");
    match tokio::time::timeout(timeout, probe.query_async::<i64>(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(StoreError::with_source(
            "sharded_pubsub: the Redis Cluster does not run SPUBLISH (it needs Redis 7.0)",
            error,
        )),
        Err(_) => Err(StoreError::new(
            "sharded_pubsub: the Redis Cluster did not answer SPUBLISH in time",
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PolicyCheck {
    Read,
    Refused,
    Unreachable,
}

impl RedisStore {
    /// Reads `maxmemory-policy` from the node that holds the namespace, records it and logs
    /// what it means for purges.
    async fn check_policy(&self) -> PolicyCheck {
        let inner = &self.inner;
        let mut cmd = ::redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let mut conn = inner.connection.clone();
        let reply = match &mut conn {
            Connection::Standalone(c) => tokio::time::timeout(inner.op_timeout, cmd.query_async::<Value>(c)).await,
            Connection::Cluster(c) => {
                let route = Route::with_key(&inner.floor_key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                tokio::time::timeout(inner.op_timeout, c.route_command(cmd, routing)).await
            }
        };
        let value = match reply {
            Ok(Ok(value)) => value,
            Ok(Err(error)) if refuses_config(&error) => {
                tracing::warn!(
                    %error,
                    "Redis refused CONFIG GET maxmemory-policy: make sure it is noeviction or volatile-*, \
                     or purged entries can come back after Redis evicts the keys purges depend on"
                );
                return PolicyCheck::Refused;
            }
            _ => return PolicyCheck::Unreachable,
        };
        let Some(name) = policy_name(&value) else {
            tracing::warn!(?value, "unexpected reply to CONFIG GET maxmemory-policy");
            return PolicyCheck::Refused;
        };
        let policy = MaxmemoryPolicy::parse(&name);
        let evictable = name.trim().to_ascii_lowercase().starts_with("allkeys-");
        inner.policy.store(policy.index(), Relaxed);
        inner.stamps_evictable.store(evictable, Relaxed);
        if evictable {
            tracing::error!(
                policy = %name,
                "Redis's maxmemory-policy can evict keys without a TTL: purges may be forgotten \
                 and purged entries served again under memory pressure; use noeviction or a volatile-* policy"
            );
        } else if policy == MaxmemoryPolicy::Other {
            tracing::warn!(policy = %name, "unknown Redis maxmemory-policy: purges hold only if it never evicts keys without a TTL");
        } else {
            tracing::debug!(policy = %name, "Redis maxmemory-policy keeps purges");
        }
        PolicyCheck::Read
    }
}

/// Whether an error answers `CONFIG GET` for good (unknown command, no permission), rather
/// than telling that Redis cannot answer yet.
fn refuses_config(error: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Extension | ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}

/// The policy's name in a `CONFIG GET` reply (RESP2 array or RESP3 map).
fn policy_name(value: &Value) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match value {
        Value::Array(items) => items.get(1).and_then(text),
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// Reads the policy once Redis answers, for a store that connected while it could not.
async fn recheck_policy(inner: Weak<Inner>) {
    let mut delay = Duration::from_millis(500);
    loop {
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else { return };
        if (RedisStore { inner }).check_policy().await != PolicyCheck::Unreachable {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Settles a breaker probe that was dropped before its call ended.
struct ProbeGuard<'b> {
    breaker: &'b Breaker,
    pending: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.pending {
            self.breaker.failure(Permit::Probe);
        }
    }
}

/// The first and the longest wait between two attempts to land a queued purge.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(100);

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u128::from(u64::MAX))).max(1) as u64
}

impl Store for RedisStore {
    fn handle_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.inner) as usize)
    }

    /// `SET NX PX` of a random token (marking a held lease waited on); any failure (timeout,
    /// breaker, error) is `Unsupported`: the caller goes on with its own process's coalescing.
    async fn try_lease(&self, key: &CacheKey, ttl: Duration) -> LeaseAttempt {
        // Listening for releases from the first lease on, so that waits can be woken.
        self.inner.lease_releases.get_or_init(|| {
            LeaseReleases::start(
                self.inner.pubsub_client.clone(),
                self.inner.lease_channel.clone(),
                self.inner.sharded.clone(),
            )
        });
        let token = lease_token();
        let (lease, waited) = self.lease_keys(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set = self
            .run(|mut conn| async move {
                LEASE_TRY
                    .key(lease)
                    .key(waited)
                    .arg(token)
                    .arg(ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match set {
            Ok(1) => LeaseAttempt::Acquired(LeaseToken(token)),
            Ok(_) => LeaseAttempt::Held,
            Err(_) => LeaseAttempt::Unsupported,
        }
    }

    async fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) {
        match self.inner.lease_releases.get() {
            Some(releases) => releases.wait(key.as_bytes(), since, poll).await,
            None => tokio::time::sleep(poll).await,
        }
    }

    async fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> bool {
        let (lease, _) = self.lease_keys(key);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let renewed = self
            .run(|mut conn| async move {
                LEASE_RENEW
                    .key(lease)
                    .arg(token.0)
                    .arg(ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        matches!(renewed, Ok(1))
    }

    async fn release_lease(&self, key: &CacheKey, token: LeaseToken) {
        let (lease, waited) = self.lease_keys(key);
        let (channel, publish) = (self.inner.lease_channel.clone(), self.publish_command());
        let payload = key.as_bytes().to_vec();
        // Best effort: an unreleased lease expires by itself.
        let _ = self
            .run(|mut conn| async move {
                LEASE_RELEASE
                    .key(lease)
                    .key(waited)
                    .arg(token.0)
                    .arg(channel)
                    .arg(publish)
                    .arg(payload)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        if let Some(spread) = &self.inner.spread {
            return self.get_spread(key, spread).await;
        }
        let entry_key = self.entry_key(key);
        let floor = self.inner.floor_key.clone();
        let record_prefix = self.inner.record_prefix.clone();
        let value: Value = self
            .run(|mut conn| async move {
                GET.key(entry_key)
                    .key(floor)
                    .arg(record_prefix)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let Value::Array(mut items) = value else {
            return Err(StoreError::new("unexpected reply from the read script"));
        };
        let data = match items.get_mut(1) {
            Some(Value::BulkString(data)) => std::mem::take(data),
            _ => Vec::new(),
        };
        let decoded = |data| self.decode(data);
        let lookup = match items.first() {
            Some(Value::Int(1)) => decoded(data).map_or(Lookup::Miss, Lookup::Found),
            Some(Value::Int(2)) => match decoded(data) {
                Some(Entry::Response(response)) => Lookup::SoftPurged(response),
                Some(other) => Lookup::Found(other),
                None => Lookup::Miss,
            },
            Some(Value::Int(3)) => Lookup::Purged,
            Some(Value::Int(4)) => {
                self.inner.counters.corrupt.fetch_add(1, Relaxed);
                export_count!("tower_response_cache_redis_errors_total", "kind" => "corrupt"; 1);
                Lookup::Miss
            }
            _ => Lookup::Miss,
        };
        Ok(self.judge_pending(lookup))
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = ttl.min(self.inner.max_entry_ttl);
        if ttl.is_zero() {
            return Ok(false);
        }
        if let Some(spread) = &self.inner.spread {
            return self.put_spread(key, entry, ttl, spread).await;
        }
        if let Entry::Response(r) = &entry {
            // A purge still waiting for Redis would refuse it there.
            if self
                .inner
                .pending
                .judge(purge_queue::micros(r.request_time()), r.tags())
                == Some(PurgeMode::Hard)
            {
                return Ok(false);
            }
        }
        let (born, tags) = match &entry {
            Entry::Response(r) => (micros(r.request_time()).to_string(), r.tags().to_vec()),
            Entry::Variants(_) => (String::new(), Vec::new()),
        };
        let data = entry.encode();
        let inner = &self.inner;
        let entry_key = self.entry_key(&key);
        let (floor, filter) = (inner.floor_key.clone(), inner.filter_key.clone());
        let (records, sketches) = (inner.record_prefix.clone(), inner.sketch_prefix.clone());
        let stored: i64 = self
            .run(|mut conn| async move {
                let mut invocation = PUT.key(entry_key);
                invocation
                    .key(floor)
                    .key(filter)
                    .arg(&data[..])
                    .arg(born)
                    .arg(millis(ttl))
                    .arg(records)
                    .arg(sketches);
                for tag in &tags {
                    invocation.arg(tag.as_str());
                }
                match invocation.invoke_async::<i64>(&mut conn).await {
                    // Out of memory: a declined write, not a failing Redis (nor a breaker trip).
                    Err(error) if error.code() == Some("OOM") => Ok(-1),
                    other => other,
                }
            })
            .await?;
        if stored == -1 {
            self.inner.counters.out_of_memory.fetch_add(1, Relaxed);
            export_count!("tower_response_cache_redis_errors_total", "kind" => "out-of-memory"; 1);
        }
        Ok(stored == 1)
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        let entry_key = self.entry_key(key);
        self.run(|mut conn| async move { ::redis::cmd("DEL").arg(entry_key).query_async::<()>(&mut conn).await })
            .await
    }

    /// A purge that cannot reach Redis is not an error: it holds on this instance at once
    /// (reads from Redis are judged by it), and is queued and retried in the background until
    /// it lands, with the instant it was requested. `stats()` counts it meanwhile.
    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.purge_reaching(tags, mode).await;
        Ok(())
    }

    /// Like [`purge`](Store::purge), a purge-all that cannot reach Redis is queued, not failed.
    async fn purge_all(&self) -> Result<(), StoreError> {
        self.purge_all_reaching().await;
        Ok(())
    }
}
