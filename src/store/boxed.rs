//! Stores chosen at run time: [`Store`] for `Arc<S>`, and the type-erased [`BoxStore`].
//!
//! `Store` returns `impl Future`, so it is not object safe; [`DynStore`] is its object-safe
//! twin (boxed futures), implemented for every store, and `BoxStore` wraps an
//! `Arc<dyn DynStore>` back into a `Store`.

use super::{Entry, LeaseAttempt, LeaseToken, Lookup, PurgeMode, Store, StoreError};
use crate::CacheKey;
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An `Arc` around a store is a store: the same one, with the same
/// [`handle_id`](Store::handle_id), so layers sharing it still purge a mutated URI once.
/// (`purge_tags` and `soft_purge_tags` reach the store through its `purge`.)
impl<S: Store> Store for Arc<S> {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        Store::get(&**self, key).await
    }

    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        Store::get_now(&**self, key)
    }

    async fn get_latest(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        Store::get_latest(&**self, key).await
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        Store::put(&**self, key, entry, ttl).await
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        Store::remove(&**self, key).await
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        Store::purge(&**self, tags, mode).await
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        Store::purge_all(&**self).await
    }

    async fn purge_uri(&self, uri: &str) -> Result<(), StoreError> {
        Store::purge_uri(&**self, uri).await
    }

    fn handle_id(&self) -> Option<usize> {
        // A store that cannot name itself is still named by this allocation, shared by clones.
        Store::handle_id(&**self).or(Some(Arc::as_ptr(self) as *const () as usize))
    }

    async fn try_lease(&self, key: &CacheKey, ttl: Duration) -> LeaseAttempt {
        Store::try_lease(&**self, key, ttl).await
    }

    async fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) {
        Store::lease_released(&**self, key, since, poll).await
    }

    async fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> bool {
        Store::renew_lease(&**self, key, token, ttl).await
    }

    async fn release_lease(&self, key: &CacheKey, token: LeaseToken) {
        Store::release_lease(&**self, key, token).await
    }
}

/// The object-safe form of [`Store`], implemented for every store.
trait DynStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Lookup>;
    fn get_now(&self, key: &CacheKey) -> Option<Lookup>;
    fn get_latest<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Lookup>;
    fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> BoxFuture<'_, bool>;
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, ()>;
    fn purge<'a>(&'a self, tags: &'a [String], mode: PurgeMode) -> BoxFuture<'a, ()>;
    fn purge_all(&self) -> BoxFuture<'_, ()>;
    fn purge_uri<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, ()>;
    fn handle_id(&self) -> Option<usize>;
    fn try_lease<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> LeaseFuture<'a, LeaseAttempt>;
    fn lease_released<'a>(&'a self, key: &'a CacheKey, since: Instant, poll: Duration) -> LeaseFuture<'a, ()>;
    fn renew_lease<'a>(&'a self, key: &'a CacheKey, token: LeaseToken, ttl: Duration) -> LeaseFuture<'a, bool>;
    fn release_lease<'a>(&'a self, key: &'a CacheKey, token: LeaseToken) -> LeaseFuture<'a, ()>;
    fn as_any(&self) -> &dyn Any;
}

type LeaseFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<S: Store> DynStore for S {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Lookup> {
        Box::pin(Store::get(self, key))
    }
    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        Store::get_now(self, key)
    }
    fn get_latest<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Lookup> {
        Box::pin(Store::get_latest(self, key))
    }
    fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> BoxFuture<'_, bool> {
        Box::pin(Store::put(self, key, entry, ttl))
    }
    fn remove<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, ()> {
        Box::pin(Store::remove(self, key))
    }
    fn purge<'a>(&'a self, tags: &'a [String], mode: PurgeMode) -> BoxFuture<'a, ()> {
        Box::pin(Store::purge(self, tags, mode))
    }
    fn purge_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(Store::purge_all(self))
    }
    fn purge_uri<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(Store::purge_uri(self, uri))
    }
    fn handle_id(&self) -> Option<usize> {
        Store::handle_id(self)
    }
    fn try_lease<'a>(&'a self, key: &'a CacheKey, ttl: Duration) -> LeaseFuture<'a, LeaseAttempt> {
        Box::pin(Store::try_lease(self, key, ttl))
    }
    fn lease_released<'a>(&'a self, key: &'a CacheKey, since: Instant, poll: Duration) -> LeaseFuture<'a, ()> {
        Box::pin(Store::lease_released(self, key, since, poll))
    }
    fn renew_lease<'a>(&'a self, key: &'a CacheKey, token: LeaseToken, ttl: Duration) -> LeaseFuture<'a, bool> {
        Box::pin(Store::renew_lease(self, key, token, ttl))
    }
    fn release_lease<'a>(&'a self, key: &'a CacheKey, token: LeaseToken) -> LeaseFuture<'a, ()> {
        Box::pin(Store::release_lease(self, key, token))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Any [`Store`], its type erased: for a store chosen at run time (from configuration, a
/// command line) behind one `CacheLayer<BoxStore>` type.
///
/// Cheap to clone; every clone is the same store and reports the same
/// [`handle_id`](Store::handle_id) as the store inside it. Each operation costs one boxed
/// future more than calling the store directly.
///
/// ```no_run
/// # #[cfg(feature = "redis")]
/// # async fn run(redis_url: Option<&str>) -> Result<(), tower_response_cache::StoreError> {
/// use tower_response_cache::store::{BoxStore, RedisStore};
/// use tower_response_cache::{CacheLayer, InvalidateLayer, MemoryStore};
///
/// let store = match redis_url {
///     Some(url) => BoxStore::new(RedisStore::builder(url).namespace("shop").connect().await?),
///     None => BoxStore::new(MemoryStore::new()),
/// };
/// let invalidate = InvalidateLayer::new(store.clone());
/// let cache: CacheLayer<BoxStore> = CacheLayer::new(store.clone());
///
/// // The concrete store is still there, for its statistics.
/// if let Some(memory) = store.downcast_ref::<MemoryStore>() {
///     println!("{} entries", memory.stats().entries);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoxStore {
    inner: Arc<dyn DynStore>,
}

impl BoxStore {
    /// Erases the type of `store`. A `BoxStore` given a `BoxStore` keeps it as it is.
    pub fn new<S: Store>(store: S) -> Self {
        let any: &dyn Any = &store;
        if let Some(boxed) = any.downcast_ref::<BoxStore>() {
            return boxed.clone();
        }
        BoxStore { inner: Arc::new(store) }
    }

    /// The store inside, if it is an `S`.
    pub fn downcast_ref<S: Store>(&self) -> Option<&S> {
        self.inner.as_any().downcast_ref::<S>()
    }
}

impl std::fmt::Debug for BoxStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxStore")
            .field("handle_id", &Store::handle_id(self))
            .finish()
    }
}

impl Store for BoxStore {
    async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        DynStore::get(&*self.inner, key).await
    }

    fn get_now(&self, key: &CacheKey) -> Option<Lookup> {
        DynStore::get_now(&*self.inner, key)
    }

    async fn get_latest(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
        DynStore::get_latest(&*self.inner, key).await
    }

    async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
        DynStore::put(&*self.inner, key, entry, ttl).await
    }

    async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
        DynStore::remove(&*self.inner, key).await
    }

    async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
        DynStore::purge(&*self.inner, tags, mode).await
    }

    async fn purge_all(&self) -> Result<(), StoreError> {
        DynStore::purge_all(&*self.inner).await
    }

    async fn purge_uri(&self, uri: &str) -> Result<(), StoreError> {
        DynStore::purge_uri(&*self.inner, uri).await
    }

    fn handle_id(&self) -> Option<usize> {
        // A store that cannot name itself is still named by this allocation, shared by clones.
        DynStore::handle_id(&*self.inner).or(Some(Arc::as_ptr(&self.inner) as *const () as usize))
    }

    async fn try_lease(&self, key: &CacheKey, ttl: Duration) -> LeaseAttempt {
        DynStore::try_lease(&*self.inner, key, ttl).await
    }

    async fn lease_released(&self, key: &CacheKey, since: Instant, poll: Duration) {
        DynStore::lease_released(&*self.inner, key, since, poll).await
    }

    async fn renew_lease(&self, key: &CacheKey, token: LeaseToken, ttl: Duration) -> bool {
        DynStore::renew_lease(&*self.inner, key, token, ttl).await
    }

    async fn release_lease(&self, key: &CacheKey, token: LeaseToken) {
        DynStore::release_lease(&*self.inner, key, token).await
    }
}

