//! A conservative reader of `Cache-Control` field values (RFC 9111 §5.2).

use http::header::{HeaderMap, HeaderName};
use std::time::Duration;

use crate::structured_field::{self, BareItem, Member};

/// The delta-seconds ceiling of RFC 9111 §1.2.2: larger values are read as 2^31 seconds.
const DELTA_SECONDS_CAP: u64 = 1 << 31;

/// The directives the cache acts on. Unknown directives are ignored, as RFC 9111 §5.2.3 asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Option<Duration>,
    pub(crate) s_maxage: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    /// `must-understand`: store only a status whose caching rules the cache knows, and then
    /// regardless of `no-store` (RFC 9111 §5.2.2.3).
    pub(crate) must_understand: bool,
    /// Request only: `only-if-cached`.
    pub(crate) only_if_cached: bool,
    /// Request only: `max-stale` (`Some(None)`: any staleness is accepted).
    pub(crate) max_stale: Option<Option<Duration>>,
    /// Request only: `min-fresh`.
    pub(crate) min_fresh: Option<Duration>,
    /// The field could not be read at all (bytes outside visible ASCII and whitespace).
    pub(crate) unreadable: bool,
}

/// What one occurrence of a duration directive said.
enum Delta {
    Valid(u64),
    Invalid,
}

