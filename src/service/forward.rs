//! Going to the inner service: the unconditional or revalidating request, stale-if-error,
//! and storing what comes back.

use super::lookup::{Lookout, Stale};
use super::respond::{finish, from_entry, not_stored};
use crate::body::{collect_bounded, collect_ready, Collected, ReadWhole, StoreWhenWhole};
use crate::coalesce::{Flight, OriginFailure, Settlement};
use crate::entry::{CachedResponse, Entry};
use crate::key;
use crate::layer::{Config, Shared};
use crate::metrics::{BypassReason, Counters, Timed};
use crate::policy::cache_control::CacheControl;
use crate::policy::{self, Freshness, RequestFacts};
use crate::status::{MissKind, Outcome, StaleReason};
use crate::store::{PurgeMode, Store};
use crate::tags::{detached, string_list, CACHE_GROUPS};
use crate::{CacheBody, CacheTags};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{
    HeaderMap, HeaderName, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, SET_COOKIE, TRANSFER_ENCODING, VARY,
};
use http::{request, response, Request, Response, StatusCode};
use http_body::Body;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower_service::Service;

/// A response for the client, and what waiters on the same key may be given.
pub(super) type Forwarded<B> = (Response<CacheBody<B>>, Settlement);

/// One trip to the inner service on behalf of a request.
pub(super) struct Attempt<'a> {
    pub(super) lookout: &'a Lookout,
    pub(super) miss_kind: MissKind,
    /// The stored response this request found stale, if any.
    pub(super) stale: Option<&'a Stale>,
    /// Whether a failing origin may be answered for by `stale` (not in background refreshes,
    /// which have no one to answer).
    pub(super) absorb_errors: bool,
    /// Set when a client reads the response: a body still arriving is then passed on to it
    /// as it comes, and takes this request's flight (if it leads one) along, to settle once
    /// the body is stored. `None` (background refreshes) reads the body whole first.
    pub(super) client: Option<&'a mut Option<Flight>>,
}

/// Calls the inner service for a miss, revalidating the stale entry when it has validators,
/// serving it instead of an error while its stale-if-error window lasts, and storing a
/// storable response.
pub(super) async fn forward<S, St, ReqB, ResB>(
    shared: &Arc<Shared<St>>,
    inner: &mut S,
    mut parts: request::Parts,
    body: ReqB,
    attempt: Attempt<'_>,
) -> Result<Forwarded<ResB>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Error: Send + 'static>,
{
    let Attempt {
        lookout,
        miss_kind,
        stale,
        absorb_errors,
        client,
    } = attempt;
    // Cache warming reads no bodies: it needs them read whole here to store them.
    let client = client.filter(|_| parts.extensions.get::<ReadWhole>().is_none());
    // The client's conditional is answered by the cache; the origin gets the cache's own.
    parts.headers.remove(IF_NONE_MATCH);
    parts.headers.remove(IF_MODIFIED_SINCE);
    let request = detached(&parts);
    // gRPC servers do not answer conditionals: a stale gRPC entry is simply replaced.
    let revalidating = stale.filter(|s| lookout.grpc.is_none() && add_validators(&mut parts.headers, &s.entry.headers));
    let fallback = stale.filter(|s| absorb_errors && s.serves_if_error(SystemTime::now()));

    // Freshness counts from when the origin was asked (RFC 9111 §4.2.3 `request_time`), not
    // from when this request arrived: it may have waited on another's flight first.
    let facts = RequestFacts {
        request_time: SystemTime::now(),
        ..lookout.facts
    };
    let call = shared
        .counters
        .timed(Timed::Origin, inner.call(Request::from_parts(parts, body)));
    let result = match (fallback, shared.config.origin_timeout) {
        // The timeout only bounds how long a stale answer is held back.
        (Some(stale), Some(timeout)) => match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => return Ok(stale_on_error(shared, stale, lookout, None, StaleReason::OriginTimeout)),
        },
        _ => call.await,
    };
    let response = match (result, fallback) {
        (Ok(response), _) => response,
        (Err(_), Some(stale)) => return Ok(stale_on_error(shared, stale, lookout, None, StaleReason::IfError)),
        (Err(error), None) => return Err(error),
    };
    let response_time = SystemTime::now();
    let (head, body) = response.into_parts();
    let judged = Judged {
        lookout,
        facts: &facts,
        stale,
        fallback,
        revalidating,
        response_time,
    };
    Ok(match decide(shared, &judged, &head) {
        Decision::StandIn(stale) => stale_on_error(shared, stale, lookout, Some(head.status), StaleReason::IfError),
        Decision::OriginFailure => origin_failure(shared, head, body, lookout, miss_kind).await,
        Decision::Refuse(reason, settlement) => {
            let response = not_stored(shared, head, CacheBody::streamed(body), reason, miss_kind);
            (response, settlement)
        }
        Decision::Revalidated(stale) => {
            revalidated(shared, stale, head, lookout, &facts, &request, response_time).await
        }
        Decision::Keep(freshness) => {
            let kept = Kept {
                request: &request,
                freshness,
                response_time,
                miss_kind,
                client,
            };
            keep(shared, lookout, head, body, kept).await
        }
    })
}

