//! `InvalidateService`: forwards the request, then purges if it was a successful mutation
//! (for gRPC, once its trailers say so).

use super::body::{InvalidateBody, OnTrailers};
use super::layer::Shared;
use super::{is_unsafe, rfc9111_tags, succeeded, Invalidate, TargetPurged};
use crate::future::{Boxed, HttpService, SendBody};
#[cfg(feature = "grpc")]
use crate::grpc::{self, GrpcRequest};
use crate::grpc_wire;
use crate::metrics::export_count;
use crate::store::{PurgeMode, Store};
use crate::tags::{detached, string_list, CACHE_GROUP_INVALIDATION};
use futures_util::TryFutureExt;
use http::{request, HeaderMap, Request, Response, StatusCode};
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
/// are done (for a gRPC call whose status comes in trailers, the trailers wait for them).
pub struct InvalidateFuture<T, E> {
    inner: Boxed<T, E>,
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

impl<S, St, ReqB> Service<Request<ReqB>> for InvalidateService<S, St>
where
    S: HttpService<ReqB>,
    St: Store,
    ReqB: Send + 'static,
{
    type Response = Response<InvalidateBody<S::ResBody>>;
    type Error = S::Error;
    type Future = InvalidateFuture<Response<InvalidateBody<S::ResBody>>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !is_unsafe(req.method()) {
            return InvalidateFuture {
                inner: Box::pin(inner.call(req).map_ok(|response| response.map(InvalidateBody::plain))),
            };
        }
        let shared = self.shared.clone();
        let (parts, body) = req.into_parts();
        if grpc_wire::is_grpc(&parts) {
            return InvalidateFuture {
                inner: Box::pin(grpc_call(shared, inner, parts, body)),
            };
        }
        let request = detached(&parts);
        InvalidateFuture {
            inner: Box::pin(async move {
                let response = inner.call(Request::from_parts(parts, body)).await;
                let purges = match &response {
                    Ok(response) if succeeded(response.status()) => Some(tags_to_purge(&shared, &request, response)),
                    _ => None,
                };
                let mut response = response;
                match purges {
                    Some(purges) => {
                        let store = shared.store.handle_id();
                        let target_hard = shared.mode == PurgeMode::Hard;
                        let hard_purged = purge(shared, purges).await;
                        if let (Some(store), true, true, Ok(response)) =
                            (store, target_hard, hard_purged, &mut response)
                        {
                            response.extensions_mut().insert(TargetPurged(store));
                        }
                    }
                    None => {
                        shared.counters.skipped.fetch_add(1, Relaxed);
                        export_count!("tower_response_cache_purges_skipped_total"; 1);
                    }
                }
                response.map(|response| response.map(InvalidateBody::plain))
            }),
        }
    }
}

/// Tags to purge, hard and soft.
#[derive(Debug, Default)]
struct Purges {
    hard: Vec<String>,
    soft: Vec<String>,
}

impl Purges {
    fn add(&mut self, mode: PurgeMode, tags: impl IntoIterator<Item = String>) {
        match mode {
            PurgeMode::Hard => self.hard.extend(tags),
            PurgeMode::Soft => self.soft.extend(tags),
        }
    }

    /// The groups of a `Cache-Group-Invalidation` field; malformed members are dropped, the
    /// readable ones are still purged.
    fn add_named(&mut self, mode: PurgeMode, fields: &HeaderMap) {
        let named = string_list(fields, &CACHE_GROUP_INVALIDATION).unwrap_or_else(|malformed| {
            tracing::warn!("malformed Cache-Group-Invalidation members ignored");
            malformed.readable
        });
        self.add(mode, named);
    }

    fn is_empty(&self) -> bool {
        self.hard.is_empty() && self.soft.is_empty()
    }
}

/// Everything the successful response to `request` names.
fn tags_to_purge<St, B>(shared: &Shared<St>, request: &request::Parts, response: &Response<B>) -> Purges {
    let mut purges = Purges::default();
    purges.add_named(shared.mode, response.headers());
    purges.add(shared.mode, rfc9111_tags(request, response.headers()));
    if let Some(rules) = &shared.rules {
        purges.add(shared.mode, rules(request, response.status()));
    }
    if let Some(invalidate) = response.extensions().get::<Invalidate>() {
        purges.add(invalidate.mode(), invalidate.as_slice().iter().cloned());
    }
    purges
}

