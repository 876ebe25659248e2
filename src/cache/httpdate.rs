//! HTTP-date (RFC 9110 section 5.6.7): parsing of the three formats a
//! recipient must accept, and formatting of the preferred IMF-fixdate.
//!
//! Written by hand on purpose: the only date crates in reach pull in chrono
//! or do far more than needed, and every byte of the wasm module is loaded by
//! every Envoy worker. This is ~150 lines of well-tested arithmetic.
//!
//! Formats accepted:
//! - IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
//! - RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT` (two-digit years 00-69 are
//!   20xx, 70-99 are 19xx: a fixed window, since logic has no "now" here)
//! - asctime: `Sun Nov  6 08:49:37 1994`
//!
//! Values are seconds since the Unix epoch; dates before 1970 and values
//! that are not dates give `None` (callers then treat Expires as "already
//! expired", and ignore Date / Last-Modified).

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];
const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Parses an HTTP-date in any of the three formats.
pub fn parse(v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    if s.len() > 64 {
        return None;
    }
    parse_imf(s)
        .or_else(|| parse_850(s))
        .or_else(|| parse_asctime(s))
}

fn month(m: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|x| x.as_slice() == m.as_bytes())
        .map(|i| i as u32 + 1)
}

fn num(s: &str, len: usize) -> Option<u32> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn time_of_day(s: &str) -> Option<u32> {
    let mut it = s.split(':');
    let h = num(it.next()?, 2)?;
    let m = num(it.next()?, 2)?;
    let sec = num(it.next()?, 2)?;
    if it.next().is_some() || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec.min(59))
}

fn parse_imf(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (wd, rest) = s.split_once(", ")?;
    if wd.len() != 3 {
        return None;
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, mon, year, tod, "GMT"] = *parts.as_slice() else {
        return None;
    };
    let day = num(day, 2)?;
    let mon = month(mon)?;
    let year = num(year, 4)?;
    build(year, mon, day, time_of_day(tod)?)
}

fn parse_850(s: &str) -> Option<u64> {
    // "Sunday, 06-Nov-94 08:49:37 GMT"
    let (wd, rest) = s.split_once(", ")?;
    if wd.len() < 6 {
        return None;
    }
    let parts: Vec<&str> = rest.split(' ').collect();
    let [date, tod, "GMT"] = *parts.as_slice() else {
        return None;
    };
    let d: Vec<&str> = date.split('-').collect();
    let [day, mon, yy] = *d.as_slice() else {
        return None;
    };
    let day = num(day, 2)?;
    let mon = month(mon)?;
    let yy = num(yy, 2)?;
    let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
    build(year, mon, day, time_of_day(tod)?)
}

fn parse_asctime(s: &str) -> Option<u64> {
    // "Sun Nov  6 08:49:37 1994" (day is space-padded)
    let parts: Vec<&str> = s.split(' ').filter(|p| !p.is_empty()).collect();
    let [wd, mon, day, tod, year] = *parts.as_slice() else {
        return None;
    };
    if wd.len() != 3 {
        return None;
    }
    let mon = month(mon)?;
    let day = match day.len() {
        1 => num(day, 1)?,
        2 => num(day, 2)?,
        _ => return None,
    };
    let year = num(year, 4)?;
    build(year, mon, day, time_of_day(tod)?)
}

fn build(year: u32, mon: u32, day: u32, tod: u32) -> Option<u64> {
    if year < 1970 || !(1..=31).contains(&day) || day > days_in_month(year, mon) {
        return None;
    }
    let days = days_from_civil(year as i64, mon, day);
    u64::try_from(days * 86_400 + tod as i64).ok()
}

fn is_leap(y: u32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats seconds since the epoch as an IMF-fixdate.
pub fn format(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // days >= 0 and 1 <= m <= 12: both `get`s are `Some`.
    let wd = DAYS.get((days % 7) as usize).copied().unwrap_or("Thu");
    let mon = MONTHS
        .get((m as usize).saturating_sub(1) % 12)
        .and_then(|m| std::str::from_utf8(m.as_slice()).ok())
        .unwrap_or("Jan");
    format!(
        "{wd}, {d:02} {mon} {y:04} {:02}:{:02}:{:02} GMT",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const T: u64 = 784_111_777; // 1994-11-06 08:49:37 UTC

    #[test]
    fn parses_all_three_formats() {
        assert_eq!(parse(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(T));
        assert_eq!(parse(b"Sunday, 06-Nov-94 08:49:37 GMT"), Some(T));
        assert_eq!(parse(b"Sun Nov  6 08:49:37 1994"), Some(T));
        assert_eq!(parse(b"  Sun, 06 Nov 1994 08:49:37 GMT "), Some(T));
    }

    #[test]
    fn rejects_garbage_and_impossible_dates() {
        for bad in [
            &b"0"[..],
            b"-1",
            b"",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 31 Feb 1994 08:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Thu, 01 Jan 1900 00:00:00 GMT",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn leap_days_and_two_digit_years() {
        assert_eq!(parse(b"Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(parse(b"Thu, 29 Feb 2001 00:00:00 GMT"), None);
        assert_eq!(parse(b"Thursday, 01-Jan-70 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse(b"Saturday, 01-Jan-00 00:00:00 GMT"),
            Some(946_684_800)
        );
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format(T), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        for s in [0u64, 59, 951_782_400, 1_700_000_000, 4_102_444_799] {
            assert_eq!(parse(format(s).as_bytes()), Some(s));
        }
    }
}
