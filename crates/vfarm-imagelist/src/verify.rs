//! The whole acceptance check of a signed image list, with an injectable clock.
//!
//! Order: parse S/MIME → exactly one signer → digest and signature over the exact signed
//! bytes → signer chains to a trusted CA at `now` (validity, same-name rogue CA, CRL) → JSON
//! and structure → `hv:dn`/`hv:ca` equal the signer's subject/issuer → the signer is an
//! authorised endorser (when a set is given) → dates.

use chrono::{DateTime, Utc};
use openssl::stack::Stack;
use openssl::x509::{X509StoreContext, X509VerifyResult};

use crate::model::{format_date, ImageList, ModelError};
use crate::smime::{SignedMessage, SmimeError};
use crate::trust::{oneline, CertInfo, TrustError, TrustStore};

/// Why a list was refused. Every variant has a stable [`Refusal::code`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not a signed image list")]
    NotSigned(#[source] SmimeError),
    #[error("the signature has {count} signers; exactly one is required")]
    SignerCount { count: usize },
    #[error(
        "signature check failed: the list was modified after signing, or the signature is corrupt"
    )]
    BadSignature(#[source] SmimeError),
    #[error(
        "signer {subject} (issuer {issuer}) does not chain to a trusted CA in {ca_dir}: {detail}"
    )]
    UntrustedSigner {
        subject: String,
        issuer: String,
        ca_dir: String,
        detail: &'static str,
    },
    #[error("signer {subject} names issuer {issuer}, which is in the CA dir, but that CA did not sign it (a different CA with the same name)")]
    RogueIssuer { subject: String, issuer: String },
    #[error("certificate {subject} expired at {not_after}")]
    CertificateExpired { subject: String, not_after: String },
    #[error("certificate {subject} is not valid before {not_before}")]
    CertificateNotYetValid { subject: String, not_before: String },
    #[error("certificate {subject} (serial {serial}) is revoked by the CRL of {issuer}")]
    CertificateRevoked {
        subject: String,
        serial: String,
        issuer: String,
    },
    #[error("the CRL of {issuer} is missing, out of date or not signed by that CA at {at} (refresh the CA dir's CRLs)")]
    CrlNotCurrent { issuer: String, at: String },
    #[error("signer {subject} is not fit for signing: {detail} (an image-list signer needs the S/MIME signing purpose, e-mail protection, as `vfarm ca issue-user` certificates carry)")]
    SignerPurpose {
        subject: String,
        detail: &'static str,
    },
    #[error("signer refused: {0}")]
    Path(#[source] crate::trust::PathError),
    #[error("certificate chain of {subject} is invalid: {detail}")]
    ChainInvalid {
        subject: String,
        code: i32,
        detail: &'static str,
    },
    #[error("the signed content is not a valid image list")]
    Malformed(#[source] ModelError),
    #[error("the list's endorser {list_dn} (CA {list_ca}) does not match the signer {signer_dn} (CA {signer_ca})")]
    EndorserMismatch {
        list_dn: String,
        list_ca: String,
        signer_dn: String,
        signer_ca: String,
    },
    #[error(
        "signer {signer_dn} (CA {signer_ca}) is not an authorised endorser of this subscription"
    )]
    EndorserNotAuthorised {
        signer_dn: String,
        signer_ca: String,
    },
    #[error("endorser {dn} is revoked")]
    EndorserRevoked { dn: String },
    #[error("the list expired at {expires}")]
    ListExpired { expires: String },
    #[error("the list is created in the future ({created})")]
    ListFromFuture { created: String },
    #[error("the list identifier changed from {expected} to {found}")]
    IdentifierChanged { expected: String, found: String },
    #[error("list version {found} is lower than the accepted version {current} (rollback)")]
    Rollback { found: String, current: String },
    #[error("cannot load the trust anchors")]
    Trust(#[source] TrustError),
}

