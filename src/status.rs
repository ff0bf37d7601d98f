//! What the cache did with each request: the typed [`CacheOutcome`] every response carries,
//! and the `Cache-Status` (RFC 9211) and `Age` headers written from it.

use crate::metrics::BypassReason;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};
use std::cell::RefCell;
use std::fmt::{self, Write};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

/// The `Cache-Status` header name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The name the layer gives itself in `Cache-Status` unless configured otherwise.
pub(crate) const DEFAULT_NAME: &str = "tower-response-cache";

/// What the cache did with one request, as RFC 9211 parameters and as the typed outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Outcome {
    hit: bool,
    /// Seconds of freshness left; negative when a stale entry was served.
    ttl: Option<i64>,
    fwd: Option<&'static str>,
    fwd_status: Option<u16>,
    stored: bool,
    collapsed: bool,
    detail: Option<&'static str>,
    stale: Option<StaleReason>,
    bypass: Option<BypassReason>,
    not_stored: Option<BypassReason>,
}

/// Why a stale entry answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StaleReason {
    /// Inside its `stale-while-revalidate` window, while one request refreshes it.
    WhileRevalidate,
    /// The origin failed (an error or a 5xx) inside its `stale-if-error` window.
    IfError,
    /// The origin took longer than `origin_timeout`, inside the `stale-if-error` window.
    OriginTimeout,
    /// The client's `max-stale` accepted it (request directives honoured).
    MaxStale,
}

impl StaleReason {
    /// The name `Cache-Status` gives it as `detail`.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleReason::WhileRevalidate => "stale-while-revalidate",
            StaleReason::IfError => "stale-if-error",
            StaleReason::OriginTimeout => "origin-timeout",
            StaleReason::MaxStale => "max-stale",
        }
    }
}

/// How a response was served, in [`CacheOutcome::served`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Served {
    /// From a fresh entry.
    Hit,
    /// From a stale entry.
    Stale(StaleReason),
    /// Looked up, and answered by the inner service (or, [`CacheOutcome::collapsed`], by
    /// another request's call to it).
    Miss,
    /// Not looked up: passed to the inner service untouched.
    Bypass(BypassReason),
}

/// What the cache did with a request: a response extension on every response the
/// [`CacheLayer`](crate::CacheLayer)'s service returns, whether or not `Cache-Status` is sent.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower::{Layer, ServiceExt};
/// use tower_response_cache::{CacheLayer, CacheOutcome, MemoryStore, Served};
///
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// let service = CacheLayer::new(MemoryStore::new()).layer(app);
/// let get = || http::Request::get("/").body(axum::body::Body::empty()).unwrap();
///
/// let first = service.clone().oneshot(get()).await.unwrap();
/// let outcome = first.extensions().get::<CacheOutcome>().unwrap();
/// assert_eq!((outcome.served(), outcome.stored()), (Served::Miss, true));
///
/// let second = service.clone().oneshot(get()).await.unwrap();
/// assert_eq!(second.extensions().get::<CacheOutcome>().unwrap().served(), Served::Hit);
/// # });
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CacheOutcome {
    outcome: Outcome,
    age: Option<Duration>,
}

impl CacheOutcome {
    pub(crate) fn new(outcome: Outcome, age: Option<Duration>) -> Self {
        CacheOutcome { outcome, age }
    }

    /// How the response was served.
    pub fn served(&self) -> Served {
        let o = &self.outcome;
        match (o.stale, o.bypass) {
            (Some(reason), _) => Served::Stale(reason),
            (None, Some(reason)) => Served::Bypass(reason),
            (None, None) if o.hit => Served::Hit,
            (None, None) => Served::Miss,
        }
    }

    /// Whether the inner service's response was written to the store.
    pub fn stored(&self) -> bool {
        self.outcome.stored
    }

    /// Why the inner service's response was not stored, when the cache refused it (a miss
    /// whose response is stored, or that was not asked for, has none).
    pub fn not_stored(&self) -> Option<BypassReason> {
        self.outcome.not_stored
    }

