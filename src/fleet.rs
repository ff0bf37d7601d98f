//! Fleet-wide single flight: of the instances sharing a store, one calls the origin for a
//! cold key; the others wait for the entry it stores.
//!
//! A process's misses on a key first coalesce in the process (`coalesce`); its leader then
//! asks the store for a short lease on the key ([`Store::try_lease`]). Holding it, it calls
//! the origin, renewing the lease while the call lasts, and gives it back once its flight
//! has settled (the entry stored, or not), before its own response goes out. Finding it held,
//! it waits for the store to hear the lease given back ([`Store::lease_released`]: Redis
//! stores publish the release of a lease another instance waits on), or for a poll interval
//! where it hears nothing, and looks for the entry; until it is there, the lease is free to
//! take (its holder finished without storing, died or was cancelled), or its flight's
//! deadline passes. A store without leases, or one that
//! cannot answer, leaves each process to coalesce its own misses.

use crate::coalesce::{Flight, Held, Release};
use crate::key::CacheKey;
use crate::store::{LeaseAttempt, LeaseToken, Store};
use futures_util::future::BoxFuture;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long a lease lasts unless renewed: the longest the fleet waits for a holder that
/// died without giving it back.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(1);
/// How often a holder renews its lease while its call lasts.
const RENEW_EVERY: Duration = Duration::from_millis(300);
/// How often a waiting instance looks for the entry when its store hears no releases.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(5);

/// What the fleet said to a process's leader.
pub(crate) enum Fleet<T> {
    /// Call the origin: this process holds the lease (or there is none to hold).
    Call,
    /// Another instance stored the entry meanwhile.
    Found(T),
}

/// Takes the lease for `key` or waits while another instance holds it. `found` is called
/// after each wait; once it finds the entry, the wait ends with it.
pub(crate) async fn lead<St, T, F, Fut>(store: &St, key: &CacheKey, flight: &mut Flight, mut found: F) -> Fleet<T>
where
    St: Store,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = flight.deadline();
    loop {
        let since = Instant::now();
        match store.try_lease(key, LEASE_TTL).await {
            LeaseAttempt::Acquired(token) => {
                // The lease may be free because its last holder just stored the entry.
                if let Some(entry) = found().await {
                    store.release_lease(key, token).await;
                    return Fleet::Found(entry);
                }
                flight.hold(Held(Box::new(Lease::new(store.clone(), key.clone(), token))));
                return Fleet::Call;
            }
            LeaseAttempt::Held if Instant::now() + POLL_EVERY < deadline => {
                let released = store.lease_released(key, since, POLL_EVERY);
                let _ = tokio::time::timeout_at(deadline.into(), released).await;
                if let Some(entry) = found().await {
                    return Fleet::Found(entry);
                }
            }
            // No lease to take, or no time left to wait for one: go alone.
            _ => return Fleet::Call,
        }
    }
}

/// Whether this instance should make a background refresh of the flight's key: `true` when
/// it took the lease (held by the flight from now on) or there is none; `false` when another
/// instance is refreshing it, or has just refreshed it (`fresh` says whether the stored
/// entry is fresh now).
pub(crate) async fn refresh<St, F>(store: &St, flight: &mut Flight, fresh: F) -> bool
where
    St: Store,
    F: std::future::Future<Output = bool>,
{
    let key = flight.key().clone();
    match store.try_lease(&key, LEASE_TTL).await {
        LeaseAttempt::Acquired(token) => {
            if fresh.await {
                store.release_lease(&key, token).await;
                return false;
            }
            flight.hold(Held(Box::new(Lease::new(store.clone(), key, token))));
            true
        }
        LeaseAttempt::Held => false,
        _ => true,
    }
}

/// A lease held for a flight: renewed while it lives, given back when released (or, in the
/// background, when dropped).
struct Lease<St: Store> {
    store: St,
    key: CacheKey,
    token: LeaseToken,
    renewing: JoinHandle<()>,
    released: bool,
}

impl<St: Store> Lease<St> {
    fn new(store: St, key: CacheKey, token: LeaseToken) -> Self {
        let renewing = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    if !store.renew_lease(&key, token, LEASE_TTL).await {
                        return;
                    }
                }
            })
        };
        Lease {
            store,
            key,
            token,
            renewing,
            released: false,
        }
    }
}

impl<St: Store> Release for Lease<St> {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        self.renewing.abort();
        self.released = true;
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token);
        Box::pin(async move { store.release_lease(&key, token).await })
    }
}

impl<St: Store> Drop for Lease<St> {
    fn drop(&mut self) {
        self.renewing.abort();
        if self.released {
            return;
        }
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token);
        // Given back at once so that a waiting instance need not wait for it to expire.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.release_lease(&key, token).await });
        }
    }
}
