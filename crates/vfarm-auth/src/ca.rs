//! The site CA: a small certificate authority kept in `<data>/ca/`, made with rcgen.
//!
//! It issues host certificates for instances' hostnames (SAN = the name, serverAuth +
//! clientAuth, as grid hosts need both) and user/node client certificates (grid-style DNs),
//! and publishes itself in the IGTF layout under `<data>/ca/certificates/` (`<hash>.0` = the CA,
//! `<hash>.r0` = its CRL), so that directory can be given to `vfarm serve --client-ca-dir`
//! or copied into `/etc/grid-security/certificates` as is.
//!
//! Files: `ca.key` (PKCS#8, mode 0600, never leaves the directory), `ca.pem`, `issued/<serial>.pem`
//! (every certificate issued, for revocation by serial), `revoked.json` (serials + CRL number).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use openssl::x509::X509;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};

use crate::dn;
use crate::{AuthError, Result};

/// The CA directory of a data directory.
pub fn ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

/// What `ca show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct CaInfo {
    pub subject: String,
    pub serial: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// OpenSSL subject hash: the `<hash>` of the IGTF file names.
    pub hash: String,
    pub sha256_fingerprint: String,
    pub certificate: PathBuf,
    /// The IGTF-layout directory to trust this CA (and honour its CRL).
    pub certificates_dir: PathBuf,
    pub revoked: usize,
}

/// A certificate just issued: the key is returned once and kept nowhere else.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub subject: String,
    pub serial: String,
    pub not_after: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Revocations {
    crl_number: u64,
    revoked: Vec<Revoked>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    serial: String,
    subject: String,
    at: DateTime<Utc>,
}

pub struct SiteCa {
    dir: PathBuf,
    key: KeyPair,
    cert: X509,
    dn: DistinguishedName,
}

impl std::fmt::Debug for SiteCa {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteCa").field("dir", &self.dir).finish()
    }
}

fn to_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .map_err(|e| AuthError::invalid("time", &t.to_rfc3339(), e.to_string()))
}

/// A positive 127-bit serial whose first byte is non-zero, so its DER form and OpenSSL's hex
/// print of it are both the 16 bytes drawn.
fn random_serial() -> Result<Vec<u8>> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b)?;
    b[0] = (b[0] & 0x7f).max(1);
    Ok(b.to_vec())
}

fn serial_hex(cert: &X509) -> Result<String> {
    Ok(cert.serial_number().to_bn()?.to_hex_str()?.to_string())
}

/// Normalise a serial given by a user (hex, any case, optional `0x`/colons).
fn normalise_serial(s: &str) -> Result<String> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bn = openssl::bn::BigNum::from_hex_str(&t)
        .map_err(|_| AuthError::invalid("serial", s, "not a hexadecimal serial number"))?;
    Ok(bn.to_hex_str()?.to_string())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| AuthError::io("write", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| AuthError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AuthError::io("rename into", path, e))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| AuthError::io("read", path, e))
}

/// Check a DNS host name (RFC 1123 labels).
pub fn check_hostname(name: &str) -> Result<()> {
    let bad = |why: &str| Err(AuthError::invalid("hostname", name, why));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, `-` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with `-`");
        }
    }
    Ok(())
}

