//! The tiered store: an in-process `MemoryStore` (L1) in each instance over a shared
//! `RedisStore` (L2), kept coherent through Redis pub/sub.
//!
//! Reads try L1, then L2 (filling L1); writes go to both. A purge on any instance stamps the
//! tags in Redis and is published; every instance applies it to its L1 (over a spread
//! namespace nothing is published: each instance's purge log mirror judges its L1 copies). L1
//! answers only while its invalidation feed is proven live ([`feed`](super::feed): heartbeats
//! sent through Redis came back, or the mirror read the log caught up, within the coherence
//! window); otherwise reads go to L2, whose stamps decide, and when
//! Redis cannot answer either, an L1 entry is offered only as a stand-in for an origin error
//! ([`Lookup::Unverified`]).

use super::feed::{Feed, Ticket, COHERENCE_WINDOW};
use super::purge_queue::micros;
use super::Entry;
use super::{LeaseAttempt, LeaseToken, Lookup, MemoryStore, PurgeMode, RedisStore, Store, StoreError};
use crate::CacheKey;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A [`Store`] with a per-instance memory tier over a shared Redis tier.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use tower_response_cache::{store::{RedisStore, TieredStore}, CacheLayer, MemoryStore};
/// let l2 = RedisStore::builder("redis://127.0.0.1:6379").namespace("shop").connect().await?;
/// let store = TieredStore::new(MemoryStore::builder().max_bytes(64 << 20).build(), l2);
/// let layer = CacheLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    l1: MemoryStore,
    l2: RedisStore,
    feed: Arc<Feed>,
}

/// A snapshot of a [`TieredStore`]'s synchronisation.
///
/// Over a spread namespace ([`RedisStoreBuilder::spread_namespace`]) the memory tier follows
/// the purge log's mirror instead of a subscription: `subscribed` and `coherent` say whether
/// the mirror is live, `subscriptions` counts its resyncs, `messages` the log entries it
/// applied, and there are no heartbeats or stalls.
///
/// [`RedisStoreBuilder::spread_namespace`]: super::RedisStoreBuilder::spread_namespace
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TieredStoreStats {
    /// Whether the invalidation subscription is up and one of its heartbeats came back.
    pub subscribed: bool,
    /// Whether the memory tier answers now: a heartbeat sent less than
    /// [`TieredStore::COHERENCE_WINDOW`] ago came back over the subscription.
    pub coherent: bool,
    /// Times the subscription was (re)established; each emptied L1. (Over a spread
    /// namespace: the mirror's resyncs, which raise its floor and empty nothing.)
    pub subscriptions: u64,
    /// Invalidation messages applied to L1.
    pub messages: u64,
    /// Heartbeats that came back over the subscription.
    pub heartbeats: u64,
    /// Times the subscription went silent (a stalled link) and was replaced.
    pub stalls: u64,
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.l1)
            .field("l2", &self.l2)
            .field("sync", &self.stats())
            .finish()
    }
}

impl TieredStore {
    /// How stale the memory tier may be: it answers only while a heartbeat sent through Redis
    /// less than this long ago has come back over its subscription (so every purge completed
    /// in Redis before that heartbeat has been applied). A stalled link is detected within
    /// it, and a purge through a tiered store returns this long after it landed in Redis.
    pub const COHERENCE_WINDOW: Duration = COHERENCE_WINDOW;

    /// Puts `l1` in front of `l2` and subscribes to `l2`'s invalidations. Must be called
    /// within a Tokio runtime (the subscription and heartbeats run as tasks, ended with the
    /// last clone).
    pub fn new(l1: MemoryStore, l2: RedisStore) -> Self {
        l2.attach_tier(COHERENCE_WINDOW);
        let feed = Feed::start(l1.clone(), l2.clone());
        TieredStore { l1, l2, feed }
    }

    /// The memory tier.
    pub fn l1(&self) -> &MemoryStore {
        &self.l1
    }

    /// The Redis tier (its stats count the purges waiting for Redis).
    pub fn l2(&self) -> &RedisStore {
        &self.l2
    }

    /// The state of the invalidation feed.
    pub fn stats(&self) -> TieredStoreStats {
        let c = self.feed.counts();
        TieredStoreStats {
            subscribed: c.subscribed,
            coherent: c.coherent,
            subscriptions: c.subscriptions,
            messages: c.messages,
            heartbeats: c.heartbeats,
            stalls: c.stalls,
        }
    }

