//! The response body: cached bytes, the inner body streamed through, or the inner body
//! streamed through while a copy is kept to store; and the bounded collection that decides
//! between them.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// The body of every response that passes through [`CacheService`](crate::CacheService):
    /// a cached body (with its trailers), or the inner service's body streamed through.
    ///
    /// `CacheBody::default()` is an empty body, whatever `B` is, for middleware that makes
    /// its own responses around the cache (tower-http's `TimeoutLayer` answers `408` with
    /// one).
    ///
    /// ```
    /// use http_body::Body;
    /// use tower_response_cache::CacheBody;
    ///
    /// let empty = CacheBody::<axum::body::Body>::default();
    /// assert!(empty.is_end_stream());
    /// assert_eq!(empty.size_hint().exact(), Some(0));
    /// ```
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Streamed { #[pin] inner: B },
        // A body read in part: what was read, then the rest of it (or the error that ended it).
        Resumed { read: VecDeque<Bytes>, rest: Option<Pin<Box<B>>>, error: Option<Failure> },
        // A body still arriving, passed on frame by frame while a copy is kept (boxed: the
        // hit path's bodies stay small).
        Copied { tee: Pin<Box<Tee<B>>> },
    }
}

/// The error that ended a body read in part, kept to pass on after the bytes read before it;
/// type-erased so that `CacheBody` carries no bound on its definition.
type Failure = Box<dyn std::any::Any + Send>;

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Cached { .. } => "Cached",
            Kind::Streamed { .. } => "Streamed",
            Kind::Resumed { .. } => "Resumed",
            Kind::Copied { .. } => "Copied",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

impl<B> Default for CacheBody<B> {
    /// An empty body.
    fn default() -> Self {
        CacheBody::empty()
    }
}

impl<B> CacheBody<B> {
    /// A body of cached bytes followed by `trailers`.
    pub(crate) fn cached(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        CacheBody {
            kind: Kind::Cached {
                data: Some(data).filter(|d| !d.is_empty()),
                trailers,
            },
        }
    }

    /// No body at all (HEAD, 304).
    pub(crate) fn empty() -> Self {
        CacheBody {
            kind: Kind::Cached {
                data: None,
                trailers: None,
            },
        }
    }

    /// The inner body, untouched.
    pub(crate) fn streamed(inner: B) -> Self {
        CacheBody {
            kind: Kind::Streamed { inner },
        }
    }

    /// A body that was still arriving, passed on as it was read and as the rest arrives.
    pub(crate) fn resumed(arriving: Arriving<B>) -> Self {
        CacheBody {
            kind: Kind::Resumed {
                read: arriving.read,
                rest: Some(arriving.rest),
                error: None,
            },
        }
    }

    /// A body that was still arriving, passed on frame by frame while a copy of it is kept
    /// for `store`, which gets it if the body ends whole within `limit` bytes. Over the
    /// limit the copy is dropped and the rest streams on.
    pub(crate) fn copied(arriving: Arriving<B>, limit: usize, store: Box<dyn StoreWhenWhole>) -> Self {
        let copy = arriving.read.iter().cloned().collect();
        CacheBody {
            kind: Kind::Copied {
                tee: Box::pin(Tee {
                    unsent: arriving.read,
                    rest: Some(arriving.rest),
                    copy,
                    copied: arriving.total,
                    limit,
                    store: Some(store),
                    storing: None,
                    trailers: None,
                }),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body,
    B::Error: 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Cached { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Streamed { inner } => inner
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map(|f| f.map_data(into_bytes)))),
            KindProj::Resumed { read, rest, error } => {
                if let Some(chunk) = read.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                // Always the `B::Error` it was made from.
                if let Some(Ok(error)) = error.take().map(|e| e.downcast::<B::Error>()) {
                    return Poll::Ready(Some(Err(*error)));
                }
                match rest {
                    Some(body) => body
                        .as_mut()
                        .poll_frame(cx)
                        .map(|f| f.map(|f| f.map(|f| f.map_data(into_bytes)))),
                    None => Poll::Ready(None),
                }
            }
            KindProj::Copied { tee } => tee.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streamed { inner } => inner.is_end_stream(),
            Kind::Resumed { read, rest, error } => {
                read.is_empty() && error.is_none() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
            Kind::Copied { tee } => tee.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data, trailers } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                // A body with trailers was sent without a length (HTTP/2 gRPC, HTTP/1.1
                // chunked): an exact hint would make the server add `Content-Length` (and
                // drop the trailers on HTTP/1.1), so a replay would not match the original.
                if trailers.is_some() {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                } else {
                    SizeHint::with_exact(len)
                }
            }
            Kind::Streamed { inner } => inner.size_hint(),
            Kind::Resumed { read, rest, .. } => hint_after(read, rest.as_ref()),
            Kind::Copied { tee } => hint_after(&tee.unsent, tee.rest.as_ref()),
        }
    }
}

