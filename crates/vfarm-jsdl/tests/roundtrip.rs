//! parse → write → parse gives the same model, and the writer puts everything in schema order.

use vfarm_jsdl::*;

const DOCS: &[&str] = &[
    "gridsam/bes-netstat.jsdl",
    "gridsam/cat-staging.jsdl",
    "gridsam/echoenv.jsdl",
    "gridsam/helloworld.jsdl",
    "gridsam/mpi-sample.jsdl",
    "gridsam/staging.jsdl",
    "ogf/jsdl-blast-20060629b4d7.xml",
    "unicore/date_with_resources.jsdl",
    "unicore/ex_posix.jsdl",
    "unicore/jsdl_sample_with_hpc_ext.jsdl",
    "unicore/posix.jsdl",
    "unicore/spmd2.jsdl",
    "xenbee/example.jsdl",
    "xenbee/example5.xsdl",
    "xenbee/hello-world.xsdl",
];

fn read(rel: &str) -> String {
    let path = format!("{}/../../tests/data/jsdl/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_accepted_testdata_document_round_trips() {
    for rel in DOCS {
        let first = parse(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let xml = write(&first.value);
        let second = parse(&xml).unwrap_or_else(|e| panic!("{rel} rewritten: {e}\n{xml}"));
        assert_eq!(first.value, second.value, "{rel} changed:\n{xml}");
        // Written output is in schema order; only warnings about content the schema does not
        // define (errata MountSource, StagingSchedule) or attribute spelling may remain.
        for w in &second.warnings {
            assert!(
                !matches!(w.kind, WarningKind::OutOfOrder { .. }),
                "{rel} rewritten: {w}\n{xml}"
            );
        }
        // Writing is deterministic.
        assert_eq!(write(&second.value), xml, "{rel}");
    }
}

#[test]
fn out_of_order_documents_are_written_in_schema_order() {
    for rel in ["unicore/posix.jsdl", "xenbee/example.jsdl"] {
        let first = parse(&read(rel)).unwrap();
        assert!(!first.warnings.is_empty());
        let second = parse(&write(&first.value)).unwrap();
        assert!(second.warnings.is_empty(), "{rel}: {:#?}", second.warnings);
    }
}

#[test]
fn spmd_attribute_is_written_with_schema_spelling() {
    let first = parse(&read("unicore/spmd2.jsdl")).unwrap();
    let xml = write(&first.value);
    assert!(xml.contains("actualtotalcpucount=\"true\""), "{xml}");
    let second = parse(&xml).unwrap();
    assert!(second.warnings.is_empty(), "{:#?}", second.warnings);
}

#[test]
fn hpc_profile_namespace_variant_is_preserved() {
    let job = parse(&read("unicore/jsdl_sample_with_hpc_ext.jsdl"))
        .unwrap()
        .value;
    let xml = write(&job);
    assert!(xml.contains(ns::HPCPA_OGF), "{xml}");
    assert!(!xml.contains(ns::HPCPA), "{xml}");
}

#[test]
fn hand_built_job_round_trips_including_extensions() {
    let job = JobDefinition {
        id: Some("job-1".into()),
        description: JobDescription {
            application: Some(Application {
                body: Some(ApplicationBody::Posix(PosixApplication {
                    executable: Some(FileRef::new("/usr/bin/env")),
                    arguments: vec![FileRef::new("a <b> & 'c'")],
                    environment: vec![EnvVar {
                        name: "X".into(),
                        value: " spaced ".into(),
                        filesystem_name: None,
                    }],
                    wall_time_limit: Some(3600),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            resources: Some(Resources {
                individual_cpu_count: Some(RangeValue {
                    upper_bounded: Some(Bound {
                        value: 8.0,
                        exclusive: true,
                    }),
                    lower_bounded: None,
                    exact: vec![Exact {
                        value: 2.5,
                        epsilon: Some(0.25),
                    }],
                    ranges: vec![Range {
                        lower: Bound::inclusive(f64::NEG_INFINITY),
                        upper: Bound {
                            value: 1e20,
                            exclusive: true,
                        },
                    }],
                }),
                vfarm: VfarmExtension {
                    image: Some("bookworm-curl".into()),
                    driver: Some(Driver::Oci),
                },
                extensions: vec![AnyElement {
                    name: QName::new(Some("urn:example:site"), "Queue"),
                    attributes: vec![AnyAttribute {
                        name: QName::new(Some("urn:example:other"), "prio"),
                        value: "high".into(),
                    }],
                    text: Some("short".into()),
                    children: vec![],
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
        extensions: vec![],
    };
    let xml = write(&job);
    let back = parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert!(back.warnings.is_empty(), "{:#?}\n{xml}", back.warnings);
    assert_eq!(back.value, job, "{xml}");
    assert!(
        xml.contains("<vfarm:Image>bookworm-curl</vfarm:Image>"),
        "{xml}"
    );
}

#[test]
fn model_serialises_to_json_and_back() {
    for rel in DOCS {
        let job = parse(&read(rel)).unwrap().value;
        let json = serde_json::to_string(&job).unwrap();
        let back: JobDefinition =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(back, job, "{rel}");
    }
}

#[test]
fn empty_elements_are_self_closed() {
    let job = parse(&read("unicore/ex_posix.jsdl")).unwrap().value;
    let xml = write(&job);
    assert!(xml.contains("<jsdl:JobProject/>"), "{xml}");
}
