//! The response future of [`CacheService`](crate::CacheService).

use crate::CacheBody;
use http::Response;
use http_body::Body;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

/// Response future of [`CacheService`](crate::CacheService).
///
/// The cache's flow awaits the store, the inner service and the body in turn; it is boxed
/// once per request so that stores can be written with plain `async fn`.
pub struct ResponseFuture<B: Body, E> {
    inner: Boxed<B, E>,
}

impl<B: Body, E> ResponseFuture<B, E> {
    pub(crate) fn new(inner: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static) -> Self {
        ResponseFuture { inner: Box::pin(inner) }
    }
}

impl<B: Body, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B: Body, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