/// The size of `read` followed by `rest`.
fn hint_after<B: Body>(read: &VecDeque<Bytes>, rest: Option<&Pin<Box<B>>>) -> SizeHint {
    let read: u64 = read.iter().map(|c| c.len() as u64).sum();
    let rest = rest.map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + read);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + read);
    }
    hint
}

/// A request extension asking for the response body to be read whole before the response
/// is returned, for callers that never read bodies (cache warming).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadWhole;

/// What becomes of the copy of a body passed on while it arrives. Dropped without any of
/// these calls, the body was cancelled (its client went away): nothing is stored.
pub(crate) trait StoreWhenWhole: Send {
    /// The body ended whole within the limit: store it. The body's end (its trailers, or
    /// its last frame) is passed on once the returned future is done.
    fn complete(self: Box<Self>, data: Bytes, trailers: Option<HeaderMap>) -> BoxFuture<'static, ()>;
    /// The body grew past the limit: its copy is dropped, the rest streams through.
    fn too_large(self: Box<Self>);
    /// The body ended in an error: nothing is stored.
    fn failed(self: Box<Self>);
}

/// A body passed on frame by frame while a bounded copy of it is kept.
struct Tee<B> {
    /// Frames read before the response went out, still to pass on.
    unsent: VecDeque<Bytes>,
    /// The body still arriving; `None` once it ended.
    rest: Option<Pin<Box<B>>>,
    copy: Vec<Bytes>,
    copied: usize,
    limit: usize,
    /// `None` once told how the body ended (or past the limit).
    store: Option<Box<dyn StoreWhenWhole>>,
    /// The store write of the whole body, which its end waits for.
    storing: Option<BoxFuture<'static, ()>>,
    /// The trailers, passed on once the body is stored.
    trailers: Option<HeaderMap>,
}

impl<B: Body> Tee<B> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            if let Some(storing) = &mut self.storing {
                ready!(storing.as_mut().poll(cx));
                self.storing = None;
            }
            if let Some(chunk) = self.unsent.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            let Some(rest) = &mut self.rest else {
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match ready!(rest.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let data = into_bytes(data);
                        self.keep(&data);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            // Trailers end a body.
                            self.trailers = Some(trailers);
                            self.ended();
                        }
                    }
                },
                Some(Err(error)) => {
                    self.rest = None;
                    self.copy.clear();
                    if let Some(store) = self.store.take() {
                        store.failed();
                    }
                    return Poll::Ready(Some(Err(error)));
                }
                None => self.ended(),
            }
        }
    }

    fn keep(&mut self, data: &Bytes) {
        if self.store.is_none() {
            return;
        }
        self.copied = self.copied.saturating_add(data.len());
        if self.copied > self.limit {
            self.copy = Vec::new();
            if let Some(store) = self.store.take() {
                store.too_large();
            }
        } else if !data.is_empty() {
            self.copy.push(data.clone());
        }
    }

    /// The body ended whole: hand the copy over to be stored.
    fn ended(&mut self) {
        self.rest = None;
        if let Some(store) = self.store.take() {
            let data = join(std::mem::take(&mut self.copy), self.copied);
            self.storing = Some(store.complete(data, self.trailers.clone()));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.unsent.is_empty() && self.rest.is_none() && self.storing.is_none() && self.trailers.is_none()
    }
}

