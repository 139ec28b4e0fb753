//! Every real list in tests/data/imagelists gets the verdict SOURCES.md predicts.

mod common;

use chrono::{DateTime, Utc};
use common::testdata;
use vfarm_imagelist::model::{Image, ImageList};
use vfarm_imagelist::smime::SignedMessage;
use vfarm_imagelist::{verify, Policy, TrustStore};

fn at(s: &str) -> DateTime<Utc> {
    vfarm_imagelist::model::parse_date(s).unwrap()
}

fn cloudkeeper_ca() -> TrustStore {
    TrustStore::load(&testdata("cloudkeeper/ca")).unwrap()
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap()
}

#[test]
fn cloudkeeper_lists_chain_but_their_endorser_does_not_match_the_signer() {
    let trust = cloudkeeper_ca();
    for (n, marker) in [(1, "aaaa"), (2, "cccc"), (3, "eeee"), (4, "gggg")] {
        let raw = read(&format!("cloudkeeper/imagelist0{n}.signed"));
        // Signature and chain are fine: the first refusal is the metadata binding.
        let err = verify(&raw, &trust, &Policy::at(at("2020-01-01T00:00:00Z"))).unwrap_err();
        assert_eq!(
            err.code().as_str(),
            "endorser_mismatch",
            "list {n}: {}",
            err.reason()
        );
        let msg = err.to_string();
        assert!(
            msg.contains("/DC=XXX/DC=YYY/C=ZZZ/O=Hosts/O=AA.net/CN=some.unknown.source"),
            "{msg}"
        );
        assert!(
            msg.contains("/C=AU/ST=Some-State/O=Internet Widgits Pty Ltd"),
            "{msg}"
        );
        let content = SignedMessage::parse(&raw).unwrap().content;
        let l = ImageList::from_json(&content).unwrap();
        assert!(l.identifier.contains(marker));
        assert_eq!(l.version, "20150618211400");
    }
}

#[test]
fn cloudkeeper_list_after_the_ca_expires_is_refused_for_the_certificate() {
    let raw = read("cloudkeeper/imagelist01.signed");
    let err = verify(
        &raw,
        &cloudkeeper_ca(),
        &Policy::at(at("2028-03-01T00:00:00Z")),
    )
    .unwrap_err();
    assert_eq!(
        err.code().as_str(),
        "certificate_expired",
        "{}",
        err.reason()
    );
    assert!(err.to_string().contains("2028-02-17T08:53:53Z"), "{err}");
}

#[test]
fn signed_content_is_the_unsigned_body() {
    let signed = SignedMessage::parse(&read("cloudkeeper/imagelist01.signed")).unwrap();
    signed.check_signature().unwrap();
    assert!(
        signed.content.windows(2).any(|w| w == b"\r\n"),
        "content is CRLF-canonical"
    );
    let from_signed = ImageList::from_json(&signed.content).unwrap();
    let unsigned = ImageList::from_json(&read("cloudkeeper/imagelist01.unsigned")).unwrap();
    assert_eq!(from_signed, unsigned);
    // AppDB writes sizes as strings.
    assert_eq!(unsigned.images[0].size, 121_243_136);
    assert_eq!(unsigned.extra_str("ad:vo"), Some("some1.vo.net"));
    assert_eq!(unsigned.images[0].format.as_deref(), Some("OVA"));
}

#[test]
fn invalid_cloudkeeper_list_is_refused_for_its_signature() {
    let raw = read("cloudkeeper/imagelist_invalid.signed");
    let err = verify(
        &raw,
        &cloudkeeper_ca(),
        &Policy::at(at("2020-01-01T00:00:00Z")),
    )
    .unwrap_err();
    assert_eq!(err.code().as_str(), "bad_signature", "{}", err.reason());
    // Its signer is not trusted either.
    let msg = SignedMessage::parse(&raw).unwrap();
    let signer = msg.signer().unwrap();
    assert_eq!(
        vfarm_imagelist::trust::oneline(signer.subject_name()),
        "/C=NA/ST=Narnia/L=Aver/O=TEST/OU=TEST/CN=TEST"
    );
}

#[test]
fn readme_example_has_a_good_signature_but_an_untrusted_signer() {
    let raw = read("hepixvmitrust/README-signed-example.smime");
    let msg = SignedMessage::parse(&raw).unwrap();
    // LF-only copy: the reader canonicalises to CRLF, so the sha1 digest still matches.
    msg.check_signature().unwrap();
    assert_eq!(
        vfarm_imagelist::smime::micalg(&raw).as_deref(),
        Some("sha1")
    );
    let signer = vfarm_imagelist::CertInfo::of(&msg.signer().unwrap());
    assert_eq!(signer.subject, "/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge");
    assert_eq!(signer.issuer, "/C=DE/O=GermanGrid/CN=GridKa-CA");
    // The JSON names exactly this signer: the one-line DN form matches the original tools'.
    let l = ImageList::from_json(&msg.content).unwrap();
    assert_eq!(l.endorsers[0].dn, signer.subject);
    assert_eq!(l.endorsers[0].ca, signer.issuer);
    // GridKa-CA is not in any CA dir we have.
    let err = verify(
        &raw,
        &cloudkeeper_ca(),
        &Policy::at(at("2011-01-01T00:00:00Z")),
    )
    .unwrap_err();
    assert_eq!(err.code().as_str(), "untrusted_signer", "{}", err.reason());
}

#[test]
fn book_example_was_altered_after_signing() {
    let raw = read("hepix-virtualisation-book/imagetransfer-imagelist-signed-example.smime");
    let err = verify(
        &raw,
        &cloudkeeper_ca(),
        &Policy::at(at("2011-01-01T00:00:00Z")),
    )
    .unwrap_err();
    assert_eq!(err.code().as_str(), "bad_signature", "{}", err.reason());
}

#[test]
fn unsigned_lists_parse_but_are_refused_as_unsigned() {
    for rel in [
        "hepixvmitrust/imagelist.json",
        "cloudkeeper/imagelist01.unsigned",
    ] {
        let raw = read(rel);
        let l = ImageList::from_json(&raw).unwrap();
        assert!(!l.images.is_empty(), "{rel}");
        let err = verify(
            &raw,
            &cloudkeeper_ca(),
            &Policy::at(at("2020-01-01T00:00:00Z")),
        )
        .unwrap_err();
        assert_eq!(err.code().as_str(), "not_signed", "{rel}: {}", err.reason());
    }
    let readme = ImageList::from_json(&read("hepixvmitrust/imagelist.json")).unwrap();
    assert_eq!(readme.images[0].size, 2_147_483_648);
    assert_eq!(readme.identifier, "4e186b44-2c64-40ea-97d5-e9e5c0bce059");
}

#[test]
fn appdb_structures_parse() {
    let l = ImageList::from_json(&read("cloudkeeper/structures/image_list10.json")).unwrap();
    assert!(!l.images.is_empty());
    assert!(l.images.iter().all(|i| i.expires.is_some()));
    let one: serde_json::Value =
        serde_json::from_slice(&read("cloudkeeper/structures/image_list01.json")).unwrap();
    let img = Image::parse(&one, "image").unwrap();
    assert!(img.extra_str("ad:appid").is_some() || img.extra_str("ad:base_mpuri").is_some());
}

#[test]
fn ca_dir_loads_with_hash_names() {
    let t = cloudkeeper_ca();
    assert_eq!(t.cas().len(), 1);
    assert_eq!(t.cas()[0].subject_name_hash(), 0x9da1_3359);
}
