//! The Redis store: entries shared by every instance of an application, with tag stamps in
//! Redis so that purges hold across instances.
//!
//! Layout, under a namespace `ns` (all keys share the hash tag `{ns}`, so that the scripts,
//! which touch an entry and its tags' stamps together, work on Redis Cluster):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `{ns}:e:<cache key>` | hash | `d` encoded entry, `b` request start (µs), `t` tags | with the entry (`PX`) |
//! | `{ns}:t:<tag>` | hash | `h` / `s` last hard / soft purge (µs, Redis clock) | after the longest entry lifetime |
//! | `{ns}:floor` | string | last purge-all (µs) | never (one key) |
//!
//! A read is one round trip: a script returns the entry only if no purge of its tags (and no
//! purge-all) came at or after its request's start. Purges are stamped with Redis's clock plus
//! a margin for clock skew between instances, and published on `{ns}:purge` for tiered stores.
//!
//! A purge that cannot reach Redis is queued ([`purge_queue`](super::purge_queue)) and retried
//! in the background until it lands, stamped with the instant it was requested; meanwhile the
//! entries this instance reads back from Redis are judged by it.

use super::breaker::{Breaker, Permit};
use super::purge_queue::{self, Pending, PendingKind, PurgeQueue, Requested};
use super::{Lookup, PurgeMode, Store, StoreError};
use crate::store::stamps::micros;
use crate::{CacheKey, Entry};
use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Reads an entry and judges it against its tags' stamps and the floor, in one round trip.
/// Returns `{0}` miss, `{1, d}` found, `{2, d}` soft-purged, `{3}` purged, `{4}` foreign.
static GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return {0} end
if kind ~= 'hash' then return {4} end
local e = redis.call('HMGET', KEYS[1], 'd', 'b', 't')
if not e[1] then return {4} end
if e[2] then
  local born = tonumber(e[2])
  if not born then return {4} end
  local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if born <= floor then redis.call('DEL', KEYS[1]) return {3} end
  local soft = false
  for tag in string.gmatch(e[3] or '', '[^\n]+') do
    local s = redis.call('HMGET', ARGV[1] .. tag, 'h', 's')
    if s[1] and born <= tonumber(s[1]) then redis.call('DEL', KEYS[1]) return {3} end
    if s[2] and born <= tonumber(s[2]) then soft = true end
  end
  if soft then return {2, e[1]} end
end
return {1, e[1]}
",
    )
});

/// Writes an entry unless a purge of one of its tags (or a purge-all) came at or after its
/// request's start, or its start is too old for the stamps to be still known.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local born = tonumber(ARGV[2])
if born then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if born < now - tonumber(ARGV[6]) then return 0 end
  local floor = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if born <= floor then return 0 end
  for tag in string.gmatch(ARGV[3], '[^\n]+') do
    local h = redis.call('HGET', ARGV[5] .. tag, 'h')
    if h and born <= tonumber(h) then return 0 end
  end
end
redis.call('DEL', KEYS[1])
if born then
  redis.call('HSET', KEYS[1], 'd', ARGV[1], 'b', ARGV[2], 't', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'd', ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
",
    )
});

/// Stamps tags with Redis's clock (plus the skew margin) and publishes the purge.
static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- ARGV[3] (µs, may be negative): the skew margin less the purge's age, so that a purge
-- retried after an outage keeps the instant it was requested, on Redis's clock. The age is
-- measured when the call is sent, so the stamp errs late (the safe side).
local t = redis.call('TIME')
local stamp = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[3])
local text = string.format('%.0f', stamp)
local message = ARGV[1]
for i = 6, #ARGV do
  local key = ARGV[4] .. ARGV[i]
  local old = tonumber(redis.call('HGET', key, ARGV[1]) or '0') or 0
  if stamp > old then redis.call('HSET', key, ARGV[1], text) end
  redis.call('PEXPIRE', key, ARGV[2])
  message = message .. '\n' .. ARGV[i]
end
redis.call('PUBLISH', ARGV[5], message)
return text
",
    )
});