    /// After a purge landed and was heard by `heard` subscribers: if another instance's
    /// memory tier may hold what it names, waits [`Self::COHERENCE_WINDOW`], by when that tier
    /// has applied it or stopped answering. Alone on the channel (no subscriber, or only this
    /// store's own live one), there is no one to wait for. A queued purge (`None`) reaches
    /// no one before it lands, so waiting would not help.
    async fn wait_for_other_tiers(&self, heard: Option<u64>) {
        let others = match heard {
            None => false,
            // Over a spread namespace no one hears it: other instances read it from the log
            // and honour it from the mirror window after it returned, as with a plain store.
            Some(_) if self.l2.purge_settle() > Duration::ZERO => false,
            // On a cluster, `PUBLISH` counts one node's subscribers only, and `SPUBLISH` not
            // those subscribed through a replica.
            Some(_) if self.l2.is_cluster() => true,
            // The one subscriber is this store's own only while its feed is proven live.
            Some(heard) => heard > 1 || (heard == 1 && self.feed.ticket().is_none()),
        };
        if others {
            tokio::time::sleep(COHERENCE_WINDOW).await;
        }
    }

    /// Keeps `entry` in L1 if the feed has stayed in the epoch of `ticket` (else a purge may
    /// have been missed since the entry was judged).
    async fn keep(&self, key: &CacheKey, entry: Entry, ttl: Duration, ticket: Ticket) -> Result<(), StoreError> {
        // A copy Redis judged valid just now: L1 checks it against the purges it learned
        // recently, not against the age of its request. It lives no longer than Redis would
        // keep it, past which a spread namespace's mirror forgets purges.
        self.l1.put_copy(key.clone(), entry, ttl.min(self.l2.max_entry_ttl()));
        // Checked after the write: a loss before it voids the ticket, a loss after it empties L1.
        if !self.feed.holds(ticket) {
            self.l1.remove(key).await?;
        }
        Ok(())
    }
}

/// Time left for an entry read from L2, for its L1 copy.
fn l1_ttl(entry: &Entry) -> Duration {
    match entry {
        Entry::Response(r) => {
            let windows = r.stale_while_revalidate().max(r.stale_if_error());
            (r.lifetime + windows).saturating_sub(r.age(SystemTime::now()))
        }
        Entry::Variants(_) => Duration::from_secs(60),
    }
}

impl TieredStore {
    /// What the memory tier may answer on its own: its copy, while the feed is live. Over a
    /// spread namespace the copy is judged by Redis's purge log mirror too (purges made
    /// through plain stores publish nothing). `local` comes back as the error when the
    /// memory tier may not answer alone, and the read goes to Redis.
    fn answer_locally(&self, live: bool, local: Lookup) -> Result<Lookup, Lookup> {
        let response = match &local {
            Lookup::Found(Entry::Response(r)) | Lookup::SoftPurged(r) if live => r,
            Lookup::Found(Entry::Variants(_)) if live => return Ok(local),
            _ => return Err(local),
        };
        match self.l2.judge_copy(response) {
            None | Some(Lookup::Found(_)) => Ok(local),
            Some(judged @ (Lookup::SoftPurged(_) | Lookup::Purged)) => Ok(judged),
            Some(_) => Err(local),
        }
    }
}

impl Store for TieredStore {
    fn handle_id(&self) -> Option<usize> {
        Some(Arc::as_ptr(&self.feed) as usize)
    }

    async fn try_lease(&self, key: &CacheKey, ttl: Duration) -> LeaseAttempt {
        self.l2.try_lease(key, ttl).await
    }

