//! Purging tags after successful mutations.
//!
//! [`InvalidateLayer`] wraps the routes that change data. After a successful (2xx or 3xx)
//! response to an unsafe method (anything but GET, HEAD, OPTIONS and TRACE) it purges, before
//! the response goes back to the client:
//!
//! - the groups named by the `Cache-Group-Invalidation` response header (RFC 9875 §3);
//! - the tags of an [`Invalidate`] response extension set by the handler;
//! - the tags a rules function on the layer derives from the request and the status;
//! - the target path, and same-origin `Location` and `Content-Location` paths (RFC 9111 §4.4).
//!
//! A failed mutation (4xx, 5xx, an error, or a request cancelled before its response) purges
//! nothing. Once the mutation has succeeded, its purge runs to completion even if the client
//! goes away meanwhile: on a Tokio runtime it is a task of its own, which the response waits
//! for. The layer may sit inside or outside a [`CacheLayer`](crate::CacheLayer): both only
//! meet in the store. Put it inside, as below: outside, a client that leaves while the
//! `CacheLayer` purges the target URI (RFC 9111 §4.4) cancels this layer before it has seen
//! the response, and so before it knows what else to purge.
//!
//! With the feature `purge-endpoint`, a `PurgeEndpoint` purges by tag or URI over HTTP,
//! behind an authorisation check the application supplies.
//!
//! gRPC calls are judged by their `grpc-status`, not their HTTP status, and purge only what
//! their response names or, for the mutations declared with [`InvalidateLayerBuilder::grpc`], what
//! their tag function and the rules name. Their purge runs before their trailers are passed
//! on (see the [`grpc`](crate::grpc) module).
//!
//! ```
//! use axum::{extract::Path, routing::{get, post}, Extension, Router};
//! use tower_response_cache::{CacheLayer, Invalidate, InvalidateLayer, MemoryStore};
//!
//! async fn add_review(Path(id): Path<u32>) -> (http::StatusCode, Extension<Invalidate>) {
//!     // ... insert the review ...
//!     (http::StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}"), "reviews".into()])))
//! }
//!
//! let store = MemoryStore::new();
//! let app: Router = Router::new()
//!     .route("/books/{id}", get(|| async { "a book" }))
//!     .route("/books/{id}/reviews", post(add_review))
//!     .layer(InvalidateLayer::new(store.clone()))
//!     .layer(CacheLayer::new(store));
//! ```

mod body;
#[cfg(feature = "purge-endpoint")]
mod endpoint;
mod layer;
mod service;

pub use body::InvalidateBody;
#[cfg(feature = "purge-endpoint")]
#[cfg_attr(docsrs, doc(cfg(feature = "purge-endpoint")))]
pub use endpoint::{PurgeEndpoint, PurgeEndpointFuture};
pub use layer::{InvalidateLayer, InvalidateLayerBuilder, InvalidateStats};
pub use service::{InvalidateFuture, InvalidateService};

use crate::key::path_tag;
use crate::store::PurgeMode;
use http::header::{HeaderMap, CONTENT_LOCATION, HOST, LOCATION};
use http::{request, Method, StatusCode, Uri};
use std::future::Future;
use tracing::Instrument;

/// Tags to purge once a mutation succeeds, returned by a handler as a response extension.
///
/// ```
/// use tower_response_cache::Invalidate;
/// let hard = Invalidate::tags(["book:1", "reviews"]);
/// let soft = Invalidate::tags(["books"]).soft();
/// assert_eq!(soft.as_slice(), ["books"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidate {
    tags: Vec<String>,
    mode: PurgeMode,
}

impl Invalidate {
    /// Hard-purges `tags`: the next read of an entry carrying one of them misses.
    pub fn tags<I>(tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Invalidate {
            tags: tags.into_iter().map(Into::into).collect(),
            mode: PurgeMode::Hard,
        }
    }

    /// Makes the purge soft: entries turn stale instead of disappearing.
    pub fn soft(mut self) -> Self {
        self.mode = PurgeMode::Soft;
        self
    }

    /// The tags to purge.
    pub fn as_slice(&self) -> &[String] {
        &self.tags
    }

    /// Hard or soft.
    pub fn mode(&self) -> PurgeMode {
        self.mode
    }
}