/// Raises the floor: every entry whose request started before now is invalid.
static PURGE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- ARGV[1] (µs, may be negative): the skew margin less the purge's age, as in PURGE.
local t = redis.call('TIME')
local stamp = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stamp > old then redis.call('SET', KEYS[1], string.format('%.0f', stamp)) end
redis.call('PUBLISH', ARGV[2], '*')
return 1
",
    )
});

/// Whether an operation respects the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breaking {
    Obey,
    Past,
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
    tag_prefix: Vec<u8>,
    floor_key: Vec<u8>,
    channel: String,
    op_timeout: Duration,
    max_entry_ttl: Duration,
    skew_margin: Duration,
    breaker: Breaker,
    counters: RedisCounters,
    /// Purges that failed, until they land.
    pending: PurgeQueue,
}

#[derive(Default)]
struct RedisCounters {
    errors: AtomicU64,
    timeouts: AtomicU64,
    refused: AtomicU64,
    corrupt: AtomicU64,
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
    /// Whether the circuit breaker is open now.
    pub breaker_open: bool,
    /// How often the breaker opened.
    pub breaker_trips: u64,
    /// Purges that could not reach Redis and wait to be retried (applied to this instance's
    /// reads meanwhile).
    pub pending_purges: u64,
    /// Attempts to land a queued purge.
    pub retried_purges: u64,
    /// Queued purges that have landed.
    pub landed_purges: u64,
    /// Times the queue of pending purges passed its bound and became one purge-all.
    pub degraded_purges: u64,
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
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    nodes: Vec<String>,
    cluster: bool,
    namespace: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    max_entry_ttl: Duration,
    skew_margin: Duration,
    pending_purge_bytes: usize,
}