/// What the decision step knows besides the response's head.
struct Judged<'a> {
    lookout: &'a Lookout,
    /// The request's facts, timed from when the origin was asked.
    facts: &'a RequestFacts,
    stale: Option<&'a Stale>,
    /// The stale entry that may stand in for a failing origin.
    fallback: Option<&'a Stale>,
    /// The stale entry the origin was asked to confirm (a conditional request).
    revalidating: Option<&'a Stale>,
    response_time: SystemTime,
}

/// What to do with the origin's answer, decided from its head alone.
enum Decision<'a> {
    /// The origin failed: answer with the stale entry instead (RFC 5861 §4).
    StandIn(&'a Stale),
    /// The origin failed (a 5xx): pass it on, and share it with the waiters.
    OriginFailure,
    /// Pass it on, not stored; waiters learn the settlement.
    Refuse(BypassReason, Settlement),
    /// The origin confirmed the stale entry (`304`).
    Revalidated(&'a Stale),
    /// Storable for this long: read the body and store it.
    Keep(Freshness),
}

/// The decision step: RFC 9111 and the safety rules applied to the response's head.
fn decide<'a, St>(shared: &Shared<St>, judged: &Judged<'a>, head: &response::Parts) -> Decision<'a> {
    let lookout = judged.lookout;
    let status = head.status;
    // A gRPC server fails with HTTP 200 and the failure in `grpc-status`.
    let grpc_failure = lookout.grpc.as_ref().is_some_and(|call| call.is_server_failure(head));
    if status.is_server_error() || grpc_failure {
        if let Some(stale) = judged.fallback {
            return Decision::StandIn(stale);
        }
        if grpc_failure {
            // Errors are not a property of the key: a waiter takes over.
            return Decision::Refuse(BypassReason::GrpcStatus, Settlement::Retry);
        }
        if judged.stale.is_some() {
            // A 5xx never replaces a stored response.
            return Decision::OriginFailure;
        }
    }
    if let (StatusCode::NOT_MODIFIED, Some(stale)) = (status, judged.revalidating) {
        return Decision::Revalidated(stale);
    }
    if let Some(reason) = lookout.grpc.as_ref().and_then(|call| call.head_refusal(head)) {
        return Decision::Refuse(reason, Settlement::Retry);
    }
    let policy = &shared.config.policy;
    let freshness = match policy::storable(policy, judged.facts, head, &lookout.decided, judged.response_time) {
        Ok(freshness) => freshness,
        // A failing origin is not a property of the key: it is never remembered as uncacheable.
        Err(_) if status.is_server_error() => return Decision::OriginFailure,
        Err(reason) => return Decision::Refuse(reason, refusal(reason, lookout.facts.credentials)),
    };
    let event_stream = head
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if event_stream {
        return Decision::Refuse(BypassReason::Streaming, Settlement::Uncacheable);
    }
    Decision::Keep(freshness)
}

