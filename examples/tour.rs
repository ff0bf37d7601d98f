//! A tour of `tower-response-cache`: an axum book catalogue behind a `CacheLayer`.
//!
//! ```text
//! cargo run --release --example tour
//! ```
//!
//! serves the catalogue on a free loopback port, plays a scripted client against it and prints
//! what the cache did for each request: the top pages warmed before the server took traffic
//! (as after a deploy, and kept warm on an interval), a miss then a hit, HEAD answered from the cache, a
//! conditional request answered `304`, two users' private pages kept apart, a request with
//! `Authorization` that the cache neither answers nor stores, a review that invalidates its
//! book (and only its book), a burst of concurrent requests collapsed into one origin call, and
//! a stale answer served at once while one background request refreshes it. Every step checks
//! its outcome, so the tour exits non-zero if the cache misbehaves.
//!
//! ```text
//! cargo run --release --example tour -- --serve --addr 127.0.0.1:3000
//! ```
//!
//! keeps serving the same routes until Ctrl-C, for curl. The "database" sleeps 20 ms per
//! query, so hits stand out in the latency column.
//!
//! With `--features redis`, `--store redis://HOST:PORT` or `--store tiered+redis://HOST:PORT`
//! puts the cache in Redis: start two `--serve` instances on different ports against one Redis
//! and they share entries and see each other's purges.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower_response_cache::store::BoxStore;
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, KeepWarm, MemoryStore, RouteOverride};

/// What one database round trip costs.
const QUERY_LATENCY: Duration = Duration::from_millis(20);
/// The longest `/slow` will sleep.
const MAX_SLOW_MS: u64 = 10_000;
/// Who the caller is. A demo shortcut: a real app takes the identity from a verified token.
const USER_HEADER: &str = "x-user-id";
/// RFC 9875 cache groups: the tags by which entries can be purged.
const CACHE_GROUPS: HeaderName = HeaderName::from_static("cache-groups");
const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);
const USAGE: &str =
    "usage: tour [--serve [--addr 127.0.0.1:PORT]] [--store memory|redis://HOST:PORT|tiered+redis://HOST:PORT]";
/// Concurrent requests in the stampede step.
const BURST: usize = 50;
/// The pages kept warm from before the first request (after a deploy).
const TOP_PAGES: [&str; 3] = ["/books/top", "/books/3", "/books/4"];

// ---------------------------------------------------------------- the store

/// The store the tour runs on, chosen on the command line: `memory`, `redis://HOST:PORT` or
/// `tiered+redis://HOST:PORT`.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
async fn open_store(spec: &str, namespace: &str) -> Result<BoxStore, String> {
    let memory = || MemoryStore::builder().max_bytes(64 << 20).build();
    if spec == "memory" {
        return Ok(BoxStore::new(memory()));
    }
    #[cfg(feature = "redis")]
    {
        use tower_response_cache::store::{RedisStore, TieredStore};
        let (tiered, url) = match spec.strip_prefix("tiered+") {
            Some(url) => (true, url),
            None => (false, spec),
        };
        if url.starts_with("redis://") {
            let redis = RedisStore::builder(url)
                .namespace(namespace)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            return Ok(if tiered {
                BoxStore::new(TieredStore::new(memory(), redis))
            } else {
                BoxStore::new(redis)
            });
        }
    }
    Err(format!(
        "--store {spec}: expected memory, redis://HOST:PORT or tiered+redis://HOST:PORT (Redis needs --features redis)"
    ))
}

/// What the chosen store says about itself.
fn store_stats(store: &BoxStore) -> Value {
    if let Some(m) = store.downcast_ref::<MemoryStore>() {
        let s = m.stats();
        return json!({ "kind": "memory", "entries": s.entries, "bytes": s.bytes, "max_bytes": s.max_bytes,
                       "evictions": s.evictions, "tag_stamps": s.tag_stamps, "purges": s.purges });
    }
    #[cfg(feature = "redis")]
    {
        use tower_response_cache::store::{RedisStore, TieredStore};
        if let Some(r) = store.downcast_ref::<RedisStore>() {
            return json!({ "kind": "redis", "redis": format!("{:?}", r.stats()) });
        }
        if let Some(t) = store.downcast_ref::<TieredStore>() {
            return json!({ "kind": "tiered", "l1_entries": t.l1().stats().entries,
                "redis": format!("{:?}", t.l2().stats()), "sync": format!("{:?}", t.stats()) });
        }
    }
    json!({ "kind": "unknown" })
}

