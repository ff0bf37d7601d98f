//! The layers among tower-http's middleware: `CompressionLayer`, `TimeoutLayer`, `TraceLayer`
//! and `CorsLayer`, each outside both `CacheLayer` and `InvalidateLayer`, between them, and
//! inside both, in every place axum users put layers: `Router::layer`, `Router::route_layer`,
//! a nested router, and around a whole Router served by `axum::serve` over loopback.

#[path = "common/loopback.rs"]
mod loopback;

use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use axum::{Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Empty};
use loopback::{within, Connection};
use std::convert::Infallible;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore};

/// Long enough for tower-http's default compression predicate (over 32 bytes).
fn book_text(id: u32) -> String {
    format!("Book {id}: a tale told at length, so that it is worth compressing.")
}

/// How long `TimeoutLayer` waits: far longer than any other request here takes.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Counts how often the book handler really ran.
#[derive(Clone, Default)]
struct Reads(Arc<AtomicUsize>);

impl Reads {
    fn count(&self) -> usize {
        self.0.load(SeqCst)
    }
}

/// Books tagged `book:{id}`, a review that purges its book's tag, and a handler that never
/// answers.
fn catalogue(reads: &Reads) -> Router {
    let reads = reads.clone();
    Router::new()
        .route(
            "/books/{id}",
            get(move |Path(id): Path<u32>| {
                reads.0.fetch_add(1, SeqCst);
                async move { (Extension(CacheTags::new([format!("book:{id}")])), book_text(id)) }
            }),
        )
        .route(
            "/books/{id}/reviews",
            post(|Path(id): Path<u32>| async move {
                (StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
            }),
        )
        .route("/slow", get(std::future::pending::<&'static str>))
}

/// Where the layers are put.
#[derive(Debug, Clone, Copy)]
enum Place {
    Layer,
    RouteLayer,
    Nested,
    /// Around the whole Router, put back in a Router, served by `axum::serve` on a loopback
    /// port.
    ServedInRouter,
    /// Around the whole Router, served by `axum::serve` on a loopback port as it is.
    Served,
}

impl Place {
    const ALL: [Place; 5] = [
        Place::Layer,
        Place::RouteLayer,
        Place::Nested,
        Place::ServedInRouter,
        Place::Served,
    ];
}

/// Where the tower-http layer sits among `CacheLayer` (outermost of the two, as in the
/// README) and `InvalidateLayer`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Position {
    /// Outside both.
    Outside,
    /// Inside `CacheLayer`, outside `InvalidateLayer`.
    Between,
    /// Inside both, next to the routes.
    Inside,
}

/// What a client got.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }

    fn is_hit(&self) -> bool {
        self.header("cache-status").is_some_and(|s| s.contains("; hit"))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    /// The body, gunzipped.
    fn gunzipped(&self) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&self.body[..])
            .read_to_string(&mut text)
            .expect("a gzip body");
        text
    }
}

enum Client {
    /// Each request goes through a fresh clone of the Router, in process.
    InProcess(Router),
    /// Each request goes over its own loopback connection.
    Network { addr: SocketAddr, server: JoinHandle<()> },
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Client::Network { server, .. } = self {
            server.abort();
        }
    }
}

impl Client {
    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "shop.test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match self {
            Client::InProcess(router) => {
                let request = request.body(Body::empty()).expect("valid request");
                let response = within(router.clone().oneshot(request)).await.expect("infallible");
                let (head, body) = response.into_parts();
                let body = within(body.collect()).await.expect("a whole body").to_bytes();
                Reply {
                    status: head.status,
                    headers: head.headers,
                    body,
                }
            }
            Client::Network { addr, .. } => {
                let request = request.body(Empty::<Bytes>::new()).expect("valid request");
                let mut connection = Connection::open(*addr).await;
                let response = within(connection.sender.send_request(request))
                    .await
                    .expect("a response");
                let (head, body) = response.into_parts();
                let body = within(body.collect()).await.expect("a whole body").to_bytes();
                connection.close().await;
                Reply {
                    status: head.status,
                    headers: head.headers,
                    body,
                }
            }
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers).await
    }
}

