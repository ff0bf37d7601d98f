//! `InvalidateLayer` and its builder: the configuration and counters shared by every service
//! the layer makes.

use super::service::InvalidateService;
use crate::store::PurgeMode;
#[cfg(feature = "grpc")]
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
    #[cfg(feature = "grpc")]
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
///
/// Made with [`InvalidateLayer::new`] (defaults) or [`InvalidateLayer::builder`]. Once made,
/// its configuration is fixed: every clone, and every service it makes, purges alike.
///
/// ```
/// use tower_response_cache::{InvalidateLayer, MemoryStore, PurgeMode};
/// let layer = InvalidateLayer::builder(MemoryStore::new()).mode(PurgeMode::Soft).build();
/// let same = layer.clone();
/// ```
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
        let mut f = f.debug_struct("InvalidateLayer");
        f.field("store", &self.shared.store)
            .field("rules", &self.shared.rules.is_some())
            .field("mode", &self.shared.mode);
        #[cfg(feature = "grpc")]
        f.field("grpc", &self.shared.grpc);
        f.finish()
    }
}

impl<St> InvalidateLayer<St> {
    /// Purges from `store` what successful mutations name, with hard purges (the defaults
    /// of [`InvalidateLayerBuilder`]).
    pub fn new(store: St) -> Self {
        Self::builder(store).build()
    }

    /// Starts configuring a layer that purges from `store`.
    pub fn builder(store: St) -> InvalidateLayerBuilder<St> {
        InvalidateLayerBuilder {
            store,
            rules: None,
            mode: PurgeMode::Hard,
            #[cfg(feature = "grpc")]
            grpc: None,
        }
    }

    /// Counters of purges, skipped failures and errors, shared by every clone of this layer
    /// and every service it made.
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

/// Configures an [`InvalidateLayer`]; made by [`InvalidateLayer::builder`].
///
/// | setting | default |
/// |---|---|
/// | [`rules`](Self::rules) | none (tags come from the response and RFC 9111 §4.4) |
/// | [`mode`](Self::mode) | [`PurgeMode::Hard`] |
/// | [`grpc`](Self::grpc) | none: gRPC calls purge only what their response names |
///
/// The configuration lives here only: a built layer has no setters, so none can be called
/// on a clone and lost.
///
/// ```compile_fail
/// use tower_response_cache::{InvalidateLayer, MemoryStore};
/// let layer = InvalidateLayer::new(MemoryStore::new());
/// let layer = layer.rules(|_, _| vec!["books".to_string()]); // no such method
/// ```
///
/// # Example
///
/// ```
/// use tower_response_cache::{InvalidateLayer, MemoryStore, PurgeMode};
///
/// let layer = InvalidateLayer::builder(MemoryStore::new())
///     // A successful POST under /books/ also purges the list pages.
///     .rules(|req, _status| match req.uri.path().starts_with("/books/") {
///         true => vec!["books".to_string()],
///         false => vec![],
///     })
///     .mode(PurgeMode::Soft)
///     .build();
/// assert_eq!(layer.stats().purges, 0);
/// ```
#[must_use]
pub struct InvalidateLayerBuilder<St> {
    store: St,
    rules: Option<Box<RulesFn>>,
    mode: PurgeMode,
    #[cfg(feature = "grpc")]
    grpc: Option<GrpcMethods>,
}

impl<St: fmt::Debug> fmt::Debug for InvalidateLayerBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("InvalidateLayerBuilder");
        f.field("store", &self.store)
            .field("rules", &self.rules.is_some())
            .field("mode", &self.mode);
        #[cfg(feature = "grpc")]
        f.field("grpc", &self.grpc);
        f.finish()
    }
}

impl<St> InvalidateLayerBuilder<St> {
    /// Derives tags to purge from the request and the (successful) status, e.g. from the
    /// route: `POST /books/7/reviews` → `book:7`. For the gRPC mutations declared with
    /// `grpc` (feature `grpc`) it is called with `200 OK`, and its tags are purged once the
    /// call succeeds.
    ///
    /// ```
    /// use tower_response_cache::{InvalidateLayer, MemoryStore};
    /// let layer = InvalidateLayer::builder(MemoryStore::new())
    ///     .rules(|req, _status| {
    ///         match req.uri.path().strip_prefix("/books/").and_then(|rest| rest.split('/').next()) {
    ///             Some(id) => vec![format!("book:{id}"), "books".to_string()],
    ///             None => vec![],
    ///         }
    ///     })
    ///     .build();
    /// ```
    pub fn rules<F>(mut self, rules: F) -> Self
    where
        F: Fn(&request::Parts, StatusCode) -> Vec<String> + Send + Sync + 'static,
    {
        self.rules = Some(Box::new(rules));
        self
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
    /// let layer = InvalidateLayer::builder(MemoryStore::new())
    ///     .grpc(GrpcMethods::new().method(
    ///         "/catalog.Catalog/AddBook",
    ///         GrpcMethod::mutation().tags(|_| vec!["books".into()]),
    ///     ))
    ///     .build();
    /// ```
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn grpc(mut self, methods: GrpcMethods) -> Self {
        self.grpc = Some(methods);
        self
    }

    /// The mode of purges named by the header, the rules and RFC 9111 (default hard).
    /// An [`Invalidate`](super::Invalidate) extension carries its own mode.
    ///
    /// See the [example](InvalidateLayerBuilder#example).
    pub fn mode(mut self, mode: PurgeMode) -> Self {
        self.mode = mode;
        self
    }

    /// The layer, configured.
    ///
    /// See the [example](InvalidateLayerBuilder#example).
    pub fn build(self) -> InvalidateLayer<St> {
        InvalidateLayer {
            shared: Arc::new(Shared {
                store: self.store,
                rules: self.rules,
                mode: self.mode,
                counters: Counters::default(),
                #[cfg(feature = "grpc")]
                grpc: self.grpc,
            }),
        }
    }
}

impl<S, St> Layer<S> for InvalidateLayer<St> {
    type Service = InvalidateService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidateService::new(inner, self.shared.clone())
    }
}
