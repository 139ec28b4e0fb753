//! A PKI made here (CA, endorser, a rogue CA with the same name, an expired and a revoked
//! endorser with a CRL): every way a list can be bad is refused with its own reason, and a
//! subscriber's cache keeps exactly what it had.

mod common;

use common::*;
use vfarm_imagelist::cache::{Cache, Expected, FetchOptions};
use vfarm_imagelist::subscription::{decide, Current, Decision};
use vfarm_imagelist::{verify, EndorserId, Policy, Refusal, TrustStore, VerifiedList};

struct Pki {
    endorser: Cred,
    other: Cred,
    expired: Cred,
    revoked: Cred,
    by_rogue: Cred,
    dir: tempfile::TempDir,
}

const CA_NAME: &[(&str, &str)] = &[("C", "XX"), ("O", "vfarm test"), ("CN", "Test CA")];

fn pki() -> Pki {
    let n = now();
    let ca = ca(CA_NAME, n - days(30), n + days(3650));
    let rogue = ca_fn(n);
    let endorser = issue(
        &ca,
        &[("C", "XX"), ("O", "vfarm test"), ("CN", "Endorser")],
        n - days(1),
        n + days(365),
    );
    let other = issue(
        &ca,
        &[("C", "XX"), ("O", "vfarm test"), ("CN", "Other")],
        n - days(1),
        n + days(365),
    );
    let expired = issue(
        &ca,
        &[("C", "XX"), ("O", "vfarm test"), ("CN", "Expired")],
        n - days(60),
        n - days(1),
    );
    let revoked = issue(
        &ca,
        &[("C", "XX"), ("O", "vfarm test"), ("CN", "Revoked")],
        n - days(1),
        n + days(365),
    );
    let by_rogue = issue(
        &rogue,
        &[("C", "XX"), ("O", "vfarm test"), ("CN", "Endorser")],
        n - days(1),
        n + days(365),
    );
    let dir = tempfile::tempdir().unwrap();
    let crl = crl(&ca, &[&revoked.cert], n - days(1), n + days(7));
    ca_dir(&dir.path().join("ca"), &[&ca], &[(&ca, &crl)]);
    Pki {
        endorser,
        other,
        expired,
        revoked,
        by_rogue,
        dir,
    }
}

fn ca_fn(n: chrono::DateTime<chrono::Utc>) -> Cred {
    // Same subject name as the trusted CA, different key.
    ca(CA_NAME, n - days(30), n + days(3650))
}

/// A subscriber that has accepted v1 (images A and B) and cached both.
struct Site {
    pki: Pki,
    trust: TrustStore,
    cache: Cache,
    files: tempfile::TempDir,
    current: Current,
}

const LIST_ID: &str = "8e1f0b4c-0000-4000-8000-000000000001";