/// Serves `app` on a loopback port.
async fn served<M, S>(app: M) -> Client
where
    M: for<'a> Service<IncomingStream<'a, TcpListener>, Error = Infallible, Response = S> + Send + 'static,
    for<'a> <M as Service<IncomingStream<'a, TcpListener>>>::Future: Send,
    S: Service<axum::extract::Request, Response = axum::response::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the server runs");
    });
    Client::Network { addr, server }
}

/// One arrangement under test.
struct At {
    client: Client,
    reads: Reads,
    place: Place,
    position: Position,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}, {:?}", self.place, self.position)
    }
}

impl At {
    /// `path` where the catalogue is mounted.
    fn path(&self, path: &str) -> String {
        match self.place {
            Place::Nested => format!("/api{path}"),
            _ => path.to_string(),
        }
    }

    /// Whether the tower-http layer sees only what reaches the origin.
    fn inside_cache(&self) -> bool {
        self.position != Position::Outside
    }
}

/// The layers in `$position`, over a fresh store, in every place; then `$check` on each.
/// `$layer` makes the tower-http layer (once per place).
macro_rules! in_every_place {
    ($position:ident, $layer:expr, |$at:ident| $check:expr) => {
        for place in Place::ALL {
            let store = MemoryStore::new();
            let cache = CacheLayer::new(store.clone());
            let invalidate = InvalidateLayer::new(store);
            let layer = $layer;
            let stack = in_every_place!(@stack $position, layer, cache, invalidate);
            let reads = Reads::default();
            let router = catalogue(&reads);
            let client = match place {
                Place::Layer => Client::InProcess(router.layer(stack)),
                Place::RouteLayer => Client::InProcess(router.route_layer(stack)),
                Place::Nested => Client::InProcess(Router::new().nest("/api", router.layer(stack))),
                // The two ways the README shows.
                Place::ServedInRouter => served(Router::new().fallback_service(stack.service(router))).await,
                Place::Served => {
                    let app = ServiceBuilder::new()
                        .map_response(|response: http::Response<_>| response.map(Body::new))
                        .layer(stack)
                        .service(router);
                    served(axum::ServiceExt::<axum::extract::Request>::into_make_service(app)).await
                }
            };
            let $at = &At {
                client,
                reads,
                place,
                position: Position::$position,
            };
            caches_and_purges($at).await;
            $check.await;
        }
    };
    (@stack Outside, $layer:ident, $cache:ident, $invalidate:ident) => {
        ServiceBuilder::new().layer($layer).layer($cache).layer($invalidate)
    };
    (@stack Between, $layer:ident, $cache:ident, $invalidate:ident) => {
        ServiceBuilder::new().layer($cache).layer($layer).layer($invalidate)
    };
    (@stack Inside, $layer:ident, $cache:ident, $invalidate:ident) => {
        ServiceBuilder::new().layer($cache).layer($invalidate).layer($layer)
    };
}

/// A read is stored and then answered from the cache; a review purges it.
async fn caches_and_purges(at: &At) {
    let book = at.path("/books/1");
    let before = at.reads.count();
    let miss = at.client.get(&book, &[]).await;
    assert_eq!((miss.status, miss.text()), (StatusCode::OK, &*book_text(1)), "{at}");
    assert!(!miss.is_hit(), "{at}");
    let hit = at.client.get(&book, &[]).await;
    assert_eq!(hit.text(), book_text(1), "{at}");
    assert!(hit.is_hit(), "{at}: {:?}", hit.header("cache-status"));
    assert_eq!(at.reads.count(), before + 1, "{at}: one origin read");

    let review = at.client.send(Method::POST, &at.path("/books/1/reviews"), &[]).await;
    assert_eq!(review.status, StatusCode::CREATED, "{at}");
    let after = at.client.get(&book, &[]).await;
    assert_eq!(after.text(), book_text(1), "{at}");
    assert!(!after.is_hit(), "{at}: the review purged the book");
    assert_eq!(at.reads.count(), before + 2, "{at}");
}