/// What waiters learn from a response kept out of the store: the key is remembered as
/// uncacheable, unless the refusal belongs to the leader's request alone (its credentials,
/// a `private` answer to them): then one waiter takes over, since theirs may be shareable.
fn refusal(reason: BypassReason, credentials: bool) -> Settlement {
    let personal = reason == BypassReason::Credentials || (reason == BypassReason::Private && credentials);
    if personal {
        Settlement::Retry
    } else {
        Settlement::Uncacheable
    }
}

/// What the storage step needs besides the response.
struct Kept<'a> {
    request: &'a request::Parts,
    freshness: Freshness,
    response_time: SystemTime,
    miss_kind: MissKind,
    client: Option<&'a mut Option<Flight>>,
}

/// The storage step: reads the body (bounded; passed on as it arrives when a client waits
/// for it), tags the entry and stores it.
async fn keep<St: Store, B: Body<Error: Send + 'static>>(
    shared: &Arc<Shared<St>>,
    lookout: &Lookout,
    head: response::Parts,
    body: B,
    kept: Kept<'_>,
) -> Forwarded<B> {
    let Kept {
        request,
        freshness,
        response_time,
        miss_kind,
        client,
    } = kept;
    let config = &shared.config;
    let status = head.status;
    let max = config.max_body_bytes;
    let mut too_large = BypassReason::BodyTooLarge;
    let collected = match &lookout.grpc {
        Some(call) => {
            let (collected, reason) = call.collect(body, max).await;
            too_large = reason;
            Ok(collected)
        }
        None if client.is_some() => collect_ready(body, max).await,
        None => Ok(collect_bounded(body, max).await),
    };
    let (data, trailers) = match collected {
        Ok(Collected::Complete { data, trailers }) => (data, trailers),
        Ok(Collected::TooLarge(body)) => {
            let reason = too_large;
            return (
                not_stored(shared, head, body, reason, miss_kind),
                Settlement::Uncacheable,
            );
        }
        Ok(Collected::Failed(body)) => {
            let response = not_stored(shared, head, body, BypassReason::BodyError, miss_kind);
            return (response, Settlement::Retry);
        }
        // The body arrives over time: the client gets it as it comes, and it is stored (and
        // waiters told) once it has come whole.
        Err(arriving) => {
            let Some(tags) = entry_tags(config, request, &head, &lookout.decided.tags) else {
                let body = CacheBody::resumed(arriving);
                return (
                    not_stored(shared, head, body, BypassReason::Tags, miss_kind),
                    Settlement::Uncacheable,
                );
            };
            let mut head = head;
            // Shown to the CDN on this response, not kept in the stored head.
            let mut cdn_headers = HeaderMap::new();
            if let Some(cdn) = &config.cdn_tags {
                let per_identity = freshness.vary.contains(&key::IDENTITY);
                let dropped = cdn.write_tags(&mut cdn_headers, &tags, per_identity);
                shared.counters.cdn_tags_dropped(dropped);
            }
            let store = StoreOnceWhole {
                shared: shared.clone(),
                lookout: lookout.clone(),
                request_headers: request.headers.clone(),
                head: head_of(&head),
                freshness,
                tags,
                request_time: lookout.facts.request_time,
                response_time,
                flight: client.and_then(Option::take),
            };
            head.headers.extend(cdn_headers);
            let body = CacheBody::copied(arriving, max, Box::new(store));
            let outcome = Outcome::miss(miss_kind, status.as_u16());
            let response = finish(shared, Response::from_parts(head, body), outcome, None);
            // Not read by anyone: the flight went with the body.
            return (response, Settlement::Retry);
        }
    };
    if let Some(reason) = lookout
        .grpc
        .as_ref()
        .and_then(|call| call.body_refusal(&data, trailers.as_ref()))
    {
        let settlement = match reason {
            BypassReason::Streaming => Settlement::Uncacheable,
            _ => Settlement::Retry,
        };
        let response = not_stored(shared, head, CacheBody::cached(data, trailers), reason, miss_kind);
        return (response, settlement);
    }
    let mut call_tags = lookout.grpc.as_ref().map(|call| call.tags(request)).unwrap_or_default();
    call_tags.extend(lookout.decided.tags.iter().cloned());
    let Some(tags) = entry_tags(config, request, &head, &call_tags) else {
        let body = CacheBody::cached(data, trailers);
        return (
            not_stored(shared, head, body, BypassReason::Tags, miss_kind),
            Settlement::Uncacheable,
        );
    };
    let ttl = freshness.store_ttl();
    // The entry keeps the instant this request arrived: purges are judged on the safe side.
    let request_time = lookout.facts.request_time;
    let entry = CachedResponse::new(&head, data, trailers, freshness, tags, request_time, response_time);
    let entry = Arc::new(entry);
    let stored = store(shared, lookout, &entry, ttl, &request.headers).await;
    let outcome = stored_outcome(Outcome::miss(miss_kind, status.as_u16()), stored);
    let mut response = from_entry(shared, &entry, lookout, outcome, upstream_age(&entry));
    // Extensions are not stored; the response that was just produced keeps its own.
    response.extensions_mut().extend(head.extensions);
    (response, settled(stored == Ok(true), &entry))
}