/// One buffer of `chunks`, `total` bytes long.
fn join(chunks: impl IntoIterator<Item = Bytes, IntoIter: ExactSizeIterator>, total: usize) -> Bytes {
    let mut chunks = chunks.into_iter();
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.next().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            chunks.for_each(|c| joined.extend_from_slice(&c));
            joined.freeze()
        }
    }
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

/// What reading a body within a byte limit gave.
pub(crate) enum Collected<B: Body> {
    /// The whole body and its trailers.
    Complete { data: Bytes, trailers: Option<HeaderMap> },
    /// The body is larger than the limit: what was read and the rest, to stream through.
    TooLarge(CacheBody<B>),
    /// The body failed: what was read, then the error.
    Failed(CacheBody<B>),
}

/// A body whose next frame was not there yet: what was read of it, and the rest.
pub(crate) struct Arriving<B> {
    read: VecDeque<Bytes>,
    total: usize,
    rest: Pin<Box<B>>,
}

/// Like [`collect_bounded`], but stops at the first frame that is not there yet: a body
/// that arrives over time is then `Err`, to pass on as it comes.
pub(crate) async fn collect_ready<B: Body<Error: Send + 'static>>(
    body: B,
    limit: usize,
) -> Result<Collected<B>, Arriving<B>> {
    collect(body, |_| limit, true).await
}

/// Reads `body` whole if it fits in `limit` bytes. Never holds more than `limit` bytes plus
/// one frame.
pub(crate) async fn collect_bounded<B: Body<Error: Send + 'static>>(body: B, limit: usize) -> Collected<B> {
    collect_within(body, |_| limit).await
}

/// How many leading bytes of a body [`collect_within`] shows its limit function.
pub(crate) const HEAD_BYTES: usize = 16;

/// Like [`collect_bounded`], with a limit that may depend on the body's first bytes (up to
/// [`HEAD_BYTES`]), such as a length prefix: the body is `TooLarge` as soon as it is longer
/// than `limit(head)`.
pub(crate) async fn collect_within<B: Body<Error: Send + 'static>>(
    body: B,
    limit: impl FnMut(&[u8]) -> usize,
) -> Collected<B> {
    match collect(body, limit, false).await {
        Ok(collected) => collected,
        // Not reached: without `only_ready`, a frame not there yet is waited for.
        Err(arriving) => Collected::TooLarge(CacheBody::resumed(arriving)),
    }
}

