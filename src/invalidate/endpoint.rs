//! [`PurgeEndpoint`]: purging by tag or URI over HTTP, for operators and deploy scripts
//! (feature `purge-endpoint`).

use crate::future::Boxed;
use crate::store::{PurgeMode, Store};
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{request, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

type Authorize = dyn Fn(&request::Parts) -> bool + Send + Sync;

/// The longest tag the endpoint accepts, in bytes.
const MAX_TAG_BYTES: usize = 1024;

/// A service that purges a store on request, for the application to mount where it
/// chooses, behind an authorisation check it supplies (there is no way to build one
/// without it):
///
/// - `PURGE /any/path` hard-purges that path in all its variants ([`Store::purge_uri`]);
/// - `POST /purge` with a JSON body `{"tags": ["book:1", "books"], "mode": "soft"}` or a form
///   body `tags=book:1&tags=books&mode=soft` purges those tags (`mode` is `hard` unless
///   given).
///
/// It answers `200` with a JSON body saying what it purged, `403` when the check refuses
/// (before anything else, the store untouched), `400` with a message for a malformed body,
/// an unknown mode or field, no tags or an invalid tag, `413` past
/// [`max_body_bytes`](Self::max_body_bytes), `415` for other content types, `404` for a
/// `POST` elsewhere than `/purge`, `405` for other methods and `503` when the store fails.
/// Error bodies are JSON too: `{"error": "…"}`.
///
/// Mounted under a prefix with axum's `nest_service`, it sees paths without the prefix:
///
/// ```
/// use axum::Router;
/// use tower_response_cache::invalidate::PurgeEndpoint;
/// use tower_response_cache::MemoryStore;
///
/// let store = MemoryStore::new();
/// let token = "Bearer s3cret"; // from the environment, in a real application
/// let purge = PurgeEndpoint::new(store.clone(), move |request| {
///     request.headers.get("authorization").is_some_and(|value| value == token)
/// });
/// // `PURGE /cache/books/1` purges /books/1; `POST /cache/purge` purges tags.
/// let app: Router = Router::new().nest_service("/cache", purge);
/// ```
pub struct PurgeEndpoint<St> {
    store: St,
    authorize: Arc<Authorize>,
    max_body_bytes: usize,
}

impl<St: Clone> Clone for PurgeEndpoint<St> {
    fn clone(&self) -> Self {
        PurgeEndpoint {
            store: self.store.clone(),
            authorize: self.authorize.clone(),
            max_body_bytes: self.max_body_bytes,
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for PurgeEndpoint<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeEndpoint")
            .field("store", &self.store)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl<St: Store> PurgeEndpoint<St> {
    /// Purges `store` for the requests `authorize` accepts (it sees the request's method,
    /// URI and headers: check a token, a client certificate's extension, an address).
    pub fn new<F>(store: St, authorize: F) -> Self
    where
        F: Fn(&request::Parts) -> bool + Send + Sync + 'static,
    {
        PurgeEndpoint {
            store,
            authorize: Arc::new(authorize),
            max_body_bytes: 16 * 1024,
        }
    }

    /// The largest body read (default 16 KiB); a larger one is answered `413`.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

/// The response future of [`PurgeEndpoint`].
pub struct PurgeEndpointFuture {
    inner: Boxed<Response<Full<Bytes>>, Infallible>,
}

impl Future for PurgeEndpointFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for PurgeEndpointFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PurgeEndpointFuture").finish_non_exhaustive()
    }
}

impl<St, B> Service<Request<B>> for PurgeEndpoint<St>
where
    St: Store,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = PurgeEndpointFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        PurgeEndpointFuture {
            inner: Box::pin(async move {
                Ok(match this.answer(request).await {
                    Ok(purged) => reply(StatusCode::OK, json!({ "purged": purged })),
                    Err((status, message)) => {
                        let mut response = reply(status, json!({ "error": message }));
                        if status == StatusCode::METHOD_NOT_ALLOWED {
                            response
                                .headers_mut()
                                .insert(ALLOW, HeaderValue::from_static("POST, PURGE"));
                        }
                        response
                    }
                })
            }),
        }
    }
}

type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    (status, message.into())
}

