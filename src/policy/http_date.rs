//! HTTP-dates as senders really write them (RFC 9110 §5.6.7): IMF-fixdate, the obsolete
//! RFC 850 and asctime formats, day and month names in any case, a weekday that does not
//! match the date (it is redundant, so ignored), and UTC written as `UTC`, `UT`, `Z` or
//! `+0000`. Anything else is `None`, never a guess.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses an HTTP-date; `now` resolves two-digit RFC 850 years (RFC 9110 §5.6.7: a year that
/// would be more than 50 years in the future is the most recent past one).
pub(crate) fn parse(bytes: &[u8], now: SystemTime) -> Option<SystemTime> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut tokens: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    // The weekday says nothing the date does not: dropped, whatever it says.
    if tokens
        .first()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_alphabetic()) && month(t).is_none())
    {
        tokens.remove(0);
    }
    let (day, month_name, year, time, zone) = match tokens.as_slice() {
        // asctime: `Nov  6 08:49:37 1994`
        [month_name, day, time, year] if month(month_name).is_some() => (*day, *month_name, *year, *time, None),
        // RFC 850: `06-Nov-94 08:49:37 GMT`
        [date, time, rest @ ..] if date.contains('-') && rest.len() <= 1 => {
            let mut parts = date.split('-');
            let (day, month_name, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            (day, month_name, year, *time, rest.first().copied())
        }
        // IMF-fixdate: `06 Nov 1994 08:49:37 GMT`
        [day, month_name, year, time, rest @ ..] if rest.len() <= 1 => {
            (*day, *month_name, *year, *time, rest.first().copied())
        }
        _ => return None,
    };
    if !zone.is_none_or(is_utc) {
        return None;
    }
    let month = month(month_name)?;
    let day: u32 = digits(day, 1, 2)?;
    let year = match year.len() {
        2 => two_digit_year(digits(year, 2, 2)?, now),
        4 => digits(year, 4, 4)?,
        _ => return None,
    };
    let mut clock = time.split(':');
    let hour: u32 = digits(clock.next()?, 2, 2)?;
    let minute: u32 = digits(clock.next()?, 2, 2)?;
    // A leap second (`60`) is read as the last second of its minute.
    let second: u32 = digits::<u32>(clock.next()?, 2, 2)?.min(59);
    if clock.next().is_some() || hour > 23 || minute > 59 || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_since_epoch(year, month, day)?;
    let seconds = days * 86_400 + u64::from(hour * 3600 + minute * 60 + second);
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

fn is_utc(zone: &str) -> bool {
    ["gmt", "utc", "ut", "z", "+0000", "-0000", "+00:00"]
        .iter()
        .any(|utc| zone.eq_ignore_ascii_case(utc))
}

fn month(name: &str) -> Option<u32> {
    if name.len() != 3 {
        return None;
    }
    let index = MONTHS.iter().position(|m| name.eq_ignore_ascii_case(m))?;
    Some(index as u32 + 1)
}

/// A decimal number of `min..=max` digits and nothing else.
fn digits<T: std::str::FromStr>(text: &str, min: usize, max: usize) -> Option<T> {
    let plain = text.len() >= min && text.len() <= max && text.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| text.parse().ok()).flatten()
}

fn two_digit_year(yy: u32, now: SystemTime) -> u32 {
    let this_year = now
        .duration_since(UNIX_EPOCH)
        .map_or(1970, |d| civil_year(d.as_secs() / 86_400));
    let mut year = this_year - this_year % 100 + yy;
    if year > this_year + 50 {
        year -= 100;
    }
    year
}

fn is_leap(year: u32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date; `None` before 1970 (no `SystemTime` there is useful).
fn days_since_epoch(year: u32, month: u32, day: u32) -> Option<u64> {
    if year < 1970 {
        return None;
    }
    let years = u64::from(year - 1970);
    let leap_days = (1970..year).filter(|y| is_leap(*y)).count() as u64;
    let month_days: u32 = (1..month).map(|m| days_in_month(year, m)).sum();
    Some(years * 365 + leap_days + u64::from(month_days) + u64::from(day - 1))
}

/// The year of a day counted from 1970-01-01.
fn civil_year(mut days: u64) -> u32 {
    let mut year = 1970;
    loop {
        let length = if is_leap(year) { 366 } else { 365 };
        if days < length {
            return year;
        }
        days -= length;
        year += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// 1994-11-06T08:49:37Z, the RFC's example.
    const EXAMPLE: u64 = 784_111_777;

    #[test]
    fn the_three_formats_and_their_variants() {
        let now = at(1_800_000_000);
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 +0000",
            "06 Nov 1994 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(text.as_bytes(), now), Some(at(EXAMPLE)), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_date_or_not_utc_is_none() {
        let now = at(1_800_000_000);
        for text in [
            "",
            "0",
            "-1",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Nov 1994 08:49:37 +0100",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT extra",
            "Sun, 06 Nov 1994 8:49 GMT",
            "Thu, 01 Jan 1960 00:00:00 GMT",
        ] {
            assert_eq!(parse(text.as_bytes(), now), None, "{text}");
        }
        assert_eq!(parse(b"\xff\xfe", now), None);
    }

    #[test]
    fn two_digit_years_are_the_most_recent_past_century_beyond_fifty_years() {
        // Seen in 2026: `94` is 1994, `30` is 2030 (not more than 50 years ahead).
        let now = at(1_796_000_000);
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT", now), Some(at(EXAMPLE)));
        let in_2030 = parse(b"Wednesday, 06-Nov-30 08:49:37 GMT", now).unwrap();
        assert!(in_2030 > now);
    }

    #[test]
    fn agrees_with_imf_fixdate_formatting_over_many_instants() {
        let now = SystemTime::now();
        let mut t = 0u64;
        while t < 4_000_000_000 {
            let instant = at(t);
            let text = httpdate::fmt_http_date(instant);
            assert_eq!(parse(text.as_bytes(), now), Some(instant), "{text}");
            t += 7_777_777;
        }
    }
}