fn write(dir: &std::path::Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn site() -> Site {
    let pki = pki();
    let trust = TrustStore::load(&pki.dir.path().join("ca")).unwrap();
    let cache = Cache::open(&pki.dir.path().join("cache")).unwrap();
    let files = tempfile::tempdir().unwrap();
    let a = write(files.path(), "a.img", &vec![b'a'; 300_000]);
    let b = write(files.path(), "b.img", &vec![b'b'; 1000]);
    let n = now();
    let v1 = list(
        LIST_ID,
        "1.0.9",
        &pki.endorser,
        n - days(1),
        n + days(20),
        vec![image_for("A", &a, "1"), image_for("B", &b, "1")],
    );
    let raw = sign(&v1, &pki.endorser);
    let ok = verify(&raw, &trust, &policy(&pki)).unwrap();
    let Decision::Apply(plan) = decide(None, &ok, n).unwrap() else {
        panic!("first subscription must apply")
    };
    assert_eq!(plan.new.len(), 2);
    for img in &plan.new {
        fetch(&cache, img).unwrap();
    }
    let current = current_of(&ok);
    Site {
        pki,
        trust,
        cache,
        files,
        current,
    }
}

fn policy(pki: &Pki) -> Policy {
    let mut p = Policy::at(now());
    p.endorsers = vec![EndorserId {
        dn: pki.endorser.dn(),
        ca: Some(pki.endorser.ca()),
    }];
    p
}

fn fetch(
    cache: &Cache,
    img: &vfarm_imagelist::Image,
) -> Result<vfarm_imagelist::cache::Cached, vfarm_imagelist::cache::FetchError> {
    let opts = FetchOptions {
        attempts: 2,
        retry_delay: std::time::Duration::ZERO,
        allow_file: true,
        ..FetchOptions::default()
    };
    cache.fetch(
        &img.identifier,
        &Expected {
            uri: img.uri.clone(),
            size: img.size,
            sha512: img.sha512.clone(),
        },
        &opts,
    )
}

fn current_of(v: &VerifiedList) -> Current {
    Current {
        identifier: v.list.identifier.clone(),
        version: v.list.version.clone(),
        list_sha512: v.raw_sha512.clone(),
        images: v
            .list
            .images
            .iter()
            .map(|i| (i.identifier.clone(), i.sha512.clone()))
            .collect(),
    }
}

impl Site {
    /// The whole update: verify, decide, download what is new or replaced. Returns the
    /// refusal (list level) or the download failure code.
    fn update(&self, raw: &[u8]) -> Result<(), String> {
        let v = verify(raw, &self.trust, &policy(&self.pki)).map_err(|r: Refusal| {
            assert!(!r.to_string().is_empty());
            r.code().to_string()
        })?;
        match decide(Some(&self.current), &v, now()).map_err(|r| r.code().to_string())? {
            Decision::Unchanged => Ok(()),
            Decision::Apply(plan) => {
                for img in plan.new.iter().chain(&plan.replaced) {
                    fetch(&self.cache, img).map_err(|e| e.code().to_string())?;
                }
                Ok(())
            }
        }
    }

    fn good_v2(&self) -> vfarm_imagelist::ImageList {
        let n = now();
        let a = self.files.path().join("a.img");
        let b = self.files.path().join("b.img");
        list(
            LIST_ID,
            "1.0.10",
            &self.pki.endorser,
            n - days(1),
            n + days(20),
            vec![image_for("A", &a, "1"), image_for("B", &b, "1")],
        )
    }
}

#[test]
fn every_bad_list_is_refused_with_its_own_reason_and_the_cache_is_untouched() {
    let s = site();
    let before = snapshot(&s.cache.cache_dir());
    assert_eq!(before.len(), 2);
    let n = now();
    let p = &s.pki;

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // Tampered body: one byte of the signed JSON changed.
    let good = sign(&s.good_v2(), &p.endorser);
    let text = String::from_utf8(good.clone()).unwrap();
    cases.push((
        "bad_signature",
        text.replacen("test list", "test lisT", 1).into_bytes(),
    ));

    // Untrusted signer: a self-signed certificate nobody trusts.
    let stranger_ca = ca(&[("CN", "Stranger CA")], n - days(1), n + days(10));
    let stranger = issue(
        &stranger_ca,
        &[("CN", "Stranger")],
        n - days(1),
        n + days(10),
    );
    let mut l = s.good_v2();
    l.endorsers[0].dn = stranger.dn();
    l.endorsers[0].ca = stranger.ca();
    cases.push(("untrusted_signer", sign(&l, &stranger)));

    // Same-DN rogue CA: the signer's issuer name is trusted, its key is not.
    assert_eq!(p.by_rogue.dn(), p.endorser.dn());
    cases.push(("rogue_issuer", sign(&s.good_v2(), &p.by_rogue)));

    // DN mismatch: signed by the endorser, but the list names someone else.
    let mut l = s.good_v2();
    l.endorsers[0].dn = "/C=XX/O=vfarm test/CN=Somebody Else".into();
    cases.push(("endorser_mismatch", sign(&l, &p.endorser)));

    // A trusted, matching signer that the subscription does not authorise.
    let mut l = s.good_v2();
    l.endorsers[0].dn = p.other.dn();
    cases.push(("endorser_not_authorised", sign(&l, &p.other)));

    // Expired certificate.
    let mut l = s.good_v2();
    l.endorsers[0].dn = p.expired.dn();
    cases.push(("certificate_expired", sign(&l, &p.expired)));

    // Revoked certificate.
    let mut l = s.good_v2();
    l.endorsers[0].dn = p.revoked.dn();
    cases.push(("certificate_revoked", sign(&l, &p.revoked)));

    // Expired list.
    let mut l = s.good_v2();
    l.created = n - days(30);
    l.expires = n - days(1);
    cases.push(("list_expired", sign(&l, &p.endorser)));

    // List from the future.
    let mut l = s.good_v2();
    l.created = n + days(2);
    cases.push(("list_from_future", sign(&l, &p.endorser)));

    // Rollback: 1.0.8 < 1.0.9 (and 1.0.10 > 1.0.9 is not a rollback, see below).
    let mut l = s.good_v2();
    l.version = "1.0.8".into();
    cases.push(("rollback", sign(&l, &p.endorser)));

    // Changed identifier.
    let mut l = s.good_v2();
    l.identifier = "8e1f0b4c-0000-4000-8000-000000000002".into();
    cases.push(("identifier_changed", sign(&l, &p.endorser)));

    // Wrong sha512 for a new version of A (same size).
    let a2 = write(s.files.path(), "a2.img", &vec![b'A'; 300_000]);
    let mut l = s.good_v2();
    let mut bad = image_for("A", &a2, "2");
    bad.sha512 = sha512_hex(b"something else");
    l.images[0] = bad;
    cases.push(("sha512_mismatch", sign(&l, &p.endorser)));

    // Wrong size: the file is larger than hv:size says.
    let mut l = s.good_v2();
    let mut bad = image_for("A", &a2, "2");
    bad.size -= 10;
    l.images[0] = bad;
    cases.push(("size_mismatch", sign(&l, &p.endorser)));

    // Truncated download: the server closes after half of the declared length.
    let server = Server::start();
    let a2_bytes = std::fs::read(&a2).unwrap();
    let mut r = reply(a2_bytes.clone());
    r.cut_first = usize::MAX;
    let url = server.put("/a2.img", r);
    let mut l = s.good_v2();
    let mut bad = image_for("A", &a2, "2");
    bad.uri = url;
    l.images[0] = bad;
    cases.push(("truncated", sign(&l, &p.endorser)));

    let mut seen = std::collections::BTreeSet::new();
    for (want, raw) in &cases {
        let got = s.update(raw).expect_err(want);
        assert_eq!(&got, want);
        assert!(seen.insert(got), "each case has its own reason");
        assert_eq!(
            snapshot(&s.cache.cache_dir()),
            before,
            "cache changed after {want}"
        );
        assert!(
            std::fs::read_dir(s.cache.partial_dir())
                .unwrap()
                .next()
                .is_none(),
            "partial download left behind after {want}"
        );
    }
    // The truncated image was retried, within bounds.
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // The good v2 is accepted; the same bytes again are a no-op.
    let good_v = verify(&good, &s.trust, &policy(p)).unwrap();
    assert!(matches!(
        decide(Some(&s.current), &good_v, n).unwrap(),
        Decision::Apply(_)
    ));
    let mut after = s.current.clone();
    after.list_sha512 = good_v.raw_sha512.clone();
    assert!(matches!(
        decide(Some(&after), &good_v, n).unwrap(),
        Decision::Unchanged
    ));
}

#[test]
fn a_stale_crl_refuses_everything_from_that_ca() {
    let n = now();
    let ca = ca(CA_NAME, n - days(30), n + days(3650));
    let e = issue(&ca, &[("CN", "Endorser")], n - days(1), n + days(365));
    let dir = tempfile::tempdir().unwrap();
    let stale = crl(&ca, &[], n - days(20), n - days(10));
    ca_dir(dir.path(), &[&ca], &[(&ca, &stale)]);
    let l = list(LIST_ID, "1", &e, n - days(1), n + days(1), vec![]);
    let err = verify(
        &sign(&l, &e),
        &TrustStore::load(dir.path()).unwrap(),
        &Policy::at(n),
    )
    .unwrap_err();
    assert_eq!(err.code().as_str(), "crl_not_current", "{}", err.reason());
}

#[test]
fn subscribe_then_update_replaces_expires_and_adds() {
    let s = site();
    let n = now();
    let a2 = write(s.files.path(), "a2.img", &vec![b'A'; 4096]);
    let c = write(s.files.path(), "c.img", &vec![b'c'; 5000]);
    let v2 = list(
        LIST_ID,
        "1.0.10",
        &s.pki.endorser,
        n - days(1),
        n + days(20),
        vec![image_for("A", &a2, "2"), image_for("C", &c, "1")],
    );
    let v = verify(&sign(&v2, &s.pki.endorser), &s.trust, &policy(&s.pki)).unwrap();
    let Decision::Apply(plan) = decide(Some(&s.current), &v, n).unwrap() else {
        panic!("v2 must apply")
    };
    let ids =
        |v: &[vfarm_imagelist::Image]| v.iter().map(|i| i.identifier.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plan.replaced), ["A"]);
    assert_eq!(ids(&plan.new), ["C"]);
    assert_eq!(plan.expired, ["B"]);
    assert!(!plan.same_version);
    for img in plan.new.iter().chain(&plan.replaced) {
        fetch(&s.cache, img).unwrap();
    }
    for id in &plan.expired {
        assert!(s.cache.expire(id, n).unwrap().is_some());
    }
    let names: Vec<String> = snapshot(&s.cache.cache_dir())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["A", "C"]);
    assert_eq!(
        std::fs::read(s.cache.path_of("A")).unwrap(),
        std::fs::read(&a2).unwrap(),
        "A is the new version"
    );
    assert_eq!(std::fs::read_dir(s.cache.expired_dir()).unwrap().count(), 1);
}

