//! `hv:version` ordering, as subscribers compare list versions to refuse rollbacks.
//!
//! Versions split into pieces on `-`, `,`, `.` and `/`. Two numeric pieces compare as numbers
//! (of any length); a numeric piece sorts above a non-numeric one (so `1.0rc1 < 1.0`); two
//! non-numeric pieces compare naturally (digit runs as numbers, the rest as text). When one
//! version is a prefix of the other, the shorter is lower (`1.0 < 1.0.1`).

use std::cmp::Ordering;

fn pieces(v: &str) -> impl Iterator<Item = &str> {
    v.split(['-', ',', '.', '/'])
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Compare two strings of digits by value without overflowing.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Split into alternating digit / non-digit runs.
fn runs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    for i in 1..=bytes.len() {
        if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[i - 1].is_ascii_digit() {
            out.push(&s[start..i]);
            start = i;
        }
    }
    out
}

fn cmp_natural(a: &str, b: &str) -> Ordering {
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = if is_numeric(x) && is_numeric(y) {
            cmp_digits(x, y)
        } else {
            x.cmp(y)
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

fn cmp_piece(a: &str, b: &str) -> Ordering {
    match (is_numeric(a), is_numeric(b)) {
        (true, true) => cmp_digits(a, b),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => cmp_natural(a, b),
    }
}

/// Total order on `hv:version` strings.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (pa, pb): (Vec<_>, Vec<_>) = (pieces(a).collect(), pieces(b).collect());
    for (x, y) in pa.iter().zip(&pb) {
        let o = cmp_piece(x, y);
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_like_subscribers_do() {
        for (a, b) in [
            ("0.0.9", "0.0.10"),
            ("3.3.0-1", "3.3.0-2"),
            ("1.0", "1.0.1"),
            ("20150618211400", "20150618211401"),
            ("1.0rc1", "1.0"),
            ("1.0rc1", "1.0rc2"),
            ("1.0rc2", "1.0rc10"),
            ("9", "10"),
            ("99999999999999999999999", "100000000000000000000000"),
        ] {
            assert_eq!(compare(a, b), Less, "{a} < {b}");
            assert_eq!(compare(b, a), Greater, "{b} > {a}");
        }
        assert_eq!(compare("1.02", "1.2"), Equal);
        assert_eq!(compare("1", "1"), Equal);
    }
}
