//! gRPC through a real tonic server and client over loopback: hits replay misses exactly,
//! errors and streams are never stored, mutations invalidate, oversized requests bypass
//! intact, and keys follow the message, the encoding and the chosen metadata.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
#[path = "../examples/grpc/catalog.rs"]
mod catalog;

use bytes::Bytes;
use catalog::catalog_client::CatalogClient;
use catalog::catalog_server::{Catalog, CatalogServer};
use catalog::{AddReviewReply, AddReviewRequest, Book, GetBookRequest, ListBooksRequest, Review};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::codegen::tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tower::util::MapResponseLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_response_cache::{
    CacheLayer, CacheLayerBuilder, GrpcMethod, GrpcMethods, GrpcRequest, InvalidateLayer, MemoryStore,
};

/// The longest any network step may take; past it the test has hung.
const WAIT: Duration = Duration::from_secs(5);

const GET_BOOK: &str = "/catalog.Catalog/GetBook";
const LIST_BOOKS: &str = "/catalog.Catalog/ListBooks";
const ADD_REVIEW: &str = "/catalog.Catalog/AddReview";

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("the network answered in time")
}

// ---------------------------------------------------------------- the service

/// The catalogue: books in memory, counted calls, and switches for failures.
#[derive(Clone)]
struct Library {
    books: Arc<Mutex<BTreeMap<u32, Book>>>,
    get_book_calls: Arc<AtomicUsize>,
    list_books_calls: Arc<AtomicUsize>,
    /// The padding length of the last GetBook request, as the service decoded it.
    last_padding: Arc<AtomicUsize>,
    unavailable: Arc<AtomicBool>,
}

impl Library {
    fn new() -> Self {
        let book = |id: u32, title: &str, author: &str| Book {
            id,
            title: title.into(),
            author: author.into(),
            reviews: Vec::new(),
        };
        let books = [book(1, "Dune", "Frank Herbert"), book(2, "Emma", "Jane Austen")];
        Library {
            books: Arc::new(Mutex::new(books.into_iter().map(|b| (b.id, b)).collect())),
            get_book_calls: Arc::default(),
            list_books_calls: Arc::default(),
            last_padding: Arc::default(),
            unavailable: Arc::default(),
        }
    }

    fn get_book_calls(&self) -> usize {
        self.get_book_calls.load(SeqCst)
    }
}

#[tonic::async_trait]
impl Catalog for Library {
    async fn get_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        self.get_book_calls.fetch_add(1, SeqCst);
        if self.unavailable.load(SeqCst) {
            return Err(Status::unavailable("the shelves are being dusted"));
        }
        let GetBookRequest { id, padding } = request.into_inner();
        self.last_padding.store(padding.len(), SeqCst);
        let book = self.books.lock().unwrap().get(&id).cloned();
        let mut response = Response::new(book.ok_or_else(|| Status::not_found(format!("no book {id}")))?);
        response
            .metadata_mut()
            .insert("x-served-by", "library".parse().unwrap());
        Ok(response)
    }

    type ListBooksStream = Pin<Box<dyn Stream<Item = Result<Book, Status>> + Send>>;

    async fn list_books(&self, _: Request<ListBooksRequest>) -> Result<Response<Self::ListBooksStream>, Status> {
        self.list_books_calls.fetch_add(1, SeqCst);
        let books: Vec<Result<Book, Status>> = self.books.lock().unwrap().values().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(futures_util::stream::iter(books))))
    }

    async fn add_review(&self, request: Request<AddReviewRequest>) -> Result<Response<AddReviewReply>, Status> {
        let AddReviewRequest { book_id, review } = request.into_inner();
        let mut books = self.books.lock().unwrap();
        let book = books
            .get_mut(&book_id)
            .ok_or_else(|| Status::not_found(format!("no book {book_id}")))?;
        book.reviews.push(review.unwrap_or_default());
        Ok(Response::new(AddReviewReply {
            reviews: book.reviews.len() as u32,
        }))
    }
}

