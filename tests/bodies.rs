//! Bodies: bounded collection, oversize bodies streamed through untouched, failed bodies
//! forwarded as errors and never stored, trailers kept.

mod common;

use axum::body::Body;
use bytes::Bytes;
use common::*;
use futures_util::stream;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tower_response_cache::{BypassReason, CacheLayer, MemoryStore};

const LIMIT: usize = 16;

fn small_limit_layer() -> CacheLayer<MemoryStore> {
    CacheLayer::builder(MemoryStore::new()).max_body_bytes(LIMIT).build()
}

/// A body of `chunks` with no length hint, as a streaming handler produces.
fn chunked(chunks: Vec<Bytes>) -> Body {
    let frames = chunks.into_iter().map(|c| Ok::<_, Infallible>(Frame::data(c)));
    Body::new(StreamBody::new(stream::iter(frames)))
}

/// Ten distinct 8-byte chunks: 80 bytes in all, far over the limit.
fn ten_chunks() -> Vec<Bytes> {
    (b'a'..b'a' + 10).map(|c| Bytes::from(vec![c; 8])).collect()
}

#[tokio::test]
async fn a_body_at_the_limit_is_stored() {
    let origin = Origin::new();
    let app = origin.app(small_limit_layer(), |_| "x".repeat(LIMIT));
    assert_stored(&send(&app, get("/page")).await);
    let hit = send(&app, get("/page")).await;
    assert_hit(&hit);
    assert_eq!(text(hit).await, "x".repeat(LIMIT));
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_known_length_body_over_the_limit_is_streamed_through_and_not_stored() {
    let origin = Origin::new();
    let layer = small_limit_layer();
    let app = origin.app(layer.clone(), |_| "y".repeat(100));
    for call in 1..=2 {
        let response = send(&app, get("/big")).await;
        assert_not_stored(&response, "too-large");
        assert_eq!(text(response).await, "y".repeat(100), "intact");
        assert_eq!(origin.calls(), call);
    }
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.store().stats().entries, 0);
}

#[tokio::test]
async fn a_streaming_body_that_grows_past_the_limit_is_streamed_through_and_not_stored() {
    let origin = Origin::new();
    let layer = small_limit_layer();
    let app = origin.app(layer.clone(), |_| chunked(ten_chunks()));
    let expected: Vec<u8> = ten_chunks().concat();
    for call in 1..=2 {
        let response = send(&app, get("/stream")).await;
        assert_not_stored(&response, "too-large");
        assert!(header(&response, "content-length").is_none(), "no length was known");
        assert_eq!(body_bytes(response).await, expected, "every byte, in order");
        assert_eq!(origin.calls(), call);
    }
    let stats = layer.stats();
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.not_stored.get(&BypassReason::BodyTooLarge), Some(&2));
    assert_eq!(layer.store().stats().entries, 0);
}

#[tokio::test]
async fn an_oversize_body_reaches_the_client_before_the_origin_has_finished_it() {
    // The origin's body is fed by the test: the response must arrive, and its first bytes
    // be readable, while the origin still holds the rest back.
    let (feed, chunks) = mpsc::channel::<Bytes>(4);
    let chunks = Arc::new(Mutex::new(Some(chunks)));
    let origin = Origin::new();
    let app = origin.app(small_limit_layer(), move |_| {
        let chunks = chunks.lock().unwrap().take().expect("the origin is called once");
        let frames = stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
        });
        Body::new(StreamBody::new(frames))
    });

    feed.send(Bytes::from(vec![1u8; 10])).await.unwrap();
    feed.send(Bytes::from(vec![2u8; 10])).await.unwrap();
    let response = send(&app, get("/live")).await;
    assert_not_stored(&response, "too-large");

    let mut body = response.into_body();
    let mut read = Vec::new();
    while read.len() < 20 {
        let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("frame in time");
        read.extend_from_slice(&frame.expect("more frames").unwrap().into_data().unwrap());
    }
    assert_eq!(read, [vec![1u8; 10], vec![2u8; 10]].concat());

    feed.send(Bytes::from_static(b"tail")).await.unwrap();
    let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("frame in time");
    assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "tail");
    drop(feed);
    let end = tokio::time::timeout(WAIT, body.frame()).await.expect("end in time");
    assert!(end.is_none(), "the body ends when the origin's does");
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_reaches_the_client_as_an_error_and_is_not_stored() {
    let origin = Origin::new();
    let layer = CacheLayer::new(MemoryStore::new());
    let app = origin.app(layer.clone(), |_| {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"partial "))),
            Err(std::io::Error::other("origin hung up")),
        ];
        Body::new(StreamBody::new(stream::iter(frames)))
    });
    for call in 1..=2 {
        let response = send(&app, get("/broken")).await;
        assert_not_stored(&response, "body-error");
        let mut body = response.into_body();
        let first = tokio::time::timeout(WAIT, body.frame()).await.expect("frame in time");
        assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "partial ");
        let error = tokio::time::timeout(WAIT, body.frame()).await.expect("frame in time");
        let error = error.expect("the error is a frame").expect_err("the body fails");
        assert!(error.to_string().contains("origin hung up"), "{error}");
        assert_eq!(
            origin.calls(),
            call,
            "nothing was stored: the next request goes to the origin"
        );
    }
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.store().stats().entries, 0);
}