impl RedisStore {
    /// Configures a store on a standalone Redis (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(vec![url.into()], false)
    }

    /// Configures a store on a Redis Cluster, given some of its nodes.
    pub fn cluster_builder<I>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisStoreBuilder::new(nodes.into_iter().map(Into::into).collect(), true)
    }

    /// Errors, timeouts, corrupt values and the breaker's state.
    pub fn stats(&self) -> RedisStoreStats {
        let c = &self.inner.counters;
        let queue = self.inner.pending.counts();
        RedisStoreStats {
            errors: c.errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            refused: c.refused.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            breaker_open: self.inner.breaker.is_open(),
            breaker_trips: self.inner.breaker.trips(),
            pending_purges: queue.pending,
            retried_purges: queue.retried,
            landed_purges: queue.landed,
            degraded_purges: queue.degraded,
        }
    }

    pub(crate) fn skew_margin(&self) -> Duration {
        self.inner.skew_margin
    }

    pub(crate) fn pubsub_client(&self) -> &::redis::Client {
        &self.inner.pubsub_client
    }

    pub(crate) fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Publishes `payload` on `channel` over the store's connection, bounded by the operation
    /// timeout but outside the breaker (a heartbeat must test the link, not be refused).
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> bool {
        let mut conn = self.inner.connection.clone();
        let mut command = ::redis::cmd("PUBLISH");
        command.arg(channel).arg(payload);
        let publish = command.query_async::<i64>(&mut conn);
        matches!(tokio::time::timeout(self.inner.op_timeout, publish).await, Ok(Ok(_)))
    }

    fn entry_key(&self, key: &CacheKey) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.inner.entry_prefix.len() + key.as_bytes().len());
        k.extend_from_slice(&self.inner.entry_prefix);
        k.extend_from_slice(key.as_bytes());
        k
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
            return Err(StoreError::new("redis circuit breaker open"));
        }
        match tokio::time::timeout(inner.op_timeout, op(inner.connection.clone())).await {
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
                Err(StoreError::with_source("redis operation failed", error))
            }
            Err(_) => {
                if counted {
                    inner.breaker.failure(permit);
                }
                inner.counters.timeouts.fetch_add(1, Relaxed);
                Err(StoreError::new("redis operation timed out"))
            }
        }
    }

    /// Sends a purge to Redis, stamped `age` before Redis's clock (plus the skew margin).
    async fn send_purge(&self, kind: &PendingKind, age: Duration, breaking: Breaking) -> Result<(), StoreError> {
        let inner = &self.inner;
        let age_us = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
        let offset_us = i64::try_from(inner.skew_margin.as_micros())
            .unwrap_or(i64::MAX)
            .saturating_sub(age_us);
        let (floor, channel) = (inner.floor_key.clone(), inner.channel.clone());
        match kind {
            PendingKind::Tags { tags, mode } => {
                let mode = match mode {
                    PurgeMode::Hard => "h",
                    PurgeMode::Soft => "s",
                };
                // Stamps outlive every entry they may judge, plus the skew margin.
                let retention = millis(inner.max_entry_ttl + inner.skew_margin + Duration::from_secs(60));
                let prefix = inner.tag_prefix.clone();
                self.run_as(
                    |mut conn| async move {
                        let mut invocation = PURGE.key(floor);
                        invocation
                            .arg(mode)
                            .arg(retention)
                            .arg(offset_us)
                            .arg(prefix)
                            .arg(channel);
                        for tag in tags {
                            invocation.arg(tag.as_str());
                        }
                        invocation.invoke_async::<String>(&mut conn).await
                    },
                    breaking,
                )
                .await
                .map(|_| ())
            }
            PendingKind::All => self
                .run_as(
                    |mut conn| async move {
                        PURGE_ALL
                            .key(floor)
                            .arg(offset_us)
                            .arg(channel)
                            .invoke_async::<i64>(&mut conn)
                            .await
                    },
                    breaking,
                )
                .await
                .map(|_| ()),
        }
    }

    /// Sends a purge; if Redis cannot be reached, queues it and makes sure it is retried.
    async fn purge_or_queue(&self, kind: PendingKind) {
        let requested = Requested::now();
        let Err(error) = self.send_purge(&kind, Duration::ZERO, Breaking::Obey).await else {
            return;
        };
        tracing::warn!(%error, "purge did not reach Redis: applied locally, queued and retried until it lands");
        if self.inner.pending.push(kind, requested) {
            self.spawn_retries();
        }
    }

    /// Retries the queued purges, oldest first, with backoff, until the queue is empty. The
    /// task holds the store weakly: it ends with the last handle.
    fn spawn_retries(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no Tokio runtime to retry purges: they wait for the next failed purge");
            self.inner.pending.retries_ended();
            return;
        };
        let store = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut backoff = RETRY_MIN;
            loop {
                tokio::time::sleep(backoff).await;
                let Some(inner) = store.upgrade() else { return };
                let store = RedisStore { inner };
                let Some(next) = store.inner.pending.next_retry() else {
                    return;
                };
                backoff = match store.retry(&next).await {
                    Ok(()) => Duration::ZERO,
                    Err(_) => (backoff * 2).clamp(RETRY_MIN, RETRY_MAX),
                };
            }
        });
    }

    /// One queued purge, tried past an open breaker: the retries are one call at a time with
    /// backoff, and must land as soon as Redis answers, before other instances read from it.
    async fn retry(&self, pending: &Pending) -> Result<(), StoreError> {
        let age = pending.requested.elapsed();
        self.send_purge(&pending.kind, age, Breaking::Past).await?;
        self.inner.pending.landed(pending);
        tracing::info!("a queued purge landed in Redis");
        Ok(())
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
                tracing::warn!(%error, "unreadable value in Redis read as a miss");
                None
            }
        }
    }
}

