//! `CacheService`: request → key → lookup → hit (fresh, or stale while one refresh runs), or
//! miss → coalesce → inner service → policy → store.

mod call;
mod forward;
mod lookup;
mod respond;

use crate::coalesce::{self, Flight, Join, OriginFailure, Settlement};
use crate::fleet::{self, Fleet};
use crate::future::{HttpService, ResponseFuture, SendBody};
use crate::grpc_wire;
use crate::invalidate;
use crate::key::{self, CacheKey};
use crate::layer::Shared;
use crate::metrics::{BypassReason, Counters};
use crate::policy::{cache_control::CacheControl, CacheDecision, RequestFacts};
use crate::refresh_ahead;
use crate::status::{CacheOutcome, MissKind, Outcome, StaleReason};
use crate::store::CachedResponse;
use crate::store::{request_clock, Store};
use crate::tags::detached;
use crate::CacheBody;
use call::OptedIn;
use forward::{forward, gateway_timeout, invalidate_target, Attempt};
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, COOKIE, IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE};
use http::{request, Method, Request, Response};
use http_body::Body;
use lookup::{lookup, lookup_latest, lookup_now, Found, Lookout, Stale};
use respond::{from_entry, streamed};
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
        self.shared.stats()
    }
}

impl<S, St, ReqB> Service<Request<ReqB>> for CacheService<S, St>
where
    S: HttpService<ReqB>,
    St: Store,
    ReqB: Send + 'static,
{
    type Response = Response<CacheBody<S::ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let status_sent = self.shared.config.status_header.sent_for(req.headers());
        let (mut parts, body) = req.into_parts();
        // A fresh hit read at once is answered here: no clone of the inner service, no box.
        let begun = match begin(&self.shared, &mut parts, status_sent) {
            Ok(response) => return ResponseFuture::ready(response),
            Err(begun) => begun,
        };
        // The ready service goes into the future; the clone stays for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture::new(async move {
            let mut response = handle(&shared, inner, parts, body, begun).await?;
            write_status(&shared, &mut response, status_sent);
            Ok(response)
        })
    }
}

/// Adds `Cache-Status` from the response's outcome, when it is sent for this request.
fn write_status<St, B>(shared: &Shared<St>, response: &mut Response<B>, status_sent: bool) {
    if status_sent {
        if let Some(outcome) = response.extensions().get::<CacheOutcome>().copied() {
            outcome.write_header(response.headers_mut(), shared.config.status_name.as_str());
        }
    }
}

/// How far [`begin`] got with a request it could not answer.
enum Begun {
    /// The policy's decision: the rest of the flow is [`handle`]'s.
    Decided(CacheDecision),
    /// Looked up at once, with this outcome (anything but a plain fresh hit).
    Looked {
        lookout: Box<Lookout>,
        found: Found,
        generation: u64,
        /// A fresh entry found due for a refresh ahead of expiry.
        ahead: bool,
    },
    /// The store answers only by awaiting.
    Prepared { lookout: Box<Lookout>, generation: u64 },
}

