//! The `Cache-Status` (RFC 9211) and `Age` headers the layer adds to every response.

use crate::metrics::BypassReason;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE};
use std::fmt::Write;
use std::time::Duration;

/// The `Cache-Status` header name.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The name the layer gives itself in `Cache-Status` unless configured otherwise.
pub(crate) const DEFAULT_NAME: &str = "tower-response-cache";

/// What the cache did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from a fresh entry.
    Hit { ttl: Duration },
    /// Looked up, not found (or not usable), forwarded.
    Miss {
        kind: MissKind,
        fwd_status: u16,
        stored: bool,
        detail: Option<&'static str>,
    },
    /// Not looked up at all.
    Bypass { reason: BypassReason, fwd_status: u16 },
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

impl Outcome {
    fn write(self, name: &str, out: &mut String) {
        out.push_str(name);
        match self {
            Outcome::Hit { ttl } => {
                let _ = write!(out, "; hit; ttl={}", ttl.as_secs());
            }
            Outcome::Miss {
                kind,
                fwd_status,
                stored,
                detail,
            } => {
                let fwd = match kind {
                    MissKind::Miss | MissKind::Invalidated => "miss",
                    MissKind::VaryMiss => "vary-miss",
                    MissKind::Stale => "stale",
                    MissKind::Request => "request",
                };
                let _ = write!(out, "; fwd={fwd}; fwd-status={fwd_status}");
                if stored {
                    out.push_str("; stored");
                }
                let detail = detail.or((kind == MissKind::Invalidated).then_some("invalidated"));
                if let Some(detail) = detail {
                    let _ = write!(out, "; detail={detail}");
                }
            }
            Outcome::Bypass { reason, fwd_status } => {
                let fwd = match reason {
                    BypassReason::Method => "method",
                    BypassReason::RequestNoStore => "request",
                    _ => "bypass",
                };
                let _ = write!(out, "; fwd={fwd}; fwd-status={fwd_status}; detail={}", reason.as_str());
            }
        }
    }
}

/// Adds this cache's `Cache-Status` member after any from caches nearer the origin
/// (RFC 9211 §2), and `Age` on hits.
pub(crate) fn decorate(headers: &mut HeaderMap, name: &str, outcome: Outcome, age: Option<Duration>) {
    let mut text = String::with_capacity(name.len() + 48);
    outcome.write(name, &mut text);
    if let Ok(value) = HeaderValue::from_str(&text) {
        headers.append(CACHE_STATUS, value);
    }
    if let Some(age) = age {
        headers.insert(AGE, HeaderValue::from(age.as_secs()));
    }
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
            render(Outcome::Hit {
                ttl: Duration::from_millis(42_900)
            }),
            "tower-response-cache; hit; ttl=42"
        );
        let miss = Outcome::Miss {
            kind: MissKind::Miss,
            fwd_status: 200,
            stored: true,
            detail: None,
        };
        assert_eq!(render(miss), "tower-response-cache; fwd=miss; fwd-status=200; stored");
        let purged = Outcome::Miss {
            kind: MissKind::Invalidated,
            fwd_status: 200,
            stored: false,
            detail: None,
        };
        assert_eq!(
            render(purged),
            "tower-response-cache; fwd=miss; fwd-status=200; detail=invalidated"
        );
        let bypass = Outcome::Bypass {
            reason: BypassReason::Credentials,
            fwd_status: 200,
        };
        assert_eq!(
            render(bypass),
            "tower-response-cache; fwd=bypass; fwd-status=200; detail=credentials"
        );
        let method = Outcome::Bypass {
            reason: BypassReason::Method,
            fwd_status: 201,
        };
        assert_eq!(
            render(method),
            "tower-response-cache; fwd=method; fwd-status=201; detail=method"
        );
    }

    #[test]
    fn appends_after_upstream_members() {
        let mut h = HeaderMap::new();
        h.insert(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        decorate(
            &mut h,
            "edge",
            Outcome::Hit { ttl: Duration::ZERO },
            Some(Duration::from_secs(3)),
        );
        let all: Vec<_> = h.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "edge; hit; ttl=0"]);
        assert_eq!(h[AGE], "3");
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
