//! What the cache recognises of gRPC with or without the `grpc` feature: that a request is a
//! gRPC call, and a call's status. A gRPC call is never taken for an HTTP mutation of its
//! path, and its success is its `grpc-status`, not its HTTP status.

use http::header::{HeaderMap, HeaderName, CONTENT_TYPE};
use http::{request, Method};

/// `grpc-status`: the call's status code, in the trailers (or in the headers of a
/// trailers-only response).
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether a request is a gRPC call: `POST` with `content-type: application/grpc`, or one of
/// its `+format` / parameter variants. gRPC-Web is not.
pub(crate) fn is_grpc(parts: &request::Parts) -> bool {
    parts.method == Method::POST && has_grpc_content_type(&parts.headers)
}

pub(crate) fn has_grpc_content_type(headers: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    headers.get(CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value
            .get(..GRPC.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(GRPC))
            && matches!(value.get(GRPC.len()), None | Some(b'+' | b';'))
    })
}

/// The `grpc-status` code in `headers`; an unreadable value counts as an unknown error.
pub(crate) fn status_code(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get(GRPC_STATUS)?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(2),
    )
}