impl Refusal {
    /// A stable snake_case code for programs and tests.
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            Refusal::NotSigned(_) => vfarm_proto::ErrorCode::NotSigned,
            Refusal::SignerCount { .. } => vfarm_proto::ErrorCode::SignerCount,
            Refusal::BadSignature(_) => vfarm_proto::ErrorCode::BadSignature,
            Refusal::UntrustedSigner { .. } => vfarm_proto::ErrorCode::UntrustedSigner,
            Refusal::RogueIssuer { .. } => vfarm_proto::ErrorCode::RogueIssuer,
            Refusal::CertificateExpired { .. } => vfarm_proto::ErrorCode::CertificateExpired,
            Refusal::CertificateNotYetValid { .. } => {
                vfarm_proto::ErrorCode::CertificateNotYetValid
            }
            Refusal::CertificateRevoked { .. } => vfarm_proto::ErrorCode::CertificateRevoked,
            Refusal::CrlNotCurrent { .. } => vfarm_proto::ErrorCode::CrlNotCurrent,
            Refusal::ChainInvalid { .. } => vfarm_proto::ErrorCode::ChainInvalid,
            Refusal::SignerPurpose { .. } => vfarm_proto::ErrorCode::SignerPurpose,
            Refusal::Path(p) => p.code(),
            Refusal::Malformed(_) => vfarm_proto::ErrorCode::MalformedList,
            Refusal::EndorserMismatch { .. } => vfarm_proto::ErrorCode::EndorserMismatch,
            Refusal::EndorserNotAuthorised { .. } => vfarm_proto::ErrorCode::EndorserNotAuthorised,
            Refusal::EndorserRevoked { .. } => vfarm_proto::ErrorCode::EndorserRevoked,
            Refusal::ListExpired { .. } => vfarm_proto::ErrorCode::ListExpired,
            Refusal::ListFromFuture { .. } => vfarm_proto::ErrorCode::ListFromFuture,
            Refusal::IdentifierChanged { .. } => vfarm_proto::ErrorCode::IdentifierChanged,
            Refusal::Rollback { .. } => vfarm_proto::ErrorCode::Rollback,
            Refusal::Trust(_) => vfarm_proto::ErrorCode::TrustAnchors,
        }
    }

    /// The message with its whole cause chain, for one-line reports.
    pub fn reason(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

/// An authorised (subject, issuer) pair of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndorserId {
    pub dn: String,
    /// `None` accepts the DN from any trusted CA.
    pub ca: Option<String>,
}

/// What to check beyond the signature itself.
#[derive(Debug, Clone)]
pub struct Policy {
    pub now: DateTime<Utc>,
    /// When non-empty, the signer must be one of these.
    pub endorsers: Vec<EndorserId>,
    /// Signer DNs that are revoked outright.
    pub revoked_endorsers: Vec<String>,
    /// Refuse when the signer's CA has no CRL in the CA dir (IGTF sites run fetch-crl, so a
    /// missing CRL there means a broken set-up). Off by default: a CRL is enforced when present.
    pub require_crl: bool,
    /// Skip the date checks (for `subscribe`-time inspection of a list whose dates are judged later).
    pub check_dates: bool,
}

impl Policy {
    pub fn at(now: DateTime<Utc>) -> Policy {
        Policy {
            now,
            endorsers: Vec::new(),
            revoked_endorsers: Vec::new(),
            require_crl: false,
            check_dates: true,
        }
    }
}

/// A list that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedList {
    pub list: ImageList,
    pub signer: CertInfo,
    /// The signed content (what the signature covers).
    pub content: Vec<u8>,
    /// The whole message as received.
    pub raw: Vec<u8>,
    /// sha512 (lowercase hex) of `raw`: the identity of this list version.
    pub raw_sha512: String,
    /// The S/MIME `micalg` (`sha1`, `sha-256`, …) when the header names one.
    pub micalg: Option<String>,
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(openssl::sha::sha512(bytes))
}

