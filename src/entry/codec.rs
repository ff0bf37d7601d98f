//! The binary form of an [`Entry`] that remote stores keep: versioned, checksummed, and read
//! without trusting a single byte of it.
//!
//! Integers are little-endian; `len` is an unsigned LEB128 varint.
//!
//! | bytes   | field                                                               |
//! |---------|---------------------------------------------------------------------|
//! | 4       | magic `TRCE`                                                        |
//! | 1       | format version, `1`                                                 |
//! | 1       | kind: `1` response, `2` variants                                    |
//! | …       | the kind's fields, below                                            |
//! | 8       | FNV-1a 64 of every byte before it                                   |
//!
//! A response is `status: u16`, `flags: u8` (bit 0 `no_cache`, 1 `must_revalidate`,
//! 2 `shareable_with_credentials`, 3 has trailers), `request_time` and `response_time` (`u64`
//! microseconds since the UNIX epoch), `initial_age`, `lifetime`, `stale_while_revalidate`,
//! `stale_if_error` (`u64` microseconds), then the headers, the body (`len` + bytes), the
//! trailers if flagged, the tags (`len` count, then `len` + UTF-8 each) and the `Vary` names.
//! Header fields are a `len` count, then `len` + name and `len` + value for each field in
//! iteration order (repeated names stay repeated); names are a `len` count, then `len` + name.
//! A variants entry is just the names.

use super::{CachedResponse, Entry};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: [u8; 4] = *b"TRCE";
const VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 1;
const KIND_VARIANTS: u8 = 2;
/// Magic, version and kind.
const PREAMBLE_LEN: usize = 6;
const CHECKSUM_LEN: usize = 8;

const NO_CACHE: u8 = 1 << 0;
const MUST_REVALIDATE: u8 = 1 << 1;
const SHAREABLE_WITH_CREDENTIALS: u8 = 1 << 2;
const HAS_TRAILERS: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = NO_CACHE | MUST_REVALIDATE | SHAREABLE_WITH_CREDENTIALS | HAS_TRAILERS;

/// Smallest encoding of one header field: a one-byte name with two one-byte lengths.
const MIN_FIELD_LEN: usize = 3;
/// Smallest encoding of one header name: a one-byte name and its length.
const MIN_NAME_LEN: usize = 2;
/// Smallest encoding of one tag: the length of an empty tag.
const MIN_TAG_LEN: usize = 1;
/// Collections grow past this as their items actually decode, so that a count that merely
/// fits the input never reserves memory up front.
const MAX_PREALLOCATED: usize = 64;

