//! `CacheService`: request → key → lookup → hit, or miss → inner service → policy → store.

use crate::body::{collect_bounded, Collected};
use crate::entry::{CachedResponse, Entry};
use crate::future::ResponseFuture;
use crate::invalidate;
use crate::key::{self, CacheKey};
use crate::layer::{Config, Shared};
use crate::metrics::BypassReason;
use crate::policy::{self, cache_control::CacheControl, RequestFacts, RouteOverride};
use crate::status::{self, MissKind, Outcome};
use crate::store::{request_clock, Lookup, PurgeMode, Store};
use crate::tags::{detached, string_list, CACHE_GROUPS};
use crate::CacheBody;
use crate::CacheTags;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_TYPE, COOKIE, DATE,
    ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE, VARY,
};
use http::{request, response, Method, Request, Response, StatusCode};
use http_body::Body;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tower_service::Service;

/// Middleware that answers requests from a [`Store`] and stores the responses it may keep.
///
/// Made by [`CacheLayer`](crate::CacheLayer).
pub struct CacheService<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for CacheService<S, St> {
    fn clone(&self) -> Self {
        CacheService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for CacheService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .finish()
    }
}

impl<S, St> CacheService<S, St> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<St>>) -> Self {
        CacheService { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counters shared with the layer that made this service.
    pub fn stats(&self) -> crate::CacheStats {
        self.shared.counters.snapshot()
    }
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for CacheService<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqB: Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Send,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The ready service goes into the future; the clone stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(handle(self.shared.clone(), inner, req))
    }
}

/// The request as the cache sees it, once the bypass rules have let it through.
struct Lookout {
    primary: CacheKey,
    facts: RequestFacts,
    route: Option<RouteOverride>,
    head: bool,
    /// The client's conditional headers, answered by the cache, never forwarded on a miss.
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

async fn handle<S, St, ReqB, ResB>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
    ResB: Body,
{
    let config = &shared.config;
    let (mut parts, body) = req.into_parts();
    let route = config.route_override.as_ref().and_then(|f| f(&parts));
    if let Some(reason) = request_bypass(&shared, &parts, route) {
        shared.counters.bypass(reason);
        tracing::debug!(method = %parts.method, uri = %parts.uri, reason = reason.as_str(), "cache bypass");
        let mutation = invalidate::is_unsafe(&parts.method).then(|| detached(&parts));
        let response = inner.call(Request::from_parts(parts, body)).await?;
        if let Some(request) = mutation.filter(|_| invalidate::succeeded(response.status())) {
            invalidate_target(&shared, &request, response.headers()).await;
        }
        let fwd_status = response.status().as_u16();
        return Ok(streamed(&shared, response, Outcome::Bypass { reason, fwd_status }));
    }

    let identity = config.identity(&parts);
    let lookout = Lookout {
        primary: config.key.primary(&parts, identity.as_deref()),
        facts: RequestFacts {
            credentials: parts.headers.contains_key(AUTHORIZATION) || parts.headers.contains_key(COOKIE),
            identity_scoped: identity.is_some(),
            request_time: request_clock(),
        },
        route,
        head: parts.method == Method::HEAD,
        if_none_match: parts.headers.get(IF_NONE_MATCH).cloned(),
        if_modified_since: parts.headers.get(IF_MODIFIED_SINCE).cloned(),
    };

    let request_directives = config
        .honor_request_directives
        .then(|| CacheControl::from_headers(&parts.headers, &CACHE_CONTROL));
    let skip_lookup = request_directives
        .as_ref()
        .is_some_and(|cc| cc.no_cache || cc.max_age == Some(std::time::Duration::ZERO));
    let miss_kind = if skip_lookup {
        MissKind::Request
    } else {
        match lookup(&shared, &lookout, &parts.headers).await {
            Ok(entry) => {
                shared.counters.hit();
                let now = SystemTime::now();
                let outcome = Outcome::Hit { ttl: entry.ttl(now) };
                tracing::debug!(uri = %parts.uri, "cache hit");
                return Ok(from_entry(&shared, &entry, &lookout, outcome, Some(entry.age(now))));
            }
            Err(kind) => kind,
        }
    };
    shared.counters.miss(miss_kind == MissKind::Invalidated);
    if request_directives.is_some_and(|cc| cc.only_if_cached) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        let outcome = Outcome::Miss {
            kind: miss_kind,
            fwd_status: 504,
            stored: false,
            detail: Some("only-if-cached"),
        };
        status::decorate(response.headers_mut(), &config.status_name, outcome, None);
        return Ok(response);
    }

    if lookout.head {
        // A HEAD response has no body to store; it must never become the GET entry.
        shared.counters.bypass(BypassReason::Head);
        let response = inner.call(Request::from_parts(parts, body)).await?;
        let fwd_status = response.status().as_u16();
        let outcome = Outcome::Miss {
            kind: miss_kind,
            fwd_status,
            stored: false,
            detail: Some(BypassReason::Head.as_str()),
        };
        return Ok(streamed(&shared, response, outcome));
    }

