//! Structured Field Values for HTTP (RFC 9651): the Lists and Dictionaries the crate reads
//! (`Cache-Groups`, `Cache-Group-Invalidation`, targeted cache-control fields).
//!
//! The parser follows the algorithms of RFC 9651 §4.2 step by step, so that a field is read
//! exactly when the RFC says it is valid: every item type is validated (a Byte Sequence or a
//! Display String in a field makes it as valid as the RFC says), even those the crate ignores.

use std::collections::HashMap;

/// A bare item (RFC 9651 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BareItem {
    Integer(i64),
    /// In thousandths: a Decimal has at most three fractional digits.
    Decimal(i64),
    String(String),
    Token(String),
    /// The base64 text as sent; it was checked to decode.
    ByteSequence(String),
    Boolean(bool),
    Date(i64),
    DisplayString(String),
}

/// Parameters: ordered, each key once (a later duplicate replaces the earlier value in place).
pub(crate) type Parameters = Vec<(String, BareItem)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) bare_item: BareItem,
    pub(crate) params: Parameters,
}

/// A member of a List or a Dictionary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    Item(Item),
    InnerList(Vec<Item>, Parameters),
}

/// The field is not a valid structured field of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Invalid;

type Parsed<T> = Result<T, Invalid>;

/// Parses a field value (all field lines already combined with `,`) as a List.
pub(crate) fn parse_list(input: &[u8]) -> Parsed<Vec<Member>> {
    parse_field(input, |p| {
        let mut members = Vec::new();
        p.members(|p| {
            members.push(p.item_or_inner_list()?);
            Ok(())
        })?;
        Ok(members)
    })
}

/// Parses a field value as a Dictionary, in order, each key once.
pub(crate) fn parse_dictionary(input: &[u8]) -> Parsed<Vec<(String, Member)>> {
    parse_field(input, |p| {
        let mut entries = Entries::new();
        p.members(|p| {
            let key = p.key()?;
            let member = if p.eat(b'=') {
                p.item_or_inner_list()?
            } else {
                let params = p.parameters()?;
                Member::Item(Item {
                    bare_item: BareItem::Boolean(true),
                    params,
                })
            };
            entries.insert(key, member);
            Ok(())
        })?;
        Ok(entries.entries)
    })
}