/// A gzip client gets gzip and a client that did not ask for it gets the plain bytes, from
/// the origin and from the cache alike.
async fn each_client_gets_its_encoding(at: &At) {
    let book = at.path("/books/2");
    let before = at.reads.count();
    for round in 0..2 {
        let gzip = at.client.get(&book, &[("accept-encoding", "gzip")]).await;
        assert_eq!(gzip.header("content-encoding"), Some("gzip"), "{at}, round {round}");
        assert_eq!(gzip.gunzipped(), book_text(2), "{at}");
        assert_eq!(gzip.is_hit(), round == 1, "{at}, round {round}");
        let vary = gzip.header("vary").unwrap_or_default().to_ascii_lowercase();
        assert!(vary.contains("accept-encoding"), "{at}: vary {vary:?}");

        // No header, only identity, and gzip refused (`q=0`: its own variant, not gzip's).
        let plain_clients = [
            &[][..],
            &[("accept-encoding", "identity")],
            &[("accept-encoding", "gzip;q=0")],
        ];
        for asked in plain_clients {
            let plain = at.client.get(&book, asked).await;
            assert_eq!(plain.header("content-encoding"), None, "{at}, {asked:?}, round {round}");
            assert_eq!(plain.text(), book_text(2), "{at}, {asked:?}, round {round}");
            assert_eq!(plain.is_hit(), round == 1 || !at.inside_cache(), "{at}, {asked:?}");
        }
    }
    // Outside, one stored body is compressed per response; inside, each `Accept-Encoding`
    // value (gzip, none, identity, gzip;q=0) selects its own stored variant.
    let variants = if at.inside_cache() { 4 } else { 1 };
    assert_eq!(at.reads.count(), before + variants, "{at}");
}

/// A handler that never answers gets a 408, whichever side of the cache the timeout is on.
async fn a_slow_handler_times_out(at: &At) {
    let slow = at.client.get(&at.path("/slow"), &[]).await;
    assert_eq!(slow.status, StatusCode::REQUEST_TIMEOUT, "{at}");
    let status = slow.header("cache-status");
    if at.inside_cache() {
        // The cache passed the timeout's answer on, and did not keep it.
        let status = status.unwrap_or_default();
        assert!(
            status.contains("; fwd=") && !status.contains("stored"),
            "{at}: {status}"
        );
    } else {
        assert_eq!(status, None, "{at}: answered outside the cache");
    }
}

/// Tracing outside the cache sees every response; inside, only those from the origin.
async fn traced(seen: &AtomicUsize, at: &At) {
    let book = at.path("/books/2");
    let before = seen.load(SeqCst);
    at.client.get(&book, &[]).await;
    let hit = at.client.get(&book, &[]).await;
    assert!(hit.is_hit(), "{at}");
    let traced = if at.inside_cache() { 1 } else { 2 };
    assert_eq!(seen.load(SeqCst) - before, traced, "{at}");
}

const ALLOWED: &str = "https://shop.test";

