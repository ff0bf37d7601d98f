//! Tower middleware that caches HTTP responses for axum, tonic, hyper and any
//! `tower::Service<http::Request<B>>`: safe by default, with tag-based invalidation that races
//! cannot undo, stampede protection, stale-while-revalidate and stale-if-error, and pluggable
//! stores (in memory, Redis, or memory over Redis for a fleet of instances).
//!
//! A [`CacheLayer`] keys each GET or HEAD request (method, host, path, normalised query; then
//! the `Vary` values and, for answers stored per identity, the caller's identity, as the
//! response chooses), answers from its [`Store`] while the entry is fresh,
//! and on a miss lets one request per key reach the inner service and stores the response
//! if RFC 9111 allows it. An [`InvalidateLayer`] purges tags after successful unsafe requests.
//! Every response says what the cache did in a typed [`CacheOutcome`] extension and, unless
//! switched off, a `Cache-Status` header (RFC 9211).
//!
//! # Quick start
//!
//! ```
//! use axum::{extract::Path, routing::{get, post}, Extension, Router};
//! use std::time::Duration;
//! use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore};
//!
//! // Reads name the tags their response depends on...
//! async fn book(Path(id): Path<u32>) -> (Extension<CacheTags>, String) {
//!     (Extension(CacheTags::new([format!("book:{id}"), "books".into()])), format!("book {id}"))
//! }
//!
//! // ...and writes name the tags they make stale, purged once they succeed.
//! async fn add_review(Path(id): Path<u32>) -> (http::StatusCode, Extension<Invalidate>) {
//!     (http::StatusCode::CREATED, Extension(Invalidate::tags([format!("book:{id}")])))
//! }
//!
//! let store = MemoryStore::builder().max_bytes(256 << 20).build(); // a cheap handle to clone
//! let app: Router = Router::new()
//!     .route("/books/{id}", get(book))
//!     .route("/books/{id}/reviews", post(add_review))
//!     .layer(InvalidateLayer::new(store.clone()))
//!     .layer(
//!         CacheLayer::builder(store.clone())
//!             .default_ttl(Duration::from_secs(60))
//!             .stale_while_revalidate(Duration::from_secs(30))
//!             .build(),
//!     );
//!
//! // Purges can also come from anywhere in the process:
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tower_response_cache::Store;
//! store.purge_tags(["books"]).await?;
//! # Ok::<(), tower_response_cache::StoreError>(()) }).unwrap();
//! ```
//!
//! # Where things are
//!
//! | concern | items |
//! |---|---|
//! | the layer and its settings | [`CacheLayer`], [`CacheLayerBuilder`] (every setting and its default), [`CacheService`], [`ResponseFuture`], [`CacheBody`] |
//! | caching decisions (RFC 9111, RFC 5861, RFC 9213) | [`CacheLayerBuilder`] settings; per request a [`CachePolicy`] returning a [`CacheDecision`] ([`Scope`], [`DefaultPolicy`]), and per route [`RouteOverride`] |
//! | keys | [`CacheKey`]; [`CacheLayer::cache_key`] shows the key of a request; [`CacheLayerBuilder::vary_by_header`], [`CacheLayerBuilder::key_with`], and per-identity entries with [`CacheLayerBuilder::vary_by_identity`] |
//! | stampedes | coalescing in the process, and across instances through a lease in the store ([`CacheLayerBuilder::fleet_coalesce`], [`Store::try_lease`]) |
//! | tagging and purging | [`CacheTags`] on reads, shown to a CDN in front with [`CdnTags`]; [`Invalidate`] and the [`invalidate`] module ([`InvalidateLayer`], [`InvalidateLayerBuilder`]) on writes; [`Store::purge_tags`] from code; over HTTP `invalidate::PurgeEndpoint` (feature `purge-endpoint`); to a CDN in front [`store::PurgeForwarding`] and a [`store::PurgeSink`] such as `store::HttpPurgeSink` (feature `cdn-http`) |
//! | stores | the [`store`] module: the [`Store`] trait, [`MemoryStore`], `RedisStore` and `TieredStore` (feature `redis`), [`store::BoxStore`] to choose one at run time, [`store::PurgeStamps`] and the `store::conformance` suite (feature `test-util`) for your own store |
//! | stored responses | [`store::CachedResponse`], [`store::Entry`] and its versioned binary encoding ([`store::DecodeError`]) |
//! | gRPC (tonic, feature `grpc`) | the `grpc` module: `GrpcMethods`, `GrpcMethod`, reached by the HTTP core through one internal interface |
//! | bounds shared by the layers | [`HttpService`], [`SendBody`] |
//! | filling the cache ahead of traffic | [`CacheLayer::warm`], [`WarmReport`]; on a schedule [`CacheLayer::keep_warm`], [`KeepWarm`], [`WarmHandle`], [`WarmRound`] |
//! | observability | [`CacheOutcome`] on every response, [`CacheStats`], [`BypassReason`], the `Cache-Status` ([`CacheStatusHeader`], [`CacheStatusName`]) and `Age` headers, `tracing` events |
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `redis` | no | `RedisStore` (standalone or Redis Cluster) and `TieredStore` (memory over Redis, coherent across instances through pub/sub) |
//! | `redis-tls` | no | `redis`, and TLS to Redis (`rediss://`) with rustls |
//! | `grpc` | no | caching opted-in unary gRPC calls and purging after gRPC mutations (the `grpc` module) |
//! | `test-util` | no | `store::conformance`, the suite a store must pass, for third-party store authors |
//! | `cdn-http` | no | `store::HttpPurgeSink`: purges passed on to a CDN over HTTP (Fastly's API, or `PURGE` per URL) |
//! | `purge-endpoint` | no | `invalidate::PurgeEndpoint`: an authenticated HTTP endpoint that purges by tag or URI |
//! | `metrics` | no | counts and latencies recorded through the `metrics` facade (see [`CacheStats`]) |
//!
//! # Minimum supported Rust
//!
//! Rust 1.85; with the `redis` feature, Rust 1.88.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod cdn_tags;
mod coalesce;
mod entry;
mod fleet;
mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
mod grpc_wire;
pub mod invalidate;
mod key;
mod layer;
mod metrics;
mod policy;
mod refresh_ahead;
mod service;
mod status;
pub mod store;
mod structured_field;
mod tags;
mod warm;

pub use body::CacheBody;
pub use cdn_tags::CdnTags;
pub use future::{HttpService, ResponseFuture, SendBody};
#[cfg(feature = "grpc")]
pub use grpc::{GrpcMethod, GrpcMethods, GrpcRequest};
pub use invalidate::{Invalidate, InvalidateLayer, InvalidateLayerBuilder};
pub use key::CacheKey;
pub use layer::{CacheLayer, CacheLayerBuilder};
pub use metrics::{BypassReason, CacheStats};
pub use policy::{CacheDecision, CachePolicy, DefaultPolicy, RouteOverride, Scope};
pub use refresh_ahead::RefreshAhead;
pub use service::CacheService;
pub use status::{CacheOutcome, CacheStatusHeader, CacheStatusName, InvalidCacheStatusName, Served, StaleReason};
pub use store::{MemoryStore, PurgeMode, Store, StoreError};
pub use tags::CacheTags;
pub use warm::{KeepWarm, WarmHandle, WarmReport, WarmRound};

// The README's Rust examples, compiled and run as doctests (they use every feature).
#[cfg(all(doctest, feature = "grpc", feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