    // Forward unconditionally so that a full response comes back to store; the client's
    // own conditional is answered from that response.
    parts.headers.remove(IF_NONE_MATCH);
    parts.headers.remove(IF_MODIFIED_SINCE);
    let request = detached(&parts);
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let response_time = SystemTime::now();
    let (res_parts, res_body) = response.into_parts();
    let fwd_status = res_parts.status.as_u16();
    let freshness = match policy::storable(&config.policy, &lookout.facts, &res_parts, lookout.route, response_time) {
        Ok(freshness) => freshness,
        Err(reason) => {
            return Ok(not_stored(
                &shared,
                res_parts,
                CacheBody::streamed(res_body),
                reason,
                miss_kind,
            ))
        }
    };
    if res_parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        return Ok(not_stored(
            &shared,
            res_parts,
            CacheBody::streamed(res_body),
            BypassReason::Streaming,
            miss_kind,
        ));
    }
    let (data, trailers) = match collect_bounded(res_body, config.max_body_bytes).await {
        Collected::Complete { data, trailers } => (data, trailers),
        Collected::TooLarge(body) => {
            return Ok(not_stored(
                &shared,
                res_parts,
                body,
                BypassReason::BodyTooLarge,
                miss_kind,
            ))
        }
        Collected::Failed(body) => return Ok(not_stored(&shared, res_parts, body, BypassReason::BodyError, miss_kind)),
    };

    let Some(tags) = entry_tags(config, &request, &res_parts) else {
        let body = CacheBody::cached(data, trailers);
        return Ok(not_stored(&shared, res_parts, body, BypassReason::Tags, miss_kind));
    };
    let ttl = freshness.store_ttl();
    let entry = Arc::new(CachedResponse::new(
        &res_parts,
        data,
        trailers,
        freshness,
        tags,
        lookout.facts.request_time,
        response_time,
    ));
    let stored = store(&shared, &lookout.primary, &entry, ttl, &request.headers).await;
    let outcome = Outcome::Miss {
        kind: miss_kind,
        fwd_status,
        stored,
        detail: None,
    };
    let mut response = from_entry(&shared, &entry, &lookout, outcome, None);
    // Extensions are not stored; the response that was just produced keeps its own.
    *response.extensions_mut() = res_parts.extensions;
    Ok(response)
}

/// Every tag of a response about to be stored, or `None` if they cannot all be recorded.
fn entry_tags(config: &Config, request: &request::Parts, response: &response::Parts) -> Option<Vec<String>> {
    let mut tags = vec![key::path_tag(request.uri.path())];
    match string_list(&response.headers, &CACHE_GROUPS) {
        Ok(groups) => tags.extend(groups),
        Err(_) => {
            tracing::warn!(path = request.uri.path(), "malformed Cache-Groups: response not stored");
            return None;
        }
    }
    if let Some(extension) = response.extensions.get::<CacheTags>() {
        tags.extend(extension.as_slice().iter().cloned());
    }
    if let Some(tag_fn) = &config.tag_fn {
        tags.extend(tag_fn(request, response));
    }
    config.tag_limits.admit(tags)
}

/// RFC 9111 §4.4: after a successful unsafe request, the target URI (and same-origin
/// `Location` / `Content-Location`) must not be served from the cache any more.
async fn invalidate_target<St: Store>(shared: &Shared<St>, request: &request::Parts, response: &HeaderMap) {
    let tags = invalidate::rfc9111_tags(request, response);
    if let Err(error) = shared.store.purge(&tags, PurgeMode::Hard).await {
        shared.counters.store_error();
        tracing::error!(%error, ?tags, "purge of a mutated URI failed");
    }
}

/// The request-side safety rules: what is never looked up nor stored.
fn request_bypass<St>(
    shared: &Shared<St>,
    parts: &request::Parts,
    route: Option<RouteOverride>,
) -> Option<BypassReason> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return Some(BypassReason::Method);
    }
    if parts.headers.contains_key(RANGE) {
        return Some(BypassReason::Range);
    }
    if route == Some(RouteOverride::Bypass) {
        return Some(BypassReason::Route);
    }
    if shared.config.honor_request_directives && CacheControl::from_headers(&parts.headers, &CACHE_CONTROL).no_store {
        return Some(BypassReason::RequestNoStore);
    }
    None
}

/// Finds a response this request may be answered with, or says why there is none.
async fn lookup<St: Store>(
    shared: &Shared<St>,
    lookout: &Lookout,
    headers: &HeaderMap,
) -> Result<Arc<CachedResponse>, MissKind> {
    let store = &shared.store;
    let response = match read(shared, store.get(&lookout.primary).await)? {
        Entry::Response(response) if response.vary.is_empty() => response,
        Entry::Response(_) => return Err(MissKind::VaryMiss),
        Entry::Variants(names) => {
            let variant = key::variant(&lookout.primary, &names, headers);
            match read(shared, store.get(&variant).await) {
                Ok(Entry::Response(response)) => response,
                Ok(Entry::Variants(_)) | Err(MissKind::Miss) => return Err(MissKind::VaryMiss),
                Err(kind) => return Err(kind),
            }
        }
    };
    if !response.is_fresh(SystemTime::now()) {
        return Err(MissKind::Stale);
    }
    let facts = &lookout.facts;
    if facts.credentials && !facts.identity_scoped && !response.shareable_with_credentials {
        return Err(MissKind::Miss);
    }
    Ok(response)
}