impl RedisStoreBuilder {
    fn new(nodes: Vec<String>, cluster: bool) -> Self {
        RedisStoreBuilder {
            nodes,
            cluster,
            namespace: "trc".into(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(2),
            max_entry_ttl: Duration::from_secs(86_400),
            skew_margin: Duration::from_millis(500),
            pending_purge_bytes: 1 << 20,
        }
    }

    /// The key prefix (default `trc`), so that several applications can share one Redis.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The longest one operation may take before the layer gives up on it (default 250 ms).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// After `failures` failed operations in a row, stop calling Redis for `cooldown`, then
    /// let one call through to test it (default 5 failures, 2 s).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// The longest an entry is kept (default 24 h, as the layer's `max_ttl`). Tag stamps are
    /// kept this long, which bounds them.
    pub fn max_entry_ttl(mut self, ttl: Duration) -> Self {
        self.max_entry_ttl = ttl;
        self
    }

    /// How far ahead of Redis's clock a purge is stamped (default 500 ms), to cover instances
    /// whose clocks run ahead: an entry whose request started that much after a purge is
    /// still refused.
    pub fn clock_skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// How many bytes of tags the purges waiting for an unreachable Redis may hold (default
    /// 1 MiB; each tag costs its length plus 64 bytes). Past it they become one purge-all,
    /// sent when Redis is reachable again.
    pub fn pending_purge_bytes(mut self, bytes: usize) -> Self {
        self.pending_purge_bytes = bytes;
        self
    }

    /// Connects. A standalone store connects lazily, so it can be built while Redis is down;
    /// a cluster store needs a node to answer now.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let first = self
            .nodes
            .first()
            .ok_or_else(|| StoreError::new("no Redis node given"))?;
        let pubsub_client =
            ::redis::Client::open(first.as_str()).map_err(|e| StoreError::with_source("invalid Redis URL", e))?;
        let connection = if self.cluster {
            let client = ::redis::cluster::ClusterClient::builder(self.nodes.iter().map(String::as_str))
                .connection_timeout(self.connect_timeout)
                .response_timeout(self.op_timeout)
                .build()
                .map_err(|e| StoreError::with_source("invalid Redis Cluster nodes", e))?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|e| StoreError::with_source("cannot connect to Redis Cluster", e))?;
            Connection::Cluster(connection)
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(self.op_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(pubsub_client.clone(), config)
                .map_err(|e| StoreError::with_source("cannot create a Redis connection", e))?;
            Connection::Standalone(manager)
        };
        let ns = format!("{{{}}}:", self.namespace);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                pubsub_client,
                entry_prefix: format!("{ns}e:").into_bytes(),
                tag_prefix: format!("{ns}t:").into_bytes(),
                floor_key: format!("{ns}floor").into_bytes(),
                channel: format!("{ns}purge"),
                op_timeout: self.op_timeout,
                max_entry_ttl: self.max_entry_ttl,
                skew_margin: self.skew_margin,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                counters: RedisCounters::default(),
                pending: PurgeQueue::new(self.pending_purge_bytes, self.skew_margin),
            }),
        })
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

    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let entry_key = self.entry_key(key);
        let floor = self.inner.floor_key.clone();
        let tag_prefix = self.inner.tag_prefix.clone();
        let value: Value = self
            .run(|mut conn| async move {
                GET.key(entry_key)
                    .key(floor)
                    .arg(tag_prefix)
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
            Entry::Response(r) => (micros(r.request_time()).to_string(), r.tags().join("\n")),
            Entry::Variants(_) => (String::new(), String::new()),
        };
        let data = entry.encode();
        let entry_key = self.entry_key(&key);
        let floor = self.inner.floor_key.clone();
        let tag_prefix = self.inner.tag_prefix.clone();
        let retention_us = self.inner.max_entry_ttl.as_micros().min(u128::from(u64::MAX)) as u64;
        let stored: i64 = self
            .run(|mut conn| async move {
                PUT.key(entry_key)
                    .key(floor)
                    .arg(&data[..])
                    .arg(born)
                    .arg(tags)
                    .arg(millis(ttl))
                    .arg(tag_prefix)
                    .arg(retention_us)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
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
        if tags.is_empty() {
            return Ok(());
        }
        let kind = PendingKind::Tags {
            tags: tags.to_vec(),
            mode,
        };
        self.purge_or_queue(kind).await;
        Ok(())
    }

    /// Like [`purge`](Store::purge), a purge-all that cannot reach Redis is queued, not failed.
    async fn purge_all(&self) -> Result<(), StoreError> {
        self.purge_or_queue(PendingKind::All).await;
        Ok(())
    }
}
