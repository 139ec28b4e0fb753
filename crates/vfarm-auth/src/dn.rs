//! Distinguished names in OpenSSL's one-line form (`/C=XX/O=Example/CN=Alice`), the way grid
//! middleware writes them, parsed into rcgen names and printed back with
//! `vfarm_imagelist::trust::oneline` (one implementation of the printing, shared).

use rcgen::{DistinguishedName, DnType, DnValue};

use crate::{AuthError, Result};

pub use vfarm_imagelist::trust::oneline;

/// The subject of a DER certificate, one-line form [`escaped`] (the user a client
/// certificate names).
pub fn subject_of_der(der: &[u8]) -> Result<String> {
    Ok(escaped(openssl::x509::X509::from_der(der)?.subject_name()))
}

/// The subject of the first certificate in PEM text, one-line form [`escaped`].
pub fn subject_of_pem(pem: &[u8]) -> Result<String> {
    Ok(escaped(openssl::x509::X509::from_pem(pem)?.subject_name()))
}

/// A name in the one-line form with its separators escaped, so that two different names never
/// print the same: this is how identities (subjects and issuers of client certificates) are
/// printed, stored and shown. Inside a value `\`, `/`, `=` and `+` are written `\\`, `\/`,
/// `\=` and `\+`, and bytes outside printable ASCII `\xHH`; the attributes of a multi-valued
/// RDN are joined by `+` (`/O=Example/CN=Alice+UID=alice`). A name without any of those prints
/// exactly as [`oneline`] prints it.
///
/// [`oneline`] (OpenSSL's `X509_NAME_oneline` form, unescaped) stays what IGTF namespace
/// patterns and image-list `dn` fields are matched against: those files are written for it.
pub fn escaped(name: &openssl::x509::X509NameRef) -> String {
    // Which entries start a new RDN: the DER of the name tells (SEQUENCE OF SET OF ...).
    let sets = name
        .to_der()
        .ok()
        .and_then(|der| rdn_sizes(&der))
        .unwrap_or_default();
    let mut starts = Vec::new();
    for n in &sets {
        starts.push(true);
        starts.extend(std::iter::repeat_n(false, n.saturating_sub(1)));
    }
    let mut out = String::new();
    for (i, entry) in name.entries().enumerate() {
        let key = entry
            .object()
            .nid()
            .short_name()
            .map(str::to_string)
            .unwrap_or_else(|_| entry.object().to_string());
        out.push(if starts.get(i).copied().unwrap_or(true) {
            '/'
        } else {
            '+'
        });
        out.push_str(&key);
        out.push('=');
        for &b in entry.data().as_slice() {
            match b {
                b'\\' | b'/' | b'=' | b'+' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..0x7f => out.push(b as char),
                _ => out.push_str(&format!("\\x{b:02X}")),
            }
        }
    }
    out
}

/// The number of attributes in each RDN of a DER `Name`, in order; `None` if it does not parse.
fn rdn_sizes(der: &[u8]) -> Option<Vec<usize>> {
    /// (tag, header length, content length) of the TLV at the start of `b`.
    fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let first = *b.get(1)? as usize;
        if first < 0x80 {
            return Some((tag, 2, first));
        }
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (tag, h, len) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = der.get(h..h + len)?;
    let mut sizes = Vec::new();
    while !rest.is_empty() {
        let (tag, h, len) = tlv(rest)?;
        if tag != 0x31 {
            return None;
        }
        let mut set = rest.get(h..h + len)?;
        let mut n = 0;
        while !set.is_empty() {
            let (_, h2, len2) = tlv(set)?;
            set = set.get(h2 + len2..)?;
            n += 1;
        }
        sizes.push(n);
        rest = rest.get(h + len..)?;
    }
    Some(sizes)
}

/// The issuer of a DER certificate, [`escaped`].
pub fn issuer_of_der(der: &[u8]) -> Result<String> {
    Ok(escaped(openssl::x509::X509::from_der(der)?.issuer_name()))
}

/// SHA-256 of a DER certificate, lowercase hex: what nodes and control pin each other by.
pub fn fingerprint_of_der(der: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(der))
}

/// [`fingerprint_of_der`] of the first certificate in PEM text.
pub fn fingerprint_of_pem(pem: &[u8]) -> Result<String> {
    Ok(fingerprint_of_der(
        &openssl::x509::X509::from_pem(pem)?.to_der()?,
    ))
}

