//! Word of fleet-wide leases given back, so that an instance waiting on another's call to the
//! origin reads the entry as soon as it is stored rather than at its next poll.
//!
//! An instance that finds a lease held marks it waited on; the holder's release of a marked
//! lease publishes the key on the namespace's lease channel (after its entry was stored, as
//! the holder releases only once its flight has settled). Each store handle subscribes to
//! that channel the first time it takes a lease, and wakes its waiters on the key. The word
//! is a hint, never a proof: a waiter reads the store after it, and a waiter that hears
//! nothing (the subscription is down, the holder died without releasing) polls at
//! [`FALLBACK_POLL`].

use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often a waiter reads the store when no word comes.
pub(crate) const FALLBACK_POLL: Duration = Duration::from_millis(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Keys remembered at most; past it, those no one waits on are forgotten.
const MAX_KEYS: usize = 4096;

/// The releases one store handle (and its clones) heard, per key.
#[derive(Debug, Default)]
pub(crate) struct LeaseReleases {
    live: AtomicBool,
    count: AtomicU64,
    waits: AtomicU64,
    woken: AtomicU64,
    task: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    heard: Mutex<HashMap<Vec<u8>, Heard>>,
}

impl Drop for LeaseReleases {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

#[derive(Debug)]
struct Heard {
    at: Option<Instant>,
    wake: watch::Sender<()>,
}

impl LeaseReleases {
    /// Starts the subscription to `channel` (once per store), with `SSUBSCRIBE` from
    /// `sharded` nodes if given. Needs a Tokio runtime. The task holds no store, so that it
    /// ends when the store drops.
    pub(crate) fn start(
        client: ::redis::Client,
        channel: String,
        sharded: Option<Vec<::redis::ConnectionInfo>>,
    ) -> Arc<LeaseReleases> {
        let releases = Arc::new(LeaseReleases::default());
        let source = Source {
            client,
            channel,
            sharded,
        };
        let task = tokio::spawn(subscribe(source, Arc::downgrade(&releases)));
        let _ = releases.task.set(task);
        releases
    }

    /// Waits until a release of `key`'s lease is heard after `since`, or `poll` passes (the
    /// fallback poll while the subscription is up, as given otherwise).
    pub(crate) async fn wait(&self, key: &[u8], since: Instant, poll: Duration) {
        if !self.is_live() {
            return tokio::time::sleep(poll).await;
        }
        self.waits.fetch_add(1, SeqCst);
        let mut woken = {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            forget_unneeded(&mut heard);
            let entry = heard.entry(key.to_vec()).or_insert_with(|| Heard {
                at: None,
                wake: watch::channel(()).0,
            });
            if entry.at.is_some_and(|at| at >= since) {
                self.woken.fetch_add(1, SeqCst);
                return;
            }
            entry.wake.subscribe()
        };
        if let Ok(Ok(())) = tokio::time::timeout(FALLBACK_POLL.max(poll), woken.changed()).await {
            self.woken.fetch_add(1, SeqCst);
        }
    }

    /// Subscribed, and its task still running (a runtime shut down ends it).
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(SeqCst) && self.task.get().is_some_and(|t| !t.is_finished())
    }

    pub(crate) fn wait_count(&self) -> u64 {
        self.waits.load(SeqCst)
    }

    pub(crate) fn woken_count(&self) -> u64 {
        self.woken.load(SeqCst)
    }

    pub(crate) fn heard_count(&self) -> u64 {
        self.count.load(SeqCst)
    }

    fn heard(&self, key: &[u8]) {
        self.count.fetch_add(1, SeqCst);
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = heard.get_mut(key) {
            entry.at = Some(Instant::now());
            entry.wake.send_replace(());
            return;
        }
        forget_unneeded(&mut heard);
        if heard.len() < MAX_KEYS {
            let wake = watch::channel(()).0;
            heard.insert(
                key.to_vec(),
                Heard {
                    at: Some(Instant::now()),
                    wake,
                },
            );
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, SeqCst);
    }
}

/// Once the map is full: word only matters to a wait registered, or about to be (within a
/// lease's life), so the rest goes.
fn forget_unneeded(heard: &mut HashMap<Vec<u8>, Heard>) {
    if heard.len() < MAX_KEYS {
        return;
    }
    let now = Instant::now();
    let recent = |at: Instant| now.duration_since(at) < crate::fleet::LEASE_TTL;
    heard.retain(|_, h| h.wake.receiver_count() > 0 || h.at.is_some_and(recent));
}

/// Where releases are published.
struct Source {
    client: ::redis::Client,
    channel: String,
    sharded: Option<Vec<::redis::ConnectionInfo>>,
}

/// Follows the lease channel, reconnecting after every loss, until the store is dropped.
async fn subscribe(source: Source, releases: Weak<LeaseReleases>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let up = match &source.sharded {
            Some(nodes) => follow_sharded(nodes.clone(), &source.channel, &releases).await,
            None => follow(&source, &releases).await,
        };
        let Some(state) = releases.upgrade() else { return };
        state.set_live(false);
        drop(state);
        // A subscription that lasted: the next attempt comes soon. One that broke at once
        // (a node that accepts and drops) backs off, not to storm the cluster.
        if up.is_some_and(|up| up.elapsed() >= RECONNECT_MAX) {
            backoff = RECONNECT_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Over `SUBSCRIBE`; when the subscription came up, if it did.
async fn follow(source: &Source, releases: &Weak<LeaseReleases>) -> Option<Instant> {
    let connect = async {
        let mut pubsub = source.client.get_async_pubsub().await?;
        pubsub.subscribe(source.channel.as_str()).await?;
        Ok::<_, ::redis::RedisError>(pubsub)
    };
    let Ok(Ok(pubsub)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
        return None;
    };
    let up = Instant::now();
    let mut messages = pubsub.into_on_message();
    match releases.upgrade() {
        Some(state) => state.set_live(true),
        None => return Some(up),
    }
    while let Some(message) = messages.next().await {
        let Some(state) = releases.upgrade() else { break };
        state.heard(message.get_payload_bytes());
    }
    Some(up)
}

/// Over sharded pub/sub on a cluster (see [`RedisStoreBuilder::sharded_pubsub`]), through a
/// cluster connection that follows the channel's slot.
///
/// [`RedisStoreBuilder::sharded_pubsub`]: super::RedisStoreBuilder::sharded_pubsub
async fn follow_sharded(
    nodes: Vec<::redis::ConnectionInfo>,
    channel: &str,
    releases: &Weak<LeaseReleases>,
) -> Option<Instant> {
    use ::redis::{PushKind, Value};
    let channels = [channel];
    let subscription = super::redis::sharded_subscription(nodes, &channels, CONNECT_TIMEOUT, CONNECT_TIMEOUT * 5);
    let (_connection, mut pushes) = subscription.await?;
    let up = Instant::now();
    while let Some(push) = pushes.recv().await {
        let Some(state) = releases.upgrade() else { break };
        match (push.kind, push.data.get(1)) {
            (PushKind::SSubscribe, _) => state.set_live(true),
            (PushKind::SMessage, Some(Value::BulkString(key))) => state.heard(key),
            // A link broke (to any node), or the slot moved: subscribe anew.
            (PushKind::Disconnection | PushKind::SUnsubscribe, _) => break,
            _ => {}
        }
    }
    Some(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full map of releases no wait needs still takes word of a new one.
    #[test]
    fn a_full_map_forgets_old_word_for_new() {
        let releases = LeaseReleases::default();
        let old = Instant::now().checked_sub(Duration::from_secs(2));
        {
            let mut heard = releases.heard.lock().unwrap();
            for i in 0..MAX_KEYS {
                let wake = watch::channel(()).0;
                heard.insert(format!("k{i}").into_bytes(), Heard { at: old, wake });
            }
        }
        releases.heard(b"new");
        let heard = releases.heard.lock().unwrap();
        assert!(
            heard.get(&b"new"[..]).is_some_and(|h| h.at.is_some()),
            "the new word is kept"
        );
        assert!(heard.len() < MAX_KEYS, "old word no wait needs is forgotten");
    }
}
