//! Test helpers: a PKI made on the spot, signed lists, a loopback HTTP server.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, CrlNumber, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{
    X509Builder, X509Crl, X509CrlBuilder, X509NameBuilder, X509RevokedBuilder, X509,
};
use vfarm_imagelist::model::{Endorser, Image, ImageList};
use vfarm_imagelist::trust::oneline;

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/imagelists"
    ))
    .join(rel)
}

pub struct Cred {
    pub cert: X509,
    pub key: PKey<Private>,
}

impl Cred {
    pub fn dn(&self) -> String {
        oneline(self.cert.subject_name())
    }
    pub fn ca(&self) -> String {
        oneline(self.cert.issuer_name())
    }
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{stem}.cert.pem"));
        let k = dir.join(format!("{stem}.key.pem"));
        std::fs::write(&c, self.cert.to_pem().unwrap()).unwrap();
        std::fs::write(&k, self.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (c, k)
    }
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn name(parts: &[(&str, &str)]) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().unwrap();
    for (k, v) in parts {
        b.append_entry_by_text(k, v).unwrap();
    }
    b.build()
}

fn t(at: DateTime<Utc>) -> Asn1Time {
    Asn1Time::from_unix(at.timestamp()).unwrap()
}

static SERIAL: AtomicUsize = AtomicUsize::new(100);

/// Basic constraints CA, key usage certSign + cRLSign, and the subject key id.
fn ca_extensions(b: &mut X509Builder, issuer: Option<&X509>) {
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    let skid = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|c| c.as_ref()), None))
        .unwrap();
    b.append_extension(skid).unwrap();
}

/// A self-signed CA valid from `from` to `until`.
pub fn ca(parts: &[(&str, &str)], from: DateTime<Utc>, until: DateTime<Utc>) -> Cred {
    let key = key();
    let n = name(parts);
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::SeqCst) as u32).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&n).unwrap();
    b.set_issuer_name(&n).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&t(from)).unwrap();
    b.set_not_after(&t(until)).unwrap();
    ca_extensions(&mut b, None);
    let by = key.clone();
    signed(b, &by, key)
}

/// A new key and a certificate builder for `parts` under `issuer`, serial and dates set.
fn started(
    issuer: &Cred,
    parts: &[(&str, &str)],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> (PKey<Private>, X509Builder) {
    let key = key();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(SERIAL.fetch_add(1, Ordering::SeqCst) as u32).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name(parts)).unwrap();
    b.set_issuer_name(issuer.cert.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&t(from)).unwrap();
    b.set_not_after(&t(until)).unwrap();
    (key, b)
}

/// The certificate `b` describes, signed with `by` (SHA-256), with its own `key`.
fn signed(mut b: X509Builder, by: &PKey<Private>, key: PKey<Private>) -> Cred {
    b.sign(by, MessageDigest::sha256()).unwrap();
    Cred {
        cert: b.build(),
        key,
    }
}

/// An end-entity certificate issued by `issuer`.
pub fn issue(
    issuer: &Cred,
    parts: &[(&str, &str)],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Cred {
    let (key, mut b) = started(issuer, parts, from, until);
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .non_repudiation()
            .build()
            .unwrap(),
    )
    .unwrap();
    let akid = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&issuer.cert), None))
        .unwrap();
    b.append_extension(akid).unwrap();
    signed(b, &issuer.key, key)
}

/// A CA certificate for `parts` signed by `issuer` (an intermediate).
pub fn intermediate(
    issuer: &Cred,
    parts: &[(&str, &str)],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Cred {
    let (key, mut b) = started(issuer, parts, from, until);
    ca_extensions(&mut b, Some(&issuer.cert));
    signed(b, &issuer.key, key)
}

/// An end-entity certificate like [`issue`] with an extended key usage (`serverAuth,clientAuth`).
pub fn issue_eku(
    issuer: &Cred,
    parts: &[(&str, &str)],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    eku: &str,
) -> Cred {
    let (key, mut b) = started(issuer, parts, from, until);
    let mut e = openssl::x509::extension::ExtendedKeyUsage::new();
    for p in eku.split(',') {
        match p {
            "serverAuth" => e.server_auth(),
            "clientAuth" => e.client_auth(),
            "emailProtection" => e.email_protection(),
            other => panic!("unknown purpose {other}"),
        };
    }
    b.append_extension(e.build().unwrap()).unwrap();
    signed(b, &issuer.key, key)
}

/// A CRL of `ca` revoking `revoked`, current from `from` to `until`.
pub fn crl(ca: &Cred, revoked: &[&X509], from: DateTime<Utc>, until: DateTime<Utc>) -> X509Crl {
    let mut b = X509CrlBuilder::new().unwrap();
    b.set_issuer_name(ca.cert.subject_name()).unwrap();
    b.set_last_update(&t(from)).unwrap();
    b.set_next_update(&t(until)).unwrap();
    for c in revoked {
        let mut r = X509RevokedBuilder::new().unwrap();
        r.set_serial_number(c.serial_number()).unwrap();
        r.set_revocation_date(&t(from)).unwrap();
        b.add_revoked(r.build()).unwrap();
    }
    // Extensions the CRL builder insists on; the key id is taken through a throw-away
    // certificate context whose issuer is the CA.
    let scratch = X509Builder::new().unwrap();
    let akid = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&scratch.x509v3_context(Some(&ca.cert), None))
        .unwrap();
    b.append_extension(akid).unwrap();
    b.append_extension(
        CrlNumber::new(BigNum::from_u32(1).unwrap())
            .unwrap()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&ca.key, MessageDigest::sha256()).unwrap();
    b.build().unwrap()
}

