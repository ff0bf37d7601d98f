//! `InvalidateLayer`: configuration only.

use super::service::InvalidateService;
use crate::store::PurgeMode;
use crate::GrpcMethods;
use http::{request, StatusCode};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tower_layer::Layer;

pub(crate) type RulesFn = dyn Fn(&request::Parts, StatusCode) -> Vec<String> + Send + Sync;

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) rules: Option<Box<RulesFn>>,
    pub(crate) mode: PurgeMode,
    pub(crate) counters: Counters,
    pub(crate) grpc: Option<GrpcMethods>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) purges: AtomicU64,
    pub(crate) tags_purged: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// A snapshot of an [`InvalidateLayer`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidateStats {
    /// Successful mutations that purged tags.
    pub purges: u64,
    /// Tags purged, over all purges.
    pub tags_purged: u64,
    /// Unsafe requests that failed or errored, and so purged nothing.
    pub skipped: u64,
    /// Purges the store failed (logged; the response was returned anyway).
    pub errors: u64,
}

/// A [`Layer`] that purges tags from a store after successful mutations (see the
/// [module docs](crate::invalidate)).
#[must_use]
pub struct InvalidateLayer<St> {
    shared: Arc<Shared<St>>,
}

impl<St> Clone for InvalidateLayer<St> {
    fn clone(&self) -> Self {
        InvalidateLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for InvalidateLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateLayer")
            .field("store", &self.shared.store)
            .field("rules", &self.shared.rules.is_some())
            .field("mode", &self.shared.mode)
            .field("grpc", &self.shared.grpc)
            .finish()
    }
}

impl<St> InvalidateLayer<St> {
    /// Purges from `store` what successful mutations name, with hard purges.
    pub fn new(store: St) -> Self {
        InvalidateLayer {
            shared: Arc::new(Shared {
                store,
                rules: None,
                mode: PurgeMode::Hard,
                counters: Counters::default(),
                grpc: None,
            }),
        }
    }

    fn map_shared(self, f: impl FnOnce(&mut Shared<St>)) -> Self {
        match Arc::try_unwrap(self.shared) {
            Ok(mut shared) => {
                f(&mut shared);
                InvalidateLayer {
                    shared: Arc::new(shared),
                }
            }
            // Already cloned: configuration is fixed once the layer is shared.
            Err(shared) => InvalidateLayer { shared },
        }
    }

    /// Derives tags to purge from the request and the (successful) status, e.g. from the
    /// route: `POST /books/7/reviews` → `book:7`. For the gRPC mutations declared with
    /// [`grpc`](Self::grpc) it is called with `200 OK`, and its tags are purged once the
    /// call succeeds.
    ///
    /// ```
    /// use tower_response_cache::{InvalidateLayer, MemoryStore};
    /// let layer = InvalidateLayer::new(MemoryStore::new()).rules(|req, _status| {
    ///     match req.uri.path().strip_prefix("/books/").and_then(|rest| rest.split('/').next()) {
    ///         Some(id) => vec![format!("book:{id}"), "books".to_string()],
    ///         None => vec![],
    ///     }
    /// });
    /// ```
    pub fn rules<F>(self, rules: F) -> Self
    where
        F: Fn(&request::Parts, StatusCode) -> Vec<String> + Send + Sync + 'static,
    {
        self.map_shared(|s| s.rules = Some(Box::new(rules)))
    }

    /// Purges after the gRPC mutations `methods` declares ([`GrpcMethod::mutation`]) once
    /// they succeed (`grpc-status: 0`): the tags their tag function names from the request
    /// message, with the rules' tags (see the [`grpc`](crate::grpc) module). Other gRPC
    /// calls purge only what their response names; none purges its method path.
    ///
    /// [`GrpcMethod::mutation`]: crate::GrpcMethod::mutation
    ///
    /// ```
    /// use tower_response_cache::{GrpcMethod, GrpcMethods, InvalidateLayer, MemoryStore};
    /// let layer = InvalidateLayer::new(MemoryStore::new()).grpc(
    ///     GrpcMethods::new().method("/catalog.Catalog/AddBook", GrpcMethod::mutation().tags(|_| vec!["books".into()])),
    /// );
    /// ```
    pub fn grpc(self, methods: GrpcMethods) -> Self {
        self.map_shared(|s| s.grpc = Some(methods))
    }

    /// The mode of purges named by the header, the rules and RFC 9111 (default hard).
    /// An [`Invalidate`](super::Invalidate) extension carries its own mode.
    pub fn mode(self, mode: PurgeMode) -> Self {
        self.map_shared(|s| s.mode = mode)
    }

    /// Counters of purges, skipped failures and errors.
    pub fn stats(&self) -> InvalidateStats {
        let c = &self.shared.counters;
        InvalidateStats {
            purges: c.purges.load(Relaxed),
            tags_purged: c.tags_purged.load(Relaxed),
            skipped: c.skipped.load(Relaxed),
            errors: c.errors.load(Relaxed),
        }
    }
}

impl<S, St> Layer<S> for InvalidateLayer<St> {
    type Service = InvalidateService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidateService::new(inner, self.shared.clone())
    }
}
