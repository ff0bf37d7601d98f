//! The one interface through which the HTTP core handles a call of a protocol framed inside
//! HTTP: an opted-in gRPC call, with the `grpc` feature. Without it no call is ever opted in,
//! the types below cannot be built, and the core's gRPC branches compile away.

#[cfg(feature = "grpc")]
pub(crate) use crate::grpc::{GrpcCall, OptedIn};
#[cfg(not(feature = "grpc"))]
pub(crate) use disabled::{GrpcCall, OptedIn};

#[cfg(not(feature = "grpc"))]
mod disabled {
    use crate::body::Collected;
    use crate::key::CacheKey;
    use crate::layer::Config;
    use crate::metrics::BypassReason;
    use http::header::HeaderMap;
    use http::{request, response};
    use http_body::Body;
    use std::marker::PhantomData;
    use std::time::Duration;

    /// Never built: nothing opts a call in.
    pub(crate) struct OptedIn<'c>(Never, PhantomData<&'c ()>);

    #[derive(Clone, Debug)]
    pub(crate) struct GrpcCall(Never);

    #[derive(Clone, Copy, Debug)]
    enum Never {}

    impl<'c> OptedIn<'c> {
        pub(crate) fn find(_config: &'c Config, _parts: &request::Parts) -> Option<Self> {
            None
        }

        pub(crate) async fn read<B>(self, _body: B) -> Result<(B, GrpcCall), (B, BypassReason)> {
            match self.0 {}
        }
    }

    impl GrpcCall {
        pub(crate) fn key(&self, _primary: &CacheKey, _headers: &HeaderMap) -> CacheKey {
            match self.0 {}
        }

        pub(crate) fn ttl(&self) -> Option<Duration> {
            match self.0 {}
        }

        pub(crate) fn is_server_failure(&self, _head: &response::Parts) -> bool {
            match self.0 {}
        }

        pub(crate) fn head_refusal(&self, _head: &response::Parts) -> Option<BypassReason> {
            match self.0 {}
        }

        pub(crate) async fn collect<B: Body<Error: Send + 'static>>(
            &self,
            _body: B,
            _max: usize,
        ) -> (Collected<B>, BypassReason) {
            match self.0 {}
        }

        pub(crate) fn body_refusal(&self, _data: &[u8], _trailers: Option<&HeaderMap>) -> Option<BypassReason> {
            match self.0 {}
        }

        pub(crate) fn tags(&self, _request: &request::Parts) -> Vec<String> {
            match self.0 {}
        }
    }
}
