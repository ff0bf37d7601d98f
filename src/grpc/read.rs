//! Reading a request message and rebuilding the request body for the inner service.
//!
//! The layers' `Service` impls accept any request body type, so they cannot read one nor
//! make one. [`GrpcMethods::request_body`](super::GrpcMethods::request_body) is where both
//! become possible: it knows the body type, so it builds a [`RequestReader`] for it, stored
//! type-erased and found again at call time by downcasting to the request's own body type.

use super::{one_message_limit, too_large_reason};
use crate::body::{collect_within, Collected};
use crate::metrics::BypassReason;
use crate::CacheBody;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::Body;
use std::sync::Arc;

type ReadFn<B> = dyn Fn(B, usize) -> BoxFuture<'static, Read<B>> + Send + Sync;

/// Reads request bodies of type `B` and rebuilds them.
pub(crate) struct RequestReader<B> {
    read: Box<ReadFn<B>>,
}

/// A request body, read.
pub(crate) enum Read<B> {
    /// The whole body fit: the body to hand on, and its bytes.
    Message { body: B, frame: Bytes },
    /// The body was too large or failed: the body to hand on (what was read, then the rest
    /// or the error), and why the message is not available.
    Unread { body: B, reason: BypassReason },
}

impl<B: 'static> RequestReader<B> {
    pub(crate) fn new<F>(rebuild: F) -> Self
    where
        B: Body + Send,
        B::Data: Send,
        B::Error: Send,
        F: Fn(CacheBody<B>) -> B + Send + Sync + 'static,
    {
        let rebuild = Arc::new(rebuild);
        let read = move |body: B, max: usize| -> BoxFuture<'static, Read<B>> {
            let rebuild = rebuild.clone();
            Box::pin(async move {
                let mut declared = None;
                let collected = collect_within(body, |head| one_message_limit(head, max, &mut declared)).await;
                match collected {
                    Collected::Complete { data, trailers } => Read::Message {
                        body: rebuild(CacheBody::cached(data.clone(), trailers)),
                        frame: data,
                    },
                    Collected::TooLarge(rest) => Read::Unread {
                        body: rebuild(rest),
                        reason: too_large_reason(declared, max, BypassReason::RequestTooLarge),
                    },
                    Collected::Failed(rest) => Read::Unread {
                        body: rebuild(rest),
                        reason: BypassReason::RequestBody,
                    },
                }
            })
        };
        RequestReader { read: Box::new(read) }
    }

    /// Reads `body` if it is at most `max` bytes long and one message.
    pub(crate) fn read(&self, body: B, max: usize) -> BoxFuture<'static, Read<B>> {
        (self.read)(body, max)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures_util::stream;
    use http::HeaderMap;
    use http_body::Frame;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, StreamBody};

    /// The request body type of these tests.
    pub(crate) type TestBody = UnsyncBoxBody<Bytes, &'static str>;

    pub(crate) fn rebuild(body: CacheBody<TestBody>) -> TestBody {
        body.boxed_unsync()
    }

    pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
        let mut body = vec![0];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    /// `bytes` in chunks of three, as a network would deliver them.
    pub(crate) fn body_of(bytes: &[u8]) -> TestBody {
        chunks(bytes, None)
    }

    fn chunks(bytes: &[u8], error: Option<&'static str>) -> TestBody {
        let mut frames: Vec<Result<Frame<Bytes>, &'static str>> = bytes
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        frames.extend(error.map(Err));
        StreamBody::new(stream::iter(frames)).boxed_unsync()
    }

    /// Everything the body yields, or the error's text.
    pub(crate) async fn read(body: TestBody) -> Vec<u8> {
        let collected = body.collect().await;
        collected.map_or_else(|e| e.as_bytes().to_vec(), |c| c.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn one_message_is_read_and_handed_back() {
        let reader = RequestReader::new(rebuild);
        let message = frame(b"a request message");
        let Read::Message { body, frame } = reader.read(body_of(&message), 64).await else {
            panic!("one small message")
        };
        assert_eq!(&frame[..], &message[..]);
        assert_eq!(read(body).await, message);
    }

    #[tokio::test]
    async fn large_messages_and_streams_are_handed_on_intact() {
        let reader = RequestReader::new(rebuild);
        let large = frame(&[7u8; 100]);
        let Read::Unread { body, reason } = reader.read(body_of(&large), 64).await else {
            panic!("too large")
        };
        assert_eq!(reason, BypassReason::RequestTooLarge);
        assert_eq!(read(body).await, large);

        let mut stream = frame(b"one");
        stream.extend(frame(b"two"));
        stream.extend(frame(b"three"));
        let Read::Unread { body, reason } = reader.read(body_of(&stream), 64).await else {
            panic!("a stream")
        };
        assert_eq!(reason, BypassReason::Streaming);
        assert_eq!(read(body).await, stream);
    }

    #[tokio::test]
    async fn a_failing_body_hands_its_error_on() {
        let reader = RequestReader::new(rebuild);
        let Read::Unread { body, reason } = reader.read(chunks(b"\0\0\0", Some("reset")), 64).await else {
            panic!("failed")
        };
        assert_eq!(reason, BypassReason::RequestBody);
        assert_eq!(read(body).await, b"reset");
    }

    #[tokio::test]
    async fn request_trailers_are_kept() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", "1".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, &'static str>> =
            vec![Ok(Frame::data(Bytes::from(frame(b"m")))), Ok(Frame::trailers(trailers))];
        let reader = RequestReader::new(rebuild);
        let body = StreamBody::new(stream::iter(frames)).boxed_unsync();
        let Read::Message { body, .. } = reader.read(body, 64).await else {
            panic!("one message")
        };
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-end"], "1");
    }
}