// ---------------------------------------------------------------- the "database"

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Book {
    id: u32,
    title: String,
    author: String,
    year: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Review {
    id: u64,
    book_id: u32,
    user: String,
    rating: u8,
    body: String,
}

/// A book as the API shows it: with its rating summary.
#[derive(Debug, Serialize)]
struct BookView {
    #[serde(flatten)]
    book: Book,
    avg_rating: Option<f64>,
    review_count: usize,
}

#[derive(Debug, Default)]
struct Tables {
    books: BTreeMap<u32, Book>,
    reviews: Vec<Review>,
    next_review_id: u64,
}

impl Tables {
    fn view(&self, book: &Book) -> BookView {
        let ratings: Vec<f64> = self
            .reviews
            .iter()
            .filter(|r| r.book_id == book.id)
            .map(|r| f64::from(r.rating))
            .collect();
        let mean = ratings.iter().sum::<f64>() / ratings.len() as f64;
        BookView {
            book: book.clone(),
            // Two decimals; no rating at all rather than NaN for an unreviewed book.
            avg_rating: (!ratings.is_empty()).then(|| (mean * 100.0).round() / 100.0),
            review_count: ratings.len(),
        }
    }

    /// Adds a review to a book; `None` if there is no such book.
    fn insert_review(&mut self, book_id: u32, new: NewReview) -> Option<Review> {
        self.books.get(&book_id)?;
        self.next_review_id += 1;
        let NewReview { user, rating, body } = new;
        let review = Review {
            id: self.next_review_id,
            book_id,
            user,
            rating,
            body,
        };
        self.reviews.push(review.clone());
        Some(review)
    }
}

/// An in-memory catalogue that costs a database round trip per query.
#[derive(Debug)]
struct Db {
    tables: Mutex<Tables>,
    reviews: ReviewLog,
}

/// Where reviews live: in this process, or in Redis, so that several tour instances serving
/// against one Redis also share their data.
#[derive(Default)]
enum ReviewLog {
    #[default]
    Local,
    #[cfg(feature = "redis")]
    Redis {
        connection: redis::aio::ConnectionManager,
        key: String,
    },
}

impl std::fmt::Debug for ReviewLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReviewLog::Local => f.write_str("Local"),
            #[cfg(feature = "redis")]
            ReviewLog::Redis { key, .. } => write!(f, "Redis({key})"),
        }
    }
}