#[test]
fn per_image_expiry_and_list_expiry_expire_images() {
    let s = site();
    let n = now();
    let mut v2 = s.good_v2();
    v2.images[1].expires = Some(n - days(1));
    let v = verify(&sign(&v2, &s.pki.endorser), &s.trust, &policy(&s.pki)).unwrap();
    let Decision::Apply(plan) = decide(Some(&s.current), &v, n).unwrap() else {
        panic!()
    };
    assert_eq!(plan.expired, ["B"]);
    assert_eq!(plan.unchanged.len(), 1);
    // Once the accepted list itself is past its expiry, all its images go.
    let later = n + days(21);
    assert_eq!(
        vfarm_imagelist::subscription::expired_by_time(&v.list, later),
        ["A", "B"]
    );
}

#[test]
fn endorser_array_matches_any_and_equal_version_is_accepted() {
    let s = site();
    let mut l = s.good_v2();
    l.version = "1.0.9".into();
    let mut other = l.endorsers[0].clone();
    other.dn = "/CN=first in the array".into();
    l.endorsers.insert(0, other);
    l.endorser_array = true;
    let v = verify(&sign(&l, &s.pki.endorser), &s.trust, &policy(&s.pki)).unwrap();
    let Decision::Apply(plan) = decide(Some(&s.current), &v, now()).unwrap() else {
        panic!()
    };
    assert!(plan.same_version);
}

#[test]
fn a_revoked_endorser_is_refused_even_with_a_good_signature() {
    let s = site();
    let mut p = policy(&s.pki);
    p.revoked_endorsers = vec![s.pki.endorser.dn()];
    let err = verify(&sign(&s.good_v2(), &s.pki.endorser), &s.trust, &p).unwrap_err();
    assert_eq!(err.code().as_str(), "endorser_revoked");
}
