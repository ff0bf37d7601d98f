//! The `Cache-Status` (RFC 9211) and `Age` headers the layer adds to every response.

use crate::metrics::BypassReason;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};
use std::fmt::Write;
use std::sync::LazyLock;
use std::time::Duration;

/// The `Cache-Status` header name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The name the layer gives itself in `Cache-Status` unless configured otherwise.
pub(crate) const DEFAULT_NAME: &str = "tower-response-cache";

/// What the cache did with one request, as RFC 9211 parameters.
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
    pub(crate) fn stale_hit(stale_for: Duration, detail: &'static str) -> Self {
        Outcome {
            hit: true,
            ttl: Some(signed_secs(stale_for, true)),
            fwd: Some("stale"),
            detail: Some(detail),
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
            ..Outcome::default()
        }
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

/// Adds this cache's `Cache-Status` member after any from caches nearer the origin
/// (RFC 9211 §2), and `Age` on hits.
pub(crate) fn decorate(headers: &mut HeaderMap, name: &str, outcome: Outcome, age: Option<Duration>) {
    let mut text = String::with_capacity(name.len() + 64);
    outcome.write(name, &mut text);
    // The string's buffer becomes the header value: one allocation, no copy.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text.into_bytes())) {
        headers.append(CACHE_STATUS, value);
    }
    if let Some(age) = age {
        headers.insert(AGE, age_value(age.as_secs()));
    }
}

/// `Age` values of the first minutes, built once and shared, so that hits do not format them.
fn age_value(secs: u64) -> HeaderValue {
    const SHARED: usize = 1024;
    static VALUES: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..SHARED as u64)
            .map(|s| HeaderValue::from_maybe_shared(bytes::Bytes::from(s.to_string())).expect("digits"))
            .collect()
    });
    match usize::try_from(secs) {
        Ok(small) if small < SHARED => VALUES[small].clone(),
        _ => HeaderValue::from(secs),
    }
}

/// What this cache's own (last) `Cache-Status` member says: `(hit, stored)`.
pub(crate) fn read_own(headers: &HeaderMap) -> (bool, bool) {
    let own = headers
        .get_all(CACHE_STATUS)
        .iter()
        .next_back()
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let has = |param: &[u8]| own.split(|b| *b == b';').any(|p| p.trim_ascii() == param);
    (has(b"hit"), has(b"stored"))
}

/// Whether `name` can stand as the cache's name in `Cache-Status` (an sf-token).
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'*')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(outcome: Outcome) -> String {
        let mut h = HeaderMap::new();
        decorate(&mut h, DEFAULT_NAME, outcome, None);
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
        let stale = Outcome::stale_hit(Duration::from_secs(5), "stale-while-revalidate");
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
    fn appends_after_upstream_members() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        decorate(
            &mut h,
            "edge",
            Outcome::hit(Duration::ZERO),
            Some(Duration::from_secs(3)),
        );
        let all: Vec<_> = h.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "edge; hit; ttl=0"]);
        assert_eq!(h[AGE], "3");
    }

    #[test]
    fn reads_back_its_own_member() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin; hit"));
        decorate(
            &mut h,
            DEFAULT_NAME,
            Outcome::miss(MissKind::Miss, 200).stored(true),
            None,
        );
        assert_eq!(read_own(&h), (false, true));
        decorate(&mut h, DEFAULT_NAME, Outcome::hit(Duration::ZERO), None);
        assert_eq!(read_own(&h), (true, false));
        assert_eq!(read_own(&HeaderMap::new()), (false, false));
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
