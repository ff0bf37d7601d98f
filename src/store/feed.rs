//! The invalidation feed of a tiered store: Redis pub/sub carrying purges to the memory tier,
//! and heartbeats that prove the feed live.
//!
//! Each store publishes a heartbeat on a channel of its own every [`HEARTBEAT_EVERY`], carrying
//! the instant it was sent. Redis delivers messages to a subscriber in the order it ran the
//! commands that published them, so when a heartbeat sent at `s` comes back over the
//! subscription, every purge Redis completed before `s` has reached the memory tier. The tier
//! answers only while such an `s` is less than [`COHERENCE_WINDOW`] old: a stalled link (open
//! but silent) stops it answering within that window. A subscription silent for [`SILENCE`]
//! is replaced; a new one empties the tier's entries, since messages may have been missed.
//!
//! On a Redis Cluster, heartbeats are routed by their channel's slot (the namespace's) to the
//! primary that runs the namespace's purges, so the same order holds. With `sharded_pubsub`, both go over sharded pub/sub (`SPUBLISH`), and the
//! cluster forwards neither to its other nodes.
//!
//! Over a spread namespace there is no subscription and nothing is published: the purge
//! log's mirror, which judges every read of the namespace, judges the memory tier's copies
//! too, and its fence (a read of the log found caught up) is the proof of liveness.

use super::purge_log::Mirror;
use super::{request_clock, MemoryStore, PurgeMode, RedisStore};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How often a tiered store sends itself a heartbeat through Redis.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// How old the newest returned heartbeat may be for the memory tier to answer: the bound on
/// detecting a stalled feed, and on how long a purge completed elsewhere can go unseen.
pub(crate) const COHERENCE_WINDOW: Duration = Duration::from_millis(500);
/// A subscription that delivers nothing (not even heartbeats) for this long is replaced.
const SILENCE: Duration = Duration::from_secs(2);
/// The longest connecting and subscribing may take (a black-holed link never answers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a cluster client may take to connect to the seeds and nodes, and subscribe.
const CLUSTER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// The feed's state, shared by the clones of one tiered store; its tasks end when it drops.
#[derive(Debug)]
pub(crate) struct Feed {
    origin: Instant,
    /// Changes whenever the memory tier may have missed a message (and when it is emptied for
    /// a new subscription): an entry fetched under an older epoch must not stay in the tier.
    epoch: AtomicU64,
    /// When the newest heartbeat that came back was sent (ns since `origin`, plus one); 0
    /// while none has in this epoch.
    fence: AtomicU64,
    /// When the current subscription came up, on the request clock (µs since the epoch).
    subscribed_at: AtomicU64,
    subscriptions: AtomicU64,
    messages: AtomicU64,
    heartbeats: AtomicU64,
    stalls: AtomicU64,
    tasks: OnceLock<[JoinHandle<()>; 2]>,
    /// Over a spread namespace: the purge log's mirror, the feed in place of pub/sub.
    mirror: Option<Arc<Mirror>>,
}

/// Proof that the feed was live when an operation on Redis started: the memory tier may keep
/// what the operation returns if the feed stayed in the same epoch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    /// Entries whose request started after this cannot predate a purge the tier missed.
    pub(crate) subscribed_at: u64,
}

/// A snapshot of the feed, for [`TieredStoreStats`](super::TieredStoreStats).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FeedCounts {
    pub(crate) subscribed: bool,
    pub(crate) coherent: bool,
    pub(crate) subscriptions: u64,
    pub(crate) messages: u64,
    pub(crate) heartbeats: u64,
    pub(crate) stalls: u64,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.get() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

impl Feed {
    /// Subscribes `l1` to `l2`'s purges and starts the heartbeats. Needs a Tokio runtime.
    pub(crate) fn start(l1: MemoryStore, l2: RedisStore) -> Arc<Feed> {
        let mirror = l2.spread_mirror();
        let feed = Arc::new(Feed {
            origin: Instant::now(),
            epoch: AtomicU64::new(0),
            fence: AtomicU64::new(0),
            subscribed_at: AtomicU64::new(u64::MAX),
            subscriptions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            tasks: OnceLock::new(),
            mirror,
        });
        if feed.mirror.is_some() {
            return feed;
        }
        let beat_channel = format!("{}:hb:{}", l2.channel(), instance_id());
        let beat_now = Arc::new(Notify::new());
        let (weak, channel, now) = (Arc::downgrade(&feed), beat_channel.clone(), beat_now.clone());
        let subscription = match l2.sharded_nodes() {
            Some(_) => tokio::spawn(subscribe_sharded(l1, l2.clone(), weak, channel, now)),
            None => tokio::spawn(subscribe(l1, l2.clone(), weak, channel, now)),
        };
        let heartbeats = tokio::spawn(heartbeats(l2, Arc::downgrade(&feed), beat_channel, beat_now));
        let _ = feed.tasks.set([subscription, heartbeats]);
        feed
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// A ticket if the feed is proven live now (the memory tier may answer).
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        if let Some(mirror) = &self.mirror {
            // Every copy is judged by the mirror when read: none can miss a purge it applied.
            return mirror.is_live().then_some(Ticket {
                epoch: 0,
                subscribed_at: 0,
            });
        }
        let epoch = self.epoch.load(SeqCst);
        let fence = self.fence.load(SeqCst);
        let window = COHERENCE_WINDOW.as_nanos() as u64;
        (fence != 0 && self.now().saturating_sub(fence) < window).then(|| Ticket {
            epoch,
            subscribed_at: self.subscribed_at.load(SeqCst),
        })
    }

