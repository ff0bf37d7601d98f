//! What the layers' services share: the bounds on the service they wrap and on its bodies,
//! and the future their responses come through.

use crate::CacheBody;
use http::{Request, Response};
use http_body::Body;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_service::Service;

/// A boxed future of a response; one per request through a layer's service.
pub(crate) type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The services [`CacheLayer`](crate::CacheLayer) and
/// [`InvalidateLayer`](crate::InvalidateLayer) wrap: HTTP services that can be cloned and sent
/// into the tasks the cache spawns (background refreshes, purges that outlive the client).
///
/// Implemented for every service that qualifies (an axum `Router`, a tonic server, a
/// `tower::service_fn`...); it only names the bounds once, for code generic over what the
/// layers wrap:
///
/// ```
/// use tower::Layer;
/// use tower_response_cache::{CacheLayer, CacheService, HttpService, MemoryStore};
///
/// fn cached<S: HttpService<axum::body::Body>>(service: S, layer: &CacheLayer<MemoryStore>) -> CacheService<S, MemoryStore> {
///     layer.layer(service)
/// }
///
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let service = cached(app, &CacheLayer::new(MemoryStore::new()));
/// # drop(service);
/// ```
pub trait HttpService<ReqB>:
    Service<Request<ReqB>, Response = Response<Self::ResBody>, Future: Send + 'static, Error: Send + 'static>
    + Clone
    + Send
    + 'static
{
    /// The body of the service's responses.
    type ResBody: SendBody;
}

impl<S, ReqB, ResB> HttpService<ReqB> for S
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: SendBody,
{
    type ResBody = ResB;
}

/// A response body the cache can read on one task and hand to another (its errors too: a
/// body that fails while it is read passes its error on after the bytes read before it).
pub trait SendBody: Body<Data: Send, Error: Send + 'static> + Send + 'static {}

impl<B> SendBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send + 'static,
{
}

type BoxedCached<B, E> = Boxed<Response<CacheBody<B>>, E>;

/// Response future of [`CacheService`](crate::CacheService).
///
/// A fresh hit that the store answers at once ([`Store::get_now`](crate::Store::get_now))
/// is ready when `call` returns; every other request's flow awaits the store, the inner
/// service and the body in turn, boxed once so that stores can be written with plain
/// `async fn`.
pub struct ResponseFuture<B, E> {
    state: State<B, E>,
}

// Boxing the answer would cost the allocation that the ready state is there to save.
#[allow(clippy::large_enum_variant)]
enum State<B, E> {
    /// The answer, taken by the first poll that finds it.
    Ready(Option<Result<Response<CacheBody<B>>, E>>),
    Boxed(BoxedCached<B, E>),
}

// Neither state is pinned in place: the answer is moved out, the flow is pinned in its box.
impl<B, E> Unpin for ResponseFuture<B, E> {}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn new(inner: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static) -> Self {
        ResponseFuture {
            state: State::Boxed(Box::pin(inner)),
        }
    }

    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        ResponseFuture {
            state: State::Ready(Some(Ok(response))),
        }
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(answer) => Poll::Ready(answer.take().expect("ResponseFuture polled after completion")),
            State::Boxed(inner) => inner.as_mut().poll(cx),
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