/// A gRPC call. Its success is its `grpc-status`: in the headers of a trailers-only
/// response, else in the trailers, where the purge waits for it. A declared mutation purges
/// what its tag function and the rules name; any call purges what its response names.
async fn grpc_call<S, St, ReqB, ResB>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    parts: request::Parts,
    body: ReqB,
) -> Result<Response<InvalidateBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
    ReqB: Send + 'static,
    ResB: SendBody,
{
    let request = detached(&parts);
    let (body, declared) = declared_mutation(&shared, &request, body).await;
    let response = inner.call(Request::from_parts(parts, body)).await?;

    let mut purges = Purges::default();
    purges.add_named(shared.mode, response.headers());
    if let Some(invalidate) = response.extensions().get::<Invalidate>() {
        purges.add(invalidate.mode(), invalidate.as_slice().iter().cloned());
    }
    match declared {
        Some(tags) => {
            if let Some(rules) = &shared.rules {
                purges.add(shared.mode, rules(&request, StatusCode::OK));
            }
            purges.add(shared.mode, tags);
        }
        // Neither declared a mutation nor naming anything to purge: a plain call.
        None if purges.is_empty() => return Ok(response.map(InvalidateBody::plain)),
        None => {}
    }

    let trailers_only = grpc_wire::status_code(response.headers());
    if !response.status().is_success() || trailers_only.is_some_and(|code| code != 0) {
        shared.counters.skipped.fetch_add(1, Relaxed);
        export_count!("tower_response_cache_purges_skipped_total"; 1);
        return Ok(response.map(InvalidateBody::plain));
    }
    if trailers_only == Some(0) {
        purge(shared, purges).await;
        return Ok(response.map(InvalidateBody::plain));
    }
    let on_trailers: OnTrailers = Box::new(move |trailers| match trailers {
        Some(trailers) if grpc_wire::status_code(trailers) == Some(0) => {
            purges.add_named(shared.mode, trailers);
            Some(Box::pin(async move {
                purge(shared, purges).await;
            }))
        }
        _ => {
            shared.counters.skipped.fetch_add(1, Relaxed);
            export_count!("tower_response_cache_purges_skipped_total"; 1);
            None
        }
    });
    Ok(response.map(|body| InvalidateBody::watched(body, on_trailers)))
}

/// For a declared gRPC mutation, the tags its method's tag function names from the request
/// and its message (read here and handed on byte for byte); `None` for any other call.
#[cfg(feature = "grpc")]
async fn declared_mutation<St, B: Send + 'static>(
    shared: &Shared<St>,
    request: &request::Parts,
    body: B,
) -> (B, Option<Vec<String>>) {
    let Some((methods, method)) = shared
        .grpc
        .as_ref()
        .and_then(|methods| Some((methods, methods.mutation(request)?)))
    else {
        return (body, None);
    };
    let Some(tags) = method.tags_fn() else {
        return (body, Some(Vec::new()));
    };
    let (body, message) = match methods.read_request(body).await {
        Ok((body, frame)) => (body, grpc::uncompressed_message(&frame)),
        Err((body, reason)) => {
            tracing::debug!(
                reason = reason.as_str(),
                "gRPC mutation message not read: tags named without it"
            );
            (body, None)
        }
    };
    let tags = tags(&GrpcRequest::new(request, message.as_deref()));
    (body, Some(tags))
}

/// Without the `grpc` feature no gRPC mutation is declared.
#[cfg(not(feature = "grpc"))]
async fn declared_mutation<St, B>(
    _shared: &Shared<St>,
    _request: &request::Parts,
    body: B,
) -> (B, Option<Vec<String>>) {
    (body, None)
}

/// Runs the purges to their end whatever the client does; the response waits for them
/// (read-your-own-writes). `true` when the hard purge (if any) succeeded.
async fn purge<St: Store>(shared: Arc<Shared<St>>, purges: Purges) -> bool {
    super::purge_after_mutation(apply(shared, purges)).await
}

async fn apply<St: Store>(shared: Arc<Shared<St>>, purges: Purges) -> bool {
    let mut hard_purged = true;
    for (mode, mut tags) in [(PurgeMode::Hard, purges.hard), (PurgeMode::Soft, purges.soft)] {
        tags.sort_unstable();
        tags.dedup();
        if tags.is_empty() {
            continue;
        }
        match shared.store.purge(&tags, mode).await {
            Ok(()) => {
                shared.counters.purges.fetch_add(1, Relaxed);
                shared.counters.tags_purged.fetch_add(tags.len() as u64, Relaxed);
                export_count!("tower_response_cache_purges_total"; 1);
                export_count!("tower_response_cache_purged_tags_total"; tags.len() as u64);
                tracing::debug!(?tags, ?mode, "purged after a successful mutation");
            }
            Err(error) => {
                hard_purged &= mode != PurgeMode::Hard;
                shared.counters.errors.fetch_add(1, Relaxed);
                export_count!("tower_response_cache_purge_errors_total"; 1);
                tracing::error!(%error, ?tags, "purge failed: entries with these tags may be served stale until they expire");
            }
        }
    }
    hard_purged
}