impl Db {
    /// The catalogue for a `--store` spec: reviews in Redis when the cache is there too.
    async fn open(spec: &str, namespace: &str) -> Result<Self, String> {
        let db = Db::seeded();
        #[cfg(feature = "redis")]
        if let Some(url) = spec
            .strip_prefix("tiered+")
            .or(Some(spec))
            .filter(|s| s.starts_with("redis://"))
        {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut connection = client.get_connection_manager().await.map_err(|e| e.to_string())?;
            let key = format!("{namespace}:reviews");
            // The first instance seeds the shared reviews; the others find them there.
            let first: bool = redis::cmd("SET")
                .arg(format!("{namespace}:seeded"))
                .arg(1)
                .arg("NX")
                .query_async::<Option<String>>(&mut connection)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if first {
                let seeds: Vec<String> = db
                    .local()
                    .reviews
                    .iter()
                    .map(|r| serde_json::to_string(r).expect("json"))
                    .collect();
                let _: () = redis::cmd("RPUSH")
                    .arg(&key)
                    .arg(seeds)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return Ok(Db {
                reviews: ReviewLog::Redis { connection, key },
                ..db
            });
        }
        let _ = (spec, namespace);
        Ok(db)
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().expect("database lock poisoned")
    }

    fn seeded() -> Self {
        let books: Vec<Book> = serde_json::from_value(json!([
            { "id": 1, "title": "Designing Data-Intensive Applications", "author": "Martin Kleppmann", "year": 2017 },
            { "id": 2, "title": "The Pragmatic Programmer", "author": "David Thomas, Andrew Hunt", "year": 1999 },
            { "id": 3, "title": "Database Internals", "author": "Alex Petrov", "year": 2019 },
            { "id": 4, "title": "Crafting Interpreters", "author": "Robert Nystrom", "year": 2021 },
        ]))
        .expect("seed books are valid");
        let reviews: Vec<(u32, NewReview)> = serde_json::from_value(json!([
            [1, { "user": "alice", "rating": 5, "body": "The chapter on replication alone is worth it." }],
            [1, { "user": "bob", "rating": 4, "body": "Dense, but rewarding." }],
            [2, { "user": "alice", "rating": 4, "body": "Still good advice." }],
            [4, { "user": "carol", "rating": 5, "body": "Built my first interpreter with it." }],
        ]))
        .expect("seed reviews are valid");
        let mut tables = Tables::default();
        tables.books.extend(books.into_iter().map(|book| (book.id, book)));
        for (book_id, review) in reviews {
            tables.insert_review(book_id, review);
        }
        Db {
            tables: Mutex::new(tables),
            reviews: ReviewLog::Local,
        }
    }

    /// Runs a query after the round trip. The lock is taken after the sleep, never across it.
    async fn query<T>(&self, query: impl FnOnce(&mut Tables) -> T) -> T {
        tokio::time::sleep(QUERY_LATENCY).await;
        #[cfg(feature = "redis")]
        if let ReviewLog::Redis { connection, key } = &self.reviews {
            let mut connection = connection.clone();
            let rows: Vec<String> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await
                .unwrap_or_default();
            let reviews: Vec<Review> = rows.iter().filter_map(|r| serde_json::from_str(r).ok()).collect();
            let mut tables = self.local();
            tables.next_review_id = reviews.iter().map(|r| r.id).max().unwrap_or(0);
            tables.reviews = reviews;
        }
        query(&mut self.local())
    }

    /// Adds a review; `None` if there is no such book.
    async fn add_review(&self, book_id: u32, new: NewReview) -> Option<Review> {
        let review = self.query(|t| t.insert_review(book_id, new)).await?;
        #[cfg(feature = "redis")]
        if let ReviewLog::Redis { connection, key } = &self.reviews {
            let row = serde_json::to_string(&review).expect("a review serialises");
            let _: Result<(), _> = redis::cmd("RPUSH")
                .arg(key)
                .arg(row)
                .query_async(&mut connection.clone())
                .await;
        }
        Some(review)
    }
}

/// How many requests reached the handlers, that is got past the cache.
#[derive(Debug, Default, Serialize)]
struct OriginCalls {
    total: u64,
    routes: BTreeMap<&'static str, u64>,
    slow_keys: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------- the application

#[derive(Debug, Clone)]
struct AppState {
    db: Arc<Db>,
    origin: Arc<Mutex<OriginCalls>>,
    cache: CacheLayer<BoxStore>,
}

impl AppState {
    fn new(store: BoxStore, db: Db) -> Self {
        let cache = CacheLayer::builder(store)
            .default_ttl(Duration::from_secs(60))
            // Every instance serves one site, whichever address it is reached on.
            .key_host(false)
            // Responses that say `stale-while-revalidate` get it anyway; others get this much.
            .stale_while_revalidate(Duration::from_secs(10))
            .vary_by_identity(|parts| user_id(&parts.headers).map(str::to_owned))
            // Stats must be live: the route is declared uncacheable here, next to the other rules.
            .route_override(|parts| (parts.uri.path() == "/stats").then_some(RouteOverride::Bypass))
            .build();
        AppState {
            db: Arc::new(db),
            origin: Arc::default(),
            cache,
        }
    }

