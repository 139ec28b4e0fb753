//! Trust anchors: a CA directory in the IGTF layout (`<hash>.0` certificates, `<hash>.r0`
//! CRLs as written by fetch-crl; `*.pem` certificates are taken too; `<hash>.namespaces` and
//! `<hash>.signing_policy` say which subjects each CA may sign, see [`crate::namespaces`];
//! other files such as `*.info` are ignored).
//!
//! [`TrustStore::check_path`] is the one judgement of a verified chain that TLS clients, nodes
//! and image-list signers all go through: every certificate's subject inside its issuer's
//! namespace, and every certificate below the trust anchor checked against its issuer's CRL.

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
    #[error("namespace policy {0}")]
    Policy(#[from] crate::namespaces::PolicyError),
}

/// What to do when a CA in a chain has no current CRL (none, expired, or not yet valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlMissing {
    /// Refuse the certificate (fetch-crl sites: a missing CRL is a broken set-up).
    #[default]
    Refuse,
    /// Accept it and log a warning.
    Warn,
}

/// How a verified chain is judged.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    pub at: DateTime<Utc>,
    pub crl_missing: CrlMissing,
    /// Refuse certificates from a CA that has no namespace policy. `None`: on when any CA of
    /// the directory has one.
    pub require_namespaces: Option<bool>,
}

impl PathPolicy {
    pub fn strict(at: DateTime<Utc>) -> PathPolicy {
        PathPolicy {
            at,
            crl_missing: CrlMissing::Refuse,
            require_namespaces: None,
        }
    }
}

/// Why a chain was refused by [`TrustStore::check_path`] or [`TrustStore::verify_chain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{subject} does not chain to a trusted CA: {detail}")]
    Untrusted { subject: String, detail: String },
    #[error("{subject} is outside the namespace of its issuer {issuer} ({rules})")]
    OutsideNamespace {
        subject: String,
        issuer: String,
        rules: String,
    },
    #[error("{subject}: its issuer {issuer} has no namespace policy (.namespaces or .signing_policy) and require_namespaces is on")]
    NoNamespace { subject: String, issuer: String },
    #[error("{subject} (serial {serial}) is revoked by the CRL of {issuer}")]
    Revoked {
        subject: String,
        serial: String,
        issuer: String,
    },
    #[error(
        "no current CRL of {issuer} to check {subject} against: {why} (crl_missing = \"refuse\")"
    )]
    CrlNotCurrent {
        subject: String,
        issuer: String,
        why: String,
    },
}

