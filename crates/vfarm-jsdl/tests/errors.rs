//! Refused documents: each error names the element, its line and the reason.

use vfarm_jsdl::*;

/// Wraps JobDescription content in a JobDefinition whose JobDescription starts on line 3.
fn doc(body: &str) -> String {
    format!(
        "<jsdl:JobDefinition xmlns:jsdl=\"{}\" xmlns:jsdl-posix=\"{}\"\n    xmlns:vfarm=\"urn:vfarm:jsdl:1\">\n<jsdl:JobDescription>\n{body}\n</jsdl:JobDescription>\n</jsdl:JobDefinition>\n",
        ns::JSDL,
        ns::POSIX
    )
}

fn err(xml: &str) -> JsdlError {
    match parse(xml) {
        Ok(p) => panic!("accepted: {:#?}", p.value),
        Err(e) => e,
    }
}

#[test]
fn missing_creation_flag_names_data_staging_and_line() {
    let e = err(&doc(
        "<jsdl:DataStaging>\n  <jsdl:FileName>a.txt</jsdl:FileName>\n</jsdl:DataStaging>",
    ));
    assert_eq!(
        e.to_string(),
        "line 4: <jsdl:DataStaging>: missing required child <jsdl:CreationFlag>"
    );
}

#[test]
fn bad_operating_system_name_is_refused_with_a_suggestion() {
    let e = err(&doc(
        "<jsdl:Resources>\n<jsdl:OperatingSystem>\n<jsdl:OperatingSystemType>\n\
         <jsdl:OperatingSystemName>Linux</jsdl:OperatingSystemName>\n\
         </jsdl:OperatingSystemType>\n</jsdl:OperatingSystem>\n</jsdl:Resources>",
    ));
    match &e {
        JsdlError::BadEnumValue {
            element,
            line,
            value,
            suggestion,
            ..
        } => {
            assert_eq!(element, "jsdl:OperatingSystemName");
            assert_eq!(*line, 7);
            assert_eq!(value, "Linux");
            assert_eq!(*suggestion, Some("LINUX"));
        }
        other => panic!("wrong error: {other:?}"),
    }
    assert!(e.to_string().contains("did you mean `LINUX`"), "{e}");
}

#[test]
fn missing_operating_system_name_is_refused() {
    let e = err(&doc(
        "<jsdl:Resources><jsdl:OperatingSystem>\n<jsdl:OperatingSystemType/>\n</jsdl:OperatingSystem></jsdl:Resources>",
    ));
    assert!(
        matches!(&e, JsdlError::MissingChild { element, line: 5, child }
            if element == "jsdl:OperatingSystemType" && child == "jsdl:OperatingSystemName"),
        "{e:?}"
    );
}

#[test]
fn non_numeric_range_is_refused() {
    let e = err(&doc(
        "<jsdl:Resources>\n<jsdl:TotalCPUCount>\n<jsdl:Exact>two</jsdl:Exact>\n</jsdl:TotalCPUCount>\n</jsdl:Resources>",
    ));
    assert_eq!(
        e.to_string(),
        "line 6: <jsdl:Exact>: `two` is not a number (xsd:double)"
    );
    // NaN is an xsd:double but compares with nothing, so it is refused too.
    let e = err(&doc(
        "<jsdl:Resources><jsdl:TotalCPUCount><jsdl:LowerBoundedRange>NaN</jsdl:LowerBoundedRange></jsdl:TotalCPUCount></jsdl:Resources>",
    ));
    assert!(matches!(e, JsdlError::BadNumber { .. }), "{e:?}");
}

#[test]
fn range_needs_both_bounds() {
    let e = err(&doc(
        "<jsdl:Resources><jsdl:TotalCPUCount>\n<jsdl:Range><jsdl:LowerBound>1</jsdl:LowerBound></jsdl:Range>\n</jsdl:TotalCPUCount></jsdl:Resources>",
    ));
    assert!(
        matches!(&e, JsdlError::MissingChild { element, line: 5, child }
            if element == "jsdl:Range" && child == "jsdl:UpperBound"),
        "{e:?}"
    );
}

