//! Trust anchors: a CA directory in the IGTF layout (`<hash>.0` certificates, `<hash>.r0`
//! CRLs as written by fetch-crl; `*.pem` certificates are taken too, other files such as
//! `*.signing_policy`, `*.namespaces`, `*.info` are ignored).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::ssl::SslFiletype;
use openssl::x509::store::{X509Lookup, X509Store, X509StoreBuilder};
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParam};
use openssl::x509::{X509Crl, X509NameRef, X509Ref, X509};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read CA dir {}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{} is not a PEM CRL", path.display())]
    BadCrl {
        path: PathBuf,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("CA dir {} holds no CA certificate", dir.display())]
    Empty { dir: PathBuf },
    #[error("cannot build the certificate store")]
    Store(#[source] openssl::error::ErrorStack),
}

/// A distinguished name in OpenSSL's one-line form: `/C=DE/O=GermanGrid/CN=Owen Synge`.
/// Bytes outside printable ASCII are written `\xHH`, as OpenSSL does.
pub fn oneline(name: &X509NameRef) -> String {
    let mut out = String::new();
    for entry in name.entries() {
        let nid = entry.object().nid();
        let key = nid
            .short_name()
            .map(str::to_string)
            .unwrap_or_else(|_| entry.object().to_string());
        out.push('/');
        out.push_str(&key);
        out.push('=');
        for &b in entry.data().as_slice() {
            if (0x20..0x7f).contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02X}"));
            }
        }
    }
    out
}

/// `Asn1Time` → UTC.
pub fn asn1_to_utc(t: &Asn1TimeRef) -> Option<DateTime<Utc>> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    DateTime::from_timestamp(i64::from(d.days) * 86_400 + i64::from(d.secs), 0)
}

/// What a certificate says about itself, for reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
}

impl CertInfo {
    pub fn of(cert: &X509Ref) -> CertInfo {
        CertInfo {
            subject: oneline(cert.subject_name()),
            issuer: oneline(cert.issuer_name()),
            serial: cert
                .serial_number()
                .to_bn()
                .ok()
                .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
                .unwrap_or_default(),
            not_before: asn1_to_utc(cert.not_before()),
            not_after: asn1_to_utc(cert.not_after()),
        }
    }
}

/// A loaded CA directory.
pub struct TrustStore {
    dir: PathBuf,
    cas: Vec<X509>,
    crls: Vec<(PathBuf, X509Crl)>,
}

fn is_hash_name(stem: &str) -> bool {
    stem.len() == 8 && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl TrustStore {
    pub fn load(dir: &Path) -> Result<TrustStore, TrustError> {
        let rd = std::fs::read_dir(dir).map_err(|source| TrustError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut names: Vec<PathBuf> = Vec::new();
        for e in rd {
            let e = e.map_err(|source| TrustError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            })?;
            names.push(e.path());
        }
        names.sort();
        let mut cas = Vec::new();
        let mut crls = Vec::new();
        for path in names {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            let is_cert = (is_hash_name(stem) && digits(ext)) || ext == "pem";
            let is_crl = is_hash_name(stem) && ext.strip_prefix('r').is_some_and(digits);
            if !is_cert && !is_crl {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| TrustError::ReadFile {
                path: path.clone(),
                source,
            })?;
            if is_cert {
                let certs =
                    X509::stack_from_pem(&bytes).map_err(|source| TrustError::BadCertificate {
                        path: path.clone(),
                        source,
                    })?;
                cas.extend(certs);
            } else {
                let crl = X509Crl::from_pem(&bytes).map_err(|source| TrustError::BadCrl {
                    path: path.clone(),
                    source,
                })?;
                crls.push((path, crl));
            }
        }
        if cas.is_empty() {
            return Err(TrustError::Empty {
                dir: dir.to_path_buf(),
            });
        }
        Ok(TrustStore {
            dir: dir.to_path_buf(),
            cas,
            crls,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cas(&self) -> &[X509] {
        &self.cas
    }

    /// Trusted CAs whose subject is exactly `name`.
    pub fn cas_named(&self, name: &str) -> Vec<&X509> {
        self.cas
            .iter()
            .filter(|c| oneline(c.subject_name()) == name)
            .collect()
    }

    /// Whether the directory holds a CRL issued under `issuer` (one-line DN).
    pub fn has_crl_for(&self, issuer: &str) -> bool {
        self.crls
            .iter()
            .any(|(_, c)| oneline(c.issuer_name()) == issuer)
    }

    /// The CRLs issued under `issuer`.
    pub fn crls_for(&self, issuer: &str) -> Vec<&X509Crl> {
        self.crls
            .iter()
            .filter(|(_, c)| oneline(c.issuer_name()) == issuer)
            .map(|(_, c)| c)
            .collect()
    }

    /// An OpenSSL store of these CAs that checks validity at `at`. With `crl_check`, the leaf's
    /// issuer must have a current CRL and the leaf must not be on it.
    pub fn x509_store(&self, at: DateTime<Utc>, crl_check: bool) -> Result<X509Store, TrustError> {
        let build = || -> Result<X509Store, openssl::error::ErrorStack> {
            let mut b = X509StoreBuilder::new()?;
            for ca in &self.cas {
                b.add_cert(ca.clone())?;
            }
            if crl_check {
                let lookup = b.add_lookup(X509Lookup::file())?;
                for (path, _) in &self.crls {
                    lookup.load_crl_file(path, SslFiletype::PEM)?;
                }
            }
            let mut param = X509VerifyParam::new()?;
            param.set_time(at.timestamp() as _);
            if crl_check {
                param.set_flags(X509VerifyFlags::CRL_CHECK)?;
            }
            b.set_param(&param)?;
            Ok(b.build())
        };
        build().map_err(TrustError::Store)
    }
}

/// The first certificate of a PEM file.
pub fn certificate_from_pem(pem: &[u8]) -> Result<X509, openssl::error::ErrorStack> {
    X509::from_pem(pem)
}
