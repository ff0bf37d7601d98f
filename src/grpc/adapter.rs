//! The gRPC side of the narrow interface the HTTP core calls for an opted-in call (see
//! `service::call`): keying by the request message, and the rules a gRPC response must pass
//! to be stored.

use super::methods::TagsFn;
use super::{body_refusal, head_refusal, is_server_failure, one_message_limit, too_large_reason, uncompressed_message};
use super::{GrpcMethod, GrpcMethods};
use crate::body::{collect_within, Collected};
use crate::key::{self, CacheKey};
use crate::layer::Config;
use crate::metrics::BypassReason;
use bytes::Bytes;
use http::header::HeaderMap;
use http::{request, response};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A request for a cached gRPC method, its message not read yet.
pub(crate) struct OptedIn<'c> {
    methods: &'c GrpcMethods,
    method: &'c GrpcMethod,
}

impl<'c> OptedIn<'c> {
    /// The opted-in cached method `parts` calls, if any.
    pub(crate) fn find(config: &'c Config, parts: &request::Parts) -> Option<Self> {
        let methods = config.grpc.as_ref()?;
        let method = methods.cached(parts)?;
        Some(OptedIn { methods, method })
    }

    /// Reads the request message (handing on the same bytes), or says why the call cannot be
    /// keyed.
    pub(crate) async fn read<B: Send + 'static>(self, body: B) -> Result<(B, GrpcCall), (B, BypassReason)> {
        let (body, frame) = self.methods.read_request(body).await?;
        let call = GrpcCall {
            message: uncompressed_message(&frame),
            tags: self.method.tags_fn().cloned(),
            ttl: self.method.cached_ttl(),
            vary: self.methods.vary().to_vec().into(),
            frame,
        };
        Ok((body, call))
    }
}

/// What the cache keeps of an opted-in call until its response is stored.
#[derive(Clone)]
pub(crate) struct GrpcCall {
    /// The request body: exactly one length-prefixed message.
    frame: Bytes,
    /// The uncompressed request message, for the method's tag function.
    message: Option<Bytes>,
    tags: Option<Arc<TagsFn>>,
    ttl: Option<Duration>,
    vary: Arc<[http::HeaderName]>,
}

impl GrpcCall {
    /// The call's key: `primary`, the request message, its encoding metadata and the
    /// metadata the methods vary on.
    pub(crate) fn key(&self, primary: &CacheKey, headers: &HeaderMap) -> CacheKey {
        key::grpc_call(primary, &self.frame, headers, &self.vary)
    }

    /// The method's freshness lifetime.
    pub(crate) fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// A gRPC server fails with HTTP 200 and the failure in `grpc-status`.
    pub(crate) fn is_server_failure(&self, head: &response::Parts) -> bool {
        is_server_failure(&head.headers)
    }

    /// Why the response may not be stored, judged from its head.
    pub(crate) fn head_refusal(&self, head: &response::Parts) -> Option<BypassReason> {
        head_refusal(head)
    }

    /// Reads a response body that should be one message of at most `max` bytes: a second
    /// message shows a stream, passed on at once. Also says why, if it is too large.
    pub(crate) async fn collect<B: Body<Error: Send + 'static>>(
        &self,
        body: B,
        max: usize,
    ) -> (Collected<B>, BypassReason) {
        let mut declared = None;
        let collected = collect_within(body, |frame| one_message_limit(frame, max, &mut declared)).await;
        (collected, too_large_reason(declared, max, BypassReason::BodyTooLarge))
    }

    /// Why a complete response may not be stored.
    pub(crate) fn body_refusal(&self, data: &[u8], trailers: Option<&HeaderMap>) -> Option<BypassReason> {
        body_refusal(data, trailers)
    }

    /// The tags the method's tag function gives this call.
    pub(crate) fn tags(&self, request: &request::Parts) -> Vec<String> {
        match &self.tags {
            Some(tags) => tags(&super::GrpcRequest::new(request, self.message.as_deref())),
            None => Vec::new(),
        }
    }
}

impl fmt::Debug for GrpcCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcCall")
            .field("frame_len", &self.frame.len())
            .field("tags", &self.tags.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}