#[test]
fn fractional_posix_limit_is_refused() {
    let e = err(&doc(
        "<jsdl:Application><jsdl-posix:POSIXApplication>\n<jsdl-posix:WallTimeLimit>1.5</jsdl-posix:WallTimeLimit>\n</jsdl-posix:POSIXApplication></jsdl:Application>",
    ));
    assert_eq!(
        e.to_string(),
        "line 5: <jsdl-posix:WallTimeLimit>: `1.5` is not a non-negative integer"
    );
}

#[test]
fn bad_boolean_and_bad_creation_flag_are_refused() {
    let e = err(&doc(
        "<jsdl:Resources><jsdl:ExclusiveExecution>yes</jsdl:ExclusiveExecution></jsdl:Resources>",
    ));
    assert!(matches!(e, JsdlError::BadBoolean { line: 4, .. }), "{e:?}");
    let e = err(&doc(
        "<jsdl:DataStaging><jsdl:FileName>f</jsdl:FileName><jsdl:CreationFlag>replace</jsdl:CreationFlag></jsdl:DataStaging>",
    ));
    assert!(
        matches!(&e, JsdlError::BadEnumValue { element, kind: "CreationFlag", .. } if element == "jsdl:CreationFlag"),
        "{e:?}"
    );
}

#[test]
fn environment_without_name_is_refused() {
    let e = err(&doc(
        "<jsdl:Application><jsdl-posix:POSIXApplication>\n<jsdl-posix:Environment>x</jsdl-posix:Environment>\n</jsdl-posix:POSIXApplication></jsdl:Application>",
    ));
    assert_eq!(
        e.to_string(),
        "line 5: <jsdl-posix:Environment>: missing required attribute `name`"
    );
}

#[test]
fn duplicate_single_valued_element_is_refused() {
    let e = err(&doc(
        "<jsdl:Application><jsdl-posix:POSIXApplication>\n<jsdl-posix:Executable>/a</jsdl-posix:Executable>\n<jsdl-posix:Executable>/b</jsdl-posix:Executable>\n</jsdl-posix:POSIXApplication></jsdl:Application>",
    ));
    assert!(
        matches!(&e, JsdlError::Duplicate { element, line: 6, first_line: 5 } if element == "jsdl-posix:Executable"),
        "{e:?}"
    );
}

#[test]
fn two_application_kinds_conflict() {
    let e = err(&doc(&format!(
        "<jsdl:Application>\n<jsdl-posix:POSIXApplication/>\n<h:HPCProfileApplication xmlns:h=\"{}\"/>\n</jsdl:Application>",
        ns::HPCPA
    )));
    assert!(
        matches!(&e, JsdlError::Conflicting { element, line: 6, other, other_line: 5 }
            if element == "jsdl-hpcpa:HPCProfileApplication" && other == "jsdl-posix:POSIXApplication"),
        "{e:?}"
    );
}

#[test]
fn spmd_without_variation_is_refused() {
    let e = err(&doc(&format!(
        "<jsdl:Application>\n<s:SPMDApplication xmlns:s=\"{}\"/>\n</jsdl:Application>",
        ns::SPMD
    )));
    assert!(
        matches!(&e, JsdlError::MissingChild { element, line: 5, child }
            if element == "jsdl-spmd:SPMDApplication" && child == "jsdl-spmd:SPMDVariation"),
        "{e:?}"
    );
}

#[test]
fn missing_job_description_and_wrong_root_are_refused() {
    let e = err(&format!("<JobDefinition xmlns=\"{}\"/>", ns::JSDL));
    assert!(
        matches!(&e, JsdlError::MissingChild { child, line: 1, .. } if child == "jsdl:JobDescription"),
        "{e:?}"
    );
    let e = err(&format!("\n<JobDescription xmlns=\"{}\"/>", ns::JSDL));
    assert!(
        matches!(&e, JsdlError::WrongRoot { element, line: 2, .. } if element == "jsdl:JobDescription"),
        "{e:?}"
    );
    let e = err("<JobDefinition/>");
    assert!(
        matches!(&e, JsdlError::WrongRootNamespace { found, .. } if found == "no namespace"),
        "{e:?}"
    );
}

