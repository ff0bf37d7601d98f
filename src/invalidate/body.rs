//! The body of [`InvalidateService`](super::InvalidateService) responses: the inner body,
//! and for a gRPC call whose success only its trailers tell, the purge that runs before
//! they are passed on.

use futures_util::future::BoxFuture;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// Decides from a gRPC response's trailers (`None`: the body ended without them, or failed)
/// whether the call succeeded, and returns the purge to run if it did.
pub(crate) type OnTrailers = Box<dyn FnOnce(Option<&HeaderMap>) -> Option<BoxFuture<'static, ()>> + Send>;

/// What polling a body gives.
type Polled<B> = Poll<Option<Result<Frame<<B as Body>::Data>, <B as Body>::Error>>>;

/// How long a body whose client went away is read on, in the background, for its trailers.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

pin_project! {
    /// Body of [`InvalidateService`](super::InvalidateService) responses.
    ///
    /// The inner body, untouched. For a gRPC call, whose success is known only from the
    /// `grpc-status` trailer, the purge runs when the trailers arrive and they are passed on
    /// once it is done: the client's call completes after the purge, as an HTTP response
    /// would be returned after it. If the client goes away first, the body is read to its
    /// trailers in the background (for at most 10 s) and the purge still happens.
    ///
    /// `InvalidateBody::default()` is an empty body, whatever `B` is, for middleware that
    /// makes its own responses around the layer (tower-http's `TimeoutLayer` answers `408`
    /// with one).
    ///
    /// ```
    /// use http_body::Body;
    /// use tower_response_cache::invalidate::InvalidateBody;
    ///
    /// let empty = InvalidateBody::<axum::body::Body>::default();
    /// assert!(empty.is_end_stream());
    /// assert_eq!(empty.size_hint().exact(), Some(0));
    /// ```
    pub struct InvalidateBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Empty,
        Plain { #[pin] inner: B },
        Watched { watch: Watch<B> },
    }
}

struct Watch<B> {
    body: Option<Pin<Box<B>>>,
    on_trailers: Option<OnTrailers>,
    /// The purge under way, and the trailers that wait for it.
    purging: Option<(BoxFuture<'static, ()>, HeaderMap)>,
    /// Reads the rest of the body in the background, for a client that went away.
    drain: fn(Pin<Box<B>>, OnTrailers),
}

impl<B> InvalidateBody<B> {
    /// The inner body, untouched.
    pub(crate) fn plain(inner: B) -> Self {
        InvalidateBody {
            kind: Kind::Plain { inner },
        }
    }

    /// The inner body, whose trailers go to `on_trailers` (and wait for its purge).
    pub(crate) fn watched(inner: B, on_trailers: OnTrailers) -> Self
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Send,
    {
        InvalidateBody {
            kind: Kind::Watched {
                watch: Watch {
                    body: Some(Box::pin(inner)),
                    on_trailers: Some(on_trailers),
                    purging: None,
                    drain: drain_in_background::<B>,
                },
            },
        }
    }
}

impl<B> Default for InvalidateBody<B> {
    /// An empty body.
    fn default() -> Self {
        InvalidateBody { kind: Kind::Empty }
    }
}

impl<B> fmt::Debug for InvalidateBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "Empty",
            Kind::Plain { .. } => "Plain",
            Kind::Watched { .. } => "Watched",
        };
        f.debug_struct("InvalidateBody").field("kind", &kind).finish()
    }
}

impl<B: Body> Body for InvalidateBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled<B> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Plain { inner } => inner.poll_frame(cx),
            KindProj::Watched { watch } => watch.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Plain { inner } => inner.is_end_stream(),
            Kind::Watched { watch } => {
                watch.purging.is_none() && watch.body.as_ref().is_none_or(|body| body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Plain { inner } => inner.size_hint(),
            Kind::Watched { watch } => watch.body.as_ref().map_or_else(SizeHint::default, |b| b.size_hint()),
        }
    }
}