impl PathError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            PathError::Untrusted { .. } => vfarm_proto::ErrorCode::Untrusted,
            PathError::OutsideNamespace { .. } => vfarm_proto::ErrorCode::OutsideNamespace,
            PathError::NoNamespace { .. } => vfarm_proto::ErrorCode::NoNamespace,
            PathError::Revoked { .. } => vfarm_proto::ErrorCode::CertificateRevoked,
            PathError::CrlNotCurrent { .. } => vfarm_proto::ErrorCode::CrlNotCurrent,
        }
    }
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
    namespaces: crate::namespaces::Namespaces,
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
        let mut policies: Vec<(PathBuf, String, bool)> = Vec::new();
        for path in names {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            if is_hash_name(stem) && (ext == "namespaces" || ext == "signing_policy") {
                policies.push((path.clone(), stem.to_ascii_lowercase(), ext == "namespaces"));
                continue;
            }
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
        let mut namespaces = crate::namespaces::Namespaces::default();
        for (path, hash, is_ns) in policies {
            let text = std::fs::read_to_string(&path).map_err(|source| TrustError::ReadFile {
                path: path.clone(),
                source,
            })?;
            let file = path.display().to_string();
            if is_ns {
                // `TO Issuer SELF` is the CA this file is named after.
                let own = cas
                    .iter()
                    .find(|c| format!("{:08x}", c.subject_name_hash()) == hash)
                    .map(|c| oneline(c.subject_name()));
                namespaces.add_namespaces(&text, &file, own.as_deref())?;
            } else {
                namespaces.add_signing_policy(&text, &file)?;
            }
        }
        Ok(TrustStore {
            dir: dir.to_path_buf(),
            cas,
            crls,
            namespaces,
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

    /// The namespace policies of the directory.
    pub fn namespaces(&self) -> &crate::namespaces::Namespaces {
        &self.namespaces
    }

    /// Each CRL's issuer and age (now − lastUpdate) and time left (nextUpdate − now), for
    /// monitoring.
    pub fn crl_ages(&self, now: DateTime<Utc>) -> Vec<(String, Option<i64>, Option<i64>)> {
        self.crls
            .iter()
            .map(|(_, c)| {
                let age = asn1_to_utc(c.last_update()).map(|t| (now - t).num_seconds());
                let left = c
                    .next_update()
                    .and_then(asn1_to_utc)
                    .map(|t| (t - now).num_seconds());
                (oneline(c.issuer_name()), age, left)
            })
            .collect()
    }

    /// Build and check the chain of `leaf` (plus `untrusted` intermediates) to a CA of the
    /// directory at `at` — signatures and validity only — and return it, leaf first.
    pub fn verify_chain(
        &self,
        leaf: &X509Ref,
        untrusted: &[X509],
        at: DateTime<Utc>,
    ) -> Result<Vec<X509>, PathError> {
        let subject = oneline(leaf.subject_name());
        let fail = |detail: String| PathError::Untrusted {
            subject: subject.clone(),
            detail,
        };
        let store = self
            .x509_store(at, false)
            .map_err(|e| fail(e.to_string()))?;
        let mut stack = openssl::stack::Stack::new().map_err(|e| fail(e.to_string()))?;
        for c in untrusted {
            stack.push(c.clone()).map_err(|e| fail(e.to_string()))?;
        }
        let mut ctx = openssl::x509::X509StoreContext::new().map_err(|e| fail(e.to_string()))?;
        let (ok, err, chain) = ctx
            .init(&store, leaf, &stack, |c| {
                let ok = c.verify_cert()?;
                let chain: Vec<X509> = c
                    .chain()
                    .map(|s| s.iter().map(|x| x.to_owned()).collect())
                    .unwrap_or_default();
                Ok((ok, c.error(), chain))
            })
            .map_err(|e| fail(e.to_string()))?;
        if !ok {
            return Err(fail(err.error_string().to_string()));
        }
        Ok(chain)
    }

    /// Judge a verified chain (leaf first, the trust anchor last): every certificate below the
    /// anchor must lie in its issuer's namespace and must not be on its issuer's current CRL.
    /// Returns the warnings `crl_missing = warn` let pass.
    pub fn check_path(
        &self,
        chain: &[X509],
        policy: &PathPolicy,
    ) -> Result<Vec<String>, PathError> {
        let require_ns = policy
            .require_namespaces
            .unwrap_or(!self.namespaces.is_empty());
        let mut warnings = Vec::new();
        for pair in chain.windows(2) {
            let (cert, issuer) = (&pair[0], &pair[1]);
            let subject = oneline(cert.subject_name());
            let issuer_dn = oneline(issuer.subject_name());
            match self.namespaces.check(&issuer_dn, &subject) {
                crate::namespaces::Verdict::Permitted => {}
                crate::namespaces::Verdict::Outside { rules } => {
                    return Err(PathError::OutsideNamespace {
                        subject,
                        issuer: issuer_dn,
                        rules,
                    })
                }
                crate::namespaces::Verdict::NoPolicy if require_ns => {
                    return Err(PathError::NoNamespace {
                        subject,
                        issuer: issuer_dn,
                    })
                }
                crate::namespaces::Verdict::NoPolicy => {}
            }
            match self.current_crl(issuer, policy.at) {
                Ok(crl) => {
                    if let openssl::x509::CrlStatus::Revoked(_) = crl.get_by_cert(cert) {
                        return Err(PathError::Revoked {
                            subject,
                            serial: CertInfo::of(cert).serial,
                            issuer: issuer_dn,
                        });
                    }
                }
                Err(why) => {
                    let e = PathError::CrlNotCurrent {
                        subject,
                        issuer: issuer_dn,
                        why,
                    };
                    match policy.crl_missing {
                        CrlMissing::Refuse => return Err(e),
                        CrlMissing::Warn => warnings.push(e.to_string()),
                    }
                }
            }
        }
        Ok(warnings)
    }

    /// [`verify_chain`](Self::verify_chain) then [`check_path`](Self::check_path).
    pub fn verify_client(
        &self,
        leaf: &X509Ref,
        untrusted: &[X509],
        policy: &PathPolicy,
    ) -> Result<(Vec<X509>, Vec<String>), PathError> {
        let chain = self.verify_chain(leaf, untrusted, policy.at)?;
        let warnings = self.check_path(&chain, policy)?;
        Ok((chain, warnings))
    }

    /// The newest CRL signed by `issuer` that is current at `at`, else why there is none.
    fn current_crl(&self, issuer: &X509Ref, at: DateTime<Utc>) -> Result<&X509Crl, String> {
        let name = oneline(issuer.subject_name());
        let key = issuer.public_key().map_err(|e| e.to_string())?;
        let mut signed: Vec<&X509Crl> = self
            .crls
            .iter()
            .map(|(_, c)| c)
            .filter(|c| oneline(c.issuer_name()) == name && c.verify(&key).unwrap_or(false))
            .collect();
        signed.sort_by_key(|c| asn1_to_utc(c.last_update()));
        let Some(newest) = signed.last() else {
            return Err("the CA directory holds no CRL signed by it".into());
        };
        let last = asn1_to_utc(newest.last_update());
        if last.is_none_or(|t| t > at) {
            return Err(format!(
                "its CRL is not valid before {}",
                last.map(|t| t.to_rfc3339()).unwrap_or_default()
            ));
        }
        match newest.next_update().and_then(asn1_to_utc) {
            Some(next) if next >= at => Ok(newest),
            Some(next) => Err(format!(
                "its CRL expired at {} (nextUpdate); run fetch-crl",
                next.to_rfc3339()
            )),
            None => Err("its CRL has no nextUpdate".into()),
        }
    }

    /// An OpenSSL store of these CAs that checks validity at `at`. With `crl_check`, the leaf's
    /// issuer must have a current CRL and the leaf must not be on it.
    pub fn x509_store(&self, at: DateTime<Utc>, crl_check: bool) -> Result<X509Store, TrustError> {
        self.x509_store_for(at, crl_check, None)
    }

    /// [`x509_store`](Self::x509_store) that also checks the leaf is fit for `purpose`.
    pub fn x509_store_for(
        &self,
        at: DateTime<Utc>,
        crl_check: bool,
        purpose: Option<openssl::x509::X509PurposeId>,
    ) -> Result<X509Store, TrustError> {
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
            if let Some(p) = purpose {
                param.set_purpose(p)?;
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