/// Verify `raw` (a signed list as downloaded) against the CA dir `trust` under `policy`.
pub fn verify(raw: &[u8], trust: &TrustStore, policy: &Policy) -> Result<VerifiedList, Refusal> {
    let msg = SignedMessage::parse(raw).map_err(Refusal::NotSigned)?;
    let signer = msg.signer().map_err(|e| match e {
        SmimeError::SignerCount { count } => Refusal::SignerCount { count },
        other => Refusal::NotSigned(other),
    })?;
    msg.check_signature().map_err(Refusal::BadSignature)?;
    let info = CertInfo::of(&signer);
    check_chain(&msg, &signer, &info, trust, policy)?;

    let list = ImageList::from_json(&msg.content).map_err(Refusal::Malformed)?;
    if !list
        .endorsers
        .iter()
        .any(|e| e.dn == info.subject && e.ca == info.issuer)
    {
        let first = &list.endorsers[0];
        return Err(Refusal::EndorserMismatch {
            list_dn: first.dn.clone(),
            list_ca: first.ca.clone(),
            signer_dn: info.subject.clone(),
            signer_ca: info.issuer.clone(),
        });
    }
    if policy.revoked_endorsers.contains(&info.subject) {
        return Err(Refusal::EndorserRevoked { dn: info.subject });
    }
    if !policy.endorsers.is_empty()
        && !policy
            .endorsers
            .iter()
            .any(|e| e.dn == info.subject && e.ca.as_ref().is_none_or(|ca| *ca == info.issuer))
    {
        return Err(Refusal::EndorserNotAuthorised {
            signer_dn: info.subject,
            signer_ca: info.issuer,
        });
    }
    if policy.check_dates {
        if policy.now < list.created {
            return Err(Refusal::ListFromFuture {
                created: format_date(&list.created),
            });
        }
        if policy.now > list.expires {
            return Err(Refusal::ListExpired {
                expires: format_date(&list.expires),
            });
        }
    }
    Ok(VerifiedList {
        list,
        signer: info,
        content: msg.content,
        raw: raw.to_vec(),
        raw_sha512: sha512_hex(raw),
        micalg: crate::smime::micalg(raw),
    })
}

// X509_V_ERR_* values (stable across OpenSSL 1.1 and 3).
const UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
const UNABLE_TO_GET_CRL: i32 = 3;
const CERT_SIGNATURE_FAILURE: i32 = 7;
const CRL_SIGNATURE_FAILURE: i32 = 8;
const CERT_NOT_YET_VALID: i32 = 9;
const CERT_HAS_EXPIRED: i32 = 10;
const CRL_NOT_YET_VALID: i32 = 11;
const CRL_HAS_EXPIRED: i32 = 12;
const DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
const SELF_SIGNED_CERT_IN_CHAIN: i32 = 19;
const UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
const UNABLE_TO_VERIFY_LEAF_SIGNATURE: i32 = 21;
const CERT_REVOKED: i32 = 23;
const INVALID_PURPOSE: i32 = 26;

