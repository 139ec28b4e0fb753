//! Grid trust for image-list signers (issue 24, acceptance 1 and 2; issue 15, finding 13):
//! IGTF namespaces, revocation along the chain, and the signer's purpose.

mod common;

use common::*;
use vfarm_imagelist::trust::{CrlMissing, PathError, PathPolicy};
use vfarm_imagelist::{verify, Policy, Refusal, TrustStore};

const A: &[(&str, &str)] = &[("C", "XX"), ("O", "Alpha"), ("CN", "Alpha CA")];
const B: &[(&str, &str)] = &[("C", "XX"), ("O", "Beta"), ("CN", "Beta CA")];
const ADMIN: &[(&str, &str)] = &[("C", "XX"), ("O", "Alpha"), ("CN", "Admin")];

fn write_ns(dir: &std::path::Path, ca: &Cred, text: &str) {
    let h = ca.cert.subject_name_hash();
    std::fs::write(dir.join(format!("{h:08x}.namespaces")), text).unwrap();
}

fn signed_by(c: &Cred) -> Vec<u8> {
    let n = now();
    sign(
        &list(
            "8e1f0b4c-0000-4000-8000-0000000000aa",
            "1",
            c,
            n - days(1),
            n + days(5),
            vec![],
        ),
        c,
    )
}

#[test]
fn a_dn_in_another_cas_namespace_is_refused_as_signer() {
    let n = now();
    let (ca_a, ca_b) = (
        ca(A, n - days(9), n + days(900)),
        ca(B, n - days(9), n + days(900)),
    );
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ca");
    ca_dir(
        &dir,
        &[&ca_a, &ca_b],
        &[
            (&ca_a, &crl(&ca_a, &[], n - days(1), n + days(7))),
            (&ca_b, &crl(&ca_b, &[], n - days(1), n + days(7))),
        ],
    );
    write_ns(
        &dir,
        &ca_a,
        "TO Issuer SELF \\\n PERMIT Subject \"/C=XX/O=Alpha/.*\"\n",
    );
    write_ns(
        &dir,
        &ca_b,
        "TO Issuer SELF PERMIT Subject \"/C=XX/O=Beta/.*\"\n",
    );
    let trust = TrustStore::load(&dir).unwrap();

    let from_a = issue(&ca_a, ADMIN, n - days(1), n + days(30));
    let forged = issue(&ca_b, ADMIN, n - days(1), n + days(30));
    assert!(verify(&signed_by(&from_a), &trust, &Policy::at(n)).is_ok());
    let e = verify(&signed_by(&forged), &trust, &Policy::at(n)).unwrap_err();
    assert_eq!(e.code().as_str(), "outside_namespace", "{}", e.reason());
    assert!(e.reason().contains("Beta CA"), "{}", e.reason());

    // A CA directory entry without either file: refused by default once any CA has one.
    let bare = d.path().join("bare");
    ca_dir(&bare, &[&ca_a, &ca_b], &[]);
    for f in std::fs::read_dir(&bare).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "signing_policy") {
            std::fs::remove_file(p).unwrap();
        }
    }
    write_ns(
        &bare,
        &ca_a,
        "TO Issuer SELF PERMIT Subject \"/C=XX/O=Alpha/.*\"\n",
    );
    let trust = TrustStore::load(&bare).unwrap();
    let beta_user = issue(
        &ca_b,
        &[("C", "XX"), ("O", "Beta"), ("CN", "U")],
        n,
        n + days(3),
    );
    let e = verify(&signed_by(&beta_user), &trust, &Policy::at(n)).unwrap_err();
    assert_eq!(e.code().as_str(), "no_namespace", "{}", e.reason());
    // ... and accepted when the admin says so.
    let chain = trust.verify_chain(&beta_user.cert, &[], n).unwrap();
    let lax = PathPolicy {
        require_namespaces: Some(false),
        crl_missing: CrlMissing::Warn,
        ..PathPolicy::strict(n)
    };
    assert_eq!(trust.check_path(&chain, &lax).unwrap().len(), 1);
}