/// The part of the flow that needs no waiting: the policy's decision, and for a plain GET
/// or HEAD (no gRPC, no range, request directives not honoured) its key and, if the store
/// can answer at once, its lookup; a fresh hit is answered, `Cache-Status` included.
fn begin<St: Store, B: Body>(
    shared: &Shared<St>,
    parts: &mut request::Parts,
    status_sent: bool,
) -> Result<Response<CacheBody<B>>, Begun> {
    let config = &shared.config;
    let decided = config.decide(parts);
    let plain = OptedIn::find(config, parts).is_none()
        && !config.honor_request_directives
        && !parts.headers.contains_key(RANGE)
        && request_bypass(shared, parts, &decided, false).is_none();
    if !plain {
        return Err(Begun::Decided(decided));
    }
    // The request's start is read by the flow that may store its response: a hit needs
    // none, and reading it touches a clock that every request would share.
    let lookout = lookout_for(config, parts, decided, None, std::time::UNIX_EPOCH);
    let generation = shared.coalescer.generation();
    // One clock read judges the entry fresh and gives its age.
    let now = SystemTime::now();
    match lookup_now(shared, &lookout, &parts.headers, now) {
        // Due for a refresh ahead of expiry: answered by `handle`, which has the inner service.
        Some((Found::Fresh(entry), _)) if refresh_due(shared, &lookout, &entry) => Err(Begun::Looked {
            lookout: Box::new(lookout),
            found: Found::Fresh(entry),
            generation,
            ahead: true,
        }),
        Some((Found::Fresh(entry), age)) => {
            shared.counters.hit();
            let outcome = Outcome::hit(entry.lifetime.saturating_sub(age));
            // The request's extensions (axum's route parameters, say) are done with: emptied,
            // their map carries the response's outcome without allocating one of its own.
            let mut extensions = std::mem::take(&mut parts.extensions);
            extensions.clear();
            let mut response = respond::from_entry_with(shared, &entry, &lookout, outcome, Some(age), extensions);
            if status_sent {
                CacheOutcome::new(outcome, Some(age)).write_header(response.headers_mut(), config.status_name.as_str());
            }
            Ok(response)
        }
        Some((found, _)) => Err(Begun::Looked {
            lookout: Box::new(lookout),
            found,
            generation,
            ahead: false,
        }),
        None => Err(Begun::Prepared {
            lookout: Box::new(lookout),
            generation,
        }),
    }
}

/// A list-valued field as one value: its field lines joined with commas (RFC 9110 §5.3).
/// A single line is shared as it is.
fn field_list(headers: &http::HeaderMap, name: &http::HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(first.clone());
    };
    let mut joined = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// The request as the lookup and the rest of the flow see it.
fn lookout_for(
    config: &crate::layer::Config,
    parts: &request::Parts,
    mut decided: CacheDecision,
    call: Option<call::GrpcCall>,
    request_time: SystemTime,
) -> Lookout {
    let identity: Option<Arc<str>> = config.identity(parts).map(Into::into);
    let mut primary = config.key.primary(parts);
    let mut conditional = (
        field_list(&parts.headers, &IF_NONE_MATCH),
        parts.headers.get(IF_MODIFIED_SINCE).cloned(),
    );
    if let Some(call) = &call {
        primary = call.key(&primary, &parts.headers);
        if decided.ttl.is_none() {
            decided.ttl = call.ttl();
        }
        // A gRPC client cannot read a 304.
        conditional = (None, None);
    }
    Lookout {
        primary,
        facts: RequestFacts {
            credentials: parts.headers.contains_key(AUTHORIZATION) || parts.headers.contains_key(COOKIE),
            identity: identity.is_some(),
            request_time,
        },
        identity,
        decided,
        head: parts.method == Method::HEAD,
        if_none_match: conditional.0,
        if_modified_since: conditional.1,
        grpc: call,
    }
}

/// How many times a waiter takes over from abandoned leaders before going alone.
const MAX_TAKEOVERS: usize = 3;