/// Adds custom trailing metadata to every response with trailers, as some servers do
/// (tonic handlers cannot), so that its replay is tested too.
fn add_trailer(response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    response.map(|body| {
        tonic::body::Body::new(body.map_frame(|frame: Frame<Bytes>| match frame.into_trailers() {
            Ok(mut trailers) => {
                trailers.insert("x-checksum", "c0ffee".parse().unwrap());
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

// ---------------------------------------------------------------- tags

fn book_tags(request: &GrpcRequest<'_>) -> Vec<String> {
    match request.message().map(GetBookRequest::decode) {
        Some(Ok(get)) => vec![format!("book:{}", get.id), "books".into()],
        _ => vec!["books".into()],
    }
}

fn review_tags(request: &GrpcRequest<'_>) -> Vec<String> {
    match request.message().map(AddReviewRequest::decode) {
        Some(Ok(add)) => vec![format!("book:{}", add.book_id)],
        _ => vec!["books".into()],
    }
}

/// GetBook cached for a minute and tagged by book, AddReview invalidating its book.
fn catalog_methods() -> GrpcMethods {
    GrpcMethods::new()
        .request_body(tonic::body::Body::new)
        .method(GET_BOOK, GrpcMethod::ttl(Duration::from_secs(60)).tags(book_tags))
        .method(ADD_REVIEW, GrpcMethod::mutation().tags(review_tags))
}

// ---------------------------------------------------------------- the harness

/// A catalogue behind the layers on a loopback port; the server stops when it is dropped.
struct Harness {
    addr: std::net::SocketAddr,
    library: Library,
    cache: CacheLayer<MemoryStore>,
    invalidate: InvalidateLayer<MemoryStore>,
    server: JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Which layer the requests meet first: they only meet in the store, so either works.
#[derive(Clone, Copy, Debug)]
enum Outermost {
    Invalidate,
    Cache,
}

async fn start(methods: GrpcMethods) -> Harness {
    start_with(methods, |builder| builder).await
}

async fn start_with(
    methods: GrpcMethods,
    configure: impl FnOnce(CacheLayerBuilder<MemoryStore>) -> CacheLayerBuilder<MemoryStore>,
) -> Harness {
    start_ordered(methods, configure, Outermost::Invalidate).await
}

async fn start_ordered(
    methods: GrpcMethods,
    configure: impl FnOnce(CacheLayerBuilder<MemoryStore>) -> CacheLayerBuilder<MemoryStore>,
    outermost: Outermost,
) -> Harness {
    let store = MemoryStore::new();
    let cache = configure(CacheLayer::builder(store.clone()).grpc(methods.clone())).build();
    let invalidate = InvalidateLayer::builder(store).grpc(methods).build();
    let library = Library::new();
    let service = CatalogServer::new(library.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let incoming = TcpIncoming::from(listener);
    let server = match outermost {
        Outermost::Invalidate => {
            let router = Server::builder()
                .layer(invalidate.clone())
                .layer(cache.clone())
                .layer(MapResponseLayer::new(add_trailer))
                .add_service(service);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.expect("the server runs") })
        }
        Outermost::Cache => {
            let router = Server::builder()
                .layer(cache.clone())
                .layer(invalidate.clone())
                .layer(MapResponseLayer::new(add_trailer))
                .add_service(service);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.expect("the server runs") })
        }
    };
    Harness {
        addr,
        library,
        cache,
        invalidate,
        server,
    }
}

impl Harness {
    async fn client(&self) -> CatalogClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a valid address")
            .connect_timeout(WAIT)
            .timeout(WAIT);
        CatalogClient::new(within(channel.connect()).await.expect("connected"))
    }
}

fn get(id: u32) -> GetBookRequest {
    GetBookRequest {
        id,
        padding: Vec::new(),
    }
}

async fn get_book(
    client: &mut CatalogClient<Channel>,
    request: impl tonic::IntoRequest<GetBookRequest>,
) -> Response<Book> {
    within(client.get_book(request)).await.expect("GetBook succeeds")
}

fn cache_status(metadata: &MetadataMap) -> &str {
    metadata
        .get("cache-status")
        .expect("every call carries cache-status")
        .to_str()
        .expect("ASCII")
}

/// The metadata (trailers included, as tonic merges them) that the cache may not change:
/// everything but its own `cache-status` and `age`, and the server's `date`.
fn comparable(metadata: &MetadataMap) -> HeaderMap {
    let mut headers = metadata.clone().into_headers();
    for name in ["cache-status", "age", "date"] {
        headers.remove(name);
    }
    headers
}

fn assert_stored_miss(metadata: &MetadataMap) {
    let status = cache_status(metadata);
    assert!(
        status.contains("fwd=miss") && status.contains("; stored"),
        "not a stored miss: {status}"
    );
    assert!(metadata.get("age").is_none());
}

fn assert_hit(metadata: &MetadataMap) {
    let status = cache_status(metadata);
    assert!(
        status.starts_with("tower-response-cache; hit; ttl="),
        "not a hit: {status}"
    );
    assert!(metadata.get("age").is_some(), "a hit carries age");
}

fn assert_not_stored(metadata: &MetadataMap, detail: &str) {
    let status = cache_status(metadata);
    assert!(!status.contains("; hit") && !status.contains("; stored"), "{status}");
    assert!(
        status.ends_with(&format!("detail={detail}")),
        "expected detail={detail}: {status}"
    );
}

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn hit_and_miss_return_identical_messages_metadata_and_trailers() {
    let harness = start(catalog_methods()).await;
    let mut client = harness.client().await;

    let miss = get_book(&mut client, get(1)).await;
    assert_stored_miss(miss.metadata());
    let hit = get_book(&mut client, get(1)).await;
    assert_hit(hit.metadata());

    assert_eq!(hit.get_ref(), miss.get_ref());
    assert_eq!(miss.get_ref().title, "Dune");
    assert_eq!(comparable(hit.metadata()), comparable(miss.metadata()));
    // Initial metadata, and the trailing metadata tonic merged in.
    assert_eq!(hit.metadata().get("x-served-by").unwrap(), "library");
    assert_eq!(hit.metadata().get("x-checksum").unwrap(), "c0ffee");
    assert!(
        hit.metadata().get("content-length").is_none(),
        "a hit is framed like a miss"
    );
    assert_eq!(harness.library.get_book_calls(), 1);
    let stats = harness.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 1, 1));
}

/// The same, in process: the replayed body and trailers are the very bytes of the miss.
#[tokio::test]
async fn hits_replay_the_body_and_trailers_byte_for_byte() {
    let library = Library::new();
    let service = ServiceBuilder::new()
        .layer(CacheLayer::builder(MemoryStore::new()).grpc(catalog_methods()).build())
        .layer(MapResponseLayer::new(add_trailer))
        .service(CatalogServer::new(library.clone()));
    let call = || {
        let mut frame = vec![0u8];
        let message = get(2).encode_to_vec();
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let body = tonic::body::Body::new(http_body_util::Full::new(Bytes::from(frame)));
        let request = http::Request::post(GET_BOOK)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let service = service.clone();
        async move {
            let response = within(service.oneshot(request)).await.expect("answered");
            let (mut parts, body) = response.into_parts();
            let body = within(body.collect()).await.expect("a complete body");
            let trailers = body.trailers().cloned();
            for name in ["cache-status", "age"] {
                parts.headers.remove(name);
            }
            (parts.status, parts.headers, body.to_bytes(), trailers)
        }
    };
    let miss = call().await;
    let hit = call().await;
    assert_eq!(library.get_book_calls(), 1, "the second call was a hit");
    assert_eq!(hit, miss);
    let trailers = miss.3.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-checksum"], "c0ffee");
    assert_eq!(Book::decode(&miss.2[5..]).unwrap().title, "Emma");
}

#[tokio::test]
async fn an_error_status_is_never_cached() {
    let harness = start(catalog_methods()).await;
    let mut client = harness.client().await;
    for _ in 0..2 {
        let error = within(client.get_book(get(404))).await.expect_err("no such book");
        assert_eq!(error.code(), Code::NotFound);
        assert_eq!(error.message(), "no book 404");
        assert_not_stored(error.metadata(), "grpc-status");
    }
    assert_eq!(harness.library.get_book_calls(), 2, "both errors came from the service");
    assert_eq!(harness.cache.stats().stores, 0);
}

#[tokio::test]
async fn a_streaming_method_is_never_cached() {
    // Opted in by a predicate that (wrongly) matches the stream too.
    let methods = GrpcMethods::new().request_body(tonic::body::Body::new).matching(
        |path| [GET_BOOK, LIST_BOOKS].contains(&path),
        GrpcMethod::ttl(Duration::from_secs(60)),
    );
    let harness = start(methods).await;
    let mut client = harness.client().await;
    for _ in 0..2 {
        let response = within(client.list_books(ListBooksRequest {})).await.expect("ListBooks");
        assert_not_stored(response.metadata(), "streaming");
        let books: Vec<Book> = within(response.into_inner().collect::<Result<Vec<_>, _>>())
            .await
            .expect("the whole stream");
        let titles: Vec<&str> = books.iter().map(|b| b.title.as_str()).collect();
        assert_eq!(titles, ["Dune", "Emma"]);
    }
    assert_eq!(harness.library.list_books_calls.load(SeqCst), 2);

    // Not opted in: passed through untouched.
    let harness = start(catalog_methods()).await;
    let mut client = harness.client().await;
    for _ in 0..2 {
        let response = within(client.list_books(ListBooksRequest {})).await.expect("ListBooks");
        assert_not_stored(response.metadata(), "method");
        let books = within(response.into_inner().collect::<Result<Vec<_>, _>>())
            .await
            .unwrap();
        assert_eq!(books.len(), 2);
    }
    assert_eq!(harness.library.list_books_calls.load(SeqCst), 2);
    assert_eq!(harness.cache.stats().stores, 0);
}

#[tokio::test]
async fn a_mutation_invalidates_what_it_changed() {
    for outermost in [Outermost::Invalidate, Outermost::Cache] {
        mutation_invalidates(outermost).await;
    }
}

async fn mutation_invalidates(outermost: Outermost) {
    let harness = start_ordered(catalog_methods(), |builder| builder, outermost).await;
    let mut client = harness.client().await;
    get_book(&mut client, get(1)).await;
    get_book(&mut client, get(2)).await;
    assert_hit(get_book(&mut client, get(1)).await.metadata());

    let review = AddReviewRequest {
        book_id: 1,
        review: Some(Review {
            stars: 4,
            text: "sandy".into(),
        }),
    };
    let added = within(client.add_review(review)).await.expect("AddReview succeeds");
    assert_eq!(added.get_ref().reviews, 1);
    assert_eq!(harness.invalidate.stats().purges, 1);

    let after = get_book(&mut client, get(1)).await;
    let status = cache_status(after.metadata());
    assert!(
        status.contains("fwd=miss") && status.contains("detail=invalidated"),
        "{status}"
    );
    assert_eq!(after.get_ref().reviews.len(), 1, "the fresh answer has the review");
    assert_hit(get_book(&mut client, get(1)).await.metadata());
    assert_hit(get_book(&mut client, get(2)).await.metadata());

    // A failed mutation purges nothing.
    let missing = AddReviewRequest {
        book_id: 404,
        review: None,
    };
    let error = within(client.add_review(missing)).await.expect_err("no such book");
    assert_eq!(error.code(), Code::NotFound);
    assert_hit(get_book(&mut client, get(1)).await.metadata());
    let stats = harness.invalidate.stats();
    assert_eq!((stats.purges, stats.skipped), (1, 1));
    // Reads are not mutations: no GetBook purged its own path.
    assert_eq!(stats.tags_purged, 1);
}

#[tokio::test]
async fn an_oversized_request_bypasses_and_arrives_intact() {
    let harness = start(catalog_methods().max_message_bytes(1024)).await;
    let mut client = harness.client().await;
    let large = || GetBookRequest {
        id: 1,
        padding: vec![0xA5; 4096],
    };
    for _ in 0..2 {
        let response = get_book(&mut client, large()).await;
        assert_not_stored(response.metadata(), "request-too-large");
        assert_eq!(response.get_ref().title, "Dune");
        assert_eq!(
            harness.library.last_padding.load(SeqCst),
            4096,
            "the whole message arrived"
        );
    }
    assert_eq!(harness.library.get_book_calls(), 2);
    // Small requests are still cached.
    get_book(&mut client, get(1)).await;
    assert_hit(get_book(&mut client, get(1)).await.metadata());
}

#[tokio::test]
async fn different_request_messages_get_different_entries() {
    let harness = start(catalog_methods()).await;
    let mut client = harness.client().await;
    let one = get_book(&mut client, get(1)).await;
    let two = get_book(&mut client, get(2)).await;
    assert_stored_miss(one.metadata());
    assert_stored_miss(two.metadata());
    assert_eq!(
        (one.get_ref().title.as_str(), two.get_ref().title.as_str()),
        ("Dune", "Emma")
    );
    let again = get_book(&mut client, get(1)).await;
    assert_hit(again.metadata());
    assert_eq!(again.get_ref().title, "Dune");
    let padded = GetBookRequest {
        id: 1,
        padding: vec![1],
    };
    assert_stored_miss(get_book(&mut client, padded).await.metadata());
    assert_eq!(harness.library.get_book_calls(), 3);
}

#[tokio::test]
async fn grpc_encoding_is_keyed() {
    let harness = start(catalog_methods()).await;
    let plain = harness.client().await;
    let mut accepts_gzip = plain.clone().accept_compressed(CompressionEncoding::Gzip);
    let mut sends_gzip = plain.clone().send_compressed(CompressionEncoding::Gzip);
    let mut plain = plain;

    let gzipped = get_book(&mut accepts_gzip, get(1)).await;
    assert_stored_miss(gzipped.metadata());
    assert_eq!(gzipped.metadata().get("grpc-encoding").unwrap(), "gzip");

    // A client that cannot read gzip must not be given the gzip entry.
    let identity = get_book(&mut plain, get(1)).await;
    assert_stored_miss(identity.metadata());
    assert!(identity.metadata().get("grpc-encoding").is_none());
    assert_eq!(identity.get_ref(), gzipped.get_ref());

    let hit = get_book(&mut plain, get(1)).await;
    assert_hit(hit.metadata());
    assert!(hit.metadata().get("grpc-encoding").is_none());
    let hit = get_book(&mut accepts_gzip, get(1)).await;
    assert_hit(hit.metadata());
    assert_eq!(hit.metadata().get("grpc-encoding").unwrap(), "gzip");
    assert_eq!(hit.get_ref(), gzipped.get_ref());

    // A compressed request message is its own entry.
    assert_stored_miss(get_book(&mut sends_gzip, get(1)).await.metadata());
    assert_hit(get_book(&mut sends_gzip, get(1)).await.metadata());
    assert_eq!(harness.library.get_book_calls(), 3);
}

#[tokio::test]
async fn chosen_metadata_and_identity_select_entries() {
    let methods = catalog_methods().vary_metadata(["x-tenant"]);
    let harness = start_with(methods, |builder| {
        builder.vary_by_identity(|parts| {
            let token = parts.headers.get("authorization")?.to_str().ok()?;
            token.strip_prefix("Bearer ").map(str::to_owned)
        })
    })
    .await;
    let mut client = harness.client().await;
    let with = |tenant: Option<&str>, token: Option<&str>| {
        let mut request = Request::new(get(1));
        if let Some(tenant) = tenant {
            request.metadata_mut().insert("x-tenant", tenant.parse().unwrap());
        }
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    assert_stored_miss(get_book(&mut client, with(Some("a"), None)).await.metadata());
    assert_stored_miss(get_book(&mut client, with(Some("b"), None)).await.metadata());
    assert_stored_miss(get_book(&mut client, with(None, None)).await.metadata());
    assert_hit(get_book(&mut client, with(Some("a"), None)).await.metadata());
    assert_stored_miss(get_book(&mut client, with(Some("a"), Some("alice"))).await.metadata());
    // Alice's answer is stored for her alone: bob misses the variant of his identity.
    let bob = get_book(&mut client, with(Some("a"), Some("bob"))).await;
    let status = cache_status(bob.metadata());
    assert!(
        status.contains("fwd=vary-miss") && status.contains("; stored"),
        "{status}"
    );
    assert_hit(get_book(&mut client, with(Some("a"), Some("alice"))).await.metadata());
    assert_eq!(harness.library.get_book_calls(), 5);
}

#[tokio::test]
async fn credentials_without_identity_bypass() {
    let harness = start(catalog_methods()).await;
    let mut client = harness.client().await;
    for _ in 0..2 {
        let mut request = Request::new(get(1));
        request
            .metadata_mut()
            .insert("authorization", "Bearer secret".parse().unwrap());
        assert_not_stored(get_book(&mut client, request).await.metadata(), "credentials");
    }
    assert_eq!(harness.library.get_book_calls(), 2);
}

#[tokio::test]
async fn without_a_request_body_type_opted_in_calls_bypass() {
    let methods = GrpcMethods::new().method(GET_BOOK, GrpcMethod::ttl(Duration::from_secs(60)));
    let harness = start(methods).await;
    let mut client = harness.client().await;
    for _ in 0..2 {
        let response = get_book(&mut client, get(1)).await;
        assert_not_stored(response.metadata(), "request-body");
        assert_eq!(response.get_ref().title, "Dune");
    }
    assert_eq!(harness.library.get_book_calls(), 2);
}

#[tokio::test]
async fn a_stale_entry_answers_for_an_unavailable_server() {
    // Fresh for no time at all, so every call revisits the server; usable for a minute if it fails.
    let methods = GrpcMethods::new()
        .request_body(tonic::body::Body::new)
        .method(GET_BOOK, GrpcMethod::ttl(Duration::ZERO));
    let harness = start_with(methods, |b| b.stale_if_error(Duration::from_secs(60))).await;
    let mut client = harness.client().await;
    let stored = get_book(&mut client, get(1)).await;
    assert_stored_miss(stored.metadata());

    harness.library.unavailable.store(true, SeqCst);
    let stale = get_book(&mut client, get(1)).await;
    let status = cache_status(stale.metadata());
    assert!(
        status.contains("; hit") && status.contains("detail=stale-if-error"),
        "{status}"
    );
    assert_eq!(stale.get_ref(), stored.get_ref());
    assert_eq!(harness.library.get_book_calls(), 2, "the server was asked and failed");
}

/// A gRPC response built by hand: `headers`, then (unless trailers-only) one message and
/// `trailers`.
fn grpc_response(headers: &[(&str, &str)], trailers: Option<&[(&str, &str)]>) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::builder().header("content-type", "application/grpc");
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    let body = match trailers {
        None => tonic::body::Body::empty(),
        Some(trailers) => {
            let map: HeaderMap = trailers
                .iter()
                .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
                .collect();
            let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02\x08\x01"))),
                Ok(Frame::trailers(map)),
            ];
            tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
        }
    };
    response.body(body).unwrap()
}

#[tokio::test]
async fn grpc_success_is_judged_by_grpc_status_before_the_call_completes() {
    let invalidate = InvalidateLayer::new(MemoryStore::new());
    let service = ServiceBuilder::new()
        .layer(invalidate.clone())
        .service(tower::service_fn(
            |request: http::Request<tonic::body::Body>| async move {
                let response = match request.uri().path() {
                    "/x.X/TrailersOnlyOk" => {
                        grpc_response(&[("grpc-status", "0"), ("cache-group-invalidation", "\"a\"")], None)
                    }
                    "/x.X/TrailersOnlyError" => {
                        grpc_response(&[("grpc-status", "5"), ("cache-group-invalidation", "\"a\"")], None)
                    }
                    "/x.X/Unary" => grpc_response(
                        &[("cache-group-invalidation", "\"b\"")],
                        Some(&[("grpc-status", "0"), ("cache-group-invalidation", "\"c\"")]),
                    ),
                    "/x.X/UnaryError" => {
                        grpc_response(&[("cache-group-invalidation", "\"b\"")], Some(&[("grpc-status", "13")]))
                    }
                    _ => grpc_response(&[], Some(&[("grpc-status", "0")])),
                };
                Ok::<_, std::convert::Infallible>(response)
            },
        ));
    let call = |path: &'static str| {
        let service = service.clone();
        async move {
            let request = http::Request::post(path)
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::empty())
                .unwrap();
            within(service.oneshot(request)).await.unwrap()
        }
    };
    let stats = || {
        let s = invalidate.stats();
        (s.purges, s.tags_purged, s.skipped)
    };

    // Trailers-only: the status is in the headers, and the purge done by the time they are.
    call("/x.X/TrailersOnlyOk").await;
    assert_eq!(stats(), (1, 1, 0));
    call("/x.X/TrailersOnlyError").await;
    assert_eq!(stats(), (1, 1, 1));

    // A message then trailers: the purge waits for them, and the trailers wait for it.
    let response = call("/x.X/Unary").await;
    assert_eq!(stats(), (1, 1, 1), "success is not known before the trailers");
    let body = within(response.into_body().collect()).await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(stats(), (2, 3, 1), "b (headers) and c (trailers) purged");

    let response = call("/x.X/UnaryError").await;
    within(response.into_body().collect()).await.unwrap();
    assert_eq!(stats(), (2, 3, 2));

    // Neither a declared mutation nor naming anything: no purge, not even of its path.
    let response = call("/x.X/Plain").await;
    within(response.into_body().collect()).await.unwrap();
    assert_eq!(stats(), (2, 3, 2));
}

/// The code generated from `proto/catalog.proto` is committed (so that the example builds
/// without protoc); this checks it against a fresh generation with the vendored protoc.
#[test]
fn generated_code_matches_the_proto() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let committed = root.join("examples/grpc/catalog.rs");
    let out = std::env::temp_dir().join(format!("trc-grpc-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("a temporary directory");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("a vendored protoc"));
    tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &[root.join("proto/catalog.proto")], &[root.join("proto")])
        .expect("the proto compiles");
    let fresh = std::fs::read_to_string(out.join("catalog.rs")).expect("generated code");
    let _ = std::fs::remove_dir_all(&out);
    if std::env::var_os("REGENERATE_GRPC_CODE").is_some() {
        std::fs::write(&committed, &fresh).expect("the committed copy is writable");
    }
    let current = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        current == fresh,
        "examples/grpc/catalog.rs is out of date: run `REGENERATE_GRPC_CODE=1 cargo test --features grpc --test grpc generated_code`"
    );
}