#[test]
fn malformed_xml_reports_a_line() {
    let e = err(&doc("<jsdl:Application>\n</jsdl:Resources>"));
    assert!(matches!(e, JsdlError::Xml { line: 5, .. }), "{e:?}");
    let e = err(&format!(
        "<jsdl:JobDefinition xmlns:jsdl=\"{}\">\n<jsdl:JobDescription>",
        ns::JSDL
    ));
    assert!(
        matches!(e, JsdlError::Xml { .. } | JsdlError::Unclosed { .. }),
        "{e:?}"
    );
    let e = err("<x:JobDefinition/>");
    assert!(
        matches!(&e, JsdlError::UnboundPrefix { prefix, line: 1, .. } if prefix == "x"),
        "{e:?}"
    );
    assert!(matches!(err("   "), JsdlError::NoRoot { .. }));
}

#[test]
fn conflicting_vfarm_images_are_refused() {
    let e = err(&doc(
        "<jsdl:Resources><vfarm:Image>a</vfarm:Image></jsdl:Resources>\n<vfarm:Image>b</vfarm:Image>",
    ));
    assert!(
        matches!(&e, JsdlError::ConflictingImage { element, line: 5, first, second }
            if element == "vfarm:Image" && first == "a" && second == "b"),
        "{e:?}"
    );
    // The same image named in both places is fine.
    let ok = parse(&doc(
        "<jsdl:Resources><vfarm:Image>a</vfarm:Image></jsdl:Resources>\n<vfarm:Image>a</vfarm:Image>",
    ))
    .unwrap();
    assert!(ok.warnings.is_empty());
}

#[test]
fn bad_vfarm_driver_is_refused() {
    let e = err(&doc("<vfarm:Driver>docker</vfarm:Driver>"));
    assert!(
        matches!(&e, JsdlError::BadEnumValue { element, line: 4, value, .. }
            if element == "vfarm:Driver" && value == "docker"),
        "{e:?}"
    );
}

#[test]
fn warnings_cover_unqualified_and_disallowed_extensions() {
    let parsed = parse(&doc(
        "<jsdl:Application><jsdl-posix:POSIXApplication>\n<x:Foo xmlns:x=\"urn:x\"/>\n</jsdl-posix:POSIXApplication></jsdl:Application>\n<Bare/>",
    ))
    .unwrap();
    let kinds: Vec<_> = parsed
        .warnings
        .iter()
        .map(|w| (w.element.as_str(), w.line, w.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("{urn:x}Foo", 5, WarningKind::ExtensionNotAllowed),
            ("Bare", 7, WarningKind::UnqualifiedElement),
        ]
    );
    assert_eq!(
        parsed.warnings[0].to_string(),
        "line 5: <{urn:x}Foo>: the schema allows no extension elements here"
    );
}

/// Finding 17 of issue 15: a 50,000-deep document crashed the parser with a stack overflow.
/// It is now refused as an error naming the element and line where nesting went too deep.
#[test]
fn deeply_nested_document_is_refused_without_stack_overflow() {
    let depth = 50_000;
    let body = format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth));
    let e = err(&doc(&body));
    assert!(
        matches!(&e, JsdlError::TooDeep { element, line: 4, max, .. }
            if element == "x" && *max == MAX_DEPTH),
        "{e:?}"
    );
    assert!(e.to_string().contains("nested"), "{e}");
    // Nesting below the bound is still parsed (as an ignored extension element).
    let shallow = format!("{}{}", "<x>".repeat(20), "</x>".repeat(20));
    if let Err(e) = parse(&doc(&shallow)) {
        assert!(!matches!(e, JsdlError::TooDeep { .. }), "{e:?}");
    }
}