#[cfg(test)]
mod tests {
    use super::{BoxStore, Entry, Lookup, PurgeMode, Store, StoreError};
    use crate::{CacheKey, MemoryStore};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_box_store_passes_the_conformance_suite() {
        crate::store::conformance::run(|| async { BoxStore::new(MemoryStore::new()) }).await;
    }

    #[tokio::test]
    async fn an_arc_store_passes_the_conformance_suite() {
        crate::store::conformance::run(|| async { Arc::new(MemoryStore::new()) }).await;
    }

    #[test]
    fn handle_ids_are_the_inner_stores() {
        let memory = MemoryStore::new();
        let id = memory.handle_id();
        assert!(id.is_some());
        assert_eq!(Arc::new(memory.clone()).handle_id(), id);
        let boxed = BoxStore::new(memory.clone());
        assert_eq!(boxed.handle_id(), id);
        assert_eq!(boxed.clone().handle_id(), id);
        assert_eq!(BoxStore::new(Arc::new(memory.clone())).handle_id(), id);
        assert_eq!(BoxStore::new(boxed.clone()).handle_id(), id);
        assert_ne!(BoxStore::new(MemoryStore::new()).handle_id(), id, "another store");
    }

    /// A store that cannot name itself.
    #[derive(Clone)]
    struct Anonymous(MemoryStore);

    impl Store for Anonymous {
        async fn get(&self, key: &CacheKey) -> Result<Lookup, StoreError> {
            self.0.get(key).await
        }
        async fn put(&self, key: CacheKey, entry: Entry, ttl: Duration) -> Result<bool, StoreError> {
            self.0.put(key, entry, ttl).await
        }
        async fn remove(&self, key: &CacheKey) -> Result<(), StoreError> {
            self.0.remove(key).await
        }
        async fn purge(&self, tags: &[String], mode: PurgeMode) -> Result<(), StoreError> {
            self.0.purge(tags, mode).await
        }
        async fn purge_all(&self) -> Result<(), StoreError> {
            self.0.purge_all().await
        }
    }

    #[test]
    fn a_store_without_an_id_is_named_by_its_box() {
        let anonymous = Anonymous(MemoryStore::new());
        assert_eq!(anonymous.handle_id(), None);
        let boxed = BoxStore::new(anonymous.clone());
        assert!(boxed.handle_id().is_some());
        assert_eq!(boxed.clone().handle_id(), boxed.handle_id(), "clones are one store");
        assert_ne!(
            BoxStore::new(anonymous.clone()).handle_id(),
            boxed.handle_id(),
            "two boxes cannot tell they hold one store: each layer then purges on its own"
        );
        let arc = Arc::new(anonymous);
        assert_eq!(arc.clone().handle_id(), arc.handle_id());
    }

    #[test]
    fn the_concrete_store_is_reachable() {
        let boxed = BoxStore::new(MemoryStore::new());
        assert!(boxed.downcast_ref::<MemoryStore>().is_some());
        assert!(boxed.downcast_ref::<Arc<MemoryStore>>().is_none());
        let twice = BoxStore::new(boxed.clone());
        assert!(twice.downcast_ref::<MemoryStore>().is_some(), "not boxed twice");
    }
}