/// A storable response whose body is still arriving, kept until it has come whole.
struct StoreOnceWhole<St> {
    shared: Arc<Shared<St>>,
    lookout: Lookout,
    request_headers: HeaderMap,
    head: response::Parts,
    freshness: Freshness,
    tags: Vec<String>,
    request_time: SystemTime,
    response_time: SystemTime,
    flight: Option<Flight>,
}

impl<St: Store> StoreWhenWhole for StoreOnceWhole<St> {
    fn complete(self: Box<Self>, data: Bytes, trailers: Option<HeaderMap>) -> BoxFuture<'static, ()> {
        let this = *self;
        // The body is whole: a client leaving now does not keep it out of the store.
        Box::pin(crate::invalidate::run_to_completion(async move {
            let ttl = this.freshness.store_ttl();
            let entry = CachedResponse::new(
                &this.head,
                data,
                trailers,
                this.freshness,
                this.tags,
                this.request_time,
                this.response_time,
            );
            let entry = Arc::new(entry);
            let stored = store(&this.shared, &this.lookout, &entry, ttl, &this.request_headers).await;
            if let Some(flight) = this.flight {
                flight.settle(settled(stored == Ok(true), &entry));
            }
        }))
    }

    fn too_large(self: Box<Self>) {
        self.shared.counters.not_stored(BypassReason::BodyTooLarge);
        if let Some(flight) = self.flight {
            flight.settle(Settlement::Uncacheable);
        }
    }

    fn failed(self: Box<Self>) {
        self.shared.counters.not_stored(BypassReason::BodyError);
        // A broken body says nothing of the key: a waiter takes over.
        if let Some(flight) = self.flight {
            flight.settle(Settlement::Retry);
        }
    }
}