    /// Whether this request waited for another's call to the inner service and was answered
    /// from what it stored.
    pub fn collapsed(&self) -> bool {
        self.outcome.collapsed
    }

    /// The age of the stored response served, when one was.
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// Adds this cache's `Cache-Status` member, under its `name`, after any from caches
    /// nearer the origin (RFC 9211 §2).
    pub(crate) fn write_header(&self, headers: &mut HeaderMap, name: &str) {
        if let Some(value) = self.outcome.header_value(name) {
            headers.append(CACHE_STATUS, value);
        }
    }
}

/// When the layer sends `Cache-Status`: it tells every client what the cache did (hit or
/// miss, freshness left, why a response was not stored), which may be more than an
/// application wants to show.
///
/// ```
/// use http::HeaderName;
/// use tower_response_cache::{CacheLayer, CacheStatusHeader, MemoryStore};
///
/// // Only for requests that ask, e.g. from the team's debugging tools.
/// let layer = CacheLayer::builder(MemoryStore::new())
///     .cache_status(CacheStatusHeader::WhenRequested(HeaderName::from_static("x-cache-debug")))
///     .build();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CacheStatusHeader {
    /// On every response (the default).
    #[default]
    Always,
    /// Never; the [`CacheOutcome`] extension still says what happened.
    Never,
    /// Only on responses to requests that carry this header (any value).
    WhenRequested(HeaderName),
}

impl CacheStatusHeader {
    pub(crate) fn sent_for(&self, request: &HeaderMap) -> bool {
        match self {
            CacheStatusHeader::Always => true,
            CacheStatusHeader::Never => false,
            CacheStatusHeader::WhenRequested(name) => request.contains_key(name),
        }
    }
}

/// The name a cache gives itself in `Cache-Status`: a structured-field token (RFC 9651: a
/// letter or `*` first, then letters, digits and `!#$%&'*+-.^_`|~:/`).
///
/// ```
/// use tower_response_cache::CacheStatusName;
///
/// assert!(CacheStatusName::new("edge-eu-1").is_ok());
/// let error = CacheStatusName::new("my cache").unwrap_err();
/// assert_eq!(error.to_string(), "invalid Cache-Status name \"my cache\": not a structured-field token");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatusName(Box<str>);

impl CacheStatusName {
    /// `name`, if it is a token.
    pub fn new(name: &str) -> Result<Self, InvalidCacheStatusName> {
        if is_valid_name(name) {
            Ok(CacheStatusName(name.into()))
        } else {
            Err(InvalidCacheStatusName(name.into()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for CacheStatusName {
    fn default() -> Self {
        CacheStatusName(DEFAULT_NAME.into())
    }
}

impl std::str::FromStr for CacheStatusName {
    type Err = InvalidCacheStatusName;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CacheStatusName::new(name)
    }
}

/// A name that cannot stand in `Cache-Status` (see [`CacheStatusName`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCacheStatusName(Box<str>);

impl fmt::Display for InvalidCacheStatusName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid Cache-Status name {:?}: not a structured-field token",
            self.0
        )
    }
}

impl std::error::Error for InvalidCacheStatusName {}

impl fmt::Debug for CacheOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheOutcome")
            .field("served", &self.served())
            .field("stored", &self.stored())
            .field("not_stored", &self.not_stored())
            .field("collapsed", &self.collapsed())
            .field("age", &self.age)
            .finish()
    }
}

/// Why a lookup found nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissKind {
    /// No entry.
    Miss,
    /// Entries for the URI, none for this request's `Vary` values.
    VaryMiss,
    /// An entry existed but a purge invalidated it.
    Invalidated,
    /// An entry existed but was stale.
    Stale,
    /// The client's request directives asked to skip the lookup.
    Request,
}

impl MissKind {
    fn fwd(self) -> &'static str {
        match self {
            MissKind::Miss | MissKind::Invalidated => "miss",
            MissKind::VaryMiss => "vary-miss",
            MissKind::Stale => "stale",
            MissKind::Request => "request",
        }
    }
}