/// FNV-1a, 64 bits. Not cryptographic: it catches corruption and truncation, not forgery.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Entry {
    /// Encodes the entry in the crate's versioned binary format, for stores that keep bytes
    /// (Redis and the like). [`Entry::decode`] reads it back.
    ///
    /// The bytes are the magic `TRCE`, a format version, the entry's kind and fields, and an
    /// FNV-1a 64 checksum of all of them (the layout is spelled out in `src/entry/codec.rs`).
    /// Times and durations are kept to the microsecond; times before the UNIX epoch are stored
    /// as the epoch and durations beyond `u64::MAX` microseconds as that maximum.
    ///
    /// ```
    /// use http::header::{ACCEPT_ENCODING, ACCEPT_LANGUAGE};
    /// use std::sync::Arc;
    /// use tower_response_cache::store::Entry;
    ///
    /// let entry = Entry::Variants(Arc::from([ACCEPT_ENCODING, ACCEPT_LANGUAGE]));
    /// let bytes = entry.encode();
    /// assert!(bytes.starts_with(b"TRCE"));
    /// match Entry::decode(&bytes)? {
    ///     Entry::Variants(names) => assert_eq!(&names[..], &[ACCEPT_ENCODING, ACCEPT_LANGUAGE]),
    ///     other => panic!("decoded {other:?}"),
    /// }
    /// # Ok::<(), tower_response_cache::store::DecodeError>(())
    /// ```
    pub fn encode(&self) -> Bytes {
        // The weight bounds the encoded size closely enough to avoid regrowing the buffer.
        let mut out = Writer(Vec::with_capacity(self.weight() + PREAMBLE_LEN + CHECKSUM_LEN));
        out.0.extend_from_slice(&MAGIC);
        out.u8(VERSION);
        match self {
            Entry::Response(response) => {
                out.u8(KIND_RESPONSE);
                out.response(response);
            }
            Entry::Variants(names) => {
                out.u8(KIND_VARIANTS);
                out.names(names);
            }
        }
        let checksum = fnv1a64(&out.0);
        out.0.extend_from_slice(&checksum.to_le_bytes());
        Bytes::from(out.0)
    }

    /// Decodes bytes written by [`Entry::encode`].
    ///
    /// Foreign, corrupt or truncated bytes, and bytes from another format version, are an
    /// error, never a panic; no length read from the input reserves more memory than the input
    /// could fill. This copies the input once; [`Entry::decode_bytes`] does not.
    ///
    /// ```
    /// use http::header::VARY;
    /// use std::sync::Arc;
    /// use tower_response_cache::store::Entry;
    ///
    /// let bytes = Entry::Variants(Arc::from([VARY])).encode();
    /// assert!(matches!(Entry::decode(&bytes), Ok(Entry::Variants(_))));
    ///
    /// let err = Entry::decode(b"hello").unwrap_err();
    /// assert_eq!(err.to_string(), "not an encoded cache entry (foreign magic bytes)");
    /// assert!(Entry::decode(&bytes[..bytes.len() - 1]).is_err());
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        Entry::decode_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Like [`Entry::decode`], but a response's body is a slice of `bytes`, not a copy: the
    /// entry keeps the whole buffer alive for as long as it holds the body.
    ///
    /// ```
    /// use http::header::VARY;
    /// use std::sync::Arc;
    /// use tower_response_cache::store::Entry;
    ///
    /// let bytes = Entry::Variants(Arc::from([VARY])).encode();
    /// assert!(matches!(Entry::decode_bytes(bytes), Ok(Entry::Variants(_))));
    /// ```
    pub fn decode_bytes(bytes: Bytes) -> Result<Entry, DecodeError> {
        let len = bytes.len();
        let magic_len = len.min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(DecodeError(Problem::ForeignMagic));
        }
        // The version comes before the checksum: another version may checksum differently.
        match bytes.get(MAGIC.len()) {
            Some(&version) if version != VERSION => return Err(DecodeError(Problem::UnknownVersion(version))),
            _ => {}
        }
        let Some(fields_end) = len.checked_sub(CHECKSUM_LEN).filter(|&end| end >= PREAMBLE_LEN) else {
            return Err(DecodeError(Problem::Truncated { at: len }));
        };
        let mut stored = [0; CHECKSUM_LEN];
        stored.copy_from_slice(&bytes[fields_end..]);
        if fnv1a64(&bytes[..fields_end]) != u64::from_le_bytes(stored) {
            return Err(DecodeError(Problem::ChecksumMismatch));
        }
        let kind = bytes[PREAMBLE_LEN - 1];
        let mut reader = Reader {
            input: bytes,
            pos: PREAMBLE_LEN,
            end: fields_end,
        };
        let entry = match kind {
            KIND_RESPONSE => Entry::Response(Arc::new(reader.response()?)),
            KIND_VARIANTS => Entry::Variants(reader.names()?.into()),
            other => return Err(DecodeError(Problem::UnknownKind(other))),
        };
        match reader.end - reader.pos {
            0 => Ok(entry),
            extra => Err(DecodeError(Problem::TrailingBytes(extra))),
        }
    }
}

