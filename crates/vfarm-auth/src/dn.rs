//! Distinguished names in OpenSSL's one-line form (`/C=XX/O=Example/CN=Alice`), the way grid
//! middleware writes them, parsed into rcgen names and printed back with
//! `vfarm_imagelist::trust::oneline` (one implementation of the printing, shared).

use rcgen::{DistinguishedName, DnType, DnValue};

use crate::{AuthError, Result};

pub use vfarm_imagelist::trust::oneline;

/// The subject of a DER certificate, one-line form (the user a client certificate names).
pub fn subject_of_der(der: &[u8]) -> Result<String> {
    Ok(oneline(openssl::x509::X509::from_der(der)?.subject_name()))
}

/// The subject of the first certificate in PEM text, one-line form.
pub fn subject_of_pem(pem: &[u8]) -> Result<String> {
    Ok(oneline(openssl::x509::X509::from_pem(pem)?.subject_name()))
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
