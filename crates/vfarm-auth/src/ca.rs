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
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
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

/// The organisational unit of instance host certificates: a DN namespace of their own.
pub const INSTANCES_OU: &str = "instances";

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
        // The IGTF namespace files: this CA signs subjects under its own DN's prefix, never
        // an instance certificate as a client (they carry `OU=instances`). Written once, so
        // a site's own edits stay.
        let (ns, eacl) = self.policy_files();
        for (ext, text) in [("namespaces", ns), ("signing_policy", eacl)] {
            let p = certs.join(format!("{hash}.{ext}"));
            if !p.exists() {
                write_atomic(&p, text.as_bytes(), 0o644)?;
            }
        }
        self.save_revocations(&rev)?;
        Ok(crl_path)
    }

    /// The DN prefix this CA's subjects live under: its own DN without the CN.
    pub fn namespace_prefix(&self) -> String {
        let me = dn::oneline(self.cert.subject_name());
        match me.rfind("/CN=") {
            Some(i) => me[..i].to_string(),
            None => me,
        }
    }

    /// (`<hash>.namespaces`, `<hash>.signing_policy`) for this CA.
    pub fn policy_files(&self) -> (String, String) {
        let me = dn::oneline(self.cert.subject_name());
        let prefix = self.namespace_prefix();
        let (mut ns, eacl) = vfarm_imagelist::namespaces::files_for(&me, &prefix);
        ns.push_str(&format!(
            "# Instance host certificates are servers only, never clients or signers.\n\
             TO Issuer \"{me}\" \\\n  DENY Subject \"{}/OU={INSTANCES_OU}/.*\"\n",
            vfarm_imagelist::namespaces::escape(&prefix)
        ));
        (ns, eacl)
    }

    fn issue(&self, p: CertificateParams, days: u32, now: DateTime<Utc>) -> Result<Issued> {
        if days == 0 {
            return Err(AuthError::invalid("days", "0", "must be at least 1"));
        }
        self.issue_until(p, now + chrono::Duration::days(i64::from(days)), now)
    }

    fn issue_until(
        &self,
        mut p: CertificateParams,
        mut not_after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        let key = KeyPair::generate()?;
        p.not_before = to_time(now - chrono::Duration::minutes(5))?;
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

    /// An instance's host certificate: subject = the CA's DN with `OU=instances` (replacing
    /// any OU) and CN = the host name, serverAuth only, valid until `until` (the instance's
    /// lease; capped at `max_days`). Instances are tenants' machines: their certificates must
    /// never be taken as a client, a node, the control or a list signer.
    pub fn issue_instance(
        &self,
        hostname: &str,
        until: Option<DateTime<Utc>>,
        max_days: u32,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        check_hostname(hostname)?;
        let host = hostname.trim_end_matches('.').to_ascii_lowercase();
        let mut p = CertificateParams::new(vec![host.clone()])?;
        let mut name = DistinguishedName::new();
        for (ty, v) in self.dn.iter() {
            if *ty != DnType::CommonName && *ty != DnType::OrganizationalUnitName {
                name.push(ty.clone(), v.clone());
            }
        }
        name.push(
            DnType::OrganizationalUnitName,
            DnValue::Utf8String(INSTANCES_OU.into()),
        );
        name.push(DnType::CommonName, host);
        p.distinguished_name = name;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if max_days == 0 {
            return Err(AuthError::invalid("days", "0", "must be at least 1"));
        }
        let cap = now + chrono::Duration::days(i64::from(max_days));
        let until = until.map_or(cap, |u| u.min(cap).max(now + chrono::Duration::minutes(1)));
        self.issue_until(p, until, now)
    }

    fn instance_index(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(AuthError::invalid("instance", id, "not an instance id"));
        }
        Ok(self.dir.join("instances").join(id))
    }

    /// [`issue_instance`](Self::issue_instance) for instance `id`, remembering the serial so
    /// [`revoke_instance`](Self::revoke_instance) can revoke it when the instance goes.
    pub fn issue_instance_for(
        &self,
        id: &str,
        hostname: &str,
        until: Option<DateTime<Utc>>,
        max_days: u32,
        now: DateTime<Utc>,
    ) -> Result<Issued> {
        let index = self.instance_index(id)?;
        let issued = self.issue_instance(hostname, until, max_days, now)?;
        let parent = index.parent().expect("under the CA dir");
        std::fs::create_dir_all(parent).map_err(|e| AuthError::io("create", parent, e))?;
        write_atomic(&index, issued.serial.as_bytes(), 0o600)?;
        Ok(issued)
    }

    /// Revoke the certificate issued for instance `id` (none: nothing to do). Returns its
    /// serial.
    pub fn revoke_instance(&self, id: &str, now: DateTime<Utc>) -> Result<Option<String>> {
        let index = self.instance_index(id)?;
        let serial = match std::fs::read_to_string(&index) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AuthError::io("read", &index, e)),
        };
        self.revoke(&serial, now)?;
        std::fs::remove_file(&index).map_err(|e| AuthError::io("remove", &index, e))?;
        Ok(Some(serial))
    }

    /// A user (or node) client certificate with the subject `dn` (one-line form).
    pub fn issue_user(&self, subject: &str, days: u32, now: DateTime<Utc>) -> Result<Issued> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn::parse(subject)?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // E-mail protection too: the same certificate signs image lists (`openssl smime`
        // and vfarm accept only signers fit for S/MIME).
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::EmailProtection,
        ];
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
            SiteCa::init(&dir, CA_DN, 3650, now())
                .unwrap_err()
                .code()
                .as_str(),
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

    /// Issue 15, finding 2: an instance's certificate is in a namespace of its own, a server
    /// only, lives for the lease, is revoked with the instance, and is refused as a client
    /// by the site's own CA directory.
    #[test]
    fn instance_certificates_are_servers_for_their_lease_and_revoked() {
        use vfarm_imagelist::trust::{PathError, PathPolicy, TrustStore};
        let d = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(&d.path().join("ca"), CA_DN, 3650, now()).unwrap();
        let hash = ca.info().unwrap().hash;
        for ext in ["namespaces", "signing_policy"] {
            assert!(ca
                .certificates_dir()
                .join(format!("{hash}.{ext}"))
                .is_file());
        }
        let lease = now() + chrono::Duration::hours(2);
        let i = ca
            .issue_instance_for("i-1", "vm1.example.org", Some(lease), 365, now())
            .unwrap();
        assert_eq!(
            i.subject,
            "/C=XX/O=vfarm test/OU=instances/CN=vm1.example.org"
        );
        let left = i.not_after.unwrap() - now();
        assert!(left <= chrono::Duration::hours(2) && left > chrono::Duration::minutes(110));
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "extendedKeyUsage"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(i.cert_pem.as_bytes())?;
                c.wait_with_output()
            })
            .expect("openssl (the command) is needed for this test");
        let eku = String::from_utf8_lossy(&text.stdout);
        assert!(eku.contains("TLS Web Server Authentication"), "{eku}");
        assert!(!eku.contains("Client"), "{eku}");
        // Refused by the CA directory's namespace, whatever the purpose checks above it.
        let trust = TrustStore::load(&ca.certificates_dir()).unwrap();
        let x = X509::from_pem(i.cert_pem.as_bytes()).unwrap();
        let e = trust
            .verify_client(&x, &[], &PathPolicy::strict(now()))
            .unwrap_err();
        assert!(matches!(e, PathError::OutsideNamespace { .. }), "{e}");
        // A user of the site is inside it.
        let u = ca
            .issue_user("/C=XX/O=vfarm test/CN=Ursula", 1, now())
            .unwrap();
        let ux = X509::from_pem(u.cert_pem.as_bytes()).unwrap();
        trust
            .verify_client(&ux, &[], &PathPolicy::strict(now()))
            .unwrap();
        // Destroy: revoked, once.
        assert!(openssl_verifies(&ca, &i.cert_pem));
        assert_eq!(
            ca.revoke_instance("i-1", now()).unwrap().as_deref(),
            Some(i.serial.as_str())
        );
        assert!(!openssl_verifies(&ca, &i.cert_pem));
        assert_eq!(ca.revoke_instance("i-1", now()).unwrap(), None);
        assert_eq!(
            ca.revoke_instance("../x", now()).unwrap_err().field(),
            Some("instance")
        );
    }

    /// Issue 15, finding 13 / issue 22: `ca issue-user` certificates sign what
    /// `openssl smime -verify` accepts against the CA directory.
    #[test]
    fn user_certificates_sign_smime_that_openssl_verifies() {
        let d = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(&d.path().join("ca"), CA_DN, 3650, now()).unwrap();
        let u = ca
            .issue_user("/C=XX/O=vfarm test/CN=Signer", 1, now())
            .unwrap();
        let (c, k, m, sig) = (
            d.path().join("u.pem"),
            d.path().join("u.key"),
            d.path().join("m.txt"),
            d.path().join("m.smime"),
        );
        std::fs::write(&c, &u.cert_pem).unwrap();
        std::fs::write(&k, &u.key_pem).unwrap();
        std::fs::write(&m, "hello\n").unwrap();
        let run = |args: &[&std::ffi::OsStr]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (the command) is needed for this test")
        };
        // Sign with the certificate and key in `c`/`k`, then verify against the CA dir.
        let sign_and_verify = || {
            let o = run(&[
                "smime".as_ref(),
                "-sign".as_ref(),
                "-in".as_ref(),
                m.as_os_str(),
                "-signer".as_ref(),
                c.as_os_str(),
                "-inkey".as_ref(),
                k.as_os_str(),
                "-out".as_ref(),
                sig.as_os_str(),
            ]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            run(&[
                "smime".as_ref(),
                "-verify".as_ref(),
                "-in".as_ref(),
                sig.as_os_str(),
                "-CApath".as_ref(),
                ca.certificates_dir().as_os_str(),
            ])
        };
        let o = sign_and_verify();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello");
        // A host certificate (TLS purposes only) is refused by the same command.
        let h = ca.issue_host("h1.example.org", 1, now()).unwrap();
        std::fs::write(&c, &h.cert_pem).unwrap();
        std::fs::write(&k, &h.key_pem).unwrap();
        let o = sign_and_verify();
        assert!(!o.status.success());
    }
}
