//! Caching unary gRPC calls of a tonic service, and invalidating them from a mutation.
//!
//! Run it with `cargo run --example grpc --features grpc` (no protoc needed: the code generated from
//! `proto/catalog.proto` is committed in `examples/grpc/catalog.rs`).
//!
//! A book catalogue (GetBook, ListBooks, AddReview) is served on a free loopback port behind
//! `CacheLayer` and `InvalidateLayer`, and called by a tonic client in the same process:
//! GetBook misses and is stored, hits, AddReview invalidates the book, and GetBook misses
//! again with the new review. The example checks each step and exits non-zero if one fails.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
#[path = "grpc/catalog.rs"]
mod catalog;

use catalog::catalog_client::CatalogClient;
use catalog::catalog_server::{Catalog, CatalogServer};
use catalog::{AddReviewReply, AddReviewRequest, Book, GetBookRequest, ListBooksRequest, Review};
use prost::Message as _;
use std::collections::BTreeMap;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codegen::tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tower_response_cache::{CacheLayer, GrpcMethod, GrpcMethods, GrpcRequest, InvalidateLayer, MemoryStore};

/// The longest any network step may take before the example gives up.
const WAIT: Duration = Duration::from_secs(5);

/// The catalogue: books in memory, and how often GetBook really ran.
#[derive(Clone)]
struct Library {
    books: Arc<Mutex<BTreeMap<u32, Book>>>,
    get_book_calls: Arc<AtomicUsize>,
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
        }
    }
}

#[tonic::async_trait]
impl Catalog for Library {
    async fn get_book(&self, request: Request<GetBookRequest>) -> Result<Response<Book>, Status> {
        self.get_book_calls.fetch_add(1, SeqCst);
        let id = request.get_ref().id;
        let book = self.books.lock().unwrap().get(&id).cloned();
        book.map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no book {id}")))
    }

    type ListBooksStream = Pin<Box<dyn Stream<Item = Result<Book, Status>> + Send>>;

    async fn list_books(&self, _: Request<ListBooksRequest>) -> Result<Response<Self::ListBooksStream>, Status> {
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

/// Entries of GetBook are tagged `book:<id>`, from the request message.
fn book_tags(request: &GrpcRequest<'_>) -> Vec<String> {
    match request.message().map(GetBookRequest::decode) {
        Some(Ok(get)) => vec![format!("book:{}", get.id)],
        _ => vec!["books".to_string()],
    }
}

/// A review changes its book: AddReview purges `book:<book_id>` once it succeeds.
fn review_tags(request: &GrpcRequest<'_>) -> Vec<String> {
    match request.message().map(AddReviewRequest::decode) {
        Some(Ok(add)) => vec![format!("book:{}", add.book_id)],
        // A compressed or unreadable request: purge every book rather than miss one.
        _ => vec!["books".to_string()],
    }
}

async fn within<F: Future>(what: &str, future: F) -> Result<F::Output, Box<dyn Error>> {
    tokio::time::timeout(WAIT, future)
        .await
        .map_err(|_| format!("{what} took more than {WAIT:?}").into())
}

/// Calls GetBook and returns the book with what the cache said.
async fn get_book(client: &mut CatalogClient<Channel>, id: u32) -> Result<(Book, String), Box<dyn Error>> {
    let request = GetBookRequest {
        id,
        padding: Vec::new(),
    };
    let response = within("GetBook", client.get_book(request)).await??;
    let status = response
        .metadata()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_string();
    Ok((response.into_inner(), status))
}

fn expect(ok: bool, what: &str) -> Result<(), Box<dyn Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let store = MemoryStore::new();
    // One description of the service's gRPC methods, for both layers.
    let grpc = GrpcMethods::new()
        .request_body(tonic::body::Body::new)
        .method(
            "/catalog.Catalog/GetBook",
            GrpcMethod::ttl(Duration::from_secs(60)).tags(book_tags),
        )
        .method("/catalog.Catalog/AddReview", GrpcMethod::mutation().tags(review_tags));
    let cache = CacheLayer::builder(store.clone()).grpc(grpc.clone()).build();
    let invalidate = InvalidateLayer::builder(store.clone()).grpc(grpc).build();

    let library = Library::new();
    let listener = within("bind", TcpListener::bind("127.0.0.1:0")).await??;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .layer(invalidate.clone())
        .layer(cache.clone())
        .add_service(CatalogServer::new(library.clone()))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        });
    let server = tokio::spawn(server);
    println!("catalogue on {addr}");

    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(WAIT)
        .timeout(WAIT)
        .connect()
        .await?;
    let mut client = CatalogClient::new(channel);

    let (first, status) = get_book(&mut client, 1).await?;
    println!("GetBook(1)   {:<13} {status}", "miss:");
    expect(
        status.contains("fwd=miss") && status.contains("stored"),
        "the first GetBook is a stored miss",
    )?;

    let (second, status) = get_book(&mut client, 1).await?;
    println!("GetBook(1)   {:<13} {status}", "hit:");
    expect(status.contains("; hit"), "the second GetBook is a hit")?;
    expect(second == first, "a hit decodes to the same book as the miss")?;
    expect(
        library.get_book_calls.load(SeqCst) == 1,
        "the hit did not reach the service",
    )?;

    let review = AddReviewRequest {
        book_id: 1,
        review: Some(Review {
            stars: 5,
            text: "Spice must flow".into(),
        }),
    };
    let added = within("AddReview", client.add_review(review)).await??.into_inner();
    let stats = invalidate.stats();
    println!(
        "AddReview(1) {:<13} {} tag purged (book:1); the book has {} review",
        "invalidation:", stats.tags_purged, added.reviews
    );
    expect(stats.purges == 1, "AddReview purged once")?;

    let (third, status) = get_book(&mut client, 1).await?;
    println!("GetBook(1)   {:<13} {status}", "miss:");
    expect(
        status.contains("fwd=miss") && status.contains("detail=invalidated"),
        "GetBook misses after the purge",
    )?;
    expect(third.reviews.len() == 1, "the fresh answer has the new review")?;
    expect(library.get_book_calls.load(SeqCst) == 2, "the miss reached the service")?;

    let stats = cache.stats();
    println!(
        "cache: {} hit, {} misses ({} invalidated), {} stores",
        stats.hits, stats.misses, stats.invalidated_misses, stats.stores
    );
    let _ = stop.send(());
    within("shutdown", server).await???;
    Ok(())
}