/// Reads `body` within `limit`; with `only_ready`, stops at the first frame not there yet.
async fn collect<B: Body<Error: Send + 'static>>(
    body: B,
    mut limit: impl FnMut(&[u8]) -> usize,
    only_ready: bool,
) -> Result<Collected<B>, Arriving<B>> {
    if body.size_hint().lower() > limit(&[]) as u64 {
        return Ok(Collected::TooLarge(CacheBody::streamed(body)));
    }
    let mut body = Box::pin(body);
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut total = 0usize;
    let mut head: Vec<u8> = Vec::new();
    let mut trailers: Option<HeaderMap> = None;
    loop {
        let next = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if only_ready => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let frame = match next {
            None => {
                return Err(Arriving {
                    read: chunks,
                    total,
                    rest: body,
                })
            }
            Some(None) => break,
            Some(Some(frame)) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                return Ok(Collected::Failed(CacheBody {
                    kind: Kind::Resumed {
                        read: chunks,
                        rest: None,
                        error: Some(Box::new(error)),
                    },
                }));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let data = into_bytes(data);
                total = total.saturating_add(data.len());
                if head.len() < HEAD_BYTES {
                    let take = data.len().min(HEAD_BYTES - head.len());
                    head.extend_from_slice(&data[..take]);
                }
                if !data.is_empty() {
                    chunks.push_back(data);
                }
                if total > limit(&head) {
                    return Ok(Collected::TooLarge(CacheBody {
                        kind: Kind::Resumed {
                            read: chunks,
                            rest: Some(body),
                            error: None,
                        },
                    }));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    match &mut trailers {
                        Some(existing) => existing.extend(t),
                        None => trailers = Some(t),
                    }
                }
            }
        }
    }
    Ok(Collected::Complete {
        data: join(chunks, total),
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::convert::Infallible;

    /// No bound on the definitions: generic code can name the types without `B: Body`, and
    /// the bodies stay `Send`.
    #[test]
    fn the_public_types_carry_no_bounds_and_stay_send() {
        #[allow(dead_code)]
        struct Holder<B, E>(CacheBody<B>, crate::ResponseFuture<B, E>);
        fn send<T: Send>() {}
        send::<CacheBody<Full<Bytes>>>();
        send::<CacheBody<StreamBody<Frames>>>();
    }

    type Chunks = Vec<Result<Frame<Bytes>, &'static str>>;

    type Frames = stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>;

    fn stream_body(frames: Chunks) -> StreamBody<Frames> {
        StreamBody::new(stream::iter(frames))
    }

    async fn read_all<B: Body<Data = Bytes>>(body: B) -> (Vec<u8>, Option<HeaderMap>, Option<B::Error>) {
        let mut body = std::pin::pin!(body);
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(e) => return (data, trailers, Some(e)),
            }
        }
        (data, trailers, None)
    }

    #[tokio::test]
    async fn the_default_body_is_empty_and_ended() {
        let body = CacheBody::<StreamBody<Frames>>::default();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn collects_small_bodies_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let body = stream_body(vec![
            Ok(Frame::data(Bytes::from("ab"))),
            Ok(Frame::data(Bytes::from("cd"))),
            Ok(Frame::trailers(t)),
        ]);
        let Collected::Complete { data, trailers } = collect_bounded(body, 10).await else {
            panic!("should fit")
        };
        assert_eq!(&data[..], b"abcd");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }

    #[tokio::test]
    async fn known_large_bodies_are_not_read() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let Collected::TooLarge(body) = collect_bounded(body, 10).await else {
            panic!("too large")
        };
        assert!(matches!(body.kind, Kind::Streamed { .. }));
        let (data, _, err): (_, _, Option<Infallible>) = read_all(body).await;
        assert_eq!(data, vec![7u8; 100]);
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn bodies_that_grow_past_the_limit_stream_on_untouched() {
        let frames: Chunks = (0..10)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i as u8; 4]))))
            .collect();
        let Collected::TooLarge(body) = collect_bounded(stream_body(frames), 10).await else {
            panic!("too large")
        };
        if let Kind::Resumed { read, .. } = &body.kind {
            assert!(
                read.iter().map(|c| c.len()).sum::<usize>() <= 10 + 4,
                "reads at most one frame past the limit"
            );
        }
        let (data, _, err) = read_all(body).await;
        let expected: Vec<u8> = (0..10).flat_map(|i| vec![i as u8; 4]).collect();
        assert_eq!(data, expected);
        assert!(err.is_none());
    }

    #[tokio::test]
    async fn errors_are_forwarded_after_what_was_read() {
        let frames: Chunks = vec![Ok(Frame::data(Bytes::from("ab"))), Err("boom")];
        let Collected::Failed(body) = collect_bounded(stream_body(frames), 10).await else {
            panic!("failed")
        };
        let (data, _, err) = read_all(body).await;
        assert_eq!(data, b"ab");
        assert_eq!(err, Some("boom"));
    }

    #[tokio::test]
    async fn cached_body_reports_its_size_and_end() {
        let body: CacheBody<Full<Bytes>> = CacheBody::cached(Bytes::from("xyz"), None);
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert!(CacheBody::<Full<Bytes>>::empty().is_end_stream());
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body: CacheBody<Full<Bytes>> = CacheBody::cached(Bytes::from("xyz"), Some(trailers));
        assert_eq!(
            body.size_hint().exact(),
            None,
            "replayed without a Content-Length, as sent"
        );
        assert_eq!(body.size_hint().lower(), 3);
    }

    /// What a copied body told its store.
    #[derive(Default)]
    struct Told {
        complete: std::sync::Mutex<Option<(Bytes, Option<HeaderMap>)>>,
        too_large: std::sync::atomic::AtomicBool,
        failed: std::sync::atomic::AtomicBool,
    }

    struct Recorder(std::sync::Arc<Told>);

    impl StoreWhenWhole for Recorder {
        fn complete(self: Box<Self>, data: Bytes, trailers: Option<HeaderMap>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                *self.0.complete.lock().unwrap() = Some((data, trailers));
            })
        }
        fn too_large(self: Box<Self>) {
            self.0.too_large.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        fn failed(self: Box<Self>) {
            self.0.failed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn copied(read: &'static str, rest: Chunks, limit: usize) -> (CacheBody<StreamBody<Frames>>, std::sync::Arc<Told>) {
        let told = std::sync::Arc::<Told>::default();
        let arriving = Arriving {
            read: VecDeque::from([Bytes::from(read)]),
            total: read.len(),
            rest: Box::pin(stream_body(rest)),
        };
        (
            CacheBody::copied(arriving, limit, Box::new(Recorder(told.clone()))),
            told,
        )
    }

    #[tokio::test]
    async fn a_body_still_arriving_is_not_waited_for() {
        let frames = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from("ab")))]).chain(stream::pending());
        let Err(arriving) = collect_ready(StreamBody::new(frames), 10).await else {
            panic!("the body has not ended")
        };
        assert_eq!(arriving.read, [Bytes::from("ab")]);
        let whole = collect_ready(stream_body(vec![Ok(Frame::data(Bytes::from("ab")))]), 10).await;
        assert!(
            matches!(whole, Ok(Collected::Complete { .. })),
            "a body there at once is read whole"
        );
    }

    #[tokio::test]
    async fn a_copied_body_is_stored_whole_before_its_trailers_go_on() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let (body, told) = copied(
            "ab",
            vec![Ok(Frame::data(Bytes::from("cd"))), Ok(Frame::trailers(t))],
            10,
        );
        let mut body = std::pin::pin!(body);
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(trailers) => {
                    assert!(trailers.is_trailers());
                    let stored = told.complete.lock().unwrap().clone();
                    let (whole, trailers) = stored.expect("stored before the trailers went on");
                    assert_eq!(whole, "abcd");
                    assert_eq!(trailers.unwrap()["x-sum"], "1");
                }
            }
        }
        assert_eq!(data, b"abcd");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_copied_body_past_the_limit_or_failing_is_not_stored() {
        let over = (0..4).map(|_| Ok(Frame::data(Bytes::from("xxxx")))).collect();
        let (body, told) = copied("ab", over, 6);
        let (data, _, err) = read_all(body).await;
        assert_eq!(data.len(), 2 + 16, "the rest streams on");
        assert!(err.is_none());
        assert!(told.too_large.load(std::sync::atomic::Ordering::SeqCst));
        assert!(told.complete.lock().unwrap().is_none());

        let (body, told) = copied("ab", vec![Ok(Frame::data(Bytes::from("cd"))), Err("boom")], 10);
        let (data, _, err) = read_all(body).await;
        assert_eq!((data.as_slice(), err), (&b"abcd"[..], Some("boom")));
        assert!(told.failed.load(std::sync::atomic::Ordering::SeqCst));
        assert!(told.complete.lock().unwrap().is_none());

        let (body, told) = copied("ab", vec![Ok(Frame::data(Bytes::from("cd")))], 10);
        drop(body);
        let nothing = !told.failed.load(std::sync::atomic::Ordering::SeqCst) && told.complete.lock().unwrap().is_none();
        assert!(nothing, "a cancelled body tells its store nothing");
    }

    #[tokio::test]
    async fn the_limit_may_follow_the_first_bytes() {
        let frames: Chunks = [&b"\x03a"[..], b"bc", b"de"]
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        // The first byte declares how long the body should be.
        let by_prefix = |head: &[u8]| head.first().map_or(100, |n| *n as usize + 1);
        let Collected::TooLarge(body) = collect_within(stream_body(frames), by_prefix).await else {
            panic!("longer than its prefix says")
        };
        let (data, _, err) = read_all(body).await;
        assert_eq!(data, b"\x03abcde");
        assert!(err.is_none());
    }
}