#[test]
fn an_intermediate_revoked_by_its_root_takes_its_users_with_it() {
    let n = now();
    let root = ca(
        &[("C", "XX"), ("O", "Grid"), ("CN", "Root")],
        n - days(9),
        n + days(900),
    );
    let inter = intermediate(
        &root,
        &[("C", "XX"), ("O", "Grid"), ("CN", "Issuing")],
        n - days(9),
        n + days(900),
    );
    let user = issue(
        &inter,
        &[("C", "XX"), ("O", "Grid"), ("CN", "User")],
        n - days(1),
        n + days(30),
    );
    let inter_crl = crl(&inter, &[], n - days(1), n + days(7));
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good");
    ca_dir(
        &good,
        &[&root, &inter],
        &[
            (&root, &crl(&root, &[], n - days(1), n + days(7))),
            (&inter, &inter_crl),
        ],
    );
    let bad = d.path().join("bad");
    ca_dir(
        &bad,
        &[&root, &inter],
        &[
            (&root, &crl(&root, &[&inter.cert], n - days(1), n + days(7))),
            (&inter, &inter_crl),
        ],
    );
    let strict = PathPolicy::strict(n);
    let t = TrustStore::load(&good).unwrap();
    t.verify_client(&user.cert, &[], &strict).unwrap();
    assert!(verify(&signed_by(&user), &t, &Policy::at(n)).is_ok());

    let t = TrustStore::load(&bad).unwrap();
    let e = t.verify_client(&user.cert, &[], &strict).unwrap_err();
    assert!(
        matches!(&e, PathError::Revoked { subject, .. } if subject.ends_with("CN=Issuing")),
        "{e}"
    );
    let e = verify(&signed_by(&user), &t, &Policy::at(n)).unwrap_err();
    assert_eq!(e.code().as_str(), "certificate_revoked", "{}", e.reason());
}

#[test]
fn a_missing_or_stale_crl_refuses_by_default_and_warns_with_warn() {
    let n = now();
    let root = ca(A, n - days(9), n + days(900));
    let user = issue(&root, ADMIN, n - days(1), n + days(30));
    let d = tempfile::tempdir().unwrap();
    let none = d.path().join("none");
    ca_dir(&none, &[&root], &[]);
    let stale = d.path().join("stale");
    ca_dir(
        &stale,
        &[&root],
        &[(&root, &crl(&root, &[], n - days(9), n - days(2)))],
    );
    for (dir, why) in [(&none, "no CRL"), (&stale, "expired")] {
        let t = TrustStore::load(dir).unwrap();
        let e = t
            .verify_client(&user.cert, &[], &PathPolicy::strict(n))
            .unwrap_err();
        assert_eq!(e.code().as_str(), "crl_not_current", "{e}");
        assert!(e.to_string().contains(why), "{e}");
        let warn = PathPolicy {
            crl_missing: CrlMissing::Warn,
            ..PathPolicy::strict(n)
        };
        let (_, warnings) = t.verify_client(&user.cert, &[], &warn).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(why), "{warnings:?}");
        // The CRL ages reported for monitoring.
        let ages = t.crl_ages(n);
        assert_eq!(ages.len(), usize::from(dir == &stale));
    }
}

#[test]
fn only_certificates_fit_for_signing_sign_lists() {
    let n = now();
    let root = ca(A, n - days(9), n + days(900));
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ca");
    ca_dir(
        &dir,
        &[&root],
        &[(&root, &crl(&root, &[], n - days(1), n + days(7)))],
    );
    let t = TrustStore::load(&dir).unwrap();
    // A TLS host certificate of the same CA (what an instance gets).
    let host = issue_eku(
        &root,
        &[("C", "XX"), ("O", "Alpha"), ("CN", "vm1.example.org")],
        n - days(1),
        n + days(3),
        "serverAuth,clientAuth",
    );
    let e = verify(&signed_by(&host), &t, &Policy::at(n)).unwrap_err();
    assert!(matches!(e, Refusal::SignerPurpose { .. }), "{}", e.reason());
    // The signer's own check (`imagelist sign`) says the same without the CA directory.
    let why = vfarm_imagelist::smime::smime_signing_fitness(&host.cert).unwrap_err();
    assert!(why.contains("purpose"), "{why}");
    let smime = issue_eku(
        &root,
        &[("C", "XX"), ("O", "Alpha"), ("CN", "Signer")],
        n - days(1),
        n + days(3),
        "clientAuth,emailProtection",
    );
    assert!(verify(&signed_by(&smime), &t, &Policy::at(n)).is_ok());
    assert_eq!(
        vfarm_imagelist::smime::smime_signing_fitness(&smime.cert),
        Ok(())
    );
}