    /// Counts a call that reached the origin; returns the count for `slow_key`, if given.
    fn origin_call(&self, route: &'static str, slow_key: Option<&str>) -> u64 {
        let mut calls = self.origin.lock().expect("origin counters poisoned");
        calls.total += 1;
        *calls.routes.entry(route).or_default() += 1;
        slow_key.map_or(0, |key| {
            let n = calls.slow_keys.entry(key.to_owned()).or_default();
            *n += 1;
            *n
        })
    }
}

fn user_id(headers: &HeaderMap) -> Option<&str> {
    headers.get(USER_HEADER)?.to_str().ok().filter(|id| !id.is_empty())
}

/// An RFC 9875 structured list of strings: `"book:1", "books"`.
fn cache_groups(groups: &[&str]) -> String {
    groups.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", ")
}

/// A strong ETag that changes whenever the book's JSON does.
fn etag(view: &BookView) -> String {
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(view).expect("a book serialises").hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn book(State(state): State<AppState>, Path(id): Path<u32>) -> Response {
    state.origin_call("GET /books/{id}", None);
    let response = match state.db.query(|t| t.books.get(&id).map(|b| t.view(b))).await {
        Some(view) => ([(header::ETAG, etag(&view))], Json(view)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no book {id}")),
    };
    // A 404 is cached too; tagged with the book, it goes when the book's tag is purged.
    let groups = [(CACHE_GROUPS, cache_groups(&[&format!("book:{id}"), "books"]))];
    (groups, response).into_response()
}

async fn books(State(state): State<AppState>) -> Response {
    state.origin_call("GET /books", None);
    let list: Vec<BookView> = state.db.query(|t| t.books.values().map(|b| t.view(b)).collect()).await;
    // The list shows ratings, so reviews invalidate it too.
    ([(CACHE_GROUPS, cache_groups(&["books", "reviews"]))], Json(list)).into_response()
}

async fn top_books(State(state): State<AppState>) -> Response {
    state.origin_call("GET /books/top", None);
    let mut list: Vec<BookView> = state.db.query(|t| t.books.values().map(|b| t.view(b)).collect()).await;
    list.retain(|v| v.review_count > 0);
    let rating = |v: &BookView| v.avg_rating.unwrap_or(0.0);
    list.sort_by(|a, b| rating(b).total_cmp(&rating(a)));
    list.truncate(10);
    ([(CACHE_GROUPS, cache_groups(&["books", "reviews"]))], Json(list)).into_response()
}

#[derive(Debug, Deserialize)]
struct NewReview {
    user: String,
    rating: u8,
    body: String,
}

async fn add_review(State(state): State<AppState>, Path(id): Path<u32>, Json(new): Json<NewReview>) -> Response {
    state.origin_call("POST /books/{id}/reviews", None);
    if !(1..=5).contains(&new.rating) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "rating must be between 1 and 5");
    }
    if new.user.trim().is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "user must not be empty");
    }
    match state.db.add_review(id, new).await {
        // The InvalidateLayer purges these once the 201 is on its way: this book's page and
        // everything that shows ratings, nothing else.
        Some(review) => {
            let purge = Invalidate::tags([format!("book:{id}"), "reviews".to_owned()]);
            (StatusCode::CREATED, Extension(purge), Json(review)).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no book {id}")),
    }
}

async fn me(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.origin_call("GET /me", None);
    let Some(user) = user_id(&headers) else {
        return error(StatusCode::UNAUTHORIZED, format!("send an {USER_HEADER} header"));
    };
    let reviews: Vec<Review> = state
        .db
        .query(|t| t.reviews.iter().filter(|r| r.user == user).cloned().collect())
        .await;
    let profile = json!({ "user": user, "review_count": reviews.len(), "reviews": reviews });
    ([(header::CACHE_CONTROL, "private, max-age=60")], Json(profile)).into_response()
}

#[derive(Debug, Deserialize)]
struct SlowParams {
    key: String,
    #[serde(default)]
    ms: u64,
    /// Freshness in seconds; the answer may then be served stale for 30 s while it refreshes.
    max_age: Option<u64>,
}