/// RFC 9651 §4.2 steps 1-6: ASCII only, surrounding spaces (not tabs) allowed, nothing left over.
fn parse_field<T>(input: &[u8], parse: impl FnOnce(&mut Parser<'_>) -> Parsed<T>) -> Parsed<T> {
    if !input.is_ascii() {
        return Err(Invalid);
    }
    let mut parser = Parser { input, pos: 0 };
    parser.skip_sp();
    let value = parse(&mut parser)?;
    parser.skip_sp();
    if parser.peek().is_some() {
        return Err(Invalid);
    }
    Ok(value)
}

/// Ordered entries, each key once: a later duplicate replaces the value in its first position.
/// The index keeps a field of many keys linear to read.
struct Entries<V> {
    entries: Vec<(String, V)>,
    index: HashMap<String, usize>,
}

impl<V> Entries<V> {
    fn new() -> Self {
        Entries {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn insert(&mut self, key: String, value: V) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.pos += usize::from(found);
        found
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// The comma-separated members of a List or Dictionary (§4.2.1, §4.2.2): no trailing comma.
    fn members(&mut self, mut member: impl FnMut(&mut Self) -> Parsed<()>) -> Parsed<()> {
        while self.peek().is_some() {
            member(self)?;
            self.skip_ows();
            if self.peek().is_none() {
                break;
            }
            if self.next() != Some(b',') {
                return Err(Invalid);
            }
            self.skip_ows();
            if self.peek().is_none() {
                return Err(Invalid);
            }
        }
        Ok(())
    }

    fn item_or_inner_list(&mut self) -> Parsed<Member> {
        if self.peek() == Some(b'(') {
            self.inner_list()
        } else {
            self.item().map(Member::Item)
        }
    }

    /// §4.2.1.2: items separated by spaces, then the list's parameters.
    fn inner_list(&mut self) -> Parsed<Member> {
        self.pos += 1; // '('
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Ok(Member::InnerList(items, self.parameters()?));
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(Invalid);
            }
        }
    }

    fn item(&mut self) -> Parsed<Item> {
        let bare_item = self.bare_item()?;
        Ok(Item {
            bare_item,
            params: self.parameters()?,
        })
    }

    /// §4.2.3.2
    fn parameters(&mut self) -> Parsed<Parameters> {
        let mut params = Entries::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            params.insert(key, value);
        }
        Ok(params.entries)
    }

    /// §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Parsed<String> {
        let start = self.pos;
        if !matches!(self.peek(), Some(b'a'..=b'z' | b'*')) {
            return Err(Invalid);
        }
        while matches!(self.peek(), Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')) {
            self.pos += 1;
        }
        Ok(self.text(start))
    }

    /// §4.2.3.1: the first character names the type.
    fn bare_item(&mut self) -> Parsed<BareItem> {
        match self.peek().ok_or(Invalid)? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(BareItem::String),
            b'*' | b'A'..=b'Z' | b'a'..=b'z' => Ok(BareItem::Token(self.token())),
            b':' => self.byte_sequence(),
            b'?' => self.boolean(),
            b'@' => self.date(),
            b'%' => self.display_string(),
            _ => Err(Invalid),
        }
    }

    /// §4.2.4: at most 15 digits for an Integer; at most 12 + 3 for a Decimal.
    fn number(&mut self) -> Parsed<BareItem> {
        let negative = self.eat(b'-');
        let start = self.pos;
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(Invalid);
        }
        let mut dot = None;
        while let Some(c) = self.peek() {
            match c {
                b'0'..=b'9' => {}
                b'.' if dot.is_none() => {
                    if self.pos - start > 12 {
                        return Err(Invalid);
                    }
                    dot = Some(self.pos);
                }
                _ => break,
            }
            self.pos += 1;
            let digits = self.pos - start;
            if (dot.is_none() && digits > 15) || digits > 16 {
                return Err(Invalid);
            }
        }
        let digits = &self.input[start..self.pos];
        let value = |bytes: &[u8]| bytes.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        let sign = if negative { -1 } else { 1 };
        let Some(dot) = dot else {
            return Ok(BareItem::Integer(sign * value(digits)));
        };
        let (whole, fraction) = (&digits[..dot - start], &digits[dot - start + 1..]);
        if fraction.is_empty() || fraction.len() > 3 {
            return Err(Invalid);
        }
        let thousandths = value(fraction) * 10i64.pow(3 - fraction.len() as u32);
        Ok(BareItem::Decimal(sign * (value(whole) * 1000 + thousandths)))
    }

    /// §4.2.5: printable ASCII; `\` escapes only `"` and `\`.
    fn string(&mut self) -> Parsed<String> {
        self.pos += 1; // '"'
        let mut out = String::new();
        loop {
            match self.next().ok_or(Invalid)? {
                b'\\' => match self.next() {
                    Some(c @ (b'"' | b'\\')) => out.push(char::from(c)),
                    _ => return Err(Invalid),
                },
                b'"' => return Ok(out),
                c @ 0x20..=0x7e => out.push(char::from(c)),
                _ => return Err(Invalid),
            }
        }
    }

    /// §4.2.6: `( ALPHA / "*" ) *( tchar / ":" / "/" )`, the first character already checked.
    fn token(&mut self) -> String {
        let start = self.pos;
        self.pos += 1;
        while self.peek().is_some_and(|c| is_tchar(c) || c == b':' || c == b'/') {
            self.pos += 1;
        }
        self.text(start)
    }

    /// §4.2.7: base64 between colons; padding may be left out (and is then synthesised).
    fn byte_sequence(&mut self) -> Parsed<BareItem> {
        self.pos += 1; // ':'
        let start = self.pos;
        let len = self.input[start..].iter().position(|&c| c == b':').ok_or(Invalid)?;
        let text = &self.input[start..start + len];
        self.pos += len + 1;
        let data_len = text.iter().position(|&c| c == b'=').unwrap_or(len);
        let (data, padding) = text.split_at(data_len);
        let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
        let decodes = data.iter().all(base64)
            && padding.iter().all(|&c| c == b'=')
            && data_len % 4 != 1
            && (padding.is_empty() || (padding.len() <= 2 && len % 4 == 0));
        if !decodes {
            return Err(Invalid);
        }
        Ok(BareItem::ByteSequence(String::from_utf8_lossy(text).into_owned()))
    }

    /// §4.2.8
    fn boolean(&mut self) -> Parsed<BareItem> {
        self.pos += 1; // '?'
        match self.next() {
            Some(b'1') => Ok(BareItem::Boolean(true)),
            Some(b'0') => Ok(BareItem::Boolean(false)),
            _ => Err(Invalid),
        }
    }

    /// §4.2.9: `@` and an Integer.
    fn date(&mut self) -> Parsed<BareItem> {
        self.pos += 1; // '@'
        match self.number()? {
            BareItem::Integer(seconds) => Ok(BareItem::Date(seconds)),
            _ => Err(Invalid),
        }
    }

    /// §4.2.10: `%"`, printable ASCII with `%xx` (lowercase hex) escapes, valid UTF-8.
    fn display_string(&mut self) -> Parsed<BareItem> {
        self.pos += 1; // '%'
        if !self.eat(b'"') {
            return Err(Invalid);
        }
        let mut bytes = Vec::new();
        loop {
            match self.next().ok_or(Invalid)? {
                b'%' => {
                    let high = self.next().and_then(lower_hex).ok_or(Invalid)?;
                    let low = self.next().and_then(lower_hex).ok_or(Invalid)?;
                    bytes.push(high << 4 | low);
                }
                b'"' => {
                    return String::from_utf8(bytes)
                        .map(BareItem::DisplayString)
                        .map_err(|_| Invalid)
                }
                c @ 0x20..=0x7e => bytes.push(c),
                _ => return Err(Invalid),
            }
        }
    }

    fn text(&self, start: usize) -> String {
        // Only ASCII gets here (checked on entry).
        String::from_utf8_lossy(&self.input[start..self.pos]).into_owned()
    }
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Serialisation (RFC 9651 §4.1), for the round-trip property.
    fn serialize_list(members: &[Member]) -> String {
        members.iter().map(serialize_member).collect::<Vec<_>>().join(", ")
    }

    fn serialize_dictionary(entries: &[(String, Member)]) -> String {
        let entry = |(key, member): &(String, Member)| match member {
            Member::Item(Item {
                bare_item: BareItem::Boolean(true),
                params,
            }) => {
                format!("{key}{}", serialize_params(params))
            }
            _ => format!("{key}={}", serialize_member(member)),
        };
        entries.iter().map(entry).collect::<Vec<_>>().join(", ")
    }

    fn serialize_member(member: &Member) -> String {
        match member {
            Member::Item(item) => serialize_item(item),
            Member::InnerList(items, params) => {
                let items = items.iter().map(serialize_item).collect::<Vec<_>>().join(" ");
                format!("({items}){}", serialize_params(params))
            }
        }
    }

    fn serialize_item(item: &Item) -> String {
        format!("{}{}", serialize_bare(&item.bare_item), serialize_params(&item.params))
    }

    fn serialize_params(params: &Parameters) -> String {
        let param = |(key, value): &(String, BareItem)| match value {
            BareItem::Boolean(true) => format!(";{key}"),
            _ => format!(";{key}={}", serialize_bare(value)),
        };
        params.iter().map(param).collect()
    }

    fn serialize_bare(bare: &BareItem) -> String {
        match bare {
            BareItem::Integer(n) => n.to_string(),
            BareItem::Decimal(t) => {
                let sign = if *t < 0 { "-" } else { "" };
                let fraction = format!("{:03}", t.unsigned_abs() % 1000);
                let fraction = fraction.trim_end_matches('0');
                let fraction = if fraction.is_empty() { "0" } else { fraction };
                format!("{sign}{}.{fraction}", t.unsigned_abs() / 1000)
            }
            BareItem::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            BareItem::Token(t) => t.clone(),
            BareItem::ByteSequence(b) => format!(":{b}:"),
            BareItem::Boolean(b) => format!("?{}", u8::from(*b)),
            BareItem::Date(d) => format!("@{d}"),
            BareItem::DisplayString(s) => {
                let mut out = String::from("%\"");
                for byte in s.bytes() {
                    match byte {
                        b'%' | b'"' | 0x00..=0x1f | 0x7f..=0xff => out.push_str(&format!("%{byte:02x}")),
                        _ => out.push(char::from(byte)),
                    }
                }
                out.push('"');
                out
            }
        }
    }

    fn item(bare_item: BareItem) -> Member {
        Member::Item(Item {
            bare_item,
            params: vec![],
        })
    }

    fn string(s: &str) -> BareItem {
        BareItem::String(s.into())
    }

    #[test]
    fn reads_the_rfc_examples() {
        // RFC 9651 §3.1, §3.1.1, §3.1.2, §3.2
        assert_eq!(
            parse_list(b"sugar, tea, rum").unwrap(),
            ["sugar", "tea", "rum"].map(|t| item(BareItem::Token(t.into())))
        );
        assert_eq!(
            parse_list(b"(\"foo\" \"bar\"), (\"baz\"), (\"bat\" \"one\"), ()")
                .unwrap()
                .len(),
            4
        );
        let with_params = parse_list(b"(\"foo\"; a=1;b=2);lvl=5, (\"bar\" \"baz\");lvl=1").unwrap();
        let Member::InnerList(items, params) = &with_params[0] else {
            panic!("{with_params:?}")
        };
        assert_eq!(
            items[0].params,
            vec![("a".into(), BareItem::Integer(1)), ("b".into(), BareItem::Integer(2))]
        );
        assert_eq!(params, &vec![("lvl".into(), BareItem::Integer(5))]);
        let dict = parse_dictionary(b"a=?0, b, c; foo=bar").unwrap();
        assert_eq!(dict[0], ("a".into(), item(BareItem::Boolean(false))));
        assert_eq!(dict[1], ("b".into(), item(BareItem::Boolean(true))));
        let Member::Item(c) = &dict[2].1 else { panic!() };
        assert_eq!(c.params, vec![("foo".into(), BareItem::Token("bar".into()))]);
        // §3.3
        assert_eq!(
            parse_list(b"4.5, -0.25, 42, @1659578233").unwrap(),
            vec![
                item(BareItem::Decimal(4500)),
                item(BareItem::Decimal(-250)),
                item(BareItem::Integer(42)),
                item(BareItem::Date(1659578233)),
            ]
        );
        assert_eq!(
            parse_list(b":cHJldGVuZCB0aGlzIGlzIGJpbmFyeSBjb250ZW50Lg==:").unwrap(),
            vec![item(BareItem::ByteSequence(
                "cHJldGVuZCB0aGlzIGlzIGJpbmFyeSBjb250ZW50Lg==".into()
            ))]
        );
        assert_eq!(
            parse_list(b"%\"This is intended for display to %c3%bcsers.\"").unwrap(),
            vec![item(BareItem::DisplayString(
                "This is intended for display to \u{fc}sers.".into()
            ))]
        );
        assert_eq!(
            parse_list(b"\"a \\\"b\\\" \\\\\"").unwrap(),
            vec![item(string("a \"b\" \\"))]
        );
        assert_eq!(
            parse_list(b"foo123/456, *:x").unwrap()[1],
            item(BareItem::Token("*:x".into()))
        );
    }

    #[test]
    fn spaces_commas_and_duplicates() {
        assert_eq!(parse_list(b"").unwrap(), vec![]);
        assert_eq!(parse_list(b"   ").unwrap(), vec![]);
        assert_eq!(
            parse_list(b"  1 ,\t2  ").unwrap(),
            vec![item(BareItem::Integer(1)), item(BareItem::Integer(2))]
        );
        // Only SP may lead the field; after a member the List's OWS rule (tabs too) applies.
        assert_eq!(parse_list(b"\t1"), Err(Invalid));
        assert_eq!(parse_list(b"1\t").unwrap(), vec![item(BareItem::Integer(1))]);
        for invalid in [&b"1,"[..], b"1, ", b",1", b"1,,2", b"1 2", b"(1 2", b"(1,2)", b"(1)(2)"] {
            assert_eq!(
                parse_list(invalid),
                Err(Invalid),
                "{:?}",
                String::from_utf8_lossy(invalid)
            );
        }
        // A later duplicate key replaces the value in its first position.
        let dict = parse_dictionary(b"a=1, b=2, a=3").unwrap();
        assert_eq!(
            dict,
            vec![
                ("a".into(), item(BareItem::Integer(3))),
                ("b".into(), item(BareItem::Integer(2)))
            ]
        );
        let list = parse_list(b"1;a=1;b;a=2").unwrap();
        let Member::Item(one) = &list[0] else { panic!() };
        assert_eq!(
            one.params,
            vec![
                ("a".into(), BareItem::Integer(2)),
                ("b".into(), BareItem::Boolean(true))
            ]
        );
        // Keys are lowercase; a parameter may be preceded by spaces, a `=` may not.
        assert_eq!(parse_dictionary(b"A=1"), Err(Invalid));
        assert_eq!(parse_dictionary(b"a =1"), Err(Invalid));
        assert_eq!(parse_dictionary(b"a= 1"), Err(Invalid));
        assert!(parse_list(b"1; a=2").is_ok());
        assert_eq!(parse_list(b"1 ;a=2"), Err(Invalid));
    }

    #[test]
    fn item_limits_and_malformed_items() {
        assert_eq!(
            parse_list(b"999999999999999").unwrap(),
            vec![item(BareItem::Integer(999_999_999_999_999))]
        );
        assert_eq!(
            parse_list(b"-999999999999.999").unwrap(),
            vec![item(BareItem::Decimal(-999_999_999_999_999))]
        );
        assert_eq!(parse_list(b"1.50").unwrap(), vec![item(BareItem::Decimal(1500))]);
        for invalid in [
            &b"1000000000000000"[..], // 16 digits
            b"1234567890123.0",       // 13 integer digits in a decimal
            b"1.1234",
            b"1.",
            b"-",
            b"-a",
            b"1..2",
            b"\"unterminated",
            b"\"bad \\n escape\"",
            b"\"tab\there\"",
            b"\"caf\xc3\xa9\"",
            b":abc",
            b":ab$c:",
            b":a:",
            b":ab=c:",
            b":abc==:",
            b"?2",
            b"?",
            b"@1.5",
            b"%\"%C3%BC\"",
            b"%\"%c3\"",
            b"%\"x",
            b"%x",
            b"_token",
            b"#",
        ] {
            assert_eq!(
                parse_list(invalid),
                Err(Invalid),
                "{:?}",
                String::from_utf8_lossy(invalid)
            );
        }
        // Padding may be left out, or written in full.
        assert!(parse_list(b":YWI:, :YWI=:, :YQ==:, ::").is_ok());
    }

    fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly the characters structured fields are made of, so that valid fields come up.
        let structural = prop_oneof![
            Just(b' '),
            Just(b'\t'),
            Just(b','),
            Just(b';'),
            Just(b'='),
            Just(b'('),
            Just(b')'),
            Just(b'"'),
            Just(b'\\'),
            Just(b':'),
            Just(b'?'),
            Just(b'@'),
            Just(b'%'),
            Just(b'*'),
            Just(b'-'),
            Just(b'.'),
            Just(b'/'),
        ];
        let byte = prop_oneof![4 => b'a'..=b'f', 3 => b'0'..=b'9', 4 => structural, 1 => any::<u8>()];
        proptest::collection::vec(byte, 0..40)
    }

    fn bare_item() -> impl Strategy<Value = BareItem> {
        const MAX: i64 = 999_999_999_999_999;
        prop_oneof![
            (-MAX..=MAX).prop_map(BareItem::Integer),
            (-MAX..=MAX).prop_map(BareItem::Decimal),
            "[ -~]{0,8}".prop_map(BareItem::String),
            "[A-Za-z*][A-Za-z0-9!#$%&'*+.^_`|~:/-]{0,6}".prop_map(BareItem::Token),
            "([A-Za-z0-9+/]{4}){0,2}([A-Za-z0-9+/]{2}(==)?|[A-Za-z0-9+/]{3}=?)?".prop_map(BareItem::ByteSequence),
            any::<bool>().prop_map(BareItem::Boolean),
            (-MAX..=MAX).prop_map(BareItem::Date),
            "\\PC{0,6}".prop_map(BareItem::DisplayString),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-z*][a-z0-9_.*-]{0,5}"
    }

    fn params() -> impl Strategy<Value = Parameters> {
        // Distinct keys: a duplicate would (rightly) not read back as written.
        proptest::collection::btree_map(key(), bare_item(), 0..3).prop_map(|m| m.into_iter().collect())
    }

    fn item_strategy() -> impl Strategy<Value = Item> {
        (bare_item(), params()).prop_map(|(bare_item, params)| Item { bare_item, params })
    }

    fn member() -> impl Strategy<Value = Member> {
        prop_oneof![
            item_strategy().prop_map(Member::Item),
            (proptest::collection::vec(item_strategy(), 0..3), params())
                .prop_map(|(items, p)| Member::InnerList(items, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Every kind of value, serialised as RFC 9651 §4.1 says, reads back as it was.
        #[test]
        fn generated_values_read_back(
            list in proptest::collection::vec(member(), 0..4),
            dict in proptest::collection::btree_map(key(), member(), 0..4),
        ) {
            prop_assert_eq!(parse_list(serialize_list(&list).as_bytes()), Ok(list));
            let dict: Vec<_> = dict.into_iter().collect();
            prop_assert_eq!(parse_dictionary(serialize_dictionary(&dict).as_bytes()), Ok(dict));
        }

        /// Any input is parsed or refused without a panic; what parses serialises to text that
        /// parses back to the same value.
        #[test]
        fn parses_without_panic_and_round_trips(input in field_bytes()) {
            if let Ok(list) = parse_list(&input) {
                let text = serialize_list(&list);
                prop_assert_eq!(parse_list(text.as_bytes()), Ok(list), "{}", text);
            }
            if let Ok(dict) = parse_dictionary(&input) {
                let text = serialize_dictionary(&dict);
                prop_assert_eq!(parse_dictionary(text.as_bytes()), Ok(dict), "{}", text);
            }
        }

        /// Lists of strings, the `Cache-Groups` shape, read back as written.
        #[test]
        fn string_lists_round_trip(strings in proptest::collection::vec("[ -~]{0,12}", 0..6)) {
            let members: Vec<Member> = strings.iter().map(|s| item(string(s))).collect();
            prop_assert_eq!(parse_list(serialize_list(&members).as_bytes()), Ok(members));
        }
    }
}