/// The status, version and headers of a response, to store with its body.
fn head_of(parts: &response::Parts) -> response::Parts {
    let (mut head, ()) = Response::new(()).into_parts();
    head.status = parts.status;
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// What waiters learn from a response that was storable: look it up, or go alone (the
/// store refused it or failed).
fn settled(stored: bool, entry: &CachedResponse) -> Settlement {
    match stored {
        true if entry.vary.contains(&key::IDENTITY) => Settlement::PerIdentity,
        true => Settlement::Stored,
        false => Settlement::Retry,
    }
}

/// Says whether the response was stored, or that the store failed.
fn stored_outcome(outcome: Outcome, stored: Result<bool, ()>) -> Outcome {
    match stored {
        Ok(stored) => outcome.stored(stored),
        Err(()) => outcome.refused(BypassReason::StoreError),
    }
}

/// The age a response already had when it arrived (from an upstream cache's `Age` or its
/// `Date`), which the client must see too; `None` when it arrived new.
fn upstream_age(entry: &CachedResponse) -> Option<Duration> {
    Some(entry.age(SystemTime::now())).filter(|age| age.as_secs() > 0)
}

/// The origin answered 5xx: the client gets that answer, and waiters on the same key a copy
/// of it (bounded by `max_body_bytes`) rather than each calling a failing origin. A failure
/// that may carry what belongs to the leader's request alone (it had credentials, or the
/// answer sets a cookie, is `private` or varies) reaches waiters as its status code only.
async fn origin_failure<St, B: Body<Error: Send + 'static>>(
    shared: &Shared<St>,
    parts: response::Parts,
    body: B,
    lookout: &Lookout,
    kind: MissKind,
) -> Forwarded<B> {
    // `Vary`: the failure was selected for the leader's request headers, not the waiters'.
    let targeted_private = shared
        .config
        .policy
        .targeted
        .iter()
        .any(|name| CacheControl::from_targeted(&parts.headers, name).is_some_and(|cc| cc.private));
    // An answer to an identity may be that identity's alone, like one to credentials.
    let personal = lookout.facts.credentials
        || lookout.facts.identity
        || parts.headers.contains_key(SET_COOKIE)
        || parts.headers.contains_key(VARY)
        || targeted_private
        || CacheControl::from_headers(&parts.headers, &CACHE_CONTROL).private;
    let (body, copy) = if personal {
        (CacheBody::streamed(body), None)
    } else {
        match collect_bounded(body, shared.config.max_body_bytes).await {
            Collected::Complete { data, trailers } => (CacheBody::cached(data.clone(), trailers), Some(data)),
            Collected::TooLarge(body) | Collected::Failed(body) => (body, None),
        }
    };
    let headers = match copy {
        Some(_) => parts.headers.clone(),
        None if personal => HeaderMap::new(),
        None => {
            // The head alone: its length no longer describes what waiters receive.
            let mut headers = parts.headers.clone();
            headers.remove(CONTENT_LENGTH);
            headers
        }
    };
    let failure = OriginFailure {
        response: Some((parts.status, headers, copy.unwrap_or_default())),
    };
    let response = not_stored(shared, parts, body, BypassReason::Status, kind);
    (response, Settlement::Failed(Arc::new(failure)))
}

/// Adds `If-None-Match` / `If-Modified-Since` from the stored entry; `false` if it has none.
fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(etag) = stored.get(ETAG) {
        request.insert(IF_NONE_MATCH, etag.clone());
        return true;
    }
    if let Some(modified) = stored.get(LAST_MODIFIED) {
        request.insert(IF_MODIFIED_SINCE, modified.clone());
        return true;
    }
    false
}

/// The origin failed: answer from the stale entry instead (RFC 5861 §4).
fn stale_on_error<St, B: Body>(
    shared: &Shared<St>,
    stale: &Stale,
    lookout: &Lookout,
    status: Option<StatusCode>,
    reason: StaleReason,
) -> Forwarded<B> {
    Counters::count(&shared.counters.errors_absorbed);
    Counters::count(&shared.counters.stale_hits);
    tracing::warn!(
        status = status.map(|s| s.as_u16()),
        detail = reason.as_str(),
        "origin failed; serving a stale response"
    );
    let now = SystemTime::now();
    let mut outcome = Outcome::stale_hit(stale.stale_for(now), reason);
    if let Some(status) = status {
        outcome = outcome.fwd_status(status.as_u16());
    }
    let response = from_entry(shared, &stale.entry, lookout, outcome, Some(stale.entry.age(now)));
    (response, Settlement::StaleOnError)
}