impl<St: Store> PurgeEndpoint<St> {
    async fn answer<B>(&self, request: Request<B>) -> Result<Value, Refusal>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        if !(self.authorize)(&parts) {
            tracing::warn!(method = %parts.method, path = parts.uri.path(), "purge request refused");
            return Err(refuse(StatusCode::FORBIDDEN, "not authorised to purge"));
        }
        if parts.method.as_str() == "PURGE" {
            let path = parts.uri.path();
            self.store.purge_uri(path).await.map_err(store_failed)?;
            tracing::info!(path, "purged over HTTP");
            return Ok(json!({ "paths": [path], "mode": "hard" }));
        }
        if parts.method != Method::POST {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "use PURGE /path or POST /purge"));
        }
        if parts.uri.path() != "/purge" {
            return Err(refuse(StatusCode::NOT_FOUND, "tags are purged with POST /purge"));
        }
        let form = match media_type(&parts).as_deref() {
            Some("application/json") => false,
            Some("application/x-www-form-urlencoded") => true,
            _ => {
                return Err(refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send application/json or application/x-www-form-urlencoded",
                ))
            }
        };
        let body = self.read(&parts, body).await?;
        let (tags, mode) = match form {
            true => from_form(&body)?,
            false => from_json(&body)?,
        };
        let tags = checked(tags)?;
        self.store.purge(&tags, mode).await.map_err(store_failed)?;
        tracing::info!(?tags, ?mode, "purged over HTTP");
        let mode = match mode {
            PurgeMode::Hard => "hard",
            PurgeMode::Soft => "soft",
        };
        Ok(json!({ "tags": tags, "mode": mode }))
    }

    /// The body, at most `max_body_bytes` of it, whatever `Content-Length` claims.
    async fn read<B>(&self, parts: &request::Parts, body: B) -> Result<Bytes, Refusal>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {} bytes", self.max_body_bytes),
            )
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Err(error) => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {error}"),
            )),
        }
    }
}

fn store_failed(error: crate::StoreError) -> Refusal {
    tracing::error!(%error, "purge over HTTP failed");
    refuse(StatusCode::SERVICE_UNAVAILABLE, format!("the store failed: {error}"))
}

fn media_type(parts: &request::Parts) -> Option<String> {
    let value = parts.headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

fn mode_named(name: &str) -> Result<PurgeMode, Refusal> {
    match name {
        "hard" => Ok(PurgeMode::Hard),
        "soft" => Ok(PurgeMode::Soft),
        other => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("unknown mode {other:?}: use \"hard\" or \"soft\""),
        )),
    }
}

fn from_json(body: &[u8]) -> Result<(Vec<String>, PurgeMode), Refusal> {
    let bad = |message: String| refuse(StatusCode::BAD_REQUEST, message);
    let value: Value = serde_json::from_slice(body).map_err(|error| bad(format!("malformed JSON: {error}")))?;
    let Value::Object(fields) = value else {
        return Err(bad("expected a JSON object such as {\"tags\": [\"books\"]}".into()));
    };
    let mut tags = None;
    let mut mode = PurgeMode::Hard;
    for (name, value) in fields {
        match (name.as_str(), value) {
            ("tags", Value::Array(items)) => {
                let items = items.into_iter().map(|item| match item {
                    Value::String(tag) => Ok(tag),
                    other => Err(bad(format!("tags must be strings, not {other}"))),
                });
                tags = Some(items.collect::<Result<Vec<_>, _>>()?);
            }
            ("tags", _) => return Err(bad("\"tags\" must be an array of strings".into())),
            ("mode", Value::String(name)) => mode = mode_named(&name)?,
            ("mode", _) => return Err(bad("\"mode\" must be \"hard\" or \"soft\"".into())),
            (other, _) => return Err(bad(format!("unknown field {other:?}: expected \"tags\" and \"mode\""))),
        }
    }
    Ok((tags.unwrap_or_default(), mode))
}

fn from_form(body: &[u8]) -> Result<(Vec<String>, PurgeMode), Refusal> {
    let mut tags = Vec::new();
    let mut mode = PurgeMode::Hard;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "tags" => tags.push(value.into_owned()),
            "mode" => mode = mode_named(&value)?,
            other => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("unknown field {other:?}: expected \"tags\" and \"mode\""),
                ))
            }
        }
    }
    Ok((tags, mode))
}

/// Tags the store may be asked to purge: at least one, none empty, over
/// [`MAX_TAG_BYTES`] or holding control characters; each once.
fn checked(mut tags: Vec<String>) -> Result<Vec<String>, Refusal> {
    let bad = |message: String| refuse(StatusCode::BAD_REQUEST, message);
    if tags.is_empty() {
        return Err(bad("no tags to purge: give at least one in \"tags\"".into()));
    }
    for tag in &tags {
        if tag.is_empty() {
            return Err(bad("a tag is empty".into()));
        }
        if tag.len() > MAX_TAG_BYTES {
            return Err(bad(format!("a tag is over {MAX_TAG_BYTES} bytes")));
        }
        if tag.chars().any(char::is_control) {
            return Err(bad(format!("the tag {tag:?} holds control characters")));
        }
    }
    tags.sort_unstable();
    tags.dedup();
    Ok(tags)
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
