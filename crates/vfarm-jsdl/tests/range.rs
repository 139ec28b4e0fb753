//! RangeValue semantics: exclusive bounds, epsilon, union of parts, and allocation.

use vfarm_jsdl::*;

fn range(inner: &str) -> RangeValue {
    let xml = format!(
        "<jsdl:TotalCPUCount xmlns:jsdl=\"{}\">{inner}</jsdl:TotalCPUCount>",
        ns::JSDL
    );
    let parsed = parse_range_value(&xml).unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
    parsed.value.range
}

#[test]
fn exclusive_bounds_exclude_the_bound() {
    let r = range("<jsdl:UpperBoundedRange exclusiveBound=\"true\">4</jsdl:UpperBoundedRange>");
    assert!(r.matches(3.999) && !r.matches(4.0));
    let r = range("<jsdl:UpperBoundedRange>4</jsdl:UpperBoundedRange>");
    assert!(r.matches(4.0) && !r.matches(4.001));
    let r = range("<jsdl:LowerBoundedRange exclusiveBound=\"1\">2</jsdl:LowerBoundedRange>");
    assert!(!r.matches(2.0) && r.matches(2.5));
    assert_eq!(
        r.allocation(),
        Some(3),
        "smallest integer above an exclusive 2"
    );
    let r = range(
        "<jsdl:Range><jsdl:LowerBound exclusiveBound=\"true\">1</jsdl:LowerBound>\
         <jsdl:UpperBound exclusiveBound=\"true\">3</jsdl:UpperBound></jsdl:Range>",
    );
    assert!(!r.matches(1.0) && r.matches(2.0) && !r.matches(3.0));
    assert_eq!(r.allocation(), Some(2));
}

#[test]
fn epsilon_widens_exact() {
    let r = range("<jsdl:Exact epsilon=\"0.5\">2</jsdl:Exact>");
    assert!(r.matches(1.5) && r.matches(2.5) && !r.matches(2.51) && !r.matches(1.49));
    let r = range("<jsdl:Exact>2</jsdl:Exact>");
    assert!(r.matches(2.0) && !r.matches(2.000001));
}

#[test]
fn parts_are_a_union() {
    let r = range(
        "<jsdl:UpperBoundedRange>1</jsdl:UpperBoundedRange>\
         <jsdl:LowerBoundedRange>100</jsdl:LowerBoundedRange>\
         <jsdl:Exact>8</jsdl:Exact><jsdl:Exact>16</jsdl:Exact>\
         <jsdl:Range><jsdl:LowerBound>30</jsdl:LowerBound><jsdl:UpperBound>40</jsdl:UpperBound></jsdl:Range>",
    );
    for yes in [0.0, 1.0, 8.0, 16.0, 30.0, 35.0, 40.0, 100.0, 1e9] {
        assert!(r.matches(yes), "{yes}");
    }
    for no in [1.5, 7.0, 12.0, 29.9, 41.0, 99.0, f64::NAN] {
        assert!(!r.matches(no), "{no}");
    }
    // Exact/Range/Lower parts win over "at most 1" for allocation: smallest of 8, 30, 100.
    assert_eq!(r.allocation(), Some(8));
}

#[test]
fn upper_bound_only_allocates_the_bound_and_empty_range_matches_nothing() {
    let r = range("<jsdl:UpperBoundedRange>60.5</jsdl:UpperBoundedRange>");
    assert_eq!(r.allocation(), Some(60));
    let r = range("<jsdl:UpperBoundedRange exclusiveBound=\"true\">60</jsdl:UpperBoundedRange>");
    assert_eq!(r.allocation(), Some(59));
    let empty = range("");
    assert!(empty.is_empty() && !empty.matches(0.0));
    assert_eq!(empty.allocation(), None);
}

#[test]
fn numbers_tolerate_whitespace_exponents_and_infinity() {
    let r = range("<jsdl:LowerBoundedRange>\n   1.5E3\n</jsdl:LowerBoundedRange>");
    assert_eq!(r.lower_bounded, Some(Bound::inclusive(1500.0)));
    let r = range("<jsdl:UpperBoundedRange>INF</jsdl:UpperBoundedRange>");
    assert!(r.matches(1e300));
}

#[test]
fn range_fragment_root_must_be_a_range_element() {
    let e = parse_range_value(&format!("<jsdl:JobName xmlns:jsdl=\"{}\"/>", ns::JSDL)).unwrap_err();
    assert!(matches!(e, JsdlError::WrongRoot { line: 1, .. }), "{e:?}");
    let e = parse_range_value("<TotalCPUCount><Exact>1</Exact></TotalCPUCount>").unwrap_err();
    assert!(matches!(e, JsdlError::WrongRootNamespace { .. }), "{e:?}");
}

#[test]
fn out_of_order_range_parts_warn() {
    let xml = format!(
        "<jsdl:TotalCPUCount xmlns:jsdl=\"{}\">\n<jsdl:Exact>1</jsdl:Exact>\n<jsdl:UpperBoundedRange>2</jsdl:UpperBoundedRange>\n</jsdl:TotalCPUCount>",
        ns::JSDL
    );
    let parsed = parse_range_value(&xml).unwrap();
    assert_eq!(
        parsed.warnings,
        vec![SchemaWarning {
            element: "jsdl:UpperBoundedRange".into(),
            line: 3,
            kind: WarningKind::OutOfOrder {
                after: "jsdl:Exact".into()
            }
        }]
    );
    assert!(parsed.value.range.matches(2.0));
}
