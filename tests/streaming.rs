//! A miss whose body arrives over time (NDJSON lines, chunked) over real HTTP/1.1 on
//! loopback: the client gets each frame as it comes, the entry is stored once the body has
//! come whole, nothing is stored when the client leaves or the body fails, and requests that
//! waited behind the streaming leader are answered from the stored entry.

mod common;
#[path = "common/loopback.rs"]
mod loopback;

use axum::body::Body;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use common::{cache_status, text, until, Origin};
use futures_util::stream;
use http::{Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use loopback::{request, serve, within, Connection};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tower_response_cache::{BypassReason, CacheLayer, MemoryStore};

/// Lines in a feed.
const LINES: usize = 10;

fn line(n: usize) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}\n"))
}

fn all_lines() -> String {
    (0..LINES)
        .map(|n| String::from_utf8(line(n).to_vec()).unwrap())
        .collect()
}

/// Sets its flag when dropped: the origin's body was dropped, by whoever held it.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

type Fed = Result<Bytes, std::io::Error>;

/// An NDJSON response whose frames are what `frames` receives, as they arrive; `dropped`
/// is set once the body is dropped.
fn ndjson(frames: mpsc::Receiver<Fed>, dropped: Arc<AtomicBool>) -> axum::response::Response {
    let body = stream::unfold((frames, DropFlag(dropped)), |(mut frames, flag)| async move {
        let fed = frames.recv().await?;
        Some((fed.map(Frame::data), (frames, flag)))
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::new(StreamBody::new(body)),
    )
        .into_response()
}

/// An origin whose first call streams what the test feeds it and whose later calls answer
/// every line at once.
struct FedOrigin {
    origin: Origin,
    feed: mpsc::Sender<Fed>,
    dropped: Arc<AtomicBool>,
}

fn fed_origin(layer: CacheLayer<MemoryStore>) -> (FedOrigin, Router) {
    let (feed, frames) = mpsc::channel(LINES + 1);
    let dropped = Arc::new(AtomicBool::new(false));
    let first = Arc::new(Mutex::new(Some((frames, dropped.clone()))));
    let origin = Origin::new();
    let app = origin.app(layer, move |_| match first.lock().unwrap().take() {
        Some((frames, dropped)) => ndjson(frames, dropped),
        None => ([("content-type", "application/x-ndjson")], all_lines()).into_response(),
    });
    (FedOrigin { origin, feed, dropped }, app)
}

async fn get(addr: SocketAddr, path: &str) -> (Connection, http::Response<Incoming>) {
    let mut connection = Connection::open(addr).await;
    let response = within(connection.sender.send_request(request(Method::GET, path)))
        .await
        .expect("answered");
    (connection, response)
}

/// The next data frame of `body`, or `None` at its end.
async fn next_data(body: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match within(body.frame()).await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_trailers) => continue,
            },
            Err(error) => return Some(Err(error)),
        }
    }
}

/// A handler whose body is ten lines written 50 ms apart on the origin's own schedule;
/// `sent` counts the lines written, `first_sent` is when the first one was.
fn ten_lines_50ms_apart(
    sent: Arc<AtomicUsize>,
    first_sent: Arc<Mutex<Option<Instant>>>,
) -> impl Fn(axum::extract::Request) -> axum::response::Response + Clone + Send + Sync + 'static {
    move |_| {
        let (feed, frames) = mpsc::channel(LINES);
        let (sent, first_sent) = (sent.clone(), first_sent.clone());
        tokio::spawn(async move {
            for n in 0..LINES {
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                } else {
                    *first_sent.lock().unwrap() = Some(Instant::now());
                }
                sent.store(n + 1, SeqCst);
                if feed.send(Ok(line(n))).await.is_err() {
                    return;
                }
            }
        });
        ndjson(frames, Arc::default())
    }
}

