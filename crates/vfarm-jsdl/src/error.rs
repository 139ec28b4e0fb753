//! Parse errors (document refused) and schema warnings (document accepted by a tolerant
//! reader but not valid against the GFD.56 schemas).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a JSDL document was refused. Every variant names the element (as a qualified name
/// with the conventional prefix, e.g. `jsdl:DataStaging`) and the 1-based line it starts on.
#[derive(Debug, thiserror::Error)]
pub enum JsdlError {
    /// The text is not well-formed XML (or uses an undeclared namespace prefix).
    #[error("line {line}: malformed XML: {source}")]
    Xml {
        line: usize,
        #[source]
        source: quick_xml::Error,
    },
    /// An element uses a namespace prefix that no `xmlns:` declaration binds.
    #[error("line {line}: <{element}>: namespace prefix `{prefix}` is not declared")]
    UnboundPrefix {
        element: String,
        line: usize,
        prefix: String,
    },
    /// An element or attribute name that is not an XML name (quick-xml does not check).
    #[error("line {line}: `{name}` is not an XML element or attribute name")]
    BadName { name: String, line: usize },
    /// The document has no root element at all.
    #[error("line {line}: no root element")]
    NoRoot { line: usize },
    /// Elements nested deeper than [`crate::MAX_DEPTH`]: refused before anything recurses
    /// over the tree, so a hostile document cannot overflow the stack.
    #[error("line {line}: <{element}> is nested {depth} elements deep (at most {max})")]
    TooDeep {
        element: String,
        line: usize,
        depth: usize,
        max: usize,
    },
    /// The document ends while an element is still open.
    #[error("line {line}: <{element}> is never closed")]
    Unclosed { element: String, line: usize },
    /// Content after the root element closed.
    #[error("line {line}: <{element}>: a second root element is not allowed")]
    SecondRoot { element: String, line: usize },
    /// The root element is not in the JSDL namespace (`http://schemas.ggf.org/jsdl/2005/11/jsdl`).
    #[error("line {line}: <{element}>: root element is not in the JSDL namespace ({found})")]
    WrongRootNamespace {
        element: String,
        line: usize,
        found: String,
    },
    /// The root element is in the JSDL namespace but is not the element asked for.
    #[error("line {line}: <{element}>: expected root element <{expected}>")]
    WrongRoot {
        element: String,
        line: usize,
        expected: &'static str,
    },
    /// A child element the schema requires is absent.
    #[error("line {line}: <{element}>: missing required child <{child}>")]
    MissingChild {
        element: String,
        line: usize,
        child: String,
    },
    /// An attribute the schema requires is absent.
    #[error("line {line}: <{element}>: missing required attribute `{attribute}`")]
    MissingAttribute {
        element: String,
        line: usize,
        attribute: &'static str,
    },
    /// A single-valued element appears twice (ambiguous: the parser will not guess).
    #[error("line {line}: <{element}> given twice (first at line {first_line})")]
    Duplicate {
        element: String,
        line: usize,
        first_line: usize,
    },
    /// Two elements that exclude each other (e.g. a POSIXApplication and an
    /// HPCProfileApplication in one Application).
    #[error("line {line}: <{element}> cannot be combined with <{other}> (line {other_line})")]
    Conflicting {
        element: String,
        line: usize,
        other: String,
        other_line: usize,
    },
    /// A value outside the schema's enumeration (values are case-sensitive).
    #[error("line {line}: <{element}>: `{value}` is not a valid {kind}{}", suggest(*.suggestion))]
    BadEnumValue {
        element: String,
        line: usize,
        value: String,
        kind: &'static str,
        suggestion: Option<&'static str>,
    },
    /// A number (range bound, limit, count) that does not parse.
    #[error("line {line}: <{element}>: `{value}` is not {expected}")]
    BadNumber {
        element: String,
        line: usize,
        value: String,
        expected: &'static str,
    },
    /// An `xsd:boolean` that is not `true`, `false`, `1` or `0`.
    #[error("line {line}: <{element}>: `{value}` is not a boolean (true, false, 1, 0)")]
    BadBoolean {
        element: String,
        line: usize,
        value: String,
    },
    /// A required text value is empty (e.g. `<jsdl:FileName/>`).
    #[error("line {line}: <{element}>: must not be empty")]
    Empty { element: String, line: usize },
    /// Two different images are named by the vfarm extension (in Resources and JobDescription).
    #[error("line {line}: <{element}>: names image `{second}` but `{first}` was already named")]
    ConflictingImage {
        element: String,
        line: usize,
        first: String,
        second: String,
    },
}

fn suggest(s: Option<&'static str>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// Something a strict GFD.56 schema validator would reject but this parser tolerates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaWarning {
    /// Qualified name of the offending element, e.g. `jsdl-posix:Argument`.
    pub element: String,
    /// 1-based line where the element starts.
    pub line: usize,
    pub kind: WarningKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WarningKind {
    /// The element comes after a sibling that `xsd:sequence` puts later.
    OutOfOrder { after: String },
    /// An element in a namespace defined by JSDL (or its extensions) that the schema does not
    /// declare in this position, e.g. `jsdl:StagingSchedule`. Kept as an extension element.
    UndefinedElement,
    /// `jsdl:MountSource`: added by the GFD.136 errata, absent from the 2005/11 schema.
    ErrataElement,
    /// A foreign-namespace element where the schema has no `xsd:any` (e.g. inside
    /// POSIXApplication). Kept as an extension element.
    ExtensionNotAllowed,
    /// An element in no namespace where only `##other` extensions are allowed.
    UnqualifiedElement,
    /// An attribute accepted under a spelling the schema does not use.
    AttributeSpelling { found: String, expected: String },
}

impl fmt::Display for SchemaWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: <{}>: ", self.line, self.element)?;
        match &self.kind {
            WarningKind::OutOfOrder { after } => {
                write!(f, "out of schema order (comes after <{after}>)")
            }
            WarningKind::UndefinedElement => write!(f, "not defined by the schema here"),
            WarningKind::ErrataElement => {
                write!(f, "only in the GFD.136 errata, not the 2005/11 schema")
            }
            WarningKind::ExtensionNotAllowed => {
                write!(f, "the schema allows no extension elements here")
            }
            WarningKind::UnqualifiedElement => {
                write!(f, "element has no namespace; extensions must be namespaced")
            }
            WarningKind::AttributeSpelling { found, expected } => {
                write!(f, "attribute `{found}` should be spelled `{expected}`")
            }
        }
    }
}