/// The origin answered 304 to the cache's conditional: the stored response, with its
/// headers updated from the 304, is fresh again (RFC 9111 §4.3.4).
async fn revalidated<St: Store, B: Body<Error: Send + 'static>>(
    shared: &Shared<St>,
    stale: &Stale,
    not_modified: response::Parts,
    lookout: &Lookout,
    facts: &RequestFacts,
    request: &request::Parts,
    response_time: SystemTime,
) -> Forwarded<B> {
    let old = &stale.entry;
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = old.status;
    parts.headers = old.headers.clone();
    let mut replaced: Vec<HeaderName> = Vec::new();
    for (name, value) in &not_modified.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if !replaced.contains(name) {
            parts.headers.remove(name);
            replaced.push(name.clone());
        }
        parts.headers.append(name.clone(), value.clone());
    }
    parts.extensions = not_modified.extensions;
    Counters::count(&shared.counters.revalidations);
    let config = &shared.config;
    let body = old.body.clone();
    let freshness = policy::storable(&config.policy, facts, &parts, &lookout.decided, response_time);
    let tags = entry_tags(config, request, &parts, &old.tags);
    let (Ok(freshness), Some(tags)) = (freshness, tags) else {
        let response = not_stored(
            shared,
            parts,
            CacheBody::cached(body, old.trailers.clone()),
            BypassReason::NotFresh,
            MissKind::Stale,
        );
        return (response, Settlement::Uncacheable);
    };
    let ttl = freshness.store_ttl();
    let trailers = old.trailers.clone();
    let entry = CachedResponse::new(
        &parts,
        body,
        trailers,
        freshness,
        tags,
        lookout.facts.request_time,
        response_time,
    );
    let entry = Arc::new(entry);
    let stored = store(shared, lookout, &entry, ttl, &request.headers).await;
    let outcome = stored_outcome(Outcome::miss(MissKind::Stale, 304).detail("revalidated"), stored);
    let response = from_entry(shared, &entry, lookout, outcome, upstream_age(&entry));
    (response, settled(stored == Ok(true), &entry))
}

/// Every tag of a response about to be stored (plus `inherited` ones), or `None` if they
/// cannot all be recorded.
fn entry_tags(
    config: &Config,
    request: &request::Parts,
    response: &response::Parts,
    inherited: &[String],
) -> Option<Vec<String>> {
    let mut tags = vec![key::path_tag(request.uri.path())];
    tags.extend(inherited.iter().cloned());
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

/// Writes the entry (and, for a varying response, the variant index): `Ok(true)` stored,
/// `Ok(false)` declined by the store, `Err(())` the store failed (logged and counted).
async fn store<St: Store>(
    shared: &Shared<St>,
    lookout: &Lookout,
    entry: &Arc<CachedResponse>,
    ttl: Duration,
    request_headers: &HeaderMap,
) -> Result<bool, ()> {
    let primary = &lookout.primary;
    let put = |key, entry, ttl| {
        shared
            .counters
            .timed(Timed::StorePut, shared.store.put(key, entry, ttl))
    };
    let result = if entry.vary.is_empty() {
        put(primary.clone(), Entry::Response(entry.clone()), ttl).await
    } else {
        let names: Arc<[HeaderName]> = entry.vary.clone().into();
        let variant = key::variant(primary, &names, request_headers, lookout.identity.as_deref());
        // The index outlives any one variant so that it never hides a live one.
        let index_ttl = shared.config.policy.max_ttl.max(ttl);
        match put(primary.clone(), Entry::Variants(names), index_ttl).await {
            Ok(_) => put(variant, Entry::Response(entry.clone()), ttl).await,
            Err(error) => Err(error),
        }
    };
    match result {
        Ok(true) => {
            shared.counters.stored();
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(error) => {
            shared.counters.store_error();
            shared.counters.not_stored(BypassReason::StoreError);
            tracing::warn!(%error, "cache store write failed; response served uncached");
            Err(())
        }
    }
}

/// RFC 9111 §4.4: after a successful unsafe request, the target URI (and same-origin
/// `Location` / `Content-Location`) must not be served from the cache any more. The purge
/// runs to its end even if the client goes away while it is under way.
pub(super) async fn invalidate_target<St: Store>(
    shared: &Arc<Shared<St>>,
    request: &request::Parts,
    response: &HeaderMap,
) {
    let tags = crate::invalidate::rfc9111_tags(request, response);
    let shared = shared.clone();
    crate::invalidate::purge_after_mutation(async move {
        let purge = shared.store.purge(&tags, PurgeMode::Hard);
        if let Err(error) = shared.counters.timed(Timed::StorePurge, purge).await {
            shared.counters.store_error();
            tracing::error!(%error, ?tags, "purge of a mutated URI failed");
        }
    })
    .await;
}

/// Answers a `504` to `only-if-cached` requests that missed.
pub(super) fn gateway_timeout<St, B: Body>(shared: &Shared<St>, kind: MissKind) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    let outcome = Outcome::miss(kind, 504).detail("only-if-cached");
    finish(shared, response, outcome, None)
}