/// How long after the origin wrote its first line the client read it, without the cache.
async fn uncached_first_line_latency() -> Duration {
    let first_sent = Arc::new(Mutex::new(None));
    let handler = ten_lines_50ms_apart(Arc::default(), first_sent.clone());
    let (addr, server) = serve(Router::new().route("/feed", Origin::new().handler(handler))).await;
    let (connection, response) = get(addr, "/feed").await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.expect("a frame").expect("data"), line(0));
    let latency = first_sent.lock().unwrap().expect("the origin wrote a line").elapsed();
    connection.close().await;
    server.abort();
    latency
}

/// What the gated origin below did.
#[derive(Default)]
struct Gated {
    /// Lines written.
    sent: AtomicUsize,
    /// When line 1 was written.
    first_sent: Mutex<Option<Instant>>,
    /// Notified by the test once the client has read line 1.
    received: Notify,
    /// Set if the client had not read line 1 within 5 s (the body then ends after it).
    gave_up: AtomicBool,
}

/// A handler whose body is line 1, then, only once the client has read it, the others.
fn rest_after_the_client_read_line_one(
    gated: Arc<Gated>,
) -> impl Fn(axum::extract::Request) -> axum::response::Response + Clone + Send + Sync + 'static {
    move |_| {
        let (feed, frames) = mpsc::channel(LINES);
        let gated = gated.clone();
        tokio::spawn(async move {
            let Gated {
                sent,
                first_sent,
                received,
                gave_up,
            } = &*gated;
            sent.store(1, SeqCst);
            *first_sent.lock().unwrap() = Some(Instant::now());
            if feed.send(Ok(line(0))).await.is_err() {
                return;
            }
            if tokio::time::timeout(common::WAIT, received.notified()).await.is_err() {
                gave_up.store(true, SeqCst);
                return;
            }
            for n in 1..LINES {
                sent.store(n + 1, SeqCst);
                if feed.send(Ok(line(n))).await.is_err() {
                    return;
                }
            }
        });
        ndjson(frames, Arc::default())
    }
}

#[tokio::test]
async fn a_slow_ndjson_body_reaches_the_client_frame_by_frame_and_is_stored_once_whole() {
    let gated = Arc::new(Gated::default());
    let origin = Origin::new();
    let app = origin.app(
        CacheLayer::new(MemoryStore::new()),
        rest_after_the_client_read_line_one(gated.clone()),
    );
    let (addr, server) = serve(app).await;

    let (connection, response) = get(addr, "/feed").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&response),
        "tower-response-cache; fwd=miss; fwd-status=200",
        "the response went out before the body was whole, so before it was stored"
    );
    let mut body = response.into_body();
    // The origin sends nothing more until the client has line 1: a layer that held the
    // body back would wait for the rest forever (bounded: both sides give up after 5 s).
    let first = next_data(&mut body).await.expect("a first frame").expect("data");
    let first_received = Instant::now();
    assert_eq!(first, line(0));
    assert_eq!(gated.sent.load(SeqCst), 1, "the origin had sent line 1 only");
    assert!(!gated.gave_up.load(SeqCst), "the origin gave up waiting for the client");
    gated.received.notify_one();
    let mut received_bytes = first.to_vec();
    let mut frames = 1;
    while let Some(data) = next_data(&mut body).await {
        received_bytes.extend_from_slice(&data.expect("the body is whole"));
        frames += 1;
    }
    assert_eq!(String::from_utf8(received_bytes).unwrap(), all_lines());
    assert!(!gated.gave_up.load(SeqCst));
    let origin_first = gated.first_sent.lock().unwrap().expect("the origin sent a line");
    eprintln!(
        "first line read by the client {:?} after the origin wrote it through the cache ({:?} without it); \
         {frames} frames received",
        first_received.duration_since(origin_first),
        uncached_first_line_latency().await,
    );
    connection.close().await;

    // Its end came after it was stored: the next request is a hit.
    let (connection, hit) = get(addr, "/feed").await;
    assert!(cache_status(&hit).contains("; hit;"), "{}", cache_status(&hit));
    assert_eq!(common::header(&hit, "content-type"), Some("application/x-ndjson"));
    assert_eq!(text(hit).await, all_lines());
    assert_eq!(origin.calls(), 1, "stored once, whole");
    connection.close().await;
    server.abort();
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_stores_nothing() {
    let layer = CacheLayer::new(MemoryStore::new());
    let (fed, app) = fed_origin(layer.clone());
    let (addr, server) = serve(app).await;

    fed.feed.send(Ok(line(0))).await.unwrap();
    let (connection, response) = get(addr, "/feed").await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.expect("a frame").expect("data"), line(0));
    drop(body);
    connection.close().await;
    // The layer let go of the origin's body: nothing of it can be stored any more.
    until("the origin's body to be dropped", || fed.dropped.load(SeqCst)).await;

    let (connection, next) = get(addr, "/feed").await;
    assert!(
        cache_status(&next).contains("fwd=miss"),
        "the partial body was not stored: {}",
        cache_status(&next)
    );
    assert_eq!(text(next).await, all_lines());
    assert_eq!(fed.origin.calls(), 2);
    assert_eq!(layer.stats().stores, 1, "only the whole second body");
    connection.close().await;
    server.abort();
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_stores_nothing() {
    let layer = CacheLayer::new(MemoryStore::new());
    let (fed, app) = fed_origin(layer.clone());
    let (addr, server) = serve(app).await;

    fed.feed.send(Ok(line(0))).await.unwrap();
    let (connection, response) = get(addr, "/feed").await;
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.expect("a frame").expect("data"), line(0));
    fed.feed
        .send(Err(std::io::Error::other("origin hung up")))
        .await
        .unwrap();
    // The server cuts the response short: the client sees an error or an early end.
    let mut rest = Vec::new();
    while let Some(Ok(data)) = next_data(&mut body).await {
        rest.extend_from_slice(&data);
    }
    assert!(rest.is_empty(), "nothing after the failure");
    connection.close().await;
    until("the origin's body to be dropped", || fed.dropped.load(SeqCst)).await;

    let (connection, next) = get(addr, "/feed").await;
    assert!(cache_status(&next).contains("fwd=miss"), "{}", cache_status(&next));
    assert_eq!(text(next).await, all_lines());
    assert_eq!(fed.origin.calls(), 2);
    assert_eq!(layer.stats().not_stored.get(&BypassReason::BodyError), Some(&1));
    connection.close().await;
    server.abort();
}