impl<B: Body> Watch<B> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Polled<B> {
        loop {
            if let Some((purge, _)) = &mut self.purging {
                ready!(purge.as_mut().poll(cx));
                if let Some((_, trailers)) = self.purging.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
            let Some(body) = &mut self.body else {
                return Poll::Ready(None);
            };
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_trailers() {
                    Ok(trailers) => match self.on_trailers.take().and_then(|decide| decide(Some(&trailers))) {
                        Some(purge) => self.purging = Some((purge, trailers)),
                        None => return Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    },
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(error)) => {
                    self.ended_without_trailers();
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    self.ended_without_trailers();
                    self.body = None;
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn ended_without_trailers(&mut self) {
        if let Some(decide) = self.on_trailers.take() {
            // Without trailers a gRPC call has no status: nothing to purge.
            let _ = decide(None);
        }
    }
}

impl<B> Drop for Watch<B> {
    fn drop(&mut self) {
        // The client went away: its mutation happened all the same, so its purge must too.
        if let Some((purge, _)) = self.purging.take() {
            spawn(purge);
        } else if let (Some(body), Some(decide)) = (self.body.take(), self.on_trailers.take()) {
            (self.drain)(body, decide);
        }
    }
}

fn spawn(purge: BoxFuture<'static, ()>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(purge);
        }
        Err(_) => tracing::warn!("no Tokio runtime to finish a purge after its client went away"),
    }
}

fn drain_in_background<B>(body: Pin<Box<B>>, decide: OnTrailers)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
{
    let drain = async move {
        let trailers = tokio::time::timeout(DRAIN_LIMIT, read_trailers(body))
            .await
            .ok()
            .flatten();
        if let Some(purge) = decide(trailers.as_ref()) {
            purge.await;
        }
    };
    spawn(Box::pin(drain));
}

async fn read_trailers<B: Body>(mut body: Pin<Box<B>>) -> Option<HeaderMap> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Ok(trailers) = frame.ok()?.into_trailers() {
            return Some(trailers);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    type Frames = Vec<Result<Frame<Bytes>, &'static str>>;

    fn body(frames: Frames) -> StreamBody<stream::Iter<std::vec::IntoIter<<Frames as IntoIterator>::Item>>> {
        StreamBody::new(stream::iter(frames))
    }

    fn trailers(status: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", status.parse().unwrap());
        t
    }

    /// Purges (counted) after a call whose trailers say `grpc-status: 0`.
    fn counting(purges: &Arc<AtomicUsize>) -> OnTrailers {
        let purges = purges.clone();
        Box::new(move |trailers| {
            let ok = trailers.is_some_and(|t| t["grpc-status"] == "0");
            ok.then(|| {
                let purge: BoxFuture<'static, ()> = Box::pin(async move {
                    tokio::task::yield_now().await;
                    purges.fetch_add(1, SeqCst);
                });
                purge
            })
        })
    }

    #[tokio::test]
    async fn trailers_wait_for_the_purge() {
        let purges = Arc::new(AtomicUsize::new(0));
        let frames = vec![Ok(Frame::data(Bytes::from("msg"))), Ok(Frame::trailers(trailers("0")))];
        let mut watched = InvalidateBody::watched(body(frames), counting(&purges));
        let data = watched.frame().await.unwrap().unwrap();
        assert_eq!(data.into_data().unwrap(), "msg");
        assert_eq!(purges.load(SeqCst), 0, "nothing purged before the trailers");
        let end = watched.frame().await.unwrap().unwrap();
        assert!(end.is_trailers());
        assert_eq!(purges.load(SeqCst), 1, "purged before the trailers came out");
        assert!(watched.frame().await.is_none());
    }

    #[tokio::test]
    async fn failures_and_missing_trailers_purge_nothing() {
        let purges = Arc::new(AtomicUsize::new(0));
        let failed = vec![Ok(Frame::data(Bytes::from("m"))), Ok(Frame::trailers(trailers("13")))];
        let collected = InvalidateBody::watched(body(failed), counting(&purges)).collect().await;
        assert_eq!(collected.unwrap().trailers().unwrap()["grpc-status"], "13");
        let cut = vec![Ok(Frame::data(Bytes::from("m"))), Err("reset")];
        assert!(InvalidateBody::watched(body(cut), counting(&purges))
            .collect()
            .await
            .is_err());
        let no_trailers = vec![Ok(Frame::data(Bytes::from("m")))];
        assert!(InvalidateBody::watched(body(no_trailers), counting(&purges))
            .collect()
            .await
            .is_ok());
        assert_eq!(purges.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_does_not_cancel_the_purge() {
        let purges = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::Mutex::new(Some(done_tx)));
        let counted = counting(&purges);
        let decide: OnTrailers = Box::new(move |trailers| {
            let purge = counted(trailers)?;
            Some(Box::pin(async move {
                purge.await;
                if let Some(tx) = done.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }))
        });
        let frames = vec![Ok(Frame::data(Bytes::from("m"))), Ok(Frame::trailers(trailers("0")))];
        drop(InvalidateBody::watched(body(frames), decide));
        tokio::time::timeout(Duration::from_secs(5), done_rx)
            .await
            .expect("the background purge finished in time")
            .unwrap();
        assert_eq!(purges.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn the_default_body_is_empty_and_ended() {
        let empty = InvalidateBody::<http_body_util::Full<Bytes>>::default();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let collected = empty.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert!(collected.to_bytes().is_empty());
    }

    #[test]
    fn plain_bodies_pass_through() {
        let plain = InvalidateBody::plain(http_body_util::Full::new(Bytes::from("abc")));
        assert_eq!(plain.size_hint().exact(), Some(3));
        assert!(!plain.is_end_stream());
    }
}