    /// Whether nothing may have been missed since `ticket` was taken.
    pub(crate) fn holds(&self, ticket: Ticket) -> bool {
        self.epoch.load(SeqCst) == ticket.epoch
    }

    pub(crate) fn counts(&self) -> FeedCounts {
        if let Some(mirror) = &self.mirror {
            return FeedCounts {
                subscribed: mirror.is_live(),
                coherent: mirror.is_live(),
                subscriptions: mirror.resyncs(),
                messages: mirror.applied(),
                heartbeats: 0,
                stalls: 0,
            };
        }
        FeedCounts {
            subscribed: self.fence.load(SeqCst) != 0,
            coherent: self.ticket().is_some(),
            subscriptions: self.subscriptions.load(SeqCst),
            messages: self.messages.load(SeqCst),
            heartbeats: self.heartbeats.load(SeqCst),
            stalls: self.stalls.load(SeqCst),
        }
    }

    /// The subscription is gone: stop trusting the tier, and void every ticket.
    fn lost(&self) {
        self.fence.store(0, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        self.subscribed_at.store(u64::MAX, SeqCst);
    }

    /// A subscription came up: messages may have been missed while there was none, so the
    /// tier's entries go (its stamps stay). Entries refilled from now on were judged by Redis
    /// after the subscription began, so later purges reach them.
    fn came_up(&self, l1: &MemoryStore) {
        l1.clear();
        self.subscribed_at
            .store(super::purge_queue::micros(request_clock()), SeqCst);
        self.subscriptions.fetch_add(1, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
    }

    /// One of this store's heartbeats came back.
    fn heartbeat(&self, payload: &[u8]) {
        let sent = std::str::from_utf8(payload).ok().and_then(|s| s.parse::<u64>().ok());
        // Anything else on this channel is not ours: ignore it rather than trust it.
        if let Some(sent) = sent.filter(|&sent| sent != 0 && sent <= self.now()) {
            self.fence.fetch_max(sent, SeqCst);
            self.heartbeats.fetch_add(1, SeqCst);
        }
    }
}

/// A name no other store uses for its heartbeat channel.
fn instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos());
    format!("{:x}.{:x}.{:x}", std::process::id(), nanos, NEXT.fetch_add(1, SeqCst))
}

/// Sends a heartbeat every [`HEARTBEAT_EVERY`], and at once when a subscription comes up.
async fn heartbeats(l2: RedisStore, feed: Weak<Feed>, channel: String, beat_now: Arc<Notify>) {
    loop {
        let Some(sent) = feed.upgrade().map(|f| f.now()) else {
            return;
        };
        l2.publish(&channel, sent.to_string().as_bytes()).await;
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = beat_now.notified() => {}
        }
    }
}