#[tokio::test]
async fn waiters_behind_a_streaming_leader_get_the_stored_entry() {
    const WAITERS: u64 = 5;
    let layer = CacheLayer::new(MemoryStore::new());
    let (fed, app) = fed_origin(layer.clone());
    let (addr, server) = serve(app).await;

    fed.feed.send(Ok(line(0))).await.unwrap();
    let (leader_connection, leader) = get(addr, "/feed").await;
    let mut leader = leader.into_body();
    assert_eq!(next_data(&mut leader).await.expect("a frame").expect("data"), line(0));

    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            tokio::spawn(async move {
                let (connection, response) = get(addr, "/feed").await;
                let status = cache_status(&response).to_owned();
                let body = text(response).await;
                connection.close().await;
                (status, body)
            })
        })
        .collect();
    // A miss is counted just before it joins the leader's flight, with no wait between.
    until("every waiter to miss and join the flight", || {
        layer.stats().misses == 1 + WAITERS
    })
    .await;

    for n in 1..LINES {
        fed.feed.send(Ok(line(n))).await.unwrap();
    }
    drop(fed.feed);
    let mut received = line(0).to_vec();
    while let Some(data) = next_data(&mut leader).await {
        received.extend_from_slice(&data.expect("the body is whole"));
    }
    assert_eq!(String::from_utf8(received).unwrap(), all_lines());
    leader_connection.close().await;

    for waiter in waiters {
        let (status, body) = within(waiter).await.expect("the waiter answered");
        assert!(
            status.contains("; collapsed"),
            "answered from the leader's entry: {status}"
        );
        assert_eq!(body, all_lines());
    }
    assert_eq!(fed.origin.calls(), 1, "one origin call for the leader and every waiter");
    assert_eq!(layer.stats().coalesced, WAITERS);
    server.abort();
}