/// The serial of a DER certificate, uppercase hex as the site CA records it.
pub fn serial_of_der(der: &[u8]) -> Result<String> {
    let x = openssl::x509::X509::from_der(der)?;
    Ok(x.serial_number().to_bn()?.to_hex_str()?.to_string())
}

/// The DNS subject alternative names and the CN of the first certificate in PEM text.
pub fn names_of_pem(pem: &[u8]) -> Result<Vec<String>> {
    let x = openssl::x509::X509::from_pem(pem)?;
    let mut names: Vec<String> = x
        .subject_alt_names()
        .map(|s| {
            s.iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for e in x
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
    {
        names.extend(e.data().to_string().ok());
    }
    Ok(names)
}

/// The OpenSSL subject hash file name (`<hash>.0`) a CA certificate has in a CA directory.
pub fn hashed_name_of_pem(pem: &[u8]) -> Result<String> {
    let x = openssl::x509::X509::from_pem(pem)?;
    Ok(format!("{:08x}.0", x.subject_name_hash()))
}

/// The attribute types a DN given to the site CA may use.
const KNOWN: &str = "C, ST, L, O, OU, CN, DC";

/// Split `/K=V/K=V` into pairs, in order. A `/` inside a value (no `=` in the next part)
/// stays in the value, as in `/CN=host/name.example.org`.
pub fn split(dn: &str) -> Result<Vec<(String, String)>> {
    let field = "subject";
    let Some(rest) = dn.strip_prefix('/') else {
        return Err(AuthError::invalid(
            field,
            dn,
            "expected the one-line form /C=../O=../CN=..",
        ));
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for part in rest.split('/') {
        match part.split_once('=') {
            Some((k, v)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                out.push((k.to_string(), v.to_string()))
            }
            _ => match out.last_mut() {
                Some((_, v)) => {
                    v.push('/');
                    v.push_str(part);
                }
                None => {
                    return Err(AuthError::invalid(
                        field,
                        dn,
                        format!("`{part}` is not KEY=VALUE"),
                    ))
                }
            },
        }
    }
    for (k, v) in &out {
        if v.is_empty() {
            return Err(AuthError::invalid(field, dn, format!("{k} is empty")));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(AuthError::invalid(
                field,
                dn,
                format!("{k} holds characters outside printable ASCII"),
            ));
        }
    }
    if !out.iter().any(|(k, _)| k == "CN") {
        return Err(AuthError::invalid(field, dn, "a CN is required"));
    }
    Ok(out)
}

/// Parse into an rcgen name. Repeated attribute types (two OU, several DC) are refused:
/// rcgen keeps one value per type.
pub fn parse(dn: &str) -> Result<DistinguishedName> {
    let field = "subject";
    let mut name = DistinguishedName::new();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in split(dn)? {
        if seen.contains(&k) {
            return Err(AuthError::invalid(
                field,
                dn,
                format!("{k} appears twice; the site CA writes one value per attribute"),
            ));
        }
        seen.push(k.clone());
        let ty = match k.as_str() {
            "C" => {
                if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(AuthError::invalid(
                        field,
                        dn,
                        format!("C must be two capital letters, not `{v}`"),
                    ));
                }
                DnType::CountryName
            }
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "CN" => DnType::CommonName,
            "DC" => DnType::CustomDnType(vec![0, 9, 2342, 19_200_300, 100, 1, 25]),
            other => {
                return Err(AuthError::invalid(
                    field,
                    dn,
                    format!("unsupported attribute `{other}` (use {KNOWN})"),
                ))
            }
        };
        let value = if k == "DC" {
            DnValue::Ia5String(
                v.as_str()
                    .try_into()
                    .map_err(|_| AuthError::invalid(field, dn, "DC must be ASCII"))?,
            )
        } else {
            DnValue::Utf8String(v)
        };
        name.push(ty, value);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::{X509Name, X509NameRef};

    fn name(pairs: &[(&str, &str)]) -> X509Name {
        let mut b = X509Name::builder().unwrap();
        for (k, v) in pairs {
            b.append_entry_by_text(k, v).unwrap();
        }
        b.build()
    }

    /// A DER name whose RDNs are the given groups of (attribute, value), O and CN only.
    fn rdns(groups: &[&[(&str, &str)]]) -> X509Name {
        fn wrap(tag: u8, body: Vec<u8>) -> Vec<u8> {
            assert!(body.len() < 128);
            let mut v = vec![tag, body.len() as u8];
            v.extend(body);
            v
        }
        let mut seq = Vec::new();
        for g in groups {
            let mut set = Vec::new();
            for (k, v) in *g {
                let oid = match *k {
                    "O" => 0x0a,
                    "CN" => 0x03,
                    _ => unreachable!(),
                };
                let mut atv = wrap(0x06, vec![0x55, 0x04, oid]);
                atv.extend(wrap(0x0c, v.as_bytes().to_vec()));
                set.extend(wrap(0x30, atv));
            }
            seq.extend(wrap(0x31, set));
        }
        X509Name::from_der(&wrap(0x30, seq)).unwrap()
    }

    fn e(n: &X509NameRef) -> String {
        escaped(n)
    }

    #[test]
    fn escaping_keeps_plain_names_as_openssl_prints_them() {
        let n = name(&[("C", "XX"), ("O", "vfarm test"), ("CN", "Alice")]);
        assert_eq!(e(&n), "/C=XX/O=vfarm test/CN=Alice");
        assert_eq!(e(&n), oneline(&n));
    }

    #[test]
    fn adversarial_values_never_print_like_another_name() {
        // Each pair prints the same unescaped (the bug) and differently escaped.
        let pairs = [
            (
                name(&[("O", "A"), ("CN", "Admin")]),
                name(&[("O", "A/CN=Admin")]),
            ),
            (name(&[("CN", "a"), ("CN", "b")]), name(&[("CN", "a/CN=b")])),
            (
                rdns(&[&[("O", "A"), ("CN", "x")]]),
                name(&[("O", "A"), ("CN", "x")]),
            ),
        ];
        for (a, b) in &pairs {
            assert_eq!(
                oneline(a),
                oneline(b),
                "the unescaped printer told them apart"
            );
            assert_ne!(e(a), e(b));
        }
        assert_eq!(e(&pairs[0].1), "/O=A\\/CN\\=Admin");
        assert_eq!(e(&pairs[2].0), "/O=A+CN=x");
        // Values carrying the escapes themselves, and the multi-valued separator.
        let all = [
            name(&[("CN", "a\\/b")]),
            name(&[("CN", "a\\"), ("CN", "b")]),
            name(&[("CN", "a\\\\/b")]),
            name(&[("CN", "a=b")]),
            name(&[("CN", "a\\=b")]),
            name(&[("CN", "a+CN=b")]),
            rdns(&[&[("CN", "a"), ("CN", "b")]]),
            rdns(&[&[("CN", "a+"), ("CN", "b")]]),
            name(&[("CN", "a\\x2F")]),
            rdns(&[&[("CN", "a\u{1}")]]),
            name(&[("O", "x/y"), ("CN", "z")]),
            name(&[("O", "x"), ("CN", "y/CN=z")]),
        ];
        let printed: std::collections::HashSet<String> = all.iter().map(|n| e(n)).collect();
        assert_eq!(printed.len(), all.len(), "{printed:#?}");
        assert_eq!(e(&all[3]), "/CN=a\\=b");
        assert_eq!(e(&all[5]), "/CN=a\\+CN\\=b");
        assert_eq!(e(&all[8]), "/CN=a\\\\x2F");
        assert_eq!(e(&all[9]), "/CN=a\\x01");
    }

    #[test]
    fn splits_in_order_and_keeps_slashes_in_values() {
        let v = split("/C=XX/O=vfarm test/CN=host/n1.example.org").unwrap();
        assert_eq!(
            v,
            vec![
                ("C".into(), "XX".into()),
                ("O".into(), "vfarm test".into()),
                ("CN".into(), "host/n1.example.org".into())
            ]
        );
    }

    #[test]
    fn refuses_by_reason() {
        for (dn, why) in [
            ("C=XX/CN=a", "one-line"),
            ("/C=XX/O=a", "CN is required"),
            ("/C=xyz/CN=a", "two capital"),
            ("/OU=a/OU=b/CN=c", "twice"),
            ("/CN=a/emailAddress=x@y", "unsupported attribute"),
            ("/CN=", "empty"),
            ("/CN=caf\u{e9}", "printable ASCII"),
        ] {
            let e = parse(dn).unwrap_err();
            assert_eq!(e.field(), Some("subject"));
            assert!(e.to_string().contains(why), "{dn}: {e}");
        }
    }
}