async fn slow(State(state): State<AppState>, Query(params): Query<SlowParams>) -> Response {
    let calls = state.origin_call("GET /slow", Some(&params.key));
    let ms = params.ms.min(MAX_SLOW_MS);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let body = Json(json!({ "key": params.key, "slept_ms": ms, "origin_calls": calls }));
    let tags = Extension(CacheTags::new([format!("slow:{}", params.key)]));
    match params.max_age {
        Some(age) => {
            let cache_control = format!("max-age={age}, stale-while-revalidate=30");
            ([(header::CACHE_CONTROL, cache_control)], tags, body).into_response()
        }
        None => (tags, body).into_response(),
    }
}

async fn stats(State(state): State<AppState>) -> Response {
    let cache = state.cache.stats();
    let store = store_stats(state.cache.store());
    let origin = json!(*state.origin.lock().expect("origin counters poisoned"));
    let body = json!({
        "cache": {
            "hits": cache.hits,
            "misses": cache.misses,
            "invalidated_misses": cache.invalidated_misses,
            "stores": cache.stores,
            "bypasses": by_name(&cache.bypasses),
            "not_stored": by_name(&cache.not_stored),
            "store_errors": cache.store_errors,
            "stale_hits": cache.stale_hits,
            "coalesced": cache.coalesced,
            "background_refreshes": cache.background_refreshes,
            "revalidations": cache.revalidations,
            "errors_absorbed": cache.errors_absorbed,
        },
        "store": store,
        "origin": origin,
    });
    // no-store too, for the browsers and proxies in front of us.
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// The catalogue without its cache: what the cache layer wraps, and what warming calls.
fn routes(state: AppState) -> Router {
    let invalidate = InvalidateLayer::new(state.cache.store().clone());
    Router::new()
        .route("/books", get(books))
        .route("/books/top", get(top_books))
        .route("/books/{id}", get(book))
        .route("/books/{id}/reviews", post(add_review))
        .route("/me", get(me))
        .route("/slow", get(slow))
        .route("/stats", get(stats))
        .with_state(state)
        .layer(invalidate)
}

fn app(state: AppState) -> Router {
    let cache = state.cache.clone();
    routes(state).layer(cache)
}

// ---------------------------------------------------------------- the scripted client

/// A response as the script saw it.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }

    /// A miss (of the URI, or of this variant of it: `vary-miss`) whose response was stored.
    fn is_stored_miss(&self) -> bool {
        let status = self.cache_status();
        (status.contains("fwd=miss") || status.contains("fwd=vary-miss")) && status.contains("; stored")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends requests to the server, prints one table row per request, and checks outcomes.
struct Script {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    step: usize,
    /// The current step's request and what came back, for failure messages.
    request: String,
    outcome: String,
}

impl Script {
    const CACHE_NAME: &'static str = "tower-response-cache; ";

    fn new(addr: SocketAddr) -> Self {
        println!("Cache-Status below omits its leading {:?}.\n", Self::CACHE_NAME);
        print_row("step", "request", "status", "Cache-Status", "latency");
        println!("{}", "-".repeat(4 + 52 + 6 + 56 + 9 + 4 * 2));
        Script {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            step: 0,
            request: String::new(),
            outcome: String::new(),
        }
    }

    /// Sends one request, reads the whole body, prints a row and returns the response.
    async fn step(&mut self, method: Method, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.send(method, path, headers, Bytes::new()).await
    }

    /// Sends `n` concurrent GETs for `path`; prints one row for all of them.
    async fn burst(&mut self, path: &str, n: usize) -> Result<Vec<Reply>, String> {
        self.step += 1;
        self.request = format!("{n} x GET {path}");
        let uri: http::Uri = format!("{}{path}", self.base).parse().map_err(|e| self.failure(e))?;
        let started = Instant::now();
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let (client, uri) = (self.client.clone(), uri.clone());
                tokio::spawn(async move {
                    let response = client.get(uri).await.map_err(|e| e.to_string())?;
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                    Ok::<_, String>(Reply {
                        status: parts.status,
                        headers: parts.headers,
                        body,
                    })
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(n);
        for call in calls {
            replies.push(call.await.map_err(|e| self.failure(e))?.map_err(|e| self.failure(e))?);
        }
        let latency = started.elapsed();
        let collapsed = replies
            .iter()
            .filter(|r| r.cache_status().contains("collapsed"))
            .count();
        let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
        self.outcome = format!("{ok} of {n} OK, {collapsed} collapsed");
        print_row(
            &self.step.to_string(),
            &self.request,
            if ok == n { "200" } else { "mixed" },
            &format!("{} stored, {collapsed} collapsed", n - collapsed),
            &format!("{:.1} ms", latency.as_secs_f64() * 1000.0),
        );
        Ok(replies)
    }

    /// Sends a request with a body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        self.step += 1;
        self.request = format!("{method} {path}");
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
            self.request += &format!("  {name}: {value}");
        }
        let request = request.body(Full::new(body)).map_err(|e| self.failure(e))?;
        let started = Instant::now();
        let response = self.client.request(request).await.map_err(|e| self.failure(e))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| self.failure(e))?.to_bytes();
        let latency = started.elapsed();
        let (status, headers) = (parts.status, parts.headers);
        let reply = Reply { status, headers, body };
        let cache_status = reply.cache_status();
        self.outcome = format!("{status}, Cache-Status {cache_status:?}");
        print_row(
            &self.step.to_string(),
            &self.request,
            status.as_str(),
            cache_status.strip_prefix(Self::CACHE_NAME).unwrap_or(cache_status),
            &format!("{:.1} ms", latency.as_secs_f64() * 1000.0),
        );
        Ok(reply)
    }

    /// Fails the current step unless `holds`.
    fn check(&self, holds: bool, expectation: impl std::fmt::Display) -> Result<(), String> {
        if holds {
            return Ok(());
        }
        Err(self.failure(format_args!("expected {expectation}; got {}", self.outcome)))
    }

    fn failure(&self, what: impl std::fmt::Display) -> String {
        format!("step {} ({}): {what}", self.step, self.request)
    }
}

fn print_row(step: &str, request: &str, status: &str, cache_status: &str, latency: &str) {
    println!("{step:>4}  {request:<52}  {status:<6}  {cache_status:<56}  {latency:>9}");
}

/// The tour itself: each step shows one behaviour of the cache and checks it.
async fn play(s: &mut Script) -> Result<(), String> {
    // After a deploy: the top pages were warmed before traffic arrived.
    for page in TOP_PAGES {
        let warm = s.step(Method::GET, page, &[]).await?;
        s.check(warm.is_hit(), "a hit: warmed before the first request")?;
    }

    let first = s.step(Method::GET, "/books/1", &[]).await?;
    s.check(first.status == StatusCode::OK, "200")?;
    s.check(first.is_stored_miss(), "a miss, stored")?;
    let etag = first.header("etag").to_owned();
    s.check(!etag.is_empty(), "an ETag")?;

    let second = s.step(Method::GET, "/books/1", &[]).await?;
    s.check(second.is_hit(), "a hit")?;
    s.check(second.body == first.body, "the body of the first answer")?;
    s.check(second.headers.contains_key("age"), "an Age header")?;

    let head = s.step(Method::HEAD, "/books/1", &[]).await?;
    s.check(head.is_hit(), "HEAD answered from the GET entry")?;
    s.check(head.body.is_empty(), "no body")?;
    s.check(head.header("etag") == etag, "the ETag of the first answer")?;

    let revalidated = s.step(Method::GET, "/books/1", &[("if-none-match", &etag)]).await?;
    s.check(revalidated.status == StatusCode::NOT_MODIFIED, "304")?;
    s.check(revalidated.is_hit(), "the 304 to come from the cache")?;

    for (user, hit) in [("alice", false), ("bob", false), ("alice", true)] {
        let page = s.step(Method::GET, "/me", &[(USER_HEADER, user)]).await?;
        let cached = if hit { page.is_hit() } else { page.is_stored_miss() };
        s.check(cached, if hit { "a hit" } else { "a miss, stored" })?;
        let shown = &page.json()["user"];
        s.check(*shown == user, format!("{user}'s own page, not {shown}'s"))?;
    }

    // The shared entry for /books/1 is fresh, but a request with credentials must not get it.
    let token = [("authorization", "Bearer t0ken")];
    let credentialed = s.step(Method::GET, "/books/1", &token).await?;
    s.check(!credentialed.is_hit(), "the origin's answer")?;
    let cache_status = credentialed.cache_status();
    s.check(cache_status.contains("detail=credentials"), "not stored")?;

    // A review invalidates its book and every page that shows ratings, and nothing else.
    let other = s.step(Method::GET, "/books/2", &[]).await?;
    s.check(other.is_stored_miss(), "a miss, stored")?;
    let reviews_before = first.json()["review_count"].as_u64().unwrap_or(0);
    let review = br#"{"user":"dave","rating":3,"body":"Solid."}"#;
    let json = [("content-type", "application/json")];
    let posted = s
        .send(Method::POST, "/books/1/reviews", &json, Bytes::from_static(review))
        .await?;
    s.check(posted.status == StatusCode::CREATED, "201")?;
    let after = s.step(Method::GET, "/books/1", &[]).await?;
    s.check(
        !after.is_hit() && after.cache_status().contains("detail=invalidated"),
        "a miss caused by the purge",
    )?;
    let count = after.json()["review_count"].as_u64().unwrap_or(0);
    s.check(
        count == reviews_before + 1,
        format!("{} reviews, not {count}", reviews_before + 1),
    )?;
    let untouched = s.step(Method::GET, "/books/2", &[]).await?;
    s.check(untouched.is_hit(), "book 2 still a hit")?;

    // A stampede: concurrent requests for one cold key make one origin call.
    let replies = s.burst("/slow?key=burst&ms=200", BURST).await?;
    s.check(
        replies.iter().all(|r| r.status == StatusCode::OK),
        "every request answered 200",
    )?;
    let one_call = replies.iter().all(|r| r.json()["origin_calls"] == 1);
    s.check(one_call, "every answer to come from the one origin call")?;

    // Stale-while-revalidate: a stale answer at once, while one request refreshes it.
    let fresh = s.step(Method::GET, "/slow?key=swr&ms=300&max_age=0", &[]).await?;
    s.check(fresh.is_stored_miss(), "a miss, stored")?;
    let stale = s.step(Method::GET, "/slow?key=swr&ms=300&max_age=0", &[]).await?;
    let cache_status = stale.cache_status();
    s.check(
        stale.is_hit() && cache_status.contains("fwd=stale"),
        "a stale hit, refreshed in the background",
    )?;

    let stats = s.step(Method::GET, "/stats", &[]).await?;
    s.check(stats.cache_status().contains("detail=route"), "a bypass")?;
    let stats = stats.json();
    s.check(
        stats["store"]["kind"] != "unknown",
        "the store behind the box reports its own statistics",
    )?;
    let (cache, origin) = (&stats["cache"], &stats["origin"]);
    println!(
        "\ncache: {} hits, {} stale hits, {} collapsed, {} misses ({} invalidated), {} stores, bypasses {}, not stored {}",
        cache["hits"],
        cache["stale_hits"],
        cache["coalesced"],
        cache["misses"],
        cache["invalidated_misses"],
        cache["stores"],
        cache["bypasses"],
        cache["not_stored"]
    );
    println!(
        "origin: {} calls {}, /slow keys {}",
        origin["total"], origin["routes"], origin["slow_keys"]
    );
    // Hits never reach the origin: /books/{id} ran for warming books 3 and 4, the first GET of
    // book 1, the request with credentials, book 2 and the purged book 1; /me once per user;
    // the burst once.
    let hits = &cache["hits"];
    s.check(
        *hits == 8,
        format!("8 hits (3 warmed pages, GET, HEAD, 304, alice again, book 2), not {hits}"),
    )?;
    let books = &origin["routes"]["GET /books/{id}"];
    s.check(*books == 6, format!("6 origin calls for /books/{{id}}, not {books}"))?;
    let me = &origin["routes"]["GET /me"];
    s.check(*me == 2, format!("2 origin calls for /me, not {me}"))?;
    let burst = &origin["slow_keys"]["burst"];
    s.check(*burst == 1, format!("1 origin call for the burst, not {burst}"))
}

// ---------------------------------------------------------------- main

enum Mode {
    Tour,
    Serve(SocketAddr),
    Help,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Mode, String), String> {
    let (mut serve, mut addr, mut store) = (false, None, "memory".to_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--serve" => serve = true,
            "--store" => store = args.next().ok_or("--store needs a value, such as memory")?,
            "--addr" => {
                let value = args.next().ok_or("--addr needs a value, such as 127.0.0.1:3000")?;
                addr = Some(value.parse().map_err(|e| format!("--addr {value}: {e}"))?);
            }
            "-h" | "--help" => return Ok((Mode::Help, store)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (serve, addr) {
        (true, addr) => Ok((Mode::Serve(addr.unwrap_or(DEFAULT_ADDR)), store)),
        (false, None) => Ok((Mode::Tour, store)),
        (false, Some(_)) => Err("--addr is only used with --serve".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match parse_args(std::env::args().skip(1)) {
        Ok((Mode::Tour, store)) => tour(&store).await,
        Ok((Mode::Serve(addr), store)) => serve(addr, &store).await,
        Ok((Mode::Help, _)) => {
            println!("{USAGE}");
            Ok(())
        }
        Err(message) => {
            eprintln!("tour: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("\ntour: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn tour(store: &str) -> Result<(), String> {
    // A scripted run starts from an empty cache, even on a Redis that outlives it.
    let namespace = format!("tour-run-{}", std::process::id());
    let (store, db) = (open_store(store, &namespace).await?, Db::open(store, &namespace).await?);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState::new(store, db);

    // After a deploy: the top pages are warm before traffic arrives, and kept warm.
    let top_pages = || {
        TOP_PAGES.map(|path| {
            Request::get(path)
                .body(axum::body::Body::empty())
                .expect("a valid request")
        })
    };
    let schedule = KeepWarm::every(Duration::from_secs(300)).jitter(Duration::from_secs(30));
    let mut warming = state.cache.keep_warm(routes(state.clone()), top_pages, schedule);
    let first = warming
        .next_round()
        .await
        .ok_or("warming stopped before its first round")?;
    println!(
        "After deploy: {} top pages warmed before the server takes traffic ({} stored).",
        first.report.requested, first.report.stored
    );
    if first.report.stored != TOP_PAGES.len() {
        return Err(format!(
            "warming stored {} of {} pages",
            first.report.stored,
            TOP_PAGES.len()
        ));
    }

    // The server task ends with the runtime, when `main` returns.
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    println!("Book catalogue on http://{addr}; every database query takes {QUERY_LATENCY:?}.");
    play(&mut Script::new(addr)).await?;
    warming.stop().await;
    println!("tour: every check passed");
    Ok(())
}

async fn serve(addr: SocketAddr, store: &str) -> Result<(), String> {
    // Serving instances share one namespace, so that several of them share one cache.
    let (store, db) = (open_store(store, "tour").await?, Db::open(store, "tour").await?);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    println!("Book catalogue on http://{addr} (Ctrl-C to stop). Try:");
    println!("  curl -i http://{addr}/books/1");
    println!("  curl -i -H '{USER_HEADER}: alice' http://{addr}/me");
    println!("  curl -s http://{addr}/stats");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let server = axum::serve(listener, app(AppState::new(store, db))).with_graceful_shutdown(ctrl_c);
    server.await.map_err(|e| format!("server error: {e}"))
}

/// Counts by reason, keyed by the names `Cache-Status` uses.
fn by_name(counts: &std::collections::BTreeMap<tower_response_cache::BypassReason, u64>) -> serde_json::Value {
    counts
        .iter()
        .map(|(reason, n)| (reason.as_str().to_string(), json!(n)))
        .collect()
}