/// Turns a store answer into an entry or a miss; a failing store is a miss (fail open).
fn read<St>(shared: &Shared<St>, result: Result<Lookup, crate::StoreError>) -> Result<Entry, MissKind> {
    match result {
        Ok(Lookup::Found(entry)) => Ok(entry),
        Ok(Lookup::Purged) => Err(MissKind::Invalidated),
        Ok(Lookup::SoftPurged(_)) => Err(MissKind::Stale),
        Ok(Lookup::Miss) => Err(MissKind::Miss),
        Err(error) => {
            shared.counters.store_error();
            tracing::warn!(%error, "cache store read failed; serving from the inner service");
            Err(MissKind::Miss)
        }
    }
}

/// Writes the entry (and, for a varying response, the variant index); `true` if stored.
async fn store<St: Store>(
    shared: &Shared<St>,
    primary: &CacheKey,
    entry: &Arc<CachedResponse>,
    ttl: std::time::Duration,
    request_headers: &HeaderMap,
) -> bool {
    let store = &shared.store;
    let result = if entry.vary.is_empty() {
        store.put(primary.clone(), Entry::Response(entry.clone()), ttl).await
    } else {
        let names: Arc<[http::HeaderName]> = entry.vary.clone().into();
        let variant = key::variant(primary, &names, request_headers);
        // The index outlives any one variant so that it never hides a live one.
        let index_ttl = shared.config.policy.max_ttl.max(ttl);
        match store.put(primary.clone(), Entry::Variants(names), index_ttl).await {
            Ok(_) => store.put(variant, Entry::Response(entry.clone()), ttl).await,
            Err(error) => Err(error),
        }
    };
    match result {
        Ok(true) => {
            shared.counters.stored();
            true
        }
        Ok(false) => false,
        Err(error) => {
            shared.counters.store_error();
            shared.counters.bypass(BypassReason::StoreError);
            tracing::warn!(%error, "cache store write failed; response served uncached");
            false
        }
    }
}

/// A response built from a stored entry: the full response, headers only for HEAD, or a
/// `304 Not Modified` when the client's conditional matches.
fn from_entry<St, B: Body>(
    shared: &Shared<St>,
    entry: &CachedResponse,
    lookout: &Lookout,
    outcome: Outcome,
    age: Option<std::time::Duration>,
) -> Response<CacheBody<B>> {
    let name = &shared.config.status_name;
    if not_modified(lookout, &entry.headers) {
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        // RFC 9110 §15.4.5: the fields a 200 would have carried that describe the selection.
        for field in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
        ] {
            for value in entry.headers.get_all(&field) {
                headers.append(field.clone(), value.clone());
            }
        }
        status::decorate(headers, name, outcome, age);
        return response;
    }
    let body = if lookout.head {
        CacheBody::empty()
    } else {
        CacheBody::cached(entry.body.clone(), entry.trailers.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    if lookout.head && !entry.headers.contains_key(CONTENT_LENGTH) {
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    status::decorate(response.headers_mut(), name, outcome, age);
    response
}

/// Whether the client's `If-None-Match` / `If-Modified-Since` match the entry (RFC 9110 §13.2.2).
fn not_modified(lookout: &Lookout, headers: &HeaderMap) -> bool {
    if let Some(condition) = &lookout.if_none_match {
        let Some(etag) = headers.get(ETAG) else {
            return false;
        };
        return condition
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|candidate| candidate == b"*" || weak_tag(candidate) == weak_tag(etag.as_bytes()));
    }
    let Some(since) = lookout
        .if_modified_since
        .as_ref()
        .and_then(|v| policy::http_date(v.as_bytes()))
    else {
        return false;
    };
    headers
        .get(LAST_MODIFIED)
        .and_then(|v| policy::http_date(v.as_bytes()))
        .is_some_and(|modified| modified <= since)
}

/// The opaque part of an entity tag, for weak comparison.
fn weak_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A forwarded response the policy or the body kept out of the store.
fn not_stored<St, B>(
    shared: &Shared<St>,
    parts: http::response::Parts,
    body: B,
    reason: BypassReason,
    kind: MissKind,
) -> Response<B> {
    shared.counters.bypass(reason);
    tracing::debug!(reason = reason.as_str(), "response not stored");
    let outcome = Outcome::Miss {
        kind,
        fwd_status: parts.status.as_u16(),
        stored: false,
        detail: Some(reason.as_str()),
    };
    decorated(shared, Response::from_parts(parts, body), outcome)
}

fn streamed<St, B: Body>(shared: &Shared<St>, response: Response<B>, outcome: Outcome) -> Response<CacheBody<B>> {
    decorated(shared, response.map(CacheBody::streamed), outcome)
}

fn decorated<St, B>(shared: &Shared<St>, mut response: Response<B>, outcome: Outcome) -> Response<B> {
    status::decorate(response.headers_mut(), &shared.config.status_name, outcome, None);
    response
}