fn check_chain(
    msg: &SignedMessage,
    signer: &openssl::x509::X509,
    info: &CertInfo,
    trust: &TrustStore,
    policy: &Policy,
) -> Result<(), Refusal> {
    let crl_check = policy.require_crl || trust.has_crl_for(&info.issuer);
    // Only certificates fit for S/MIME signing sign lists: a TLS host or client certificate
    // from the same CA must not (issue 15, finding 13).
    let store = trust
        .x509_store_for(
            policy.now,
            crl_check,
            Some(openssl::x509::X509PurposeId::SMIME_SIGN),
        )
        .map_err(Refusal::Trust)?;
    let mut untrusted = Stack::new().map_err(|e| Refusal::Trust(TrustError::Store(e)))?;
    for c in msg.certificates() {
        untrusted
            .push(c)
            .map_err(|e| Refusal::Trust(TrustError::Store(e)))?;
    }
    let mut ctx = X509StoreContext::new().map_err(|e| Refusal::Trust(TrustError::Store(e)))?;
    let (ok, err, failing, chain) = ctx
        .init(&store, signer, &untrusted, |c| {
            let ok = c.verify_cert()?;
            let failing = c.current_cert().map(CertInfo::of);
            let chain: Vec<openssl::x509::X509> = c
                .chain()
                .map(|s| s.iter().map(|x| x.to_owned()).collect())
                .unwrap_or_default();
            Ok((ok, c.error(), failing, chain))
        })
        .map_err(|e| Refusal::Trust(TrustError::Store(e)))?;
    if ok {
        // Namespaces and the CRLs of the whole chain, as for TLS clients. A CA without a
        // CRL is let through unless the subscription requires CRLs (the check above already
        // refuses a present but stale one).
        let path = crate::trust::PathPolicy {
            at: policy.now,
            crl_missing: if policy.require_crl {
                crate::trust::CrlMissing::Refuse
            } else {
                crate::trust::CrlMissing::Warn
            },
            require_namespaces: None,
        };
        let warnings = trust.check_path(&chain, &path).map_err(Refusal::Path)?;
        for w in warnings {
            tracing::warn!(signer = %info.subject, "image-list signer accepted: {w}");
        }
        return Ok(());
    }
    Err(classify(
        err,
        failing.unwrap_or_else(|| info.clone()),
        info,
        trust,
        policy,
    ))
}

fn classify(
    err: X509VerifyResult,
    failing: CertInfo,
    signer: &CertInfo,
    trust: &TrustStore,
    policy: &Policy,
) -> Refusal {
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| format_date(&t))
            .unwrap_or_else(|| "unknown".into())
    };
    match err.as_raw() {
        UNABLE_TO_GET_ISSUER_CERT
        | UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        | UNABLE_TO_VERIFY_LEAF_SIGNATURE
        | CERT_SIGNATURE_FAILURE
        | DEPTH_ZERO_SELF_SIGNED_CERT
        | SELF_SIGNED_CERT_IN_CHAIN => {
            // A trusted CA with the issuer's exact name that still did not vouch for the
            // signer: someone made a CA with the same name.
            if !trust.cas_named(&failing.issuer).is_empty() && failing.issuer != failing.subject {
                Refusal::RogueIssuer {
                    subject: failing.subject,
                    issuer: failing.issuer,
                }
            } else {
                Refusal::UntrustedSigner {
                    subject: signer.subject.clone(),
                    issuer: signer.issuer.clone(),
                    ca_dir: trust.dir().display().to_string(),
                    detail: err.error_string(),
                }
            }
        }
        CERT_HAS_EXPIRED => Refusal::CertificateExpired {
            subject: failing.subject,
            not_after: when(failing.not_after),
        },
        CERT_NOT_YET_VALID => Refusal::CertificateNotYetValid {
            subject: failing.subject,
            not_before: when(failing.not_before),
        },
        CERT_REVOKED => Refusal::CertificateRevoked {
            subject: failing.subject,
            serial: failing.serial,
            issuer: failing.issuer,
        },
        UNABLE_TO_GET_CRL | CRL_HAS_EXPIRED | CRL_NOT_YET_VALID | CRL_SIGNATURE_FAILURE => {
            Refusal::CrlNotCurrent {
                issuer: signer.issuer.clone(),
                at: format_date(&policy.now),
            }
        }
        INVALID_PURPOSE => Refusal::SignerPurpose {
            subject: failing.subject,
            detail: err.error_string(),
        },
        code => Refusal::ChainInvalid {
            subject: failing.subject,
            code,
            detail: err.error_string(),
        },
    }
}

/// The one-line DN of a certificate's subject (re-exported for callers).
pub fn subject_of(cert: &openssl::x509::X509Ref) -> String {
    oneline(cert.subject_name())
}