impl CacheControl {
    /// Reads every `name` field line of `headers` as one comma-separated list.
    pub(crate) fn from_headers(headers: &HeaderMap, name: &HeaderName) -> Self {
        let mut cc = CacheControl::default();
        // A directive seen twice with different values, or with a value that is not
        // delta-seconds, makes the response stale (RFC 9111 §4.2.1).
        let mut seen_max_age: Option<Option<u64>> = None;
        let mut seen_s_maxage: Option<Option<u64>> = None;
        for value in headers.get_all(name) {
            let bytes = value.as_bytes();
            if !bytes.iter().all(|b| matches!(b, b'\t' | b' '..=b'~')) {
                cc.unreadable = true;
                continue;
            }
            // Safe: checked to be ASCII above.
            let text = std::str::from_utf8(bytes).unwrap_or_default();
            for (directive, argument) in split_directives(text) {
                let directive = directive.to_ascii_lowercase();
                match directive.as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` and `private="field"` are read as their unqualified
                    // forms: stricter than needed, never less strict.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    "must-understand" => cc.must_understand = true,
                    "max-stale" => match argument.map(|a| parse_delta(Some(a))) {
                        None => cc.max_stale = Some(None),
                        Some(Delta::Valid(secs)) => {
                            // Of conflicting values, the smaller one is the safe reading.
                            let d = Duration::from_secs(secs);
                            cc.max_stale = Some(Some(match cc.max_stale {
                                Some(Some(old)) => old.min(d),
                                _ => d,
                            }));
                        }
                        Some(Delta::Invalid) => {}
                    },
                    "min-fresh" => {
                        if let Delta::Valid(secs) = parse_delta(argument) {
                            let d = Duration::from_secs(secs);
                            cc.min_fresh = Some(cc.min_fresh.map_or(d, |old| old.max(d)));
                        }
                    }
                    "max-age" => merge_delta(&mut seen_max_age, parse_delta(argument)),
                    "s-maxage" => merge_delta(&mut seen_s_maxage, parse_delta(argument)),
                    "stale-while-revalidate" => {
                        if let Delta::Valid(secs) = parse_delta(argument) {
                            let d = Duration::from_secs(secs);
                            // Of conflicting windows, the smaller one is the safe reading.
                            cc.stale_while_revalidate = Some(cc.stale_while_revalidate.map_or(d, |old| old.min(d)));
                        }
                    }
                    "stale-if-error" => {
                        if let Delta::Valid(secs) = parse_delta(argument) {
                            let d = Duration::from_secs(secs);
                            cc.stale_if_error = Some(cc.stale_if_error.map_or(d, |old| old.min(d)));
                        }
                    }
                    _ => {}
                }
            }
        }
        cc.max_age = seen_max_age.map(|v| Duration::from_secs(v.unwrap_or(0)));
        cc.s_maxage = seen_s_maxage.map(|v| Duration::from_secs(v.unwrap_or(0)));
        cc
    }
}

impl CacheControl {
    /// Reads a targeted field (RFC 9213), a structured-field dictionary of cache directives.
    /// `None` when it is absent, empty or not a valid dictionary: it is then ignored.
    pub(crate) fn from_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut combined = Vec::new();
        for (i, line) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                combined.extend_from_slice(b", ");
            }
            combined.extend_from_slice(line.as_bytes());
        }
        let dictionary = structured_field::parse_dictionary(&combined).ok()?;
        if dictionary.is_empty() {
            return None;
        }
        let mut cc = CacheControl::default();
        for (key, member) in &dictionary {
            let Member::Item(item) = member else {
                continue;
            };
            // A directive without an argument is Boolean true; `no-cache="f"` and
            // `private="f"` are read as their unqualified (stricter) forms.
            let set = match item.bare_item {
                BareItem::Boolean(b) => b,
                BareItem::String(_) => true,
                _ => false,
            };
            let seconds = match item.bare_item {
                BareItem::Integer(n) if n >= 0 => Some(Duration::from_secs((n as u64).min(DELTA_SECONDS_CAP))),
                _ => None,
            };
            match key.as_str() {
                "no-store" => cc.no_store |= set,
                "no-cache" => cc.no_cache |= set,
                "private" => cc.private |= set,
                "public" => cc.public |= set,
                "must-revalidate" => cc.must_revalidate |= set,
                "proxy-revalidate" => cc.proxy_revalidate |= set,
                "must-understand" => cc.must_understand |= set,
                // An unreadable lifetime is read as already stale, as in `Cache-Control`.
                "max-age" => cc.max_age = Some(seconds.unwrap_or(Duration::ZERO)),
                "s-maxage" => cc.s_maxage = Some(seconds.unwrap_or(Duration::ZERO)),
                "stale-while-revalidate" => cc.stale_while_revalidate = seconds,
                "stale-if-error" => cc.stale_if_error = seconds,
                _ => {}
            }
        }
        Some(cc)
    }
}

/// Records one occurrence; `None` inside means "invalid or conflicting: treat as stale".
fn merge_delta(seen: &mut Option<Option<u64>>, delta: Delta) {
    let new = match delta {
        Delta::Valid(secs) => Some(secs),
        Delta::Invalid => None,
    };
    *seen = Some(match *seen {
        None => new,
        Some(old) if old == new => old,
        Some(_) => None,
    });
}

/// Parses delta-seconds (RFC 9111 §1.2.2): digits only, optionally quoted by lenient senders.
fn parse_delta(argument: Option<&str>) -> Delta {
    let Some(arg) = argument else {
        return Delta::Invalid;
    };
    let arg = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')).unwrap_or(arg);
    if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_digit()) {
        return Delta::Invalid;
    }
    // All digits: the only failure left is overflow, which the RFC caps at 2^31.
    Delta::Valid(
        arg.parse::<u64>()
            .map_or(DELTA_SECONDS_CAP, |v| v.min(DELTA_SECONDS_CAP)),
    )
}

/// Splits a list into `(name, argument)` pairs, honouring quoted strings that contain commas.
fn split_directives(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let item = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("");
        if item.is_empty() {
            continue;
        }
        return Some(match item.split_once('=') {
            // `max-age = 3600` is not a directive (no whitespace around `=`): it is
            // ignored, under a name that matches none.
            Some((name, arg)) if name.ends_with([' ', '\t']) || arg.starts_with([' ', '\t']) => ("", None),
            Some((name, arg)) => (name, Some(arg)),
            None => (item, None),
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CACHE_CONTROL;
    use http::HeaderValue;

    fn parse(values: &[&[u8]]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_bytes(v).unwrap());
        }
        CacheControl::from_headers(&headers, &CACHE_CONTROL)
    }

    #[test]
    fn reads_common_directives() {
        let cc = parse(&[b"public, max-age=60, s-maxage=120, stale-while-revalidate=30"]);
        assert!(cc.public);
        assert_eq!(cc.max_age, Some(Duration::from_secs(60)));
        assert_eq!(cc.s_maxage, Some(Duration::from_secs(120)));
        assert_eq!(cc.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert!(!cc.no_store && !cc.private);
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let cc = parse(&[b"No-Store", b"MAX-AGE=5"]);
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Some(Duration::from_secs(5)));
    }

    #[test]
    fn negative_or_garbage_max_age_is_stale() {
        for v in [
            &b"max-age=-1"[..],
            b"max-age=abc",
            b"max-age=",
            b"max-age",
            b"max-age=1.5",
        ] {
            assert_eq!(parse(&[v]).max_age, Some(Duration::ZERO), "{:?}", v);
        }
    }

    #[test]
    fn huge_max_age_is_capped() {
        let cc = parse(&[b"max-age=99999999999999999999"]);
        assert_eq!(cc.max_age, Some(Duration::from_secs(1 << 31)));
    }

    #[test]
    fn conflicting_duplicates_are_stale_and_equal_duplicates_are_kept() {
        assert_eq!(parse(&[b"max-age=10, max-age=20"]).max_age, Some(Duration::ZERO));
        assert_eq!(
            parse(&[b"max-age=10", b"max-age=10"]).max_age,
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let cc = parse(&[b"private=\"set-cookie, x-a\", max-age=3"]);
        assert!(cc.private);
        assert_eq!(cc.max_age, Some(Duration::from_secs(3)));
    }

    #[test]
    fn non_ascii_bytes_mark_the_field_unreadable() {
        let cc = parse(&[b"max-age=60, \xffno-store"]);
        assert!(cc.unreadable);
        assert_eq!(cc.max_age, None);
    }

    #[test]
    fn empty_items_and_stray_commas_are_ignored() {
        let cc = parse(&[b" , ,no-cache,, "]);
        assert!(cc.no_cache);
    }

    #[test]
    fn whitespace_around_equals_makes_a_directive_invalid() {
        for v in [&b"max-age = 3600"[..], b"max-age= 3600", b"max-age =3600"] {
            assert_eq!(parse(&[v]).max_age, None, "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(parse(&[b"max-age=3600"]).max_age, Some(Duration::from_secs(3600)));
        assert_eq!(parse(&[b"s-maxage = 5, public"]).s_maxage, None);
        assert!(parse(&[b"s-maxage = 5, public"]).public);
    }

    #[test]
    fn request_directives() {
        let cc = parse(&[b"max-stale, min-fresh=5"]);
        assert_eq!(cc.max_stale, Some(None));
        assert_eq!(cc.min_fresh, Some(Duration::from_secs(5)));
        assert_eq!(parse(&[b"max-stale=30"]).max_stale, Some(Some(Duration::from_secs(30))));
        assert_eq!(
            parse(&[b"max-stale=30, max-stale=10"]).max_stale,
            Some(Some(Duration::from_secs(10)))
        );
        assert_eq!(parse(&[b"max-stale=abc"]).max_stale, None);
        assert!(parse(&[b"must-understand, no-store"]).must_understand);
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let name = HeaderName::from_static("cdn-cache-control");
        let read = |v: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.append(&name, HeaderValue::from_bytes(v).unwrap());
            CacheControl::from_targeted(&headers, &name)
        };
        let cc = read(b"max-age=60, stale-while-revalidate=30, must-revalidate").unwrap();
        assert_eq!(cc.max_age, Some(Duration::from_secs(60)));
        assert_eq!(cc.stale_while_revalidate, Some(Duration::from_secs(30)));
        assert!(cc.must_revalidate);
        assert!(read(b"no-store").unwrap().no_store);
        assert!(read(b"no-cache=\"set-cookie\"").unwrap().no_cache);
        assert_eq!(read(b"max-age=-5").unwrap().max_age, Some(Duration::ZERO));
        assert_eq!(read(b"max-age=1.5").unwrap().max_age, Some(Duration::ZERO));
        // Invalid dictionaries, or an empty field, are ignored altogether.
        for invalid in [
            &b""[..],
            b"max-age=60,",
            b"MAX-AGE=60",
            b"max-age=\"60",
            b"max-age = 60",
        ] {
            assert_eq!(read(invalid), None, "{:?}", String::from_utf8_lossy(invalid));
        }
        assert_eq!(CacheControl::from_targeted(&HeaderMap::new(), &name), None);
    }
}