fn signed_secs(ttl: Duration, stale: bool) -> i64 {
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    if stale {
        -secs
    } else {
        secs
    }
}

impl Outcome {
    /// Answered from a fresh entry.
    pub(crate) fn hit(ttl: Duration) -> Self {
        Outcome {
            hit: true,
            ttl: Some(signed_secs(ttl, false)),
            ..Outcome::default()
        }
    }

    /// Answered from a stale entry, `stale_for` past its freshness.
    pub(crate) fn stale_hit(stale_for: Duration, reason: StaleReason) -> Self {
        Outcome {
            hit: true,
            ttl: Some(signed_secs(stale_for, true)),
            fwd: Some("stale"),
            detail: Some(reason.as_str()),
            stale: Some(reason),
            ..Outcome::default()
        }
    }

    /// Looked up, forwarded.
    pub(crate) fn miss(kind: MissKind, fwd_status: u16) -> Self {
        let detail = (kind == MissKind::Invalidated).then_some("invalidated");
        Outcome {
            fwd: Some(kind.fwd()),
            fwd_status: Some(fwd_status),
            detail,
            ..Outcome::default()
        }
    }

    /// Not looked up at all.
    pub(crate) fn bypass(reason: BypassReason, fwd_status: u16) -> Self {
        let fwd = match reason {
            BypassReason::Method => "method",
            BypassReason::RequestNoStore => "request",
            _ => "bypass",
        };
        Outcome {
            fwd: Some(fwd),
            fwd_status: Some(fwd_status),
            detail: Some(reason.as_str()),
            bypass: Some(reason),
            ..Outcome::default()
        }
    }

    /// Looked up, forwarded, and the response refused by the store's rules.
    pub(crate) fn refused(mut self, reason: BypassReason) -> Self {
        self.detail = Some(reason.as_str());
        self.not_stored = Some(reason);
        self
    }

    pub(crate) fn stored(mut self, stored: bool) -> Self {
        self.stored = stored;
        self
    }

    pub(crate) fn collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    pub(crate) fn fwd_status(mut self, status: u16) -> Self {
        self.fwd_status = Some(status);
        self
    }

    /// This outcome's `Cache-Status` member under `name`. Hits repeat a few values (one per
    /// second of freshness left), so each thread keeps the last values it wrote and hands
    /// out shared copies instead of formatting and allocating one per response.
    fn header_value(self, name: &str) -> Option<HeaderValue> {
        if let Some(value) = self.default_hit_value(name) {
            return Some(value);
        }
        const SLOTS: usize = 16;
        type Recent = [Option<(Outcome, Box<str>, HeaderValue)>; SLOTS];
        thread_local! {
            static RECENT: RefCell<Recent> = const { RefCell::new([const { None }; SLOTS]) };
        }
        let slot = (self.ttl.unwrap_or(0) as usize ^ usize::from(self.fwd_status.unwrap_or(0))) % SLOTS;
        let format = || {
            let mut text = String::with_capacity(name.len() + 64);
            self.write(name, &mut text);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes())).ok()
        };
        RECENT
            .try_with(|recent| {
                let mut recent = recent.borrow_mut();
                if let Some((outcome, kept, value)) = &recent[slot] {
                    if *outcome == self && **kept == *name {
                        return Some(value.clone());
                    }
                }
                let value = format()?;
                recent[slot] = Some((self, name.into(), value.clone()));
                Some(value)
            })
            .unwrap_or_else(|_| format())
    }

    /// The member of a plain hit under the default name, with less than [`SHARED_SECS`] of
    /// freshness left: built once per process and second, and static, so that a copy for a
    /// hit touches no reference count that threads share.
    fn default_hit_value(self, name: &str) -> Option<HeaderValue> {
        static VALUES: [OnceLock<HeaderValue>; SHARED_SECS] = [const { OnceLock::new() }; SHARED_SECS];
        let ttl = usize::try_from(self.ttl?).ok().filter(|ttl| *ttl < SHARED_SECS)?;
        if name != DEFAULT_NAME || self != Outcome::hit(Duration::from_secs(ttl as u64)) {
            return None;
        }
        let value = VALUES[ttl].get_or_init(|| {
            let mut text = String::with_capacity(DEFAULT_NAME.len() + 16);
            self.write(name, &mut text);
            HeaderValue::from_static(Box::leak(text.into_boxed_str()))
        });
        Some(value.clone())
    }

    fn write(self, name: &str, out: &mut String) {
        out.push_str(name);
        if self.hit {
            out.push_str("; hit");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(out, "; ttl={ttl}");
        }
        if let Some(fwd) = self.fwd {
            let _ = write!(out, "; fwd={fwd}");
        }
        if let Some(status) = self.fwd_status {
            let _ = write!(out, "; fwd-status={status}");
        }
        if self.stored {
            out.push_str("; stored");
        }
        if self.collapsed {
            out.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            let _ = write!(out, "; detail={detail}");
        }
    }
}