/// Write an IGTF-style CA dir.
pub fn ca_dir(dir: &Path, cas: &[&Cred], crls: &[(&Cred, &X509Crl)]) {
    std::fs::create_dir_all(dir).unwrap();
    for c in cas {
        let h = c.cert.subject_name_hash();
        std::fs::write(dir.join(format!("{h:08x}.0")), c.cert.to_pem().unwrap()).unwrap();
        // A policy that lets each CA sign any subject (tests of namespaces write their own).
        std::fs::write(
            dir.join(format!("{h:08x}.signing_policy")),
            format!(
                "access_id_CA X509 '{}'\npos_rights globus CA:sign\ncond_subjects globus '\"*\"'\n",
                c.dn()
            ),
        )
        .unwrap();
    }
    for (c, crl) in crls {
        let h = c.cert.subject_name_hash();
        std::fs::write(dir.join(format!("{h:08x}.r0")), crl.to_pem().unwrap()).unwrap();
    }
}

pub fn sha512_hex(b: &[u8]) -> String {
    hex::encode(openssl::sha::sha512(b))
}

/// An image entry for a local file.
pub fn image_for(id: &str, path: &Path, version: &str) -> Image {
    let bytes = std::fs::read(path).unwrap();
    Image {
        identifier: id.into(),
        title: format!("title of {id}"),
        description: "test image".into(),
        uri: format!("file://{}", path.display()),
        size: bytes.len() as u64,
        sha512: sha512_hex(&bytes),
        arch: "x86_64".into(),
        os: "Linux".into(),
        os_version: "12".into(),
        comments: String::new(),
        hypervisor: "kvm".into(),
        version: version.into(),
        format: Some("raw".into()),
        expires: None,
        extra: BTreeMap::new(),
    }
}

pub fn list(
    id: &str,
    version: &str,
    endorser: &Cred,
    created: DateTime<Utc>,
    expires: DateTime<Utc>,
    images: Vec<Image>,
) -> ImageList {
    ImageList {
        identifier: id.into(),
        created,
        expires,
        title: "test list".into(),
        description: "made by the test".into(),
        source: "test".into(),
        uri: "http://127.0.0.1/list".into(),
        version: version.into(),
        endorsers: vec![Endorser {
            dn: endorser.dn(),
            ca: endorser.ca(),
            email: "e@example.org".into(),
            creator: "tester".into(),
            extra: BTreeMap::new(),
        }],
        endorser_array: false,
        images,
        extra: BTreeMap::new(),
    }
}

pub fn sign(l: &ImageList, by: &Cred) -> Vec<u8> {
    vfarm_imagelist::smime::sign(&l.to_json_pretty(), &by.cert, &by.key, &[]).unwrap()
}

pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

pub fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// What a loopback HTTP server answers for one path.
#[derive(Clone)]
pub struct Reply {
    pub body: Vec<u8>,
    /// Declared Content-Length (defaults to the body length).
    pub declared_len: Option<usize>,
    /// How many of the first requests get a cut-short body before answering in full.
    pub cut_first: usize,
    /// Answer `302 Found` with this `Location` instead.
    pub redirect: Option<String>,
}

pub struct Server {
    pub base: String,
    pub hits: Arc<AtomicUsize>,
    pub routes: Arc<Mutex<BTreeMap<String, Reply>>>,
}

impl Server {
    /// Serve on 127.0.0.1 only, on an ephemeral port.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<BTreeMap<String, Reply>>> = Arc::default();
        let (h, r) = (hits.clone(), routes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                        break;
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let reply = r.lock().unwrap().get(&path).cloned();
                match reply {
                    None => {
                        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Some(Reply {
                        redirect: Some(to), ..
                    }) => {
                        let head = format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        let _ = s.write_all(head.as_bytes());
                    }
                    Some(mut rep) => {
                        let declared = rep.declared_len.unwrap_or(rep.body.len());
                        if rep.cut_first > 0 {
                            let mut routes = r.lock().unwrap();
                            routes.get_mut(&path).unwrap().cut_first -= 1;
                            rep.body.truncate(rep.body.len() / 2);
                        }
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n");
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(&rep.body);
                    }
                }
            }
        });
        Server { base, hits, routes }
    }

    pub fn put(&self, path: &str, reply: Reply) -> String {
        self.routes.lock().unwrap().insert(path.to_string(), reply);
        format!("{}{path}", self.base)
    }
}

pub fn reply(body: Vec<u8>) -> Reply {
    Reply {
        body,
        declared_len: None,
        cut_first: 0,
        redirect: None,
    }
}

/// (name, sha512) of every file in a cache dir, to compare before/after.
pub fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                sha512_hex(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect();
    v.sort();
    v
}
