//! Finding a stored response this request may be answered with.

use super::call::GrpcCall;
use crate::entry::{CachedResponse, Entry};
use crate::key::{self, CacheKey};
use crate::layer::Shared;
use crate::metrics::Timed;
use crate::policy::{CacheDecision, RequestFacts};
use crate::status::MissKind;
use crate::store::{Lookup, Store, StoreError};
use http::header::{HeaderMap, HeaderValue};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The request as the cache sees it, once the bypass rules have let it through.
#[derive(Debug, Clone)]
pub(super) struct Lookout {
    pub(super) primary: CacheKey,
    /// The caller's identity, if the layer found one: it selects the entries stored for it.
    pub(super) identity: Option<Arc<str>>,
    pub(super) facts: RequestFacts,
    /// What the policy hook and the route override decided for the request.
    pub(super) decided: CacheDecision,
    pub(super) head: bool,
    /// The client's conditional headers, answered by the cache, never forwarded on a miss.
    pub(super) if_none_match: Option<HeaderValue>,
    pub(super) if_modified_since: Option<HeaderValue>,
    /// An opted-in gRPC call: its response is judged by the gRPC rules too.
    pub(super) grpc: Option<GrpcCall>,
}

/// A stored response that is not fresh, or was soft-purged.
#[derive(Debug, Clone)]
pub(super) struct Stale {
    pub(super) entry: Arc<CachedResponse>,
    /// The store could not vouch for it ([`Lookup::Unverified`]): it may only stand in for
    /// an origin error.
    pub(super) error_only: bool,
    /// A soft purge turned it stale: only its stale windows may serve it.
    pub(super) soft_purged: bool,
}

impl Stale {
    /// How long past its freshness the entry is (zero for a soft-purged, still fresh one).
    pub(super) fn stale_for(&self, now: SystemTime) -> Duration {
        self.entry.age(now).saturating_sub(self.entry.lifetime)
    }

    fn within(&self, window: Duration, now: SystemTime) -> bool {
        !window.is_zero() && self.entry.age(now) < self.entry.lifetime + window
    }

    /// May be served at once while one background request refreshes it (RFC 5861 §3).
    pub(super) fn serves_while_revalidating(&self, now: SystemTime) -> bool {
        !self.error_only && self.within(self.entry.stale_while_revalidate, now)
    }

    /// May stand in for a failing origin (RFC 5861 §4).
    pub(super) fn serves_if_error(&self, now: SystemTime) -> bool {
        self.within(self.entry.stale_if_error, now)
    }
}

/// What the store holds for a request.
#[derive(Debug)]
pub(super) enum Found {
    Fresh(Arc<CachedResponse>),
    Stale(Stale),
    Miss(MissKind),
    /// The resource's entries are stored per identity, and this identity has none usable:
    /// its answer is its own, so it waits for no other identity's call.
    PersonalMiss,
}

/// Reads the primary key and, for varying responses, the variant the request selects.
pub(super) async fn lookup<St: Store>(shared: &Shared<St>, lookout: &Lookout, headers: &HeaderMap) -> Found {
    lookup_as(shared, lookout, headers, Read::Local).await
}

/// [`lookup`] past any copy local to this instance ([`Store::get_latest`]): what another
/// instance may just have stored.
pub(super) async fn lookup_latest<St: Store>(shared: &Shared<St>, lookout: &Lookout, headers: &HeaderMap) -> Found {
    lookup_as(shared, lookout, headers, Read::Latest).await
}

async fn lookup_as<St: Store>(shared: &Shared<St>, lookout: &Lookout, headers: &HeaderMap, read: Read) -> Found {
    let (response, standing, own) = match primary(shared, lookout, headers, get(shared, &lookout.primary, read).await) {
        Step::Found(found) => return found,
        Step::Response(response, standing) => (response, standing, false),
        Step::Variant(key, own) => match variant(shared, own, get(shared, &key, read).await) {
            Ok((response, standing)) => (response, standing, own),
            Err(found) => return found,
        },
    };
    judge(lookout, response, standing, own, SystemTime::now()).0
}