/// CORS headers are right for each origin, including from the cache, which never gives one
/// origin's `Access-Control-Allow-Origin` to another.
async fn cors_headers_follow_the_origin(at: &At) {
    let book = at.path("/books/2");
    let before = at.reads.count();
    for round in 0..2 {
        let allowed = at.client.get(&book, &[("origin", ALLOWED)]).await;
        assert_eq!(allowed.header("access-control-allow-origin"), Some(ALLOWED), "{at}");
        assert_eq!(allowed.text(), book_text(2), "{at}");
        assert_eq!(allowed.is_hit(), round == 1, "{at}, round {round}");
        for other in [&[("origin", "https://elsewhere.test")][..], &[]] {
            let reply = at.client.get(&book, other).await;
            assert_eq!(reply.header("access-control-allow-origin"), None, "{at}, {other:?}");
            assert_eq!(reply.text(), book_text(2), "{at}");
            assert_eq!(reply.is_hit(), round == 1 || !at.inside_cache(), "{at}, {other:?}");
        }
    }
    // Inside, the `Vary: origin` that CorsLayer adds keeps one variant per `Origin` (allowed,
    // another, none).
    let variants = if at.inside_cache() { 3 } else { 1 };
    assert_eq!(at.reads.count(), before + variants, "{at}");
}

fn cors() -> CorsLayer {
    CorsLayer::new().allow_origin([http::HeaderValue::from_static(ALLOWED)])
}

fn timeout() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, TIMEOUT)
}

/// A trace layer that counts the responses it sees into `seen`.
macro_rules! counting_trace {
    ($seen:expr) => {{
        let seen = $seen.clone();
        TraceLayer::new_for_http().on_response(move |_: &http::Response<_>, _: Duration, _: &tracing::Span| {
            seen.fetch_add(1, SeqCst);
        })
    }};
}

#[tokio::test]
async fn compression_outside_both() {
    in_every_place!(Outside, CompressionLayer::new(), |at| each_client_gets_its_encoding(at));
}

#[tokio::test]
async fn compression_between() {
    in_every_place!(Between, CompressionLayer::new(), |at| each_client_gets_its_encoding(at));
}

#[tokio::test]
async fn compression_inside_both() {
    in_every_place!(Inside, CompressionLayer::new(), |at| each_client_gets_its_encoding(at));
}

#[tokio::test]
async fn timeout_outside_both() {
    in_every_place!(Outside, timeout(), |at| a_slow_handler_times_out(at));
}

#[tokio::test]
async fn timeout_between() {
    in_every_place!(Between, timeout(), |at| a_slow_handler_times_out(at));
}

#[tokio::test]
async fn timeout_inside_both() {
    in_every_place!(Inside, timeout(), |at| a_slow_handler_times_out(at));
}

#[tokio::test]
async fn trace_outside_both() {
    let seen = Arc::new(AtomicUsize::new(0));
    in_every_place!(Outside, counting_trace!(seen), |at| traced(&seen, at));
}

#[tokio::test]
async fn trace_between() {
    let seen = Arc::new(AtomicUsize::new(0));
    in_every_place!(Between, counting_trace!(seen), |at| traced(&seen, at));
}

#[tokio::test]
async fn trace_inside_both() {
    let seen = Arc::new(AtomicUsize::new(0));
    in_every_place!(Inside, counting_trace!(seen), |at| traced(&seen, at));
}

#[tokio::test]
async fn cors_outside_both() {
    in_every_place!(Outside, cors(), |at| cors_headers_follow_the_origin(at));
}

#[tokio::test]
async fn cors_between() {
    in_every_place!(Between, cors(), |at| cors_headers_follow_the_origin(at));
}

#[tokio::test]
async fn cors_inside_both() {
    in_every_place!(Inside, cors(), |at| cors_headers_follow_the_origin(at));
}

/// The combination a `Default` body makes possible: a timeout around the cache in one
/// `ServiceBuilder`, the whole stack around a Router.
#[tokio::test]
async fn a_timeout_around_the_cache_in_one_service_builder() {
    let reads = Reads::default();
    let app = catalogue(&reads).layer(
        ServiceBuilder::new()
            .layer(timeout())
            .layer(CacheLayer::new(MemoryStore::new())),
    );
    let client = Client::InProcess(app);
    assert_eq!(client.get("/slow", &[]).await.status, StatusCode::REQUEST_TIMEOUT);
    client.get("/books/3", &[]).await;
    assert!(client.get("/books/3", &[]).await.is_hit());
    assert_eq!(reads.count(), 1);
}