impl SiteCa {
    fn key_path(dir: &Path) -> PathBuf {
        dir.join("ca.key")
    }
    fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.pem")
    }

    /// Create the CA once: refuses when `dir` already holds one.
    pub fn init(dir: &Path, subject: &str, days: u32, now: DateTime<Utc>) -> Result<SiteCa> {
        let name = dn::parse(subject)?;
        if days == 0 {
            return Err(AuthError::invalid("days", "0", "must be at least 1"));
        }
        if Self::key_path(dir).exists() || Self::cert_path(dir).exists() {
            return Err(AuthError::CaExists {
                dir: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| AuthError::io("create", dir, e))?;
        let key = KeyPair::generate()?;
        let mut p = Self::ca_params(name.clone());
        p.not_before = to_time(now - chrono::Duration::minutes(5))?;
        p.not_after = to_time(now + chrono::Duration::days(i64::from(days)))?;
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let cert = p.self_signed(&key)?;
        // The key first, created 0600 and never overwritten: `create_new` makes two racing
        // `ca init`s end with one CA, not two halves.
        let kp = Self::key_path(dir);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kp)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    AuthError::CaExists {
                        dir: dir.to_path_buf(),
                    }
                } else {
                    AuthError::io("create", &kp, e)
                }
            })?;
        f.write_all(key.serialize_pem().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| AuthError::io("write", &kp, e))?;
        write_atomic(&Self::cert_path(dir), cert.pem().as_bytes(), 0o644)?;
        let ca = SiteCa {
            dir: dir.to_path_buf(),
            key,
            cert: X509::from_pem(cert.pem().as_bytes())?,
            dn: name,
        };
        ca.publish(now)?;
        Ok(ca)
    }

    /// Open the CA in `dir`.
    pub fn open(dir: &Path) -> Result<SiteCa> {
        let kp = Self::key_path(dir);
        if !kp.exists() {
            return Err(AuthError::CaMissing {
                dir: dir.to_path_buf(),
            });
        }
        let key = KeyPair::from_pem(&read(&kp)?)?;
        let cert = X509::from_pem(read(&Self::cert_path(dir))?.as_bytes())?;
        // The issuer's name is rebuilt from the certificate so that every certificate's issuer
        // field is the same bytes as the CA's subject (both written by rcgen from one DN).
        let name = dn::parse(&dn::oneline(cert.subject_name()))?;
        Ok(SiteCa {
            dir: dir.to_path_buf(),
            key,
            cert,
            dn: name,
        })
    }

    fn ca_params(name: DistinguishedName) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = name;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.key_identifier_method = KeyIdMethod::Sha256;
        p
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(Self::ca_params(self.dn.clone()), &self.key)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn certificate_pem(&self) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.cert.to_pem()?).into_owned())
    }

    /// `<dir>/certificates`: this CA in the IGTF layout.
    pub fn certificates_dir(&self) -> PathBuf {
        self.dir.join("certificates")
    }

    fn hash(&self) -> String {
        format!("{:08x}", self.cert.subject_name_hash())
    }

    fn revocations_path(&self) -> PathBuf {
        self.dir.join("revoked.json")
    }

    fn save_revocations(&self, rev: &Revocations) -> Result<()> {
        write_atomic(
            &self.revocations_path(),
            serde_json::to_string_pretty(rev)
                .unwrap_or_default()
                .as_bytes(),
            0o644,
        )
    }

    fn revocations(&self) -> Result<Revocations> {
        let p = self.revocations_path();
        if !p.exists() {
            return Ok(Revocations::default());
        }
        serde_json::from_str(&read(&p)?).map_err(|e| AuthError::Config {
            path: p,
            message: e.to_string(),
        })
    }

    pub fn info(&self) -> Result<CaInfo> {
        let ci = vfarm_imagelist::trust::CertInfo::of(&self.cert);
        Ok(CaInfo {
            subject: ci.subject,
            serial: ci.serial,
            not_before: ci.not_before,
            not_after: ci.not_after,
            hash: self.hash(),
            sha256_fingerprint: hex::encode(
                self.cert.digest(openssl::hash::MessageDigest::sha256())?,
            ),
            certificate: Self::cert_path(&self.dir),
            certificates_dir: self.certificates_dir(),
            revoked: self.revocations()?.revoked.len(),
        })
    }

    /// Write `certificates/<hash>.0` and a freshly signed `certificates/<hash>.r0`.
    pub fn publish(&self, now: DateTime<Utc>) -> Result<PathBuf> {
        let mut rev = self.revocations()?;
        rev.crl_number += 1;
        let revoked = rev
            .revoked
            .iter()
            .map(|r| {
                let bn = openssl::bn::BigNum::from_hex_str(&r.serial)?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bn.to_vec()),
                    revocation_time: to_time(r.at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let crl = CertificateRevocationListParams {
            this_update: to_time(now - chrono::Duration::minutes(5))?,
            // fetch-crl-style consumers refuse a stale CRL; `vfarm ca crl` re-signs it.
            next_update: to_time(now + chrono::Duration::days(30))?,
            crl_number: SerialNumber::from(rev.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer())?;
        let certs = self.certificates_dir();
        std::fs::create_dir_all(&certs).map_err(|e| AuthError::io("create", &certs, e))?;
        let hash = self.hash();
        write_atomic(
            &certs.join(format!("{hash}.0")),
            self.certificate_pem()?.as_bytes(),
            0o644,
        )?;
        let crl_path = certs.join(format!("{hash}.r0"));
        write_atomic(&crl_path, crl.pem()?.as_bytes(), 0o644)?;
        self.save_revocations(&rev)?;
        Ok(crl_path)
    }

    fn issue(&self, mut p: CertificateParams, days: u32, now: DateTime<Utc>) -> Result<Issued> {
        if days == 0 {
            return Err(AuthError::invalid("days", "0", "must be at least 1"));
        }
        let key = KeyPair::generate()?;
        p.not_before = to_time(now - chrono::Duration::minutes(5))?;
        let mut not_after = now + chrono::Duration::days(i64::from(days));
        // Never beyond the CA itself: verifiers would refuse the tail anyway.
        if let Some(ca_end) = vfarm_imagelist::trust::asn1_to_utc(self.cert.not_after()) {
            not_after = not_after.min(ca_end);
        }
        p.not_after = to_time(not_after)?;
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let cert = p.signed_by(&key, &self.issuer())?;
        let x = X509::from_pem(cert.pem().as_bytes())?;
        let serial = serial_hex(&x)?;
        let issued_dir = self.dir.join("issued");
        std::fs::create_dir_all(&issued_dir)
            .map_err(|e| AuthError::io("create", &issued_dir, e))?;
        write_atomic(
            &issued_dir.join(format!("{serial}.pem")),
            cert.pem().as_bytes(),
            0o644,
        )?;
        Ok(Issued {
            subject: dn::oneline(x.subject_name()),
            serial,
            not_after: vfarm_imagelist::trust::asn1_to_utc(x.not_after()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A host certificate for `hostname`: subject = the CA's DN with CN = the host name,
    /// SAN = the host name, serverAuth + clientAuth.
    pub fn issue_host(&self, hostname: &str, days: u32, now: DateTime<Utc>) -> Result<Issued> {
        self.issue_host_with(hostname, &[], days, now)
    }

    /// [`issue_host`](Self::issue_host) with more subject alternative names: host names, or
    /// IP addresses (a node reached by its address, as the control reaches nodes).
    pub fn issue_host_with(
        &self,
        hostname: &str,
        alt_names: &[String],
        days: u32,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        check_hostname(hostname)?;
        let host = hostname.trim_end_matches('.').to_ascii_lowercase();
        let mut sans = vec![host.clone()];
        for a in alt_names {
            if a.parse::<std::net::IpAddr>().is_err() {
                check_hostname(a)?;
            }
            sans.push(a.clone());
        }
        // rcgen makes an IP address SAN of a name that parses as one.
        let mut p = CertificateParams::new(sans)?;
        let mut name = DistinguishedName::new();
        for (ty, v) in self.dn.iter() {
            if *ty != DnType::CommonName {
                name.push(ty.clone(), v.clone());
            }
        }
        name.push(DnType::CommonName, host);
        p.distinguished_name = name;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(p, days, now)
    }

    /// A user (or node) client certificate with the subject `dn` (one-line form).
    pub fn issue_user(&self, subject: &str, days: u32, now: DateTime<Utc>) -> Result<Issued> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn::parse(subject)?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p, days, now)
    }

    /// Revoke a certificate this CA issued (by serial, hex) and publish a new CRL.
    /// Returns the subject and the CRL path. Revoking twice is a no-op.
    pub fn revoke(&self, serial: &str, now: DateTime<Utc>) -> Result<(String, PathBuf)> {
        let serial = normalise_serial(serial)?;
        let issued = self.dir.join("issued").join(format!("{serial}.pem"));
        if !issued.exists() {
            return Err(AuthError::invalid(
                "serial",
                &serial,
                "this CA issued no certificate with that serial",
            ));
        }
        let subject = dn::oneline(X509::from_pem(read(&issued)?.as_bytes())?.subject_name());
        let mut rev = self.revocations()?;
        if !rev.revoked.iter().any(|r| r.serial == serial) {
            rev.revoked.push(Revoked {
                serial: serial.clone(),
                subject: subject.clone(),
                at: now,
            });
            self.save_revocations(&rev)?;
        }
        Ok((subject, self.publish(now)?))
    }

    /// The serial of a PEM certificate file (to revoke by file).
    pub fn serial_of_pem(pem: &[u8]) -> Result<String> {
        serial_hex(&X509::from_pem(pem)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    const CA_DN: &str = "/C=XX/O=vfarm test/CN=vfarm test CA";

    fn now() -> DateTime<Utc> {
        Utc::now()
    }

    /// Verify `pem` against the CA directory with OpenSSL, CRLs checked.
    fn openssl_verifies(ca: &SiteCa, pem: &str) -> bool {
        let trust = vfarm_imagelist::trust::TrustStore::load(&ca.certificates_dir()).unwrap();
        let store = trust.x509_store(now(), true).unwrap();
        let cert = X509::from_pem(pem.as_bytes()).unwrap();
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, &cert, &Stack::new().unwrap(), |c| c.verify_cert())
            .unwrap()
    }

    #[test]
    fn init_once_issue_verify_revoke() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        SiteCa::init(&dir, CA_DN, 3650, now()).unwrap();
        let mode = std::fs::metadata(dir.join("ca.key")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(
            SiteCa::init(&dir, CA_DN, 3650, now()).unwrap_err().code(),
            "ca_exists"
        );
        let info = SiteCa::open(&dir).unwrap().info().unwrap();
        assert_eq!(info.subject, CA_DN);
        assert!(dir.join(format!("certificates/{}.0", info.hash)).exists());
        assert!(dir.join(format!("certificates/{}.r0", info.hash)).exists());

        let ca = SiteCa::open(&dir).unwrap();
        let user = ca
            .issue_user("/C=XX/O=vfarm test/OU=users/CN=Alice", 30, now())
            .unwrap();
        assert_eq!(user.subject, "/C=XX/O=vfarm test/OU=users/CN=Alice");
        assert!(openssl_verifies(&ca, &user.cert_pem));
        let host = ca.issue_host("N1.Example.org", 30, now()).unwrap();
        assert_eq!(host.subject, "/C=XX/O=vfarm test/CN=n1.example.org");
        let x = X509::from_pem(host.cert_pem.as_bytes()).unwrap();
        let sans: Vec<String> = x
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_string))
            .collect();
        assert_eq!(sans, vec!["n1.example.org"]);
        assert!(openssl_verifies(&ca, &host.cert_pem));

        let (subject, _) = ca.revoke(&user.serial.to_lowercase(), now()).unwrap();
        assert_eq!(subject, user.subject);
        assert!(!openssl_verifies(&ca, &user.cert_pem), "revoked");
        assert!(openssl_verifies(&ca, &host.cert_pem), "not revoked");
        assert_eq!(ca.info().unwrap().revoked, 1);
        assert_eq!(
            ca.revoke("abcdef", now()).unwrap_err().field(),
            Some("serial")
        );
    }

    #[test]
    fn a_foreign_ca_does_not_verify() {
        let d = tempfile::tempdir().unwrap();
        let a = SiteCa::init(&d.path().join("a"), CA_DN, 10, now()).unwrap();
        let b = SiteCa::init(&d.path().join("b"), "/C=XX/O=other/CN=Other CA", 10, now()).unwrap();
        let u = b.issue_user("/C=XX/O=other/CN=Mallory", 1, now()).unwrap();
        assert!(!openssl_verifies(&a, &u.cert_pem));
        let _ = X509StoreBuilder::new();
    }

    #[test]
    fn bad_input_names_the_field_and_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("ca");
        assert_eq!(
            SiteCa::init(&dir, "CN=x", 10, now()).unwrap_err().field(),
            Some("subject")
        );
        assert!(!dir.exists());
        let ca = SiteCa::init(&dir, CA_DN, 10, now()).unwrap();
        for h in ["", "a..b", "-a.org", "a_b.org", &"x".repeat(64)] {
            assert_eq!(
                ca.issue_host(h, 1, now()).unwrap_err().field(),
                Some("hostname"),
                "{h}"
            );
        }
        assert_eq!(
            ca.issue_user("/C=XX/CN=a", 0, now()).unwrap_err().field(),
            Some("days")
        );
        assert!(!dir.join("issued").exists());
        assert!(SiteCa::open(&d.path().join("none")).is_err());
    }
}