/// Bytes that [`Entry::decode`] could not read as an entry. The message says what was wrong.
///
/// A remote store that meets one should treat the value as a miss (and may remove it): it
/// was written by another program or another version of this crate, or was damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(Problem);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    ForeignMagic,
    UnknownVersion(u8),
    ChecksumMismatch,
    UnknownKind(u8),
    /// A field starting at byte `at` runs past the end of the fields.
    Truncated {
        at: usize,
    },
    BadLength {
        at: usize,
    },
    InvalidStatus(u16),
    UnknownFlags(u8),
    InvalidHeaderName {
        at: usize,
    },
    InvalidHeaderValue {
        at: usize,
    },
    TooManyHeaders {
        at: usize,
    },
    InvalidTag {
        at: usize,
    },
    TimeOutOfRange {
        at: usize,
    },
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Problem::ForeignMagic => f.write_str("not an encoded cache entry (foreign magic bytes)"),
            Problem::UnknownVersion(v) => {
                write!(
                    f,
                    "cache entry format version {v} is unknown (this build reads {VERSION})"
                )
            }
            Problem::ChecksumMismatch => f.write_str("cache entry checksum mismatch (corrupt or truncated bytes)"),
            Problem::UnknownKind(kind) => write!(f, "unknown cache entry kind {kind}"),
            Problem::Truncated { at } => write!(f, "cache entry truncated: the field at byte {at} runs past the end"),
            Problem::BadLength { at } => write!(f, "cache entry has a malformed length at byte {at}"),
            Problem::InvalidStatus(status) => write!(f, "cache entry has an invalid status code {status}"),
            Problem::UnknownFlags(flags) => write!(f, "cache entry has unknown flag bits {flags:#04x}"),
            Problem::InvalidHeaderName { at } => write!(f, "cache entry has an invalid header name at byte {at}"),
            Problem::InvalidHeaderValue { at } => write!(f, "cache entry has an invalid header value at byte {at}"),
            Problem::TooManyHeaders { at } => write!(f, "cache entry has too many header fields at byte {at}"),
            Problem::InvalidTag { at } => write!(f, "cache entry has a tag that is not UTF-8 at byte {at}"),
            Problem::TimeOutOfRange { at } => write!(f, "cache entry has an out-of-range time at byte {at}"),
            Problem::TrailingBytes(n) => write!(f, "cache entry has {n} trailing bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends the fields of an entry to a buffer.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// An unsigned LEB128 varint.
    fn len(&mut self, len: usize) {
        let mut rest = len as u64;
        while rest >= 0x80 {
            self.0.push(rest as u8 | 0x80);
            rest >>= 7;
        }
        self.0.push(rest as u8);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    fn duration(&mut self, duration: Duration) {
        self.u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    fn time(&mut self, time: SystemTime) {
        self.duration(time.duration_since(UNIX_EPOCH).unwrap_or_default());
    }

    fn fields(&mut self, map: &HeaderMap) {
        // `len` counts every value, so repeated names are all written.
        self.len(map.len());
        for (name, value) in map {
            self.bytes(name.as_str().as_bytes());
            self.bytes(value.as_bytes());
        }
    }

    fn names(&mut self, names: &[HeaderName]) {
        self.len(names.len());
        for name in names {
            self.bytes(name.as_str().as_bytes());
        }
    }

    fn response(&mut self, response: &CachedResponse) {
        // Destructured in full so that a new field fails to compile until it is encoded.
        let CachedResponse {
            status,
            headers,
            body,
            trailers,
            tags,
            vary,
            request_time,
            response_time,
            initial_age,
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            no_cache,
            must_revalidate,
            shareable_with_credentials,
        } = response;
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        self.0.extend_from_slice(&status.as_u16().to_le_bytes());
        self.u8(flag(*no_cache, NO_CACHE)
            | flag(*must_revalidate, MUST_REVALIDATE)
            | flag(*shareable_with_credentials, SHAREABLE_WITH_CREDENTIALS)
            | flag(trailers.is_some(), HAS_TRAILERS));
        self.time(*request_time);
        self.time(*response_time);
        self.duration(*initial_age);
        self.duration(*lifetime);
        self.duration(*stale_while_revalidate);
        self.duration(*stale_if_error);
        self.fields(headers);
        self.bytes(body);
        if let Some(trailers) = trailers {
            self.fields(trailers);
        }
        self.len(tags.len());
        for tag in tags {
            self.bytes(tag.as_bytes());
        }
        self.names(vary);
    }
}

/// Reads the fields of an entry whose checksum matched, checking every length against the
/// bytes left before using it.
struct Reader {
    input: Bytes,
    pos: usize,
    /// Where the checksum starts.
    end: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, len: usize) -> Result<Range<usize>, DecodeError> {
        let start = self.pos;
        if len > self.remaining() {
            return Err(DecodeError(Problem::Truncated { at: start }));
        }
        self.pos += len;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let range = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(&self.input[range]);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// An unsigned LEB128 varint of at most 64 bits.
    fn len(&mut self) -> Result<usize, DecodeError> {
        let at = self.pos;
        let bad = DecodeError(Problem::BadLength { at });
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            // The tenth byte holds bit 63 only, and ends the number.
            if shift == 63 && byte > 1 {
                return Err(bad);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| bad);
            }
        }
        Err(bad)
    }

    /// A count of items that each take at least `min_item_len` bytes: one the remaining input
    /// cannot hold is rejected before anything is allocated for it.
    fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let count = self.len()?;
        if count > self.remaining() / min_item_len {
            return Err(DecodeError(Problem::Truncated { at }));
        }
        Ok(count)
    }

    /// A length-prefixed byte string, as a range of the input.
    fn bytes(&mut self) -> Result<Range<usize>, DecodeError> {
        let at = self.pos;
        let len = self.len()?;
        self.take(len).map_err(|_| DecodeError(Problem::Truncated { at }))
    }

    fn duration(&mut self) -> Result<Duration, DecodeError> {
        Ok(Duration::from_micros(self.u64()?))
    }

    fn time(&mut self) -> Result<SystemTime, DecodeError> {
        let at = self.pos;
        let since_epoch = self.duration()?;
        UNIX_EPOCH
            .checked_add(since_epoch)
            .ok_or(DecodeError(Problem::TimeOutOfRange { at }))
    }

    fn name(&mut self) -> Result<HeaderName, DecodeError> {
        let at = self.pos;
        let range = self.bytes()?;
        HeaderName::from_bytes(&self.input[range]).map_err(|_| DecodeError(Problem::InvalidHeaderName { at }))
    }

    fn fields(&mut self) -> Result<HeaderMap, DecodeError> {
        let count = self.count(MIN_FIELD_LEN)?;
        let mut map = HeaderMap::try_with_capacity(count.min(MAX_PREALLOCATED)).unwrap_or_default();
        for _ in 0..count {
            let name = self.name()?;
            let at = self.pos;
            let range = self.bytes()?;
            let value = HeaderValue::from_bytes(&self.input[range])
                .map_err(|_| DecodeError(Problem::InvalidHeaderValue { at }))?;
            map.try_append(name, value)
                .map_err(|_| DecodeError(Problem::TooManyHeaders { at }))?;
        }
        Ok(map)
    }

    fn names(&mut self) -> Result<Vec<HeaderName>, DecodeError> {
        let count = self.count(MIN_NAME_LEN)?;
        let mut names = Vec::with_capacity(count.min(MAX_PREALLOCATED));
        for _ in 0..count {
            names.push(self.name()?);
        }
        Ok(names)
    }

    fn tags(&mut self) -> Result<Vec<String>, DecodeError> {
        let count = self.count(MIN_TAG_LEN)?;
        let mut tags = Vec::with_capacity(count.min(MAX_PREALLOCATED));
        for _ in 0..count {
            let at = self.pos;
            let range = self.bytes()?;
            let tag = std::str::from_utf8(&self.input[range]).map_err(|_| DecodeError(Problem::InvalidTag { at }))?;
            tags.push(tag.to_owned());
        }
        Ok(tags)
    }

    fn response(&mut self) -> Result<CachedResponse, DecodeError> {
        let status = u16::from_le_bytes(self.array()?);
        let status = StatusCode::from_u16(status).map_err(|_| DecodeError(Problem::InvalidStatus(status)))?;
        let flags = self.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError(Problem::UnknownFlags(flags)));
        }
        let request_time = self.time()?;
        let response_time = self.time()?;
        let initial_age = self.duration()?;
        let lifetime = self.duration()?;
        let stale_while_revalidate = self.duration()?;
        let stale_if_error = self.duration()?;
        let headers = self.fields()?;
        let body_range = self.bytes()?;
        let body = self.input.slice(body_range);
        let trailers = if flags & HAS_TRAILERS != 0 {
            Some(self.fields()?)
        } else {
            None
        };
        let tags = self.tags()?;
        let vary = self.names()?;
        Ok(CachedResponse {
            status,
            headers,
            body,
            trailers,
            tags,
            vary,
            request_time,
            response_time,
            initial_age,
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            no_cache: flags & NO_CACHE != 0,
            must_revalidate: flags & MUST_REVALIDATE != 0,
            shareable_with_credentials: flags & SHAREABLE_WITH_CREDENTIALS != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::testing;
    use crate::policy::Freshness;
    use http::header::{ACCEPT_ENCODING, ACCEPT_LANGUAGE, CONTENT_TYPE, ETAG, LINK, SET_COOKIE};
    use proptest::prelude::*;

    fn at_micros(micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(micros)
    }

    /// A response that sets every field: repeated headers, a binary body, trailers, tags,
    /// `Vary` names, distinct times and durations.
    fn full_response(no_cache: bool, must_revalidate: bool, shareable_with_credentials: bool) -> CachedResponse {
        let (parts, ()) = http::Response::builder()
            .status(StatusCode::NON_AUTHORITATIVE_INFORMATION)
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .header(LINK, "</a.css>; rel=preload")
            .header(ETAG, "\"v1\"")
            .header(LINK, "</b.js>; rel=preload")
            .header("x-opaque", HeaderValue::from_bytes(b"caf\xc3\xa9\tend").unwrap())
            .header(LINK, "</c.png>; rel=preload")
            .header("cache-control", "public, max-age=60")
            .body(())
            .unwrap()
            .into_parts();
        let mut trailers = HeaderMap::new();
        trailers.append("server-timing", HeaderValue::from_static("db;dur=53"));
        trailers.append("x-checksum", HeaderValue::from_static("abc"));
        trailers.append("server-timing", HeaderValue::from_static("app;dur=47.2"));
        let freshness = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_millis(3_250),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(86_400),
            no_cache,
            must_revalidate,
            shareable_with_credentials,
            vary: vec![ACCEPT_ENCODING, ACCEPT_LANGUAGE],
            revalidation_grace: Duration::ZERO,
        };
        CachedResponse::new(
            &parts,
            Bytes::from_static(b"<html>\0\xff\x80 binary body</html>"),
            Some(trailers),
            freshness,
            vec!["product:42".into(), String::new(), "catalogue-\u{e9}\u{1f600}".into()],
            at_micros(1_700_000_000_123_456),
            at_micros(1_700_000_000_223_457),
        )
    }

    fn pairs(map: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        map.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    }

    /// Field-by-field equality, header order included.
    fn assert_same(a: &CachedResponse, b: &CachedResponse) {
        // Destructured in full so that a new field fails to compile until it is compared.
        let CachedResponse {
            status,
            headers,
            body,
            trailers,
            tags,
            vary,
            request_time,
            response_time,
            initial_age,
            lifetime,
            stale_while_revalidate,
            stale_if_error,
            no_cache,
            must_revalidate,
            shareable_with_credentials,
        } = a;
        assert_eq!(*status, b.status);
        assert_eq!(pairs(headers), pairs(&b.headers));
        assert_eq!(*body, b.body);
        assert_eq!(trailers.as_ref().map(pairs), b.trailers.as_ref().map(pairs));
        assert_eq!(*tags, b.tags);
        assert_eq!(*vary, b.vary);
        assert_eq!(*request_time, b.request_time);
        assert_eq!(*response_time, b.response_time);
        assert_eq!(*initial_age, b.initial_age);
        assert_eq!(*lifetime, b.lifetime);
        assert_eq!(*stale_while_revalidate, b.stale_while_revalidate);
        assert_eq!(*stale_if_error, b.stale_if_error);
        assert_eq!(*no_cache, b.no_cache);
        assert_eq!(*must_revalidate, b.must_revalidate);
        assert_eq!(*shareable_with_credentials, b.shareable_with_credentials);
    }

    fn round_trip(response: &CachedResponse) -> Arc<CachedResponse> {
        let bytes = Entry::Response(Arc::new(response.clone())).encode();
        match Entry::decode(&bytes).unwrap() {
            Entry::Response(decoded) => {
                assert_same(response, &decoded);
                decoded
            }
            other => panic!("decoded {other:?}"),
        }
    }

    fn problem(bytes: &[u8]) -> Problem {
        Entry::decode(bytes).unwrap_err().0
    }

    /// A preamble of `kind`, then `fields`, then a valid checksum: bytes that reach the field
    /// parser.
    fn sealed(kind: u8, fields: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[VERSION, kind]);
        bytes.extend_from_slice(fields);
        let checksum = fnv1a64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// The fixed-width start of a response's fields.
    fn fixed_fields(status: u16, flags: u8) -> Vec<u8> {
        let mut fields = status.to_le_bytes().to_vec();
        fields.push(flags);
        fields.extend_from_slice(&[0; 6 * 8]);
        fields
    }

    fn full_encoding() -> Bytes {
        Entry::Response(Arc::new(full_response(true, false, true))).encode()
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_full_response_round_trips() {
        let response = full_response(true, false, true);
        let links: Vec<_> = response.headers.get_all(LINK).iter().collect();
        assert_eq!(links.len(), 3, "the fixture repeats a header");
        let decoded = round_trip(&response);
        assert_eq!(decoded.headers.get_all(LINK).iter().collect::<Vec<_>>(), links);
    }

    #[test]
    fn every_flag_combination_round_trips() {
        for bits in 0..8 {
            round_trip(&full_response(bits & 1 != 0, bits & 2 != 0, bits & 4 != 0));
        }
    }

    #[test]
    fn absent_and_empty_trailers_stay_distinct() {
        let mut response = full_response(false, false, false);
        response.trailers = None;
        assert!(round_trip(&response).trailers.is_none());
        response.trailers = Some(HeaderMap::new());
        assert_eq!(round_trip(&response).trailers.as_ref().map(HeaderMap::len), Some(0));
    }

    #[test]
    fn the_conformance_entry_round_trips() {
        let mut response = testing::response("body", &["a", "b"], Duration::from_secs(5));
        // `testing` reads the wall clock, finer than the format keeps.
        response.response_time = at_micros(1_700_000_000_000_001);
        round_trip(&response);
    }

    #[test]
    fn variants_round_trip() {
        for names in [vec![], vec![ACCEPT_ENCODING], vec![ACCEPT_ENCODING, ACCEPT_LANGUAGE]] {
            let bytes = Entry::Variants(names.clone().into()).encode();
            match Entry::decode(&bytes).unwrap() {
                Entry::Variants(decoded) => assert_eq!(&decoded[..], &names[..]),
                other => panic!("decoded {other:?}"),
            }
        }
    }

    #[test]
    fn the_format_is_stable() {
        let bytes = Entry::Variants(Arc::from([ACCEPT_ENCODING])).encode();
        let mut expected = b"TRCE\x01\x02\x01\x0faccept-encoding".to_vec();
        expected.extend_from_slice(&0x6624_2924_7da4_d21a_u64.to_le_bytes());
        assert_eq!(&bytes[..], &expected[..], "variants format changed: bump VERSION");

        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"a\""));
        let response = CachedResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hi"),
            trailers: Some(HeaderMap::new()),
            tags: vec!["t".into()],
            vary: vec![http::header::ACCEPT],
            request_time: at_micros(1_000_000),
            response_time: at_micros(2_000_000),
            initial_age: Duration::from_micros(3),
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            no_cache: true,
            must_revalidate: false,
            shareable_with_credentials: false,
        };
        let mut expected = b"TRCE\x01\x01".to_vec();
        expected.extend_from_slice(&200u16.to_le_bytes());
        expected.push(NO_CACHE | HAS_TRAILERS);
        for micros in [1_000_000u64, 2_000_000, 3, 60_000_000, 0, 0] {
            expected.extend_from_slice(&micros.to_le_bytes());
        }
        expected.extend_from_slice(b"\x01\x04etag\x03\"a\""); // headers
        expected.extend_from_slice(b"\x02hi"); // body
        expected.extend_from_slice(b"\x00"); // trailers
        expected.extend_from_slice(b"\x01\x01t"); // tags
        expected.extend_from_slice(b"\x01\x06accept"); // vary
        expected.extend_from_slice(&0x7d3f_bc3b_9178_329f_u64.to_le_bytes());
        let bytes = Entry::Response(Arc::new(response)).encode();
        assert_eq!(&bytes[..], &expected[..], "response format changed: bump VERSION");
    }

    #[test]
    fn decode_bytes_shares_the_body_with_the_input() {
        let bytes = full_encoding();
        let input = bytes.as_ptr_range();
        let Entry::Response(decoded) = Entry::decode_bytes(bytes.clone()).unwrap() else {
            panic!("not a response");
        };
        let body = decoded.body.as_ptr_range();
        assert!(!decoded.body.is_empty());
        assert!(
            input.start <= body.start && body.end <= input.end,
            "the body was copied"
        );
    }

    #[test]
    fn times_are_kept_to_the_microsecond_and_clamped() {
        let mut response = full_response(false, false, false);
        response.request_time = UNIX_EPOCH - Duration::from_secs(1);
        response.response_time = at_micros(1_700_000_000_000_000) + Duration::from_nanos(999);
        response.initial_age = Duration::from_nanos(1_999);
        response.lifetime = Duration::MAX;
        let Entry::Response(decoded) = Entry::decode(&Entry::Response(Arc::new(response)).encode()).unwrap() else {
            panic!("not a response");
        };
        assert_eq!(decoded.request_time, UNIX_EPOCH);
        assert_eq!(decoded.response_time, at_micros(1_700_000_000_000_000));
        assert_eq!(decoded.initial_age, Duration::from_micros(1));
        assert_eq!(decoded.lifetime, Duration::from_micros(u64::MAX));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = full_encoding();
        for len in 0..bytes.len() {
            let expected = if len < PREAMBLE_LEN + CHECKSUM_LEN {
                Problem::Truncated { at: len }
            } else {
                Problem::ChecksumMismatch
            };
            assert_eq!(problem(&bytes[..len]), expected, "prefix of {len} bytes");
        }
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let bytes = full_encoding();
        for pos in 0..bytes.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut corrupt = bytes.to_vec();
                corrupt[pos] ^= mask;
                let expected = match pos {
                    0..4 => Problem::ForeignMagic,
                    4 => Problem::UnknownVersion(VERSION ^ mask),
                    _ => Problem::ChecksumMismatch,
                };
                assert_eq!(problem(&corrupt), expected, "byte {pos} ^ {mask:#04x}");
            }
        }
    }

    #[test]
    fn foreign_bytes_are_rejected() {
        let mut random = [0u8; 256];
        let mut state = 0x5EEDu64;
        for byte in &mut random {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            *byte = (state >> 56) as u8;
        }
        assert_eq!(problem(b""), Problem::Truncated { at: 0 });
        assert_eq!(problem(b"TR"), Problem::Truncated { at: 2 });
        assert_eq!(problem(b"TRCE\x01\x01"), Problem::Truncated { at: 6 });
        assert_eq!(problem(b"hello"), Problem::ForeignMagic);
        assert_eq!(problem(b"{\"status\":200}"), Problem::ForeignMagic);
        assert_eq!(problem(b"\x1f\x8b\x08\x00gzip"), Problem::ForeignMagic);
        assert_eq!(problem(&random), Problem::ForeignMagic);
        assert_eq!(problem(b"TRCE\x02\x01anything at all"), Problem::UnknownVersion(2));
        assert_eq!(problem(b"TRCE\x01\x01not checksummed"), Problem::ChecksumMismatch);
    }

    #[test]
    fn hostile_lengths_are_rejected_before_allocating() {
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let at_headers = PREAMBLE_LEN + fixed_fields(200, 0).len();

        let mut headers = fixed_fields(200, 0);
        headers.extend_from_slice(&huge);
        assert_eq!(
            problem(&sealed(KIND_RESPONSE, &headers)),
            Problem::Truncated { at: at_headers }
        );

        // A count the input could hold only if each field took fewer than three bytes.
        let mut headers = fixed_fields(200, 0);
        headers.extend_from_slice(&[4, 1, b'a', 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            problem(&sealed(KIND_RESPONSE, &headers)),
            Problem::Truncated { at: at_headers }
        );

        let mut name = fixed_fields(200, 0);
        name.push(1);
        name.extend_from_slice(&huge);
        assert_eq!(
            problem(&sealed(KIND_RESPONSE, &name)),
            Problem::Truncated { at: at_headers + 1 }
        );

        let mut body = fixed_fields(200, 0);
        body.push(0);
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x10]);
        assert_eq!(
            problem(&sealed(KIND_RESPONSE, &body)),
            Problem::Truncated { at: at_headers + 1 }
        );

        let mut tags = fixed_fields(200, 0);
        tags.extend_from_slice(&[0, 0]);
        tags.extend_from_slice(&huge);
        assert_eq!(
            problem(&sealed(KIND_RESPONSE, &tags)),
            Problem::Truncated { at: at_headers + 2 }
        );

        assert_eq!(
            problem(&sealed(KIND_VARIANTS, &huge)),
            Problem::Truncated { at: PREAMBLE_LEN }
        );
    }

    #[test]
    fn malformed_fields_under_a_valid_checksum_are_rejected() {
        let empty_rest = [0u8, 0, 0, 0];
        let response = |status: u16, flags: u8, rest: &[u8]| {
            let mut fields = fixed_fields(status, flags);
            fields.extend_from_slice(rest);
            sealed(KIND_RESPONSE, &fields)
        };
        let at_headers = PREAMBLE_LEN + fixed_fields(200, 0).len();
        assert!(Entry::decode(&response(200, 0, &empty_rest)).is_ok());
        assert_eq!(problem(&sealed(3, &[])), Problem::UnknownKind(3));
        assert_eq!(problem(&response(99, 0, &empty_rest)), Problem::InvalidStatus(99));
        assert_eq!(problem(&response(1000, 0, &empty_rest)), Problem::InvalidStatus(1000));
        assert_eq!(problem(&response(200, 0x10, &empty_rest)), Problem::UnknownFlags(0x10));
        assert_eq!(
            problem(&response(200, HAS_TRAILERS, &empty_rest)),
            Problem::Truncated { at: at_headers + 4 }
        );
        assert_eq!(
            problem(&response(200, 0, &[1, 1, b' ', 0, 0, 0, 0])),
            Problem::InvalidHeaderName { at: at_headers + 1 }
        );
        assert_eq!(
            problem(&response(200, 0, &[1, 1, b'a', 1, b'\n', 0, 0, 0])),
            Problem::InvalidHeaderValue { at: at_headers + 3 }
        );
        assert_eq!(
            problem(&response(200, 0, &[0, 0, 1, 1, 0xff, 0])),
            Problem::InvalidTag { at: at_headers + 3 }
        );
        assert_eq!(
            problem(&response(200, 0, &[0, 0, 0, 1, 0, 0])),
            Problem::InvalidHeaderName { at: at_headers + 4 }
        );
        assert_eq!(problem(&response(200, 0, &[0, 0, 0, 0, 7])), Problem::TrailingBytes(1));
        assert_eq!(problem(&sealed(KIND_VARIANTS, &[0, 1, 2])), Problem::TrailingBytes(2));
        // Eleven-byte and overflowing varints.
        assert_eq!(
            problem(&sealed(KIND_VARIANTS, &[0x80; 11])),
            Problem::BadLength { at: PREAMBLE_LEN }
        );
        let mut overflow = [0xff; 10];
        overflow[9] = 0x02;
        assert_eq!(
            problem(&sealed(KIND_VARIANTS, &overflow)),
            Problem::BadLength { at: PREAMBLE_LEN }
        );
    }

    #[test]
    fn errors_say_what_was_wrong() {
        fn is_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
        let cases: [(&[u8], &str); 4] = [
            (b"hello", "foreign magic"),
            (b"TRCE\x07", "version 7 is unknown"),
            (b"TRCE", "truncated"),
            (b"TRCE\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00", "checksum mismatch"),
        ];
        for (bytes, message) in cases {
            let err = Entry::decode(bytes).unwrap_err();
            is_error(&err);
            assert!(err.to_string().contains(message), "{err} lacks {message:?}");
        }
        let err = Entry::decode(&sealed(KIND_VARIANTS, &[1, 1, b'\n'])).unwrap_err();
        assert_eq!(err.to_string(), "cache entry has an invalid header name at byte 7");
    }

    fn header_name() -> impl Strategy<Value = HeaderName> {
        let custom = proptest::collection::vec(prop_oneof![b'a'..=b'z', b'0'..=b'9', Just(b'-')], 1..24)
            .prop_map(|name| HeaderName::from_bytes(&name).unwrap());
        // A few fixed names make repeated fields likely.
        prop_oneof![Just(CONTENT_TYPE), Just(LINK), Just(SET_COOKIE), custom]
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff], 0..64)
            .prop_map(|value| HeaderValue::from_bytes(&value).unwrap())
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|fields| {
            let mut map = HeaderMap::new();
            for (name, value) in fields {
                map.append(name, value);
            }
            map
        })
    }

    fn cached_response() -> impl Strategy<Value = CachedResponse> {
        (
            (
                100u16..=999,
                header_map(),
                proptest::collection::vec(any::<u8>(), 0..2048),
            ),
            (
                proptest::option::of(header_map()),
                proptest::collection::vec(any::<String>(), 0..6),
                proptest::collection::vec(header_name(), 0..4),
            ),
            any::<[u64; 6]>(),
            any::<[bool; 3]>(),
        )
            .prop_map(|((status, headers, body), (trailers, tags, vary), micros, flags)| {
                let [request, response, initial_age, lifetime, swr, sie] = micros.map(Duration::from_micros);
                CachedResponse {
                    status: StatusCode::from_u16(status).unwrap(),
                    headers,
                    body: body.into(),
                    trailers,
                    tags,
                    vary,
                    request_time: UNIX_EPOCH + request,
                    response_time: UNIX_EPOCH + response,
                    initial_age,
                    lifetime,
                    stale_while_revalidate: swr,
                    stale_if_error: sie,
                    no_cache: flags[0],
                    must_revalidate: flags[1],
                    shareable_with_credentials: flags[2],
                }
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn random_fields_under_a_valid_checksum_never_panic(
            kind in 0u8..4,
            fields in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = Entry::decode(&sealed(kind, &fields));
        }

        #[test]
        fn resealed_mutations_never_panic(
            response in cached_response(),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let bytes = Entry::Response(Arc::new(response)).encode();
            let mut fields = bytes[PREAMBLE_LEN..bytes.len() - CHECKSUM_LEN].to_vec();
            for (index, byte) in mutations {
                let pos = index.index(fields.len());
                fields[pos] = byte;
            }
            if let Ok(entry) = Entry::decode(&sealed(KIND_RESPONSE, &fields)) {
                // Whatever decodes encodes to bytes that decode again.
                prop_assert!(Entry::decode(&entry.encode()).is_ok());
            }
        }

        #[test]
        fn random_responses_round_trip(response in cached_response()) {
            round_trip(&response);
        }
    }
}
