//! The `Date` field both HTTP servers give a response that has none (RFC 9110 §6.6.1: a recipient with a clock
//! adds it): formatted once a second per thread, as hyper caches it. The HTTP/1.1 side writes its bytes into the
//! head ([`write_date`]); the HTTP/2 side puts a `HeaderValue` into the map ([`date_now`]).

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// The `Date` field, formatted once a second per thread (as hyper caches it).
pub(super) fn write_date(out: &mut BytesMut) {
    with_date(|date| {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date.text);
        out.extend_from_slice(b"\r\n");
    });
}

/// Now as a `Date` value for a response head built as a map (HTTP/2): the same cache as [`write_date`]'s, its
/// `HeaderValue` made once a second and cloned (a reference count) the rest of it. A response that comes without
/// a `Date` gets one, on either protocol (RFC 9110 §6.6.1: a recipient with a clock adds it).
pub(in crate::proxy) fn date_now() -> HeaderValue {
    with_date(|date| {
        date.value
            .get_or_insert_with(|| {
                HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&date.text))
                    .expect("an IMF-fixdate is a field value")
            })
            .clone()
    })
}

/// This second's `Date`, per thread.
struct CachedDate {
    secs: u64,
    text: [u8; 29],
    value: Option<HeaderValue>,
}

fn with_date<R>(f: impl FnOnce(&mut CachedDate) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<CachedDate> = const { RefCell::new(CachedDate { secs: u64::MAX, text: [0; 29], value: None }) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.secs != now {
            *c = CachedDate { secs: now, text: imf_fixdate(now), value: None };
        }
        f(&mut c)
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7) for seconds since the epoch.
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 29];
    let two = |n: i64| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(day));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two((rem / 3600) as i64));
    out[19] = b':';
    out[20..22].copy_from_slice(&two((rem / 60 % 60) as i64));
    out[22] = b':';
    out[23..25].copy_from_slice(&two((rem % 60) as i64));
    out[25..29].copy_from_slice(b" GMT");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&imf_fixdate(1_709_164_800), b"Thu, 29 Feb 2024 00:00:00 GMT");
    }
}