    async fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) {
        self.l2.lease_released(key, since, poll).await
    }

    async fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> bool {
        self.l2.renew_lease(key, token, ttl).await
    }

    async fn release_lease(&self, key: &CacheKey, token: LeaseToken) {
        self.l2.release_lease(key, token).await
    }

    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let local = self.l1.get(key).await?;
        let ticket = self.feed.ticket();
        let local = match self.answer_locally(ticket.is_some(), local) {
            Ok(answer) => {
                if matches!(answer, Lookup::Purged) {
                    self.l1.remove(key).await?;
                }
                return Ok(answer);
            }
            Err(local) => local,
        };
        match self.l2.get(key).await {
            Ok(Lookup::Found(entry)) => {
                if let Some(ticket) = ticket {
                    self.keep(key, entry.clone(), l1_ttl(&entry), ticket).await?;
                }
                Ok(Lookup::Found(entry))
            }
            Ok(other) => {
                // Redis decides; an L1 copy it no longer vouches for goes.
                if matches!(local, Lookup::Found(_) | Lookup::SoftPurged(_)) {
                    self.l1.remove(key).await?;
                }
                Ok(other)
            }
            // Redis failed and the feed is not proven live: a purge made elsewhere may be
            // unseen, so an L1 response may only stand in for an origin error, and not even
            // that if a purge this instance knows of (a spread namespace's mirror) forbids it.
            Err(error) => match local {
                Lookup::Found(Entry::Response(response)) | Lookup::SoftPurged(response) => {
                    match self.l2.judge_copy(&response) {
                        Some(Lookup::Purged) => {
                            self.l1.remove(key).await?;
                            Ok(Lookup::Purged)
                        }
                        _ => Ok(Lookup::Unverified(response)),
                    }
                }
                // Which headers select a variant; purges never reach these.
                Lookup::Found(variants @ Entry::Variants(_)) => Ok(Lookup::Found(variants)),
                _ => Err(error),
            },
        }
    }

    /// What Redis holds, copied over this instance's memory tier: another instance may have
    /// replaced the entry there since it was copied, or purged it. When Redis has nothing
    /// (evicted, a put that failed) or fails, the memory tier's copy stays and answers as
    /// [`get`](Store::get) would.
    async fn get_latest(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        let ticket = self.feed.ticket();
        match self.l2.get(key).await {
            Ok(Lookup::Found(entry)) => {
                if let Some(ticket) = ticket {
                    self.keep(key, entry.clone(), l1_ttl(&entry), ticket).await?;
                }
                Ok(Lookup::Found(entry))
            }
            // Purged there, and this instance may not have heard yet: its copy goes too.
            Ok(answer @ (Lookup::Purged | Lookup::SoftPurged(_))) => {
                self.l1.remove(key).await?;
                Ok(answer)
            }
            _ => self.get(key).await,
        }
    }

    /// What the memory tier answers while its feed is live, as [`get`](Store::get) would;
    /// anything that needs Redis (a miss in memory, or a feed not proven live) is `None`,
    /// and the layer awaits `get`.
    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        let local = self.l1.get_now(key)?;
        self.answer_locally(self.feed.ticket().is_some(), local).ok()
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        let ticket = self.feed.ticket();
        match self.l2.put(key.clone(), entry.clone(), ttl).await {
            // Redis holds it; L1 may still refuse it (a purge it just learned of), which only
            // costs this instance a round trip later.
            Ok(true) => {
                if let Some(ticket) = ticket {
                    self.keep(&key, entry, ttl, ticket).await?;
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(error) => {
                // Redis never judged it. L1 keeps it only if its request started after the
                // subscription came up: every purge completed since reaches L1's stamps.
                if let Some(ticket) = ticket {
                    let started = match &entry {
                        Entry::Response(r) => micros(r.request_time()),
                        Entry::Variants(_) => u64::MAX,
                    };
                    if started > ticket.subscribed_at {
                        self.keep(&key, entry, ttl, ticket).await?;
                    }
                }
                Err(error)
            }
        }
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        self.l1.remove(key).await?;
        self.l2.remove(key).await
    }

    /// Applied to L1 at once (stamped with Redis's clock-skew margin, as Redis does); a purge
    /// that cannot reach Redis is queued by it and retried until it lands. Once it has landed
    /// it returns after [`Self::COHERENCE_WINDOW`]: by then every other instance has applied
    /// it or stopped trusting its memory tier, so no instance serves what it purged. Over a
    /// spread namespace it returns once it is in the purge log, and other instances honour it
    /// from [`RedisStore::MIRROR_WINDOW`] after, as with a plain spread store.
    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        self.l1.purge_ahead(tags, mode, self.l2.skew_margin());
        let heard = self.l2.purge_reaching(tags, mode).await;
        self.wait_for_other_tiers(heard).await;
        Ok(())
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        self.l1.purge_all_ahead(self.l2.skew_margin());
        let heard = self.l2.purge_all_reaching().await;
        self.wait_for_other_tiers(heard).await;
        Ok(())
    }
}