/// The `Age` of a stored response served.
pub(crate) fn write_age(headers: &mut HeaderMap, age: Duration) {
    headers.insert(AGE, age_value(age.as_secs()));
}

/// Seconds of `Age`, and of a hit's `ttl`, whose header values are built once and kept.
const SHARED_SECS: usize = 1024;

/// `Age` values of the first minutes, built once, so that hits do not format them.
fn age_value(secs: u64) -> HeaderValue {
    const SHARED: usize = SHARED_SECS;
    static VALUES: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        // Static values: a copy for a hit touches no reference count that threads share.
        let digits: &'static str = Box::leak((0..SHARED).map(|s| s.to_string()).collect::<String>().into_boxed_str());
        let mut rest = digits;
        (0..SHARED)
            .map(|s| {
                let (value, after) = rest.split_at(s.to_string().len());
                rest = after;
                HeaderValue::from_static(value)
            })
            .collect()
    });
    match usize::try_from(secs) {
        Ok(small) if small < SHARED => VALUES[small].clone(),
        _ => HeaderValue::from(secs),
    }
}

/// Whether `name` can stand as the cache's name in `Cache-Status` (an sf-token).
fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'*')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(outcome: Outcome) -> String {
        let mut h = HeaderMap::new();
        CacheOutcome::new(outcome, None).write_header(&mut h, DEFAULT_NAME);
        h[CACHE_STATUS].to_str().unwrap().to_string()
    }

    #[test]
    fn renders_rfc_9211_members() {
        assert_eq!(
            render(Outcome::hit(Duration::from_millis(42_900))),
            "tower-response-cache; hit; ttl=42"
        );
        let miss = Outcome::miss(MissKind::Miss, 200).stored(true);
        assert_eq!(render(miss), "tower-response-cache; fwd=miss; fwd-status=200; stored");
        let purged = Outcome::miss(MissKind::Invalidated, 200);
        assert_eq!(
            render(purged),
            "tower-response-cache; fwd=miss; fwd-status=200; detail=invalidated"
        );
        let bypass = Outcome::bypass(BypassReason::Credentials, 200);
        assert_eq!(
            render(bypass),
            "tower-response-cache; fwd=bypass; fwd-status=200; detail=credentials"
        );
        let method = Outcome::bypass(BypassReason::Method, 201);
        assert_eq!(
            render(method),
            "tower-response-cache; fwd=method; fwd-status=201; detail=method"
        );
        let stale = Outcome::stale_hit(Duration::from_secs(5), StaleReason::WhileRevalidate);
        assert_eq!(
            render(stale),
            "tower-response-cache; hit; ttl=-5; fwd=stale; detail=stale-while-revalidate"
        );
        let collapsed = Outcome::miss(MissKind::Miss, 200).collapsed();
        assert_eq!(
            render(collapsed),
            "tower-response-cache; fwd=miss; fwd-status=200; collapsed"
        );
    }

    #[test]
    fn kept_values_are_per_name_and_outcome() {
        let hit = Outcome::hit(Duration::from_secs(7));
        for _ in 0..2 {
            assert_eq!(render(hit), "tower-response-cache; hit; ttl=7");
            let mut h = HeaderMap::new();
            CacheOutcome::new(hit, None).write_header(&mut h, "edge");
            assert_eq!(h[CACHE_STATUS], "edge; hit; ttl=7");
            // Same slot, another outcome.
            let stale = Outcome::stale_hit(Duration::from_secs(7), StaleReason::IfError);
            assert_eq!(
                render(stale),
                "tower-response-cache; hit; ttl=-7; fwd=stale; detail=stale-if-error"
            );
        }
        let mut h = HeaderMap::new();
        write_age(&mut h, Duration::from_secs(1023));
        assert_eq!(h[AGE], "1023");
        write_age(&mut h, Duration::from_secs(1024));
        assert_eq!(h[AGE], "1024");
    }

    #[test]
    fn hit_values_kept_once_match_formatted_ones() {
        for secs in [0, 1, 59, 1023, 1024, 86_400] {
            let hit = Outcome::hit(Duration::from_secs(secs));
            let mut formatted = String::new();
            hit.write(DEFAULT_NAME, &mut formatted);
            // Twice: the first builds the kept value, the second reads it.
            for _ in 0..2 {
                assert_eq!(render(hit), formatted);
            }
            assert_eq!(render(hit), format!("tower-response-cache; hit; ttl={secs}"));
        }
        // Anything but a plain hit under the default name is formatted as ever.
        let stale = Outcome::stale_hit(Duration::from_secs(3), StaleReason::WhileRevalidate);
        assert!(stale.default_hit_value(DEFAULT_NAME).is_none());
        assert!(Outcome::hit(Duration::from_secs(3)).default_hit_value("edge").is_none());
    }

    #[test]
    fn appends_after_upstream_members() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        CacheOutcome::new(Outcome::hit(Duration::ZERO), None).write_header(&mut h, "edge");
        let all: Vec<_> = h.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "edge; hit; ttl=0"]);
    }

    #[test]
    fn the_typed_outcome_says_how_a_response_was_served() {
        let typed = |o: Outcome| CacheOutcome::new(o, None);
        let stored = typed(Outcome::miss(MissKind::Miss, 200).stored(true));
        assert_eq!(
            (stored.served(), stored.stored(), stored.not_stored()),
            (Served::Miss, true, None)
        );
        let refused = typed(Outcome::miss(MissKind::Miss, 200).refused(BypassReason::NoStore));
        assert_eq!(
            (refused.served(), refused.stored(), refused.not_stored()),
            (Served::Miss, false, Some(BypassReason::NoStore))
        );
        let bypass = typed(Outcome::bypass(BypassReason::Method, 201));
        assert_eq!(bypass.served(), Served::Bypass(BypassReason::Method));
        let stale = typed(Outcome::stale_hit(Duration::from_secs(1), StaleReason::IfError).collapsed());
        assert_eq!(stale.served(), Served::Stale(StaleReason::IfError));
        assert!(stale.collapsed());
        assert_eq!(typed(Outcome::hit(Duration::ZERO)).served(), Served::Hit);
    }

    #[test]
    fn cache_status_is_sent_as_configured() {
        let mut asks = HeaderMap::new();
        asks.insert("x-cache-debug", HeaderValue::from_static("1"));
        let when = CacheStatusHeader::WhenRequested(HeaderName::from_static("x-cache-debug"));
        assert!(when.sent_for(&asks));
        assert!(!when.sent_for(&HeaderMap::new()));
        assert!(CacheStatusHeader::Always.sent_for(&HeaderMap::new()));
        assert!(!CacheStatusHeader::Never.sent_for(&asks));
    }

    #[test]
    fn names_must_be_tokens() {
        assert!(is_valid_name("tower-response-cache"));
        assert!(is_valid_name("edge/1.0"));
        assert!(!is_valid_name("two words"));
        assert!(!is_valid_name("1st"));
        assert!(!is_valid_name(""));
    }
}
