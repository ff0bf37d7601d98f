//! `InvalidateService`: forwards the request, then purges if it was a successful mutation.

use super::layer::Shared;
use super::{is_unsafe, rfc9111_tags, succeeded, Invalidate};
use crate::store::{PurgeMode, Store};
use crate::tags::{detached, string_list, CACHE_GROUP_INVALIDATION};
use http::{request, Request, Response};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// Middleware made by [`InvalidateLayer`](super::InvalidateLayer).
pub struct InvalidateService<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for InvalidateService<S, St> {
    fn clone(&self) -> Self {
        InvalidateService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for InvalidateService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St> InvalidateService<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        InvalidateService { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Response future of [`InvalidateService`]: the inner response, returned once its purges
/// are done.
pub struct InvalidateFuture<T, E> {
    inner: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
}

impl<T, E> Future for InvalidateFuture<T, E> {
    type Output = Result<T, E>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, E> fmt::Debug for InvalidateFuture<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateFuture").finish_non_exhaustive()
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for InvalidateService<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqB: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = InvalidateFuture<Response<ResB>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !is_unsafe(req.method()) {
            return InvalidateFuture {
                inner: Box::pin(inner.call(req)),
            };
        }
        let shared = self.shared.clone();
        let (parts, body) = req.into_parts();
        let request = detached(&parts);
        InvalidateFuture {
            inner: Box::pin(async move {
                let response = inner.call(Request::from_parts(parts, body)).await;
                let purges = match &response {
                    Ok(response) if succeeded(response.status()) => Some(tags_to_purge(&shared, &request, response)),
                    _ => None,
                };
                match purges {
                    Some(purges) => purge(&shared, purges).await,
                    None => {
                        shared.counters.skipped.fetch_add(1, Relaxed);
                    }
                }
                response
            }),
        }
    }
}

/// Everything the successful response to `request` names, as hard and soft tag lists.
fn tags_to_purge<St, B>(
    shared: &Shared<St>,
    request: &request::Parts,
    response: &Response<B>,
) -> [(PurgeMode, Vec<String>); 2] {
    let mut hard = Vec::new();
    let mut soft = Vec::new();
    let mut add = |mode: PurgeMode, tags: &mut dyn Iterator<Item = String>| match mode {
        PurgeMode::Hard => hard.extend(tags),
        PurgeMode::Soft => soft.extend(tags),
    };
    // Malformed members are dropped; the readable ones are still purged.
    let named = string_list(response.headers(), &CACHE_GROUP_INVALIDATION).unwrap_or_else(|malformed| {
        tracing::warn!("malformed Cache-Group-Invalidation members ignored");
        malformed.readable
    });
    add(shared.mode, &mut named.into_iter());
    add(shared.mode, &mut rfc9111_tags(request, response.headers()).into_iter());
    if let Some(rules) = &shared.rules {
        add(shared.mode, &mut rules(request, response.status()).into_iter());
    }
    if let Some(invalidate) = response.extensions().get::<Invalidate>() {
        add(invalidate.mode(), &mut invalidate.as_slice().iter().cloned());
    }
    [(PurgeMode::Hard, hard), (PurgeMode::Soft, soft)]
}

/// Runs the purges; the response waits for them (read-your-own-writes).
async fn purge<St: Store>(shared: &Shared<St>, purges: [(PurgeMode, Vec<String>); 2]) {
    for (mode, mut tags) in purges {
        tags.sort_unstable();
        tags.dedup();
        if tags.is_empty() {
            continue;
        }
        match shared.store.purge(&tags, mode).await {
            Ok(()) => {
                shared.counters.purges.fetch_add(1, Relaxed);
                shared.counters.tags_purged.fetch_add(tags.len() as u64, Relaxed);
                tracing::debug!(?tags, ?mode, "purged after a successful mutation");
            }
            Err(error) => {
                shared.counters.errors.fetch_add(1, Relaxed);
                tracing::error!(%error, ?tags, "purge failed: entries with these tags may be served stale until they expire");
            }
        }
    }
}
