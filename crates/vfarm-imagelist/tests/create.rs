//! New lists from a description: checksums, sizes, identifiers and dates are filled in.

mod common;

use vfarm_imagelist::create::{build, CreateError, EndorserDesc, ListDesc};
use vfarm_imagelist::model::parse_date;
use vfarm_imagelist::ImageList;

#[test]
fn toml_description_becomes_a_complete_list() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.img"), b"0123456789").unwrap();
    let desc = d.path().join("site.toml");
    std::fs::write(
        &desc,
        r#"
title = "site images"
uri = "https://127.0.0.1/imagelists/site.list"
version = "0.0.1"
lifetime_days = 10
[[images]]
title = "a"
file = "a.img"
format = "raw"
[images.extra]
"ad:mpuri" = "m"
[[images]]
title = "remote"
identifier = "fixed-id"
uri = "https://127.0.0.1/b.img"
sha512 = "AB"
size = 5
"#,
    )
    .unwrap();
    let parsed = ListDesc::load(&desc).unwrap();
    let endorser = EndorserDesc {
        dn: "/CN=e".into(),
        ca: "/CN=ca".into(),
        email: String::new(),
        creator: String::new(),
    };
    let now = parse_date("2026-01-01T00:00:00Z").unwrap();

    // The second image's checksum is not 128 hex digits.
    let err = build(&parsed, Some(endorser.clone()), now).unwrap_err();
    assert!(
        matches!(err, CreateError::BadChecksum { index: 1 }),
        "{err}"
    );

    let mut fixed = parsed.clone();
    fixed.images[1].sha512 = Some("ab".repeat(64));
    let list = build(&fixed, Some(endorser), now).unwrap();
    assert_eq!(format!("{}", list.expires.format("%F")), "2026-01-11");
    assert_eq!(list.endorsers[0].dn, "/CN=e");
    let a = &list.images[0];
    assert_eq!(a.size, 10);
    assert_eq!(a.sha512, common::sha512_hex(b"0123456789"));
    assert!(
        a.uri.starts_with("file:///") && a.uri.ends_with("/a.img"),
        "{}",
        a.uri
    );
    assert_eq!(a.identifier.len(), 36, "a generated UUID");
    assert_eq!(a.extra_str("ad:mpuri"), Some("m"));
    assert_eq!(list.images[1].identifier, "fixed-id");
    // What is written parses back to the same list.
    assert_eq!(ImageList::from_json(&list.to_json_pretty()).unwrap(), list);
}

#[test]
fn description_errors_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.json");
    std::fs::write(
        &p,
        r#"{"title": "t", "uri": "u", "images": [{"title": "x"}]}"#,
    )
    .unwrap();
    let desc = ListDesc::load(&p).unwrap();
    let now = parse_date("2026-01-01T00:00:00Z").unwrap();
    assert!(matches!(
        build(&desc, None, now),
        Err(CreateError::NoEndorser)
    ));
    let e = EndorserDesc {
        dn: "/CN=e".into(),
        ca: "/CN=ca".into(),
        email: String::new(),
        creator: String::new(),
    };
    assert!(matches!(
        build(&desc, Some(e), now),
        Err(CreateError::NoChecksum { index: 0 })
    ));
    std::fs::write(&p, r#"{"title": "t", "uri": "u", "colour": "red"}"#).unwrap();
    let err = ListDesc::load(&p).unwrap_err();
    assert!(format!("{:?}", err).contains("colour"), "{err:?}");
}