#[tokio::test]
async fn trailers_are_stored_and_replayed_on_a_hit() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers)),
        ];
        Body::new(StreamBody::new(stream::iter(frames)))
    });

    let miss = send(&app, get("/with-trailers")).await;
    assert_stored(&miss);
    let (data, trailers) = read_body(miss.into_body()).await.unwrap();
    assert_eq!(data, "hello world");
    assert_eq!(trailers.expect("trailers on the miss")["x-checksum"], "c0ffee");

    let hit = send(&app, get("/with-trailers")).await;
    assert_hit(&hit);
    let (data, trailers) = read_body(hit.into_body()).await.unwrap();
    assert_eq!(data, "hello world");
    assert_eq!(trailers.expect("trailers on the hit")["x-checksum"], "c0ffee");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn event_streams_are_streamed_through_and_not_stored() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| {
        let body = chunked(vec![
            Bytes::from_static(b"data: 1\n\n"),
            Bytes::from_static(b"data: 2\n\n"),
        ]);
        ([("content-type", "text/event-stream")], body)
    });
    for call in 1..=2 {
        let response = send(&app, get("/events")).await;
        assert_not_stored(&response, "streaming");
        assert_eq!(text(response).await, "data: 1\n\ndata: 2\n\n");
        assert_eq!(origin.calls(), call);
    }
}

#[tokio::test]
async fn an_empty_body_is_stored_and_replayed_empty() {
    let origin = Origin::new();
    let app = origin.app(default_layer(), |_| http::StatusCode::NO_CONTENT);
    assert_stored(&send(&app, get("/empty")).await);
    let hit = send(&app, get("/empty")).await;
    assert_eq!(hit.status(), http::StatusCode::NO_CONTENT);
    assert_hit(&hit);
    assert!(body_bytes(hit).await.is_empty());
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_response_cancelled_mid_body_is_not_stored() {
    // The first call's body stalls after one chunk; later calls answer at once.
    let (feed, chunks) = mpsc::channel::<Bytes>(4);
    let stalled = Arc::new(Mutex::new(Some(chunks)));
    let origin = Origin::new();
    let app = origin.app(default_layer(), move |_| match stalled.lock().unwrap().take() {
        Some(chunks) => {
            let frames = stream::unfold(chunks, |mut chunks| async move {
                let chunk = chunks.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
            });
            Body::new(StreamBody::new(frames))
        }
        None => Body::from("complete"),
    });

    feed.send(Bytes::from_static(b"part")).await.unwrap();
    // The response goes out with what has arrived; the client reads it, then gives up.
    let mut cancelled = send(&app, get("/page")).await.into_body();
    let first = tokio::time::timeout(WAIT, cancelled.frame())
        .await
        .expect("frame in time");
    assert_eq!(first.expect("a frame").expect("data").into_data().unwrap(), "part");
    drop(cancelled);
    assert_eq!(origin.calls(), 1);
    drop(feed);

    let next = send(&app, get("/page")).await;
    assert_stored(&next);
    assert_eq!(text(next).await, "complete", "the partial body was never stored");
    assert_hit(&send(&app, get("/page")).await);
    assert_eq!(origin.calls(), 2);
}