async fn handle<S, St, ReqB, ResB>(
    shared: &Arc<Shared<St>>,
    mut inner: S,
    parts: request::Parts,
    body: ReqB,
    begun: Begun,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    St: Store,
    ReqB: Send + 'static,
    ResB: SendBody,
{
    let config = &shared.config;
    // Whether a fresh entry found is due for a refresh ahead of expiry, once judged.
    let mut ahead = None;
    let (lookout, mut found, generation, body) = match begun {
        Begun::Looked {
            mut lookout,
            found,
            generation,
            ahead: due,
        } => {
            // Before anything is asked of the origin: what it answers started after this.
            lookout.facts.request_time = request_clock();
            ahead = Some(due);
            (*lookout, found, generation, body)
        }
        Begun::Prepared {
            mut lookout,
            generation,
        } => {
            lookout.facts.request_time = request_clock();
            let found = lookup(shared, &lookout, &parts.headers).await;
            (*lookout, found, generation, body)
        }
        Begun::Decided(decided) => {
            let opted_in = OptedIn::find(config, &parts);
            if let Some(reason) = request_bypass(shared, &parts, &decided, opted_in.is_some()) {
                // Boxed here and below: the paths that wait on the inner service would otherwise
                // make every request's future (hits included) as large as theirs.
                return Box::pin(bypass(shared, inner, parts, body, reason)).await;
            }
            // An opted-in gRPC call is keyed by its request message, read here and handed on.
            let (body, call) = match opted_in {
                None => (body, None),
                Some(opted_in) => match Box::pin(opted_in.read(body)).await {
                    Ok((body, call)) => (body, Some(call)),
                    Err((body, reason)) => return Box::pin(bypass(shared, inner, parts, body, reason)).await,
                },
            };
            let lookout = lookout_for(config, &parts, decided, call, request_clock());
            let generation = shared.coalescer.generation();
            let found = lookup(shared, &lookout, &parts.headers).await;
            (lookout, found, generation, body)
        }
    };
    let directives = config
        .honor_request_directives
        .then(|| CacheControl::from_headers(&parts.headers, &CACHE_CONTROL));

    // The client's own limits, when honoured (RFC 9111 §5.2.1): an entry too old for them
    // goes to the origin (revalidated when it can be); one they accept stale is served.
    let mut client_refuses_stored = false;
    if let Some(cc) = &directives {
        let now = SystemTime::now();
        found = match found {
            Found::Fresh(entry) if requires_newer(cc, &entry, now) => {
                client_refuses_stored = true;
                Found::Stale(Stale {
                    entry,
                    error_only: false,
                    soft_purged: false,
                })
            }
            Found::Stale(stale) if accepts_stale(cc, &stale, now) => {
                Counters::count(&shared.counters.stale_hits);
                let outcome = Outcome::stale_hit(stale.stale_for(now), StaleReason::MaxStale);
                let age = Some(stale.entry.age(now));
                return Ok(from_entry(shared, &stale.entry, &lookout, outcome, age));
            }
            Found::Stale(stale) => {
                client_refuses_stored = requires_newer(cc, &stale.entry, now);
                Found::Stale(stale)
            }
            other => other,
        };
    }
    // Range handling is defined for GET only (RFC 9110 §14.2): a HEAD's Range is ignored.
    if parts.headers.contains_key(RANGE) && !lookout.head {
        // A range is cut from a fresh complete response; anything else goes to the origin
        // untouched, and its 206 is never stored.
        let Found::Fresh(entry) = found else {
            if directives.as_ref().is_some_and(|cc| cc.only_if_cached) {
                return Ok(gateway_timeout(shared, MissKind::Miss));
            }
            return Box::pin(bypass(shared, inner, parts, body, BypassReason::Range)).await;
        };
        let now = SystemTime::now();
        let outcome = Outcome::hit(entry.ttl(now));
        return Ok(
            match respond::ranged(shared, &entry, &lookout, &parts.headers, outcome, entry.age(now)) {
                Some(partial) => {
                    shared.counters.hit();
                    partial
                }
                None => hit(shared, &entry, &lookout),
            },
        );
    }
    let personal_miss = matches!(found, Found::PersonalMiss);
    let (stale, miss_kind) = match found {
        Found::Fresh(entry) => {
            if ahead.unwrap_or_else(|| refresh_due(shared, &lookout, &entry)) {
                let stale = Stale {
                    entry: entry.clone(),
                    error_only: false,
                    soft_purged: false,
                };
                start_refresh(shared, inner, parts, body, &lookout, &stale, true);
            }
            return Ok(hit(shared, &entry, &lookout));
        }
        Found::Stale(stale) if client_refuses_stored => (Some(stale), MissKind::Request),
        Found::Stale(stale) => {
            let now = SystemTime::now();
            if stale.serves_while_revalidating(now) && tokio::runtime::Handle::try_current().is_ok() {
                start_refresh(shared, inner, parts, body, &lookout, &stale, false);
                Counters::count(&shared.counters.stale_hits);
                let outcome = Outcome::stale_hit(stale.stale_for(now), StaleReason::WhileRevalidate);
                return Ok(from_entry(
                    shared,
                    &stale.entry,
                    &lookout,
                    outcome,
                    Some(stale.entry.age(now)),
                ));
            }
            (Some(stale), MissKind::Stale)
        }
        Found::Miss(kind) => (None, kind),
        Found::PersonalMiss => (None, MissKind::VaryMiss),
    };
    shared.counters.miss(miss_kind);
    if directives.is_some_and(|cc| cc.only_if_cached) {
        return Ok(gateway_timeout(shared, miss_kind));
    }
    if lookout.head {
        // A HEAD response has no body to store; it must never become the GET entry.
        shared.counters.not_stored(BypassReason::Head);
        let response = Box::pin(inner.call(Request::from_parts(parts, body))).await?;
        let outcome = Outcome::miss(miss_kind, response.status().as_u16()).refused(BypassReason::Head);
        return Ok(streamed(shared, response, outcome));
    }

    let mut flight = None;
    // A request with credentials (and no identity) gets its own answer, unless the stored
    // response shows that the resource answers them with a shareable one: it waits for no
    // one, so that per-user pages are not served one after another. One with an identity,
    // for a resource stored per identity, waits only for its own identity's call.
    let personal = lookout.facts.credentials
        && !lookout.facts.identity
        && !stale.as_ref().is_some_and(|s| s.entry.shareable_with_credentials);
    let flight_key = flight_key(&lookout, stale.as_ref(), personal_miss);
    if config.coalesce && personal {
        flight = shared.coalescer.try_lead(&flight_key);
    } else if config.coalesce {
        for _ in 0..MAX_TAKEOVERS {
            match shared.coalescer.join(&flight_key) {
                Join::Lead(lead) => {
                    flight = Some(lead);
                    break;
                }
                Join::Uncacheable => break,
                Join::Wait(waiter) => match Box::pin(waiter.wait(config.coalesce_timeout)).await {
                    // The leader went away or its response could not be kept: one waiter
                    // takes over for the rest.
                    coalesce::Outcome::Abandoned | coalesce::Outcome::Settled(Settlement::Retry) => continue,
                    coalesce::Outcome::Settled(Settlement::Uncacheable) => break,
                    // The leader's answer was its identity's alone: another identity's is
                    // its own too; a request without one may share the next leader's.
                    coalesce::Outcome::Settled(Settlement::PerIdentity) if lookout.identity.is_some() => break,
                    coalesce::Outcome::Settled(Settlement::PerIdentity) => continue,
                    coalesce::Outcome::Settled(Settlement::Failed(failure)) => {
                        return Ok(shared_failure(shared, &failure, miss_kind));
                    }
                    coalesce::Outcome::Settled(settlement) => {
                        let collapsed = collapsed(shared, settlement, &lookout, &parts, miss_kind);
                        if let Some(response) = Box::pin(collapsed).await {
                            return Ok(response);
                        }
                        // The stored answer does not serve this request (another `Vary`
                        // variant, a purge since): one such waiter leads the next call.
                        continue;
                    }
                    coalesce::Outcome::TimedOut => break,
                },
            }
        }
    }
    // A flight may have settled between this request's lookup and its join: look again
    // rather than call the origin a second time.
    if let Some(lead) = flight.take() {
        if shared.coalescer.generation() != generation {
            if let Found::Fresh(entry) = lookup(shared, &lookout, &parts.headers).await {
                lead.settle(Settlement::Stored);
                return Ok(hit(shared, &entry, &lookout));
            }
        }
        flight = Some(lead);
    }
    // Across the fleet: of the instances sharing the store, one calls the origin.
    // (Requests whose answers are their own wait for no one here either.)
    if let Some(lead) = flight.as_mut().filter(|_| config.fleet_coalesce && !personal) {
        let look = || async {
            match lookup(shared, &lookout, &parts.headers).await {
                Found::Fresh(entry) => Some(entry),
                _ => None,
            }
        };
        if let Fleet::Found(entry) = Box::pin(fleet::lead(&shared.store, &flight_key, lead, look)).await {
            if let Some(lead) = flight.take() {
                lead.settle(Settlement::Stored);
            }
            Counters::count(&shared.counters.coalesced);
            let outcome = Outcome::miss(miss_kind, entry.status.as_u16()).collapsed();
            return Ok(from_entry(
                shared,
                &entry,
                &lookout,
                outcome,
                Some(entry.age(SystemTime::now())),
            ));
        }
    }

    let attempt = Attempt {
        lookout: &lookout,
        miss_kind,
        stale: stale.as_ref(),
        absorb_errors: true,
        client: Some(&mut flight),
    };
    match Box::pin(forward(shared, &mut inner, parts, body, attempt)).await {
        Ok((response, settlement)) => {
            settle(flight, settlement).await;
            Ok(response)
        }
        Err(error) => {
            // Waiters share the failure (as a 502) rather than each calling a failing origin.
            settle(flight, Settlement::Failed(Arc::new(OriginFailure { response: None }))).await;
            Err(error)
        }
    }
}

/// Settles the leader's flight, then gives back what it held (its fleet-wide lease), so that
/// other instances can go on once this response is out.
async fn settle(flight: Option<Flight>, settlement: Settlement) {
    let Some(mut flight) = flight else { return };
    let held = flight.take_held();
    flight.settle(settlement);
    if let Some(held) = held {
        held.release().await;
    }
}

/// The key concurrent misses coalesce on: the resource's, unless what the store holds shows
/// it is stored per identity, then the caller's identity's own.
fn flight_key(lookout: &Lookout, stale: Option<&Stale>, personal_miss: bool) -> CacheKey {
    let per_identity = personal_miss || stale.is_some_and(|s| s.entry.vary.contains(&key::IDENTITY));
    match &lookout.identity {
        Some(identity) if per_identity => key::personal(&lookout.primary, identity),
        _ => lookout.primary.clone(),
    }
}

/// Forwards a request the cache does not look up, and (RFC 9111 §4.4) purges the target of
/// a successful unsafe request, to its end even if the client goes away meanwhile.
async fn bypass<S, St, ReqB, ResB>(
    shared: &Arc<Shared<St>>,
    mut inner: S,
    parts: request::Parts,
    body: ReqB,
    reason: BypassReason,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
    ResB: Body,
{
    shared.counters.bypass(reason);
    tracing::debug!(method = %parts.method, uri = %parts.uri, reason = reason.as_str(), "cache bypass");
    // A gRPC path names a procedure, not a resource, and a gRPC call's HTTP status says
    // nothing of its success: gRPC mutations purge through the InvalidateLayer.
    let mutation = (invalidate::is_unsafe(&parts.method) && !grpc_wire::is_grpc(&parts)).then(|| detached(&parts));
    let response = inner.call(Request::from_parts(parts, body)).await?;
    // An InvalidateLayer inside this one may have purged the target in this very store.
    let purged_inside = response
        .extensions()
        .get::<invalidate::TargetPurged>()
        .is_some_and(|purged| Some(purged.0) == shared.store.handle_id());
    if let Some(request) = mutation.filter(|_| invalidate::succeeded(response.status()) && !purged_inside) {
        invalidate_target(shared, &request, response.headers()).await;
    }
    let outcome = Outcome::bypass(reason, response.status().as_u16());
    Ok(streamed(shared, response, outcome))
}

/// Answers from a fresh entry.
fn hit<St, B: Body>(shared: &Shared<St>, entry: &CachedResponse, lookout: &Lookout) -> Response<CacheBody<B>> {
    shared.counters.hit();
    let age = entry.age(SystemTime::now());
    let ttl = entry.lifetime.saturating_sub(age);
    from_entry(shared, entry, lookout, Outcome::hit(ttl), Some(age))
}

/// Answers a waiter once its leader settled: from the store, which applies `Vary`,
/// credentials and any purge since the leader started; `None` sends it to the origin.
async fn collapsed<St: Store, B: Body>(
    shared: &Shared<St>,
    settlement: Settlement,
    lookout: &Lookout,
    parts: &request::Parts,
    miss_kind: MissKind,
) -> Option<Response<CacheBody<B>>> {
    if !matches!(settlement, Settlement::Stored | Settlement::StaleOnError) {
        return None;
    }
    let now = SystemTime::now();
    let (entry, outcome) = match (settlement, lookup(shared, lookout, &parts.headers).await) {
        (Settlement::Stored, Found::Fresh(entry)) => {
            let outcome = Outcome::miss(miss_kind, entry.status.as_u16()).collapsed();
            (entry, outcome)
        }
        (Settlement::StaleOnError, Found::Stale(stale)) if stale.serves_if_error(now) => {
            Counters::count(&shared.counters.stale_hits);
            (
                stale.entry.clone(),
                Outcome::stale_hit(stale.stale_for(now), StaleReason::IfError).collapsed(),
            )
        }
        _ => return None,
    };
    Counters::count(&shared.counters.coalesced);
    Some(from_entry(shared, &entry, lookout, outcome, None))
}

/// Whether this read of the fresh `entry` starts a refresh ahead of its expiry: never for a
/// HEAD, nor without a runtime to run it on, nor for a request with credentials or an
/// identity reading an entry stored for everyone (the refresh is made with the request, and
/// its answer to them may be theirs alone, replacing the shared entry).
fn refresh_due<St>(shared: &Shared<St>, lookout: &Lookout, entry: &CachedResponse) -> bool {
    let Some(ahead) = &shared.config.refresh_ahead else {
        return false;
    };
    let personal = lookout.facts.credentials || lookout.facts.identity;
    let own = lookout.identity.is_some() && entry.vary.contains(&key::IDENTITY);
    !lookout.head
        && (!personal || own)
        && ahead.due(&lookout.primary, entry, SystemTime::now())
        && tokio::runtime::Handle::try_current().is_ok()
}

/// Starts the one background refresh of `stale` (stale-while-revalidate, or `ahead` of a
/// fresh entry's expiry) unless one runs for its key already.
fn start_refresh<S, St, ReqB, ResB>(
    shared: &Arc<Shared<St>>,
    inner: S,
    parts: request::Parts,
    body: ReqB,
    lookout: &Lookout,
    stale: &Stale,
    ahead: bool,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    St: Store,
    ReqB: Send + 'static,
    ResB: SendBody,
{
    // A HEAD never refreshes: its answer has no body, and the service behind the layer may
    // be a HEAD-only handler (`Router::layer` wraps each method's own), so not even a GET
    // made from it could be trusted. The next GET refreshes.
    if lookout.head {
        return;
    }
    let flight_key = flight_key(lookout, Some(stale), false);
    if let Some(flight) = shared.coalescer.try_lead(&flight_key) {
        let refresh = refresh(
            shared.clone(),
            inner,
            parts,
            body,
            lookout.clone(),
            stale.clone(),
            flight,
            ahead,
        );
        tokio::spawn(refresh);
    }
}

/// Refreshes a stale entry in the background while it is served (stale-while-revalidate),
/// or a fresh one `ahead` of its expiry. A failed refresh keeps the entry.
#[allow(clippy::too_many_arguments)]
async fn refresh<S, St, ReqB, ResB>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    parts: request::Parts,
    body: ReqB,
    lookout: Lookout,
    stale: Stale,
    mut flight: Flight,
    ahead: bool,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
    ResB: Body<Error: Send + 'static>,
{
    // One refresh per fleet: an instance that finds another refreshing keeps serving what it
    // has. Ahead of expiry the entry is fresh still: only a newer one shows a refresh landed.
    if shared.config.fleet_coalesce {
        let fresh = async {
            match lookup_latest(&shared, &lookout, &parts.headers).await {
                Found::Fresh(entry) => !ahead || !refresh_ahead::same_response(&entry, &stale.entry),
                _ => false,
            }
        };
        if !Box::pin(fleet::refresh(&shared.store, &mut flight, fresh)).await {
            flight.settle(Settlement::Retry);
            return;
        }
    }
    Counters::count(&shared.counters.background_refreshes);
    let attempt = Attempt {
        lookout: &lookout,
        miss_kind: MissKind::Stale,
        stale: Some(&stale),
        absorb_errors: false,
        client: None,
    };
    // A refresh that outlives its flight is abandoned: nothing waits on it any more, and
    // the next stale hit starts a new one.
    let deadline = tokio::time::Instant::from_std(flight.deadline());
    let settlement = match tokio::time::timeout_at(deadline, forward(&shared, &mut inner, parts, body, attempt)).await {
        Ok(Ok((_response, settlement))) => Some(settlement),
        Ok(Err(_)) => {
            tracing::warn!("background refresh failed; the stale entry stays");
            None
        }
        Err(_) => {
            tracing::warn!("background refresh passed its deadline; abandoned");
            None
        }
    };
    if let Some(settlement) = settlement {
        settle(Some(flight), settlement).await;
    }
}

/// Answers a waiter whose leader's origin call failed with that failure: a copy of the 5xx
/// response, or `502 Bad Gateway` when the inner service returned an error.
fn shared_failure<St, B: Body>(shared: &Shared<St>, failure: &OriginFailure, kind: MissKind) -> Response<CacheBody<B>> {
    Counters::count(&shared.counters.failures_shared);
    let response = match &failure.response {
        Some((status, headers, body)) => {
            let mut response = Response::new(CacheBody::cached(body.clone(), None));
            *response.status_mut() = *status;
            *response.headers_mut() = headers.clone();
            response
        }
        None => {
            let mut response = Response::new(CacheBody::empty());
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response
        }
    };
    let outcome = Outcome::miss(kind, response.status().as_u16())
        .collapsed()
        .detail("origin-error");
    respond::finish(shared, response, outcome, None)
}

/// The client asks for something newer than `entry` (`no-cache`, `max-age`, `min-fresh`).
fn requires_newer(cc: &CacheControl, entry: &CachedResponse, now: SystemTime) -> bool {
    cc.no_cache
        || cc.max_age.is_some_and(|max| entry.age(now) > max)
        || cc.min_fresh.is_some_and(|min| entry.ttl(now) < min)
}

/// The client accepts `stale` as it is (`max-stale`), and the response allows it.
fn accepts_stale(cc: &CacheControl, stale: &Stale, now: SystemTime) -> bool {
    let Some(limit) = cc.max_stale else {
        return false;
    };
    let entry = &stale.entry;
    // A soft-purged entry is served only within its stale windows, as a purge promises.
    !stale.error_only
        && !stale.soft_purged
        && !entry.must_revalidate
        && !entry.no_cache
        && !requires_newer(cc, entry, now)
        && limit.is_none_or(|max| stale.stale_for(now) <= max)
}

/// The request-side safety rules: what is never looked up nor stored.
fn request_bypass<St>(
    shared: &Shared<St>,
    parts: &request::Parts,
    decided: &CacheDecision,
    grpc_opted_in: bool,
) -> Option<BypassReason> {
    if parts.method != Method::GET && parts.method != Method::HEAD && !grpc_opted_in {
        return Some(BypassReason::Method);
    }
    // Ranges are answered from fresh stored responses (see `handle`); a gRPC call has none.
    if grpc_opted_in && parts.headers.contains_key(RANGE) {
        return Some(BypassReason::Range);
    }
    if decided.bypass {
        return Some(BypassReason::Route);
    }
    if shared.config.honor_request_directives && CacheControl::from_headers(&parts.headers, &CACHE_CONTROL).no_store {
        return Some(BypassReason::RequestNoStore);
    }
    None
}
