//! The wake-up of an instance waiting on another's fleet-wide lease, against real Redis.

use std::time::{Duration, Instant};
use tower_response_cache::store::{LeaseAttempt, RedisStore};
use tower_response_cache::{CacheKey, Store};

/// Waits (bounded) until `store`'s subscription to lease releases is up.
pub async fn releases_live(store: &RedisStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.stats().lease_releases_live {
        assert!(
            Instant::now() < deadline,
            "the lease release subscription never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `a` holds `key`'s lease and `b` finds it held; `b`, given a minute to wait, returns within
/// seconds of `a` giving it back: woken by the release, not by its poll.
pub async fn woken_by_release(a: &RedisStore, b: &RedisStore, key: &CacheKey, what: &str) {
    let ttl = Duration::from_secs(30);
    let LeaseAttempt::Acquired(token) = a.try_lease(key, ttl).await else {
        panic!("{what}: a free lease is taken")
    };
    let since = Instant::now();
    assert_eq!(b.try_lease(key, ttl).await, LeaseAttempt::Held, "{what}");
    releases_live(b).await;
    let waiting = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.lease_released(&key, since, Duration::from_secs(60)).await })
    };
    a.release_lease(key, token).await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| panic!("{what}: woken by the release, not by the minute's poll"))
        .unwrap();
    assert!(b.stats().lease_releases_heard >= 1, "{what}: {:?}", b.stats());
}