/// Runs `purge` to its end even if the caller stops waiting for it (a client that goes away
/// drops its response future, but its mutation happened all the same): on a Tokio runtime
/// it runs as a task of its own, which the caller awaits; without one it runs inline.
pub(crate) async fn run_to_completion<F>(purge: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Default + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => match runtime.spawn(purge.in_current_span()).await {
            Ok(output) => output,
            Err(error) => {
                tracing::error!(%error, "purge task failed: entries it names may be served until they expire");
                F::Output::default()
            }
        },
        Err(_) => purge.await,
    }
}

/// [`run_to_completion`] for the purge a successful mutation makes: a
/// [`PurgeForwarding`](crate::store::PurgeForwarding) store reports it as
/// [`PurgeOrigin::Mutation`](crate::store::PurgeOrigin::Mutation).
pub(crate) async fn purge_after_mutation<F>(purge: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Default + Send + 'static,
{
    run_to_completion(crate::store::as_mutation(purge)).await
}

/// Methods whose success can change server state (RFC 9110 §9.2.1).
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Whether a response to an unsafe request means the change happened.
pub(crate) fn succeeded(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// The path tags RFC 9111 §4.4 invalidates: the target, and same-origin `Location` and
/// `Content-Location` (other origins are left alone: they could be used to purge at will).
/// Left on a response by an [`InvalidateLayer`] that hard-purged the mutated URI (the
/// [`rfc9111_tags`]) in the store with this [`Store::handle_id`](crate::Store::handle_id):
/// a `CacheLayer` on the same store outside it need not purge them again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TargetPurged(pub(crate) usize);

pub(crate) fn rfc9111_tags(request: &request::Parts, response: &HeaderMap) -> Vec<String> {
    let own_host = request
        .uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            request
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        });
    let mut tags = vec![path_tag(request.uri.path())];
    for field in [LOCATION, CONTENT_LOCATION] {
        let Some(uri) = response
            .get(&field)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Uri>().ok())
        else {
            continue;
        };
        let same_origin = match uri.authority() {
            None => uri.path().starts_with('/'),
            Some(authority) => own_host.as_deref() == Some(authority.as_str().to_ascii_lowercase().as_str()),
        };
        if same_origin {
            tags.push(path_tag(uri.path()));
        }
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags_for(location: &str) -> Vec<String> {
        let (parts, ()) = Request::post("/books/1/reviews")
            .header("host", "shop.example")
            .body(())
            .unwrap()
            .into_parts();
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, location.parse().unwrap());
        rfc9111_tags(&parts, &headers)
    }
    use http::Request;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn without_a_runtime_a_purge_runs_inline() {
        use futures_util::FutureExt;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let done = run_to_completion(async move { flag.store(true, SeqCst) }).now_or_never();
        assert_eq!(done, Some(()));
        assert!(ran.load(SeqCst));
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_does_not_cancel_the_purge() {
        use futures_util::FutureExt;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut caller = Box::pin(run_to_completion(async move {
            let _ = released.await;
            let _ = done.send(());
        }));
        assert_eq!((&mut caller).now_or_never(), None, "the purge is under way");
        drop(caller);
        release.send(()).expect("the purge still runs");
        tokio::time::timeout(std::time::Duration::from_secs(5), finished)
            .await
            .expect("the purge ended in time")
            .expect("the purge completed");
    }

    #[test]
    fn same_origin_locations_are_invalidated_others_are_not() {
        assert_eq!(tags_for("/books/1"), ["path:/books/1/reviews", "path:/books/1"]);
        assert_eq!(
            tags_for("http://SHOP.example/books/2"),
            ["path:/books/1/reviews", "path:/books/2"]
        );
        assert_eq!(tags_for("https://evil.example/books/3"), ["path:/books/1/reviews"]);
        assert_eq!(tags_for("relative/path"), ["path:/books/1/reviews"]);
    }

    #[test]
    fn only_unsafe_methods_and_successes_count() {
        assert!(is_unsafe(&Method::POST) && is_unsafe(&Method::DELETE) && is_unsafe(&Method::PATCH));
        assert!(!is_unsafe(&Method::GET) && !is_unsafe(&Method::OPTIONS));
        assert!(succeeded(StatusCode::CREATED) && succeeded(StatusCode::SEE_OTHER));
        assert!(!succeeded(StatusCode::BAD_REQUEST) && !succeeded(StatusCode::INTERNAL_SERVER_ERROR));
    }
}