/// [`lookup`] without waiting, when the store can answer at once ([`Store::get_now`]);
/// freshness is judged at `now`, and an entry found comes with its age then.
pub(super) fn lookup_now<St: Store>(
    shared: &Shared<St>,
    lookout: &Lookout,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<(Found, Duration)> {
    let store = &shared.store;
    let (response, standing, own) = match primary(shared, lookout, headers, Ok(store.get_now(&lookout.primary)?)) {
        Step::Found(found) => return Some((found, Duration::ZERO)),
        Step::Response(response, standing) => (response, standing, false),
        Step::Variant(key, own) => match variant(shared, own, Ok(store.get_now(&key)?)) {
            Ok((response, standing)) => (response, standing, own),
            Err(found) => return Some((found, Duration::ZERO)),
        },
    };
    Some(judge(lookout, response, standing, own, now))
}

/// What the primary key's entry leads to.
enum Step {
    Found(Found),
    Response(Arc<CachedResponse>, Standing),
    /// The variant's key, and whether it is stored for the caller's identity alone.
    Variant(CacheKey, bool),
}

fn primary<St>(
    shared: &Shared<St>,
    lookout: &Lookout,
    headers: &HeaderMap,
    result: Result<Lookup, StoreError>,
) -> Step {
    match read(shared, result) {
        Ok(Some((Entry::Response(response), soft))) if response.vary.is_empty() => Step::Response(response, soft),
        Ok(Some((Entry::Response(_), _))) => Step::Found(Found::Miss(MissKind::VaryMiss)),
        Ok(Some((Entry::Variants(names), _))) => {
            // Entries stored per identity are found by the identity that asked for them only.
            let identity = lookout.identity.as_deref();
            let own = identity.is_some() && names.contains(&key::IDENTITY);
            Step::Variant(key::variant(&lookout.primary, &names, headers, identity), own)
        }
        Ok(None) => Step::Found(Found::Miss(MissKind::Miss)),
        Err(kind) => Step::Found(Found::Miss(kind)),
    }
}

fn variant<St>(
    shared: &Shared<St>,
    own: bool,
    result: Result<Lookup, StoreError>,
) -> Result<(Arc<CachedResponse>, Standing), Found> {
    match read(shared, result) {
        Ok(Some((Entry::Response(response), soft))) => Ok((response, soft)),
        Ok(Some((Entry::Variants(_), _))) | Ok(None) if own => Err(Found::PersonalMiss),
        Ok(Some((Entry::Variants(_), _))) | Ok(None) => Err(Found::Miss(MissKind::VaryMiss)),
        Err(kind) => Err(Found::Miss(kind)),
    }
}

/// What the entry found is to the request, and its age at `now` (zero when it may not be
/// shown to the request at all).
fn judge(
    lookout: &Lookout,
    response: Arc<CachedResponse>,
    standing: Standing,
    own: bool,
    now: SystemTime,
) -> (Found, Duration) {
    // The key settled Vary and identity; what is left is whether a request with credentials
    // (or an identity) may see an entry stored for everyone.
    let facts = &lookout.facts;
    if (facts.credentials || facts.identity) && !own && !response.shareable_with_credentials {
        return (Found::Miss(MissKind::Miss), Duration::ZERO);
    }
    // Read once: a fresh hit's `Age` and `ttl` come from it too.
    let age = response.age(now);
    let found = if standing == Standing::Valid && response.is_fresh_at(age) {
        Found::Fresh(response)
    } else {
        Found::Stale(Stale {
            entry: response,
            error_only: standing == Standing::Unverified,
            soft_purged: standing == Standing::SoftPurged,
        })
    };
    (found, age)
}

/// Which read of the store a lookup makes.
#[derive(Debug, Clone, Copy)]
enum Read {
    Local,
    Latest,
}

/// One store read (timed with the `metrics` feature).
async fn get<St: Store>(shared: &Shared<St>, key: &CacheKey, read: Read) -> Result<Lookup, StoreError> {
    match read {
        Read::Local => shared.counters.timed(Timed::StoreGet, shared.store.get(key)).await,
        Read::Latest => {
            shared
                .counters
                .timed(Timed::StoreGet, shared.store.get_latest(key))
                .await
        }
    }
}

/// What the store said of an entry it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Valid,
    SoftPurged,
    Unverified,
}

/// A store answer as an entry (and its standing) or the kind of miss; a failing store is a
/// miss (fail open).
fn read<St>(shared: &Shared<St>, result: Result<Lookup, StoreError>) -> Result<Option<(Entry, Standing)>, MissKind> {
    match result {
        Ok(Lookup::Found(entry)) => Ok(Some((entry, Standing::Valid))),
        Ok(Lookup::SoftPurged(response)) => Ok(Some((Entry::Response(response), Standing::SoftPurged))),
        Ok(Lookup::Unverified(response)) => Ok(Some((Entry::Response(response), Standing::Unverified))),
        Ok(Lookup::Purged) => Err(MissKind::Invalidated),
        Ok(Lookup::Miss) => Ok(None),
        Err(error) => {
            shared.counters.store_error();
            tracing::warn!(%error, "cache store read failed; serving from the inner service");
            Err(MissKind::Miss)
        }
    }
}
