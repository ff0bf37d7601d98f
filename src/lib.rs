#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod coalesce;
mod entry;
mod future;
pub mod grpc;
pub mod invalidate;
mod key;
mod layer;
mod metrics;
mod policy;
mod service;
mod status;
pub mod store;
mod tags;
mod warm;

pub use body::CacheBody;
pub use future::ResponseFuture;
pub use grpc::{GrpcMethod, GrpcMethods, GrpcRequest};
pub use invalidate::{Invalidate, InvalidateLayer, InvalidateLayerBuilder};
pub use key::CacheKey;
pub use layer::{CacheLayer, CacheLayerBuilder};
pub use metrics::{BypassReason, CacheStats};
pub use policy::RouteOverride;
pub use service::CacheService;
pub use store::{MemoryStore, PurgeMode, Store, StoreError};
pub use tags::CacheTags;
pub use warm::WarmReport;