/// Applies published purges and heartbeats, resubscribing after every loss or stall.
async fn subscribe(l1: MemoryStore, l2: RedisStore, feed: Weak<Feed>, beat_channel: String, beat_now: Arc<Notify>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let connect = async {
            let mut pubsub = l2.pubsub_client().get_async_pubsub().await?;
            pubsub.subscribe(&[l2.channel(), beat_channel.as_str()]).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            backoff = RECONNECT_MIN;
            match feed.upgrade() {
                Some(state) => state.came_up(&l1),
                None => return,
            }
            beat_now.notify_one();
            let mut messages = pubsub.into_on_message();
            loop {
                let Some(message) = within_silence(messages.next(), &feed).await else {
                    break;
                };
                let Some(state) = feed.upgrade() else { return };
                if message.get_channel_name() == beat_channel {
                    state.heartbeat(message.get_payload_bytes());
                } else {
                    apply(&l1, l2.skew_margin(), message.get_payload_bytes());
                    state.messages.fetch_add(1, SeqCst);
                }
            }
        }
        let Some(state) = feed.upgrade() else { return };
        state.lost();
        drop(state);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// [`subscribe`] over sharded pub/sub on a cluster: a cluster connection subscribes on the
/// node that owns the namespace's slot (where purges and heartbeats are published with
/// `SPUBLISH`) and follows the slot through failovers, telling of every disconnection and
/// resubscription. The tier is trusted only once both channels are subscribed again.
async fn subscribe_sharded(
    l1: MemoryStore,
    l2: RedisStore,
    feed: Weak<Feed>,
    beat_channel: String,
    beat_now: Arc<Notify>,
) {
    use ::redis::{PushKind, Value};
    let mut backoff = RECONNECT_MIN;
    let bytes = |value: Option<&Value>| match value {
        Some(Value::BulkString(bytes)) => Some(bytes.clone()),
        _ => None,
    };
    loop {
        let nodes = l2.sharded_nodes().unwrap_or_default().to_vec();
        let channels = [l2.channel(), beat_channel.as_str()];
        let connected =
            super::redis::sharded_subscription(nodes, &channels, CONNECT_TIMEOUT, CLUSTER_CONNECT_TIMEOUT).await;
        if connected.is_none() && backoff == RECONNECT_MIN {
            tracing::warn!("cannot subscribe to the Redis Cluster's sharded invalidation channel: retrying");
        }
        if let Some((connection, mut pushes)) = connected {
            let up = Instant::now();
            // Which of the purge and heartbeat channels are subscribed in this subscription.
            let mut subscribed = [false; 2];
            loop {
                let Some(push) = within_silence(pushes.recv(), &feed).await else {
                    break;
                };
                let Some(state) = feed.upgrade() else { return };
                let channel = bytes(push.data.first());
                let purges = channel.as_deref() == Some(l2.channel().as_bytes());
                let beats = channel.as_deref() == Some(beat_channel.as_bytes());
                match push.kind {
                    PushKind::SSubscribe if purges || beats => {
                        // A resubscription: messages may have been missed before it.
                        state.lost();
                        if subscribed == [true, true] {
                            subscribed = [false, false];
                        }
                        subscribed[usize::from(beats)] = true;
                        if subscribed == [true, true] {
                            state.came_up(&l1);
                            beat_now.notify_one();
                        }
                    }
                    PushKind::SMessage if purges => {
                        if let Some(payload) = bytes(push.data.get(1)) {
                            apply(&l1, l2.skew_margin(), &payload);
                            state.messages.fetch_add(1, SeqCst);
                        }
                    }
                    PushKind::SMessage if beats && subscribed == [true, true] => {
                        if let Some(payload) = bytes(push.data.get(1)) {
                            state.heartbeat(&payload);
                        }
                    }
                    // A link broke (to any node: the word does not say which), or the slot
                    // moved away: subscribe anew rather than trust the client to.
                    PushKind::Disconnection | PushKind::SUnsubscribe => break,
                    _ => {}
                }
            }
            drop(connection);
            // A subscription that lasted: the next comes soon. One broken at once (a node
            // that accepts and drops) backs off, not to storm the cluster.
            if up.elapsed() >= RECONNECT_MAX {
                backoff = RECONNECT_MIN;
            }
        }
        let Some(state) = feed.upgrade() else { return };
        state.lost();
        drop(state);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// The subscription's next message; `None` when it ended, or stayed silent for [`SILENCE`]
/// (a stall, counted: the caller subscribes anew).
async fn within_silence<T>(next: impl std::future::Future<Output = Option<T>>, feed: &Weak<Feed>) -> Option<T> {
    match tokio::time::timeout(SILENCE, next).await {
        Ok(next) => next,
        Err(_) => {
            if let Some(state) = feed.upgrade() {
                state.stalls.fetch_add(1, SeqCst);
            }
            tracing::warn!("Redis invalidation feed silent: resubscribing");
            None
        }
    }
}

/// A message is `*` (purge all), or `h` / `s` followed by one tag per line.
fn apply(l1: &MemoryStore, margin: Duration, payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let mut lines = text.split('\n');
    let mode = match lines.next() {
        Some("h") => PurgeMode::Hard,
        Some("s") => PurgeMode::Soft,
        // `*`, or a format this version does not know: forget everything rather than miss a purge.
        _ => {
            l1.purge_all_ahead(margin);
            return;
        }
    };
    let tags: Vec<String> = lines.filter(|t| !t.is_empty()).map(str::to_owned).collect();
    l1.purge_ahead(&tags, mode, margin);
}
