//! Typed, order-insensitive parsing of the element tree. Schema deviations a tolerant reader
//! can live with become [`SchemaWarning`]s; anything that leaves the job ambiguous or
//! incomplete is a [`JsdlError`].

use crate::error::{JsdlError, SchemaWarning, WarningKind};
use crate::model::*;
use crate::xml::{parse_tree, Node};
use serde::{Deserialize, Serialize};

/// A parse result together with the schema warnings collected on the way. An empty
/// `warnings` means the document is valid against the GFD.56 schemas as far as this parser
/// checks (element order, element names, required children, value syntax).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parsed<T> {
    pub value: T,
    pub warnings: Vec<SchemaWarning>,
}

impl<T> Parsed<T> {
    pub fn is_strictly_valid(&self) -> bool {
        self.warnings.is_empty()
    }
}

/// A standalone range element such as `<jsdl:IndividualCPUCount>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedRange {
    /// Local name of the element, e.g. `IndividualCPUCount`.
    pub element: String,
    pub range: RangeValue,
}

/// Parses a JSDL document whose root is `jsdl:JobDefinition`.
pub fn parse(xml: &str) -> Result<Parsed<JobDefinition>, JsdlError> {
    let root = parse_tree(xml)?;
    check_root_ns(&root)?;
    if root.name.local != "JobDefinition" {
        return Err(JsdlError::WrongRoot {
            element: root.qname(),
            line: root.line,
            expected: "jsdl:JobDefinition",
        });
    }
    let mut ctx = Ctx::default();
    let value = job_definition(&mut ctx, &root)?;
    Ok(Parsed {
        value,
        warnings: ctx.into_warnings(),
    })
}

/// Element names whose type is `jsdl:RangeValue_Type`.
pub const RANGE_ELEMENTS: &[&str] = &[
    "DiskSpace",
    "IndividualCPUSpeed",
    "IndividualCPUTime",
    "IndividualCPUCount",
    "IndividualNetworkBandwidth",
    "IndividualPhysicalMemory",
    "IndividualVirtualMemory",
    "IndividualDiskSpace",
    "TotalCPUTime",
    "TotalCPUCount",
    "TotalPhysicalMemory",
    "TotalVirtualMemory",
    "TotalDiskSpace",
    "TotalResourceCount",
];

/// Parses a document whose root is a single range-valued JSDL element, e.g.
/// `<jsdl:IndividualCPUCount><jsdl:Range>…</jsdl:Range></jsdl:IndividualCPUCount>`.
pub fn parse_range_value(xml: &str) -> Result<Parsed<NamedRange>, JsdlError> {
    let root = parse_tree(xml)?;
    check_root_ns(&root)?;
    if !RANGE_ELEMENTS.contains(&root.name.local.as_str()) {
        return Err(JsdlError::WrongRoot {
            element: root.qname(),
            line: root.line,
            expected: "a range-valued element such as jsdl:TotalCPUCount",
        });
    }
    let mut ctx = Ctx::default();
    let range = range_value(&mut ctx, &root)?;
    Ok(Parsed {
        value: NamedRange {
            element: root.name.local.clone(),
            range,
        },
        warnings: ctx.into_warnings(),
    })
}

fn check_root_ns(root: &Node) -> Result<(), JsdlError> {
    if root.name.namespace.as_deref() == Some(ns::JSDL) {
        return Ok(());
    }
    Err(JsdlError::WrongRootNamespace {
        element: root.qname(),
        line: root.line,
        found: match &root.name.namespace {
            Some(uri) => format!("namespace `{uri}`"),
            None => "no namespace".to_owned(),
        },
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ns {
    Jsdl,
    Posix,
    Hpcpa,
    Spmd,
    Xsdl,
    Vfarm,
}

fn ns_of(uri: Option<&str>) -> Option<Ns> {
    Some(match uri? {
        ns::JSDL => Ns::Jsdl,
        ns::POSIX => Ns::Posix,
        ns::HPCPA | ns::HPCPA_OGF => Ns::Hpcpa,
        ns::SPMD => Ns::Spmd,
        ns::XSDL => Ns::Xsdl,
        ns::VFARM => Ns::Vfarm,
        _ => return None,
    })
}

/// The content model of one complex type: its `xsd:sequence`, the namespaces whose other
/// names it does not define, and whether a trailing `xsd:any ##other` is present.
struct Seq {
    items: &'static [(Ns, &'static str)],
    own: &'static [Ns],
    any_other: bool,
}

const fn seq(items: &'static [(Ns, &'static str)], own: Ns, any_other: bool) -> Seq {
    let own: &'static [Ns] = match own {
        Ns::Jsdl => &[Ns::Jsdl],
        Ns::Posix => &[Ns::Posix],
        Ns::Hpcpa => &[Ns::Hpcpa],
        Ns::Spmd => &[Ns::Spmd],
        Ns::Xsdl => &[Ns::Xsdl],
        Ns::Vfarm => &[Ns::Vfarm],
    };
    Seq {
        items,
        own,
        any_other,
    }
}

use Ns::{Hpcpa as H, Jsdl as J, Posix as P, Spmd as S, Xsdl as X};

const JOB_DEFINITION: Seq = seq(&[(J, "JobDescription")], J, true);
const JOB_DESCRIPTION: Seq = seq(
    &[
        (J, "JobIdentification"),
        (J, "Application"),
        (J, "Resources"),
        (J, "DataStaging"),
    ],
    J,
    true,
);
const JOB_IDENTIFICATION: Seq = seq(
    &[
        (J, "JobName"),
        (J, "Description"),
        (J, "JobAnnotation"),
        (J, "JobProject"),
    ],
    J,
    true,
);
const APPLICATION: Seq = seq(
    &[
        (J, "ApplicationName"),
        (J, "ApplicationVersion"),
        (J, "Description"),
    ],
    J,
    true,
);
const POSIX_APPLICATION: Seq = seq(
    &[
        (P, "Executable"),
        (P, "Argument"),
        (P, "Input"),
        (P, "Output"),
        (P, "Error"),
        (P, "WorkingDirectory"),
        (P, "Environment"),
        (P, "WallTimeLimit"),
        (P, "FileSizeLimit"),
        (P, "CoreDumpLimit"),
        (P, "DataSegmentLimit"),
        (P, "LockedMemoryLimit"),
        (P, "MemoryLimit"),
        (P, "OpenDescriptorsLimit"),
        (P, "PipeSizeLimit"),
        (P, "StackSizeLimit"),
        (P, "CPUTimeLimit"),
        (P, "ProcessCountLimit"),
        (P, "VirtualMemoryLimit"),
        (P, "ThreadCountLimit"),
        (P, "UserName"),
        (P, "GroupName"),
    ],
    P,
    false,
);
const HPC_APPLICATION: Seq = seq(
    &[
        (H, "Executable"),
        (H, "Argument"),
        (H, "Input"),
        (H, "Output"),
        (H, "Error"),
        (H, "WorkingDirectory"),
        (H, "Environment"),
        (H, "UserName"),
    ],
    H,
    false,
);
const SPMD_APPLICATION: Seq = seq(
    &[
        (P, "Executable"),
        (P, "Argument"),
        (P, "Input"),
        (P, "Output"),
        (P, "Error"),
        (P, "WorkingDirectory"),
        (P, "Environment"),
        (P, "UserName"),
        (S, "NumberOfProcesses"),
        (S, "ProcessesPerHost"),
        (S, "ThreadsPerProcess"),
        (S, "SPMDVariation"),
    ],
    S,
    true,
);
const RESOURCES: Seq = seq(
    &[
        (J, "CandidateHosts"),
        (J, "FileSystem"),
        (J, "ExclusiveExecution"),
        (J, "OperatingSystem"),
        (J, "CPUArchitecture"),
        (J, "IndividualCPUSpeed"),
        (J, "IndividualCPUTime"),
        (J, "IndividualCPUCount"),
        (J, "IndividualNetworkBandwidth"),
        (J, "IndividualPhysicalMemory"),
        (J, "IndividualVirtualMemory"),
        (J, "IndividualDiskSpace"),
        (J, "TotalCPUTime"),
        (J, "TotalCPUCount"),
        (J, "TotalPhysicalMemory"),
        (J, "TotalVirtualMemory"),
        (J, "TotalDiskSpace"),
        (J, "TotalResourceCount"),
    ],
    J,
    true,
);
const CANDIDATE_HOSTS: Seq = seq(&[(J, "HostName")], J, false);
/// `MountSource` sits where the GFD.136 errata puts it; it also draws an errata warning.
const FILE_SYSTEM: Seq = seq(
    &[
        (J, "FileSystemType"),
        (J, "Description"),
        (J, "MountSource"),
        (J, "MountPoint"),
        (J, "DiskSpace"),
    ],
    J,
    true,
);
const OPERATING_SYSTEM: Seq = seq(
    &[
        (J, "OperatingSystemType"),
        (J, "OperatingSystemVersion"),
        (J, "Description"),
    ],
    J,
    true,
);
const OPERATING_SYSTEM_TYPE: Seq = seq(&[(J, "OperatingSystemName")], J, true);
const CPU_ARCHITECTURE: Seq = seq(&[(J, "CPUArchitectureName")], J, true);
const RANGE_VALUE: Seq = seq(
    &[
        (J, "UpperBoundedRange"),
        (J, "LowerBoundedRange"),
        (J, "Exact"),
        (J, "Range"),
    ],
    J,
    false,
);
const RANGE: Seq = seq(&[(J, "LowerBound"), (J, "UpperBound")], J, false);
const DATA_STAGING: Seq = seq(
    &[
        (J, "FileName"),
        (J, "FilesystemName"),
        (J, "CreationFlag"),
        (J, "DeleteOnTermination"),
        (J, "Source"),
        (J, "Target"),
    ],
    J,
    true,
);
const SOURCE_TARGET: Seq = seq(&[(J, "URI")], J, true);
const INSTANCE_DEFINITION: Seq = seq(&[(X, "InstanceDescription")], X, true);
const INSTANCE_DESCRIPTION: Seq = seq(&[(X, "Package"), (X, "Instance"), (X, "Control")], X, false);
const INSTANCE: Seq = seq(
    &[
        (X, "Description"),
        (X, "Kernel"),
        (X, "Initrd"),
        (X, "Image"),
    ],
    X,
    true,
);
const KERNEL: Seq = seq(&[(X, "Location"), (X, "Argument")], X, true);
const LOCATION_HOLDER: Seq = seq(&[(X, "Location")], X, true);
const LOCATION: Seq = seq(
    &[(X, "URI"), (X, "Mode"), (X, "Hash"), (X, "Compression")],
    X,
    true,
);

type Res<T> = Result<T, JsdlError>;

#[derive(Default)]
struct Ctx {
    warnings: Vec<SchemaWarning>,
    /// vfarm extension values seen anywhere: (local name, value, line).
    vfarm_seen: Vec<(String, String, usize)>,
}

impl Ctx {
    /// Warnings in document order (they are found parent-first).
    fn into_warnings(mut self) -> Vec<SchemaWarning> {
        self.warnings.sort_by_key(|w| w.line);
        self.warnings
    }

    fn warn(&mut self, node: &Node, kind: WarningKind) {
        self.warnings.push(SchemaWarning {
            element: node.qname(),
            line: node.line,
            kind,
        });
    }

    /// Classifies `parent`'s children against `seq`: `Some(local)` for a schema element,
    /// `None` for an extension element. Records order and undefined-element warnings.
    fn children<'n>(
        &mut self,
        parent: &'n Node,
        seq: &Seq,
    ) -> Vec<(Option<&'static str>, &'n Node)> {
        let mut out = Vec::with_capacity(parent.children.len());
        let mut furthest: Option<(usize, String)> = None;
        for child in &parent.children {
            let cns = ns_of(child.name.namespace.as_deref());
            let pos = seq
                .items
                .iter()
                .position(|&(n, l)| Some(n) == cns && l == child.name.local);
            let order_index = match pos {
                Some(i) => Some(i),
                None if child.name.namespace.is_none() => {
                    self.warn(child, WarningKind::UnqualifiedElement);
                    None
                }
                None if cns.is_some_and(|n| seq.own.contains(&n)) => {
                    self.warn(child, WarningKind::UndefinedElement);
                    None
                }
                None if !seq.any_other => {
                    self.warn(child, WarningKind::ExtensionNotAllowed);
                    None
                }
                // Extensions belong after every schema element.
                None => Some(seq.items.len()),
            };
            if let Some(i) = order_index {
                match &furthest {
                    Some((max, after)) if i < *max => {
                        let after = after.clone();
                        self.warn(child, WarningKind::OutOfOrder { after });
                    }
                    _ => furthest = Some((i, child.qname())),
                }
            }
            out.push((pos.map(|i| seq.items[i].1), child));
        }
        out
    }

    /// Remembers a vfarm extension value; two different values for the same element are an
    /// error.
    fn vfarm_value(&mut self, node: &Node, value: &str) -> Res<()> {
        let local = &node.name.local;
        if let Some((_, first, _)) = self
            .vfarm_seen
            .iter()
            .find(|(l, v, _)| l == local && v != value)
        {
            return Err(JsdlError::ConflictingImage {
                element: node.qname(),
                line: node.line,
                first: first.clone(),
                second: value.to_owned(),
            });
        }
        self.vfarm_seen
            .push((local.clone(), value.to_owned(), node.line));
        Ok(())
    }
}

/// Rejects a second occurrence of a single-valued element.
#[derive(Default)]
struct Once(Vec<(&'static str, usize)>);

impl Once {
    fn check(&mut self, slot: &'static str, node: &Node) -> Res<()> {
        if let Some(&(_, first_line)) = self.0.iter().find(|(s, _)| *s == slot) {
            return Err(JsdlError::Duplicate {
                element: node.qname(),
                line: node.line,
                first_line,
            });
        }
        self.0.push((slot, node.line));
        Ok(())
    }
}

fn missing(parent: &Node, ns_uri: &str, child: &str) -> JsdlError {
    JsdlError::MissingChild {
        element: parent.qname(),
        line: parent.line,
        child: QName::new(Some(ns_uri), child).to_string(),
    }
}

/// Text of a simple-content element; child elements in it are not allowed by the schema.
fn raw_text(ctx: &mut Ctx, node: &Node) -> String {
    for child in &node.children {
        ctx.warn(child, WarningKind::ExtensionNotAllowed);
    }
    node.text.clone()
}

/// Trimmed text, for paths, names, URIs and other token-like values.
fn text(ctx: &mut Ctx, node: &Node) -> String {
    raw_text(ctx, node).trim().to_owned()
}

fn non_empty(ctx: &mut Ctx, node: &Node) -> Res<String> {
    let t = text(ctx, node);
    if t.is_empty() {
        return Err(JsdlError::Empty {
            element: node.qname(),
            line: node.line,
        });
    }
    Ok(t)
}

/// `xsd:normalizedString`: tabs and line breaks read as spaces.
fn normalized(ctx: &mut Ctx, node: &Node) -> String {
    raw_text(ctx, node).replace(['\t', '\n', '\r'], " ")
}

fn parse_bool_str(node: &Node, s: &str) -> Res<bool> {
    match s.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(JsdlError::BadBoolean {
            element: node.qname(),
            line: node.line,
            value: other.to_owned(),
        }),
    }
}

fn boolean(ctx: &mut Ctx, node: &Node) -> Res<bool> {
    let t = text(ctx, node);
    parse_bool_str(node, &t)
}

fn parse_u64_str(node: &Node, s: &str, expected: &'static str) -> Res<u64> {
    let t = s.trim();
    let digits = t.strip_prefix('+').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(JsdlError::BadNumber {
            element: node.qname(),
            line: node.line,
            value: t.to_owned(),
            expected,
        });
    }
    digits.parse().map_err(|_| JsdlError::BadNumber {
        element: node.qname(),
        line: node.line,
        value: t.to_owned(),
        expected,
    })
}

fn non_negative(ctx: &mut Ctx, node: &Node) -> Res<u64> {
    let t = text(ctx, node);
    parse_u64_str(node, &t, "a non-negative integer")
}

fn positive(ctx: &mut Ctx, node: &Node) -> Res<u64> {
    let t = text(ctx, node);
    match parse_u64_str(node, &t, "a positive integer")? {
        0 => Err(JsdlError::BadNumber {
            element: node.qname(),
            line: node.line,
            value: t,
            expected: "a positive integer",
        }),
        n => Ok(n),
    }
}

/// `xsd:double`: decimal or scientific notation, `INF`, `-INF`. NaN is refused because no
/// requirement can be compared against it.
fn parse_double_str(node: &Node, s: &str) -> Res<f64> {
    let t = s.trim();
    let value = match t {
        "INF" | "+INF" => Some(f64::INFINITY),
        "-INF" => Some(f64::NEG_INFINITY),
        _ if !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E')) =>
        {
            t.parse::<f64>().ok()
        }
        _ => None,
    };
    value.ok_or_else(|| JsdlError::BadNumber {
        element: node.qname(),
        line: node.line,
        value: t.to_owned(),
        expected: "a number (xsd:double)",
    })
}

fn enum_value<E: XmlEnum>(node: &Node, s: &str) -> Res<E> {
    let t = s.trim();
    E::from_xml(t).ok_or_else(|| JsdlError::BadEnumValue {
        element: node.qname(),
        line: node.line,
        value: t.to_owned(),
        kind: E::KIND,
        suggestion: E::suggest(t),
    })
}

fn enum_text<E: XmlEnum>(ctx: &mut Ctx, node: &Node) -> Res<E> {
    let t = text(ctx, node);
    enum_value(node, &t)
}

/// An attribute under its schema spelling, or (with a warning) one differing only in case.
fn attr_any_case<'n>(ctx: &mut Ctx, node: &'n Node, local: &str) -> Option<&'n str> {
    if let Some(v) = node.attr(local) {
        return Some(v);
    }
    let a = node
        .attrs
        .iter()
        .find(|a| a.name.namespace.is_none() && a.name.local.eq_ignore_ascii_case(local))?;
    ctx.warn(
        node,
        WarningKind::AttributeSpelling {
            found: a.name.local.clone(),
            expected: local.to_owned(),
        },
    );
    Some(&a.value)
}

fn job_definition(ctx: &mut Ctx, node: &Node) -> Res<JobDefinition> {
    let mut out = JobDefinition {
        id: node.attr("id").map(str::to_owned),
        ..Default::default()
    };
    let mut description = None;
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &JOB_DEFINITION) {
        match slot {
            Some("JobDescription") => {
                once.check("JobDescription", child)?;
                description = Some(job_description(ctx, child)?);
            }
            _ => out.extensions.push(child.to_any()),
        }
    }
    out.description = description.ok_or_else(|| missing(node, ns::JSDL, "JobDescription"))?;
    Ok(out)
}

/// Handles a `vfarm:` element; returns false when it is not one this crate defines (the
/// caller keeps it as an extension).
fn vfarm_element(
    ctx: &mut Ctx,
    child: &Node,
    target: &mut VfarmExtension,
    once: &mut Once,
) -> Res<bool> {
    if child.name.namespace.as_deref() != Some(ns::VFARM) {
        return Ok(false);
    }
    match child.name.local.as_str() {
        "Image" => {
            once.check("vfarm:Image", child)?;
            let image = non_empty(ctx, child)?;
            ctx.vfarm_value(child, &image)?;
            target.image = Some(image);
        }
        "Driver" => {
            once.check("vfarm:Driver", child)?;
            let driver: Driver = enum_text(ctx, child)?;
            ctx.vfarm_value(child, driver.as_str())?;
            target.driver = Some(driver);
        }
        _ => {
            ctx.warn(child, WarningKind::UndefinedElement);
            return Ok(false);
        }
    }
    Ok(true)
}

fn job_description(ctx: &mut Ctx, node: &Node) -> Res<JobDescription> {
    let mut out = JobDescription::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &JOB_DESCRIPTION) {
        match slot {
            Some("JobIdentification") => {
                once.check("JobIdentification", child)?;
                out.identification = Some(job_identification(ctx, child)?);
            }
            Some("Application") => {
                once.check("Application", child)?;
                out.application = Some(application(ctx, child)?);
            }
            Some("Resources") => {
                once.check("Resources", child)?;
                out.resources = Some(resources(ctx, child)?);
            }
            Some("DataStaging") => out.data_staging.push(data_staging(ctx, child)?),
            _ => {
                if !vfarm_element(ctx, child, &mut out.vfarm, &mut once)? {
                    out.extensions.push(child.to_any());
                }
            }
        }
    }
    Ok(out)
}

fn job_identification(ctx: &mut Ctx, node: &Node) -> Res<JobIdentification> {
    let mut out = JobIdentification::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &JOB_IDENTIFICATION) {
        match slot {
            Some("JobName") => {
                once.check("JobName", child)?;
                out.job_name = Some(text(ctx, child));
            }
            Some("Description") => {
                once.check("Description", child)?;
                out.description = Some(raw_text(ctx, child));
            }
            Some("JobAnnotation") => out.annotations.push(text(ctx, child)),
            Some("JobProject") => out.projects.push(text(ctx, child)),
            _ => out.extensions.push(child.to_any()),
        }
    }
    Ok(out)
}

fn application(ctx: &mut Ctx, node: &Node) -> Res<Application> {
    let mut out = Application::default();
    let mut once = Once::default();
    // Line of the element that set `body`, for conflict messages.
    let mut body_at: Option<(String, usize, bool)> = None;
    for (slot, child) in ctx.children(node, &APPLICATION) {
        match slot {
            Some("ApplicationName") => {
                once.check("ApplicationName", child)?;
                out.name = Some(text(ctx, child));
            }
            Some("ApplicationVersion") => {
                once.check("ApplicationVersion", child)?;
                out.version = Some(text(ctx, child));
            }
            Some("Description") => {
                once.check("Description", child)?;
                out.description = Some(raw_text(ctx, child));
            }
            _ => {
                let known = match (
                    ns_of(child.name.namespace.as_deref()),
                    child.name.local.as_str(),
                ) {
                    (Some(Ns::Posix), "POSIXApplication") => {
                        Some(ApplicationBody::Posix(posix_application(ctx, child)?))
                    }
                    (Some(Ns::Hpcpa), "HPCProfileApplication") => {
                        Some(ApplicationBody::HpcProfile(hpc_application(ctx, child)?))
                    }
                    (Some(Ns::Spmd), "SPMDApplication") => {
                        Some(ApplicationBody::Spmd(spmd_application(ctx, child)?))
                    }
                    _ => None,
                };
                match (known, &body_at) {
                    (Some(_), Some((other, other_line, true))) => {
                        return Err(JsdlError::Conflicting {
                            element: child.qname(),
                            line: child.line,
                            other: other.clone(),
                            other_line: *other_line,
                        })
                    }
                    (Some(body), _) => {
                        // A recognised application outranks a foreign one taken earlier.
                        if let Some(ApplicationBody::Foreign(f)) = out.body.take() {
                            out.extensions.insert(0, f);
                        }
                        out.body = Some(body);
                        body_at = Some((child.qname(), child.line, true));
                    }
                    (None, None) => {
                        out.body = Some(ApplicationBody::Foreign(child.to_any()));
                        body_at = Some((child.qname(), child.line, false));
                    }
                    (None, Some(_)) => out.extensions.push(child.to_any()),
                }
            }
        }
    }
    Ok(out)
}

fn file_ref(ctx: &mut Ctx, node: &Node) -> FileRef {
    FileRef {
        value: text(ctx, node),
        filesystem_name: node.attr("filesystemName").map(str::to_owned),
    }
}

fn argument(ctx: &mut Ctx, node: &Node) -> FileRef {
    FileRef {
        value: normalized(ctx, node),
        filesystem_name: node.attr("filesystemName").map(str::to_owned),
    }
}

fn env_var(ctx: &mut Ctx, node: &Node) -> Res<EnvVar> {
    let name = node
        .attr("name")
        .ok_or_else(|| JsdlError::MissingAttribute {
            element: node.qname(),
            line: node.line,
            attribute: "name",
        })?
        .to_owned();
    Ok(EnvVar {
        name,
        value: raw_text(ctx, node),
        filesystem_name: node.attr("filesystemName").map(str::to_owned),
    })
}

fn posix_application(ctx: &mut Ctx, node: &Node) -> Res<PosixApplication> {
    let mut out = PosixApplication {
        name: node.attr("name").map(str::to_owned),
        ..Default::default()
    };
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &POSIX_APPLICATION) {
        let Some(slot) = slot else {
            out.extensions.push(child.to_any());
            continue;
        };
        match slot {
            "Argument" => {
                out.arguments.push(argument(ctx, child));
                continue;
            }
            "Environment" => {
                out.environment.push(env_var(ctx, child)?);
                continue;
            }
            _ => once.check(slot, child)?,
        }
        match slot {
            "Executable" => out.executable = Some(file_ref(ctx, child)),
            "Input" => out.input = Some(file_ref(ctx, child)),
            "Output" => out.output = Some(file_ref(ctx, child)),
            "Error" => out.error = Some(file_ref(ctx, child)),
            "WorkingDirectory" => out.working_directory = Some(file_ref(ctx, child)),
            "UserName" => out.user_name = Some(text(ctx, child)),
            "GroupName" => out.group_name = Some(text(ctx, child)),
            limit => {
                let v = Some(non_negative(ctx, child)?);
                match limit {
                    "WallTimeLimit" => out.wall_time_limit = v,
                    "FileSizeLimit" => out.file_size_limit = v,
                    "CoreDumpLimit" => out.core_dump_limit = v,
                    "DataSegmentLimit" => out.data_segment_limit = v,
                    "LockedMemoryLimit" => out.locked_memory_limit = v,
                    "MemoryLimit" => out.memory_limit = v,
                    "OpenDescriptorsLimit" => out.open_descriptors_limit = v,
                    "PipeSizeLimit" => out.pipe_size_limit = v,
                    "StackSizeLimit" => out.stack_size_limit = v,
                    "CPUTimeLimit" => out.cpu_time_limit = v,
                    "ProcessCountLimit" => out.process_count_limit = v,
                    "VirtualMemoryLimit" => out.virtual_memory_limit = v,
                    "ThreadCountLimit" => out.thread_count_limit = v,
                    other => unreachable!("POSIX_APPLICATION lists {other} without a field"),
                }
            }
        }
    }
    Ok(out)
}

fn hpc_application(ctx: &mut Ctx, node: &Node) -> Res<HpcProfileApplication> {
    let namespace = if node.name.namespace.as_deref() == Some(ns::HPCPA_OGF) {
        HpcpaNamespace::Ogf
    } else {
        HpcpaNamespace::Ggf
    };
    let mut out = HpcProfileApplication {
        namespace,
        name: node.attr("name").map(str::to_owned),
        ..Default::default()
    };
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &HPC_APPLICATION) {
        match slot {
            None => out.extensions.push(child.to_any()),
            Some("Argument") => out.arguments.push(raw_text(ctx, child)),
            Some("Environment") => out.environment.push(env_var(ctx, child)?),
            Some(slot) => {
                once.check(slot, child)?;
                let v = Some(text(ctx, child));
                match slot {
                    "Executable" => out.executable = v,
                    "Input" => out.input = v,
                    "Output" => out.output = v,
                    "Error" => out.error = v,
                    "WorkingDirectory" => out.working_directory = v,
                    "UserName" => out.user_name = v,
                    other => unreachable!("HPC_APPLICATION lists {other} without a field"),
                }
            }
        }
    }
    Ok(out)
}

fn process_count(ctx: &mut Ctx, node: &Node, flag: &str) -> Res<ProcessCount> {
    let actual_cpu_count = match attr_any_case(ctx, node, flag) {
        Some(v) => Some(parse_bool_str(node, v)?),
        None => None,
    };
    let value = if node.text.trim().is_empty() {
        None
    } else {
        Some(positive(ctx, node)?)
    };
    Ok(ProcessCount {
        value,
        actual_cpu_count,
    })
}

fn spmd_application(ctx: &mut Ctx, node: &Node) -> Res<SpmdApplication> {
    let mut out = SpmdApplication {
        name: node.attr("name").map(str::to_owned),
        ..Default::default()
    };
    let mut variation = None;
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &SPMD_APPLICATION) {
        match slot {
            None => out.extensions.push(child.to_any()),
            Some("Argument") => out.arguments.push(argument(ctx, child)),
            Some("Environment") => out.environment.push(env_var(ctx, child)?),
            Some(slot) => {
                once.check(slot, child)?;
                match slot {
                    "Executable" => out.executable = Some(file_ref(ctx, child)),
                    "Input" => out.input = Some(file_ref(ctx, child)),
                    "Output" => out.output = Some(file_ref(ctx, child)),
                    "Error" => out.error = Some(file_ref(ctx, child)),
                    "WorkingDirectory" => out.working_directory = Some(file_ref(ctx, child)),
                    "UserName" => out.user_name = Some(text(ctx, child)),
                    "NumberOfProcesses" => {
                        out.number_of_processes =
                            Some(process_count(ctx, child, "actualtotalcpucount")?)
                    }
                    "ProcessesPerHost" => out.processes_per_host = Some(positive(ctx, child)?),
                    "ThreadsPerProcess" => {
                        out.threads_per_process =
                            Some(process_count(ctx, child, "actualindividualcpucount")?)
                    }
                    "SPMDVariation" => variation = Some(non_empty(ctx, child)?),
                    other => unreachable!("SPMD_APPLICATION lists {other} without a field"),
                }
            }
        }
    }
    out.spmd_variation = variation.ok_or_else(|| missing(node, ns::SPMD, "SPMDVariation"))?;
    Ok(out)
}

fn resources(ctx: &mut Ctx, node: &Node) -> Res<Resources> {
    let mut out = Resources::default();
    let mut once = Once::default();
    let mut fs_lines: Vec<(String, usize)> = Vec::new();
    for (slot, child) in ctx.children(node, &RESOURCES) {
        let Some(slot) = slot else {
            if child.is(ns::XSDL, "InstanceDefinition") {
                once.check("xsdl:InstanceDefinition", child)?;
                out.instance_definition = Some(instance_definition(ctx, child)?);
            } else if !vfarm_element(ctx, child, &mut out.vfarm, &mut once)? {
                out.extensions.push(child.to_any());
            }
            continue;
        };
        if slot == "FileSystem" {
            let fs = file_system(ctx, child)?;
            // Names are what filesystemName references resolve against, so they must be unique.
            if let Some((_, first_line)) = fs_lines.iter().find(|(n, _)| *n == fs.name) {
                return Err(JsdlError::Duplicate {
                    element: format!("{}[@name='{}']", child.qname(), fs.name),
                    line: child.line,
                    first_line: *first_line,
                });
            }
            fs_lines.push((fs.name.clone(), child.line));
            out.file_systems.push(fs);
            continue;
        }
        once.check(slot, child)?;
        match slot {
            "CandidateHosts" => {
                let mut hosts = Vec::new();
                for (s, h) in ctx.children(child, &CANDIDATE_HOSTS) {
                    if s.is_some() {
                        hosts.push(non_empty(ctx, h)?);
                    }
                }
                if hosts.is_empty() {
                    return Err(missing(child, ns::JSDL, "HostName"));
                }
                out.candidate_hosts = Some(hosts);
            }
            "ExclusiveExecution" => out.exclusive_execution = Some(boolean(ctx, child)?),
            "OperatingSystem" => out.operating_system = Some(operating_system(ctx, child)?),
            "CPUArchitecture" => {
                let mut name = None;
                for (s, c) in ctx.children(child, &CPU_ARCHITECTURE) {
                    match s {
                        Some(_) => {
                            if name.is_some() {
                                return Err(JsdlError::Duplicate {
                                    element: c.qname(),
                                    line: c.line,
                                    first_line: child.line,
                                });
                            }
                            name = Some(enum_text(ctx, c)?);
                        }
                        // No field on the model for these; Resources keeps them.
                        None => out.extensions.push(c.to_any()),
                    }
                }
                out.cpu_architecture =
                    Some(name.ok_or_else(|| missing(child, ns::JSDL, "CPUArchitectureName"))?);
            }
            range => {
                let v = Some(range_value(ctx, child)?);
                match range {
                    "IndividualCPUSpeed" => out.individual_cpu_speed = v,
                    "IndividualCPUTime" => out.individual_cpu_time = v,
                    "IndividualCPUCount" => out.individual_cpu_count = v,
                    "IndividualNetworkBandwidth" => out.individual_network_bandwidth = v,
                    "IndividualPhysicalMemory" => out.individual_physical_memory = v,
                    "IndividualVirtualMemory" => out.individual_virtual_memory = v,
                    "IndividualDiskSpace" => out.individual_disk_space = v,
                    "TotalCPUTime" => out.total_cpu_time = v,
                    "TotalCPUCount" => out.total_cpu_count = v,
                    "TotalPhysicalMemory" => out.total_physical_memory = v,
                    "TotalVirtualMemory" => out.total_virtual_memory = v,
                    "TotalDiskSpace" => out.total_disk_space = v,
                    "TotalResourceCount" => out.total_resource_count = v,
                    other => unreachable!("RESOURCES lists {other} without a field"),
                }
            }
        }
    }
    Ok(out)
}

fn file_system(ctx: &mut Ctx, node: &Node) -> Res<FileSystem> {
    let name = node
        .attr("name")
        .ok_or_else(|| JsdlError::MissingAttribute {
            element: node.qname(),
            line: node.line,
            attribute: "name",
        })?;
    let mut out = FileSystem {
        name: name.trim().to_owned(),
        ..Default::default()
    };
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &FILE_SYSTEM) {
        let Some(slot) = slot else {
            out.extensions.push(child.to_any());
            continue;
        };
        once.check(slot, child)?;
        match slot {
            "FileSystemType" => out.fs_type = Some(enum_text(ctx, child)?),
            "Description" => out.description = Some(raw_text(ctx, child)),
            "MountSource" => {
                ctx.warn(child, WarningKind::ErrataElement);
                out.mount_source = Some(text(ctx, child));
            }
            "MountPoint" => out.mount_point = Some(text(ctx, child)),
            "DiskSpace" => out.disk_space = Some(range_value(ctx, child)?),
            other => unreachable!("FILE_SYSTEM lists {other} without a field"),
        }
    }
    Ok(out)
}

fn operating_system(ctx: &mut Ctx, node: &Node) -> Res<OperatingSystem> {
    let mut out = OperatingSystem::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &OPERATING_SYSTEM) {
        let Some(slot) = slot else {
            out.extensions.push(child.to_any());
            continue;
        };
        once.check(slot, child)?;
        match slot {
            "OperatingSystemType" => {
                let mut name = None;
                for (s, c) in ctx.children(child, &OPERATING_SYSTEM_TYPE) {
                    match s {
                        Some(_) => {
                            if name.is_some() {
                                return Err(JsdlError::Duplicate {
                                    element: c.qname(),
                                    line: c.line,
                                    first_line: child.line,
                                });
                            }
                            name = Some(enum_text(ctx, c)?);
                        }
                        // No field on the model for these; OperatingSystem keeps them.
                        None => out.extensions.push(c.to_any()),
                    }
                }
                out.name =
                    Some(name.ok_or_else(|| missing(child, ns::JSDL, "OperatingSystemName"))?);
            }
            "OperatingSystemVersion" => out.version = Some(text(ctx, child)),
            "Description" => out.description = Some(raw_text(ctx, child)),
            other => unreachable!("OPERATING_SYSTEM lists {other} without a field"),
        }
    }
    Ok(out)
}

fn bound(ctx: &mut Ctx, node: &Node) -> Res<Bound> {
    let t = raw_text(ctx, node);
    let value = parse_double_str(node, &t)?;
    let exclusive = match node.attr("exclusiveBound") {
        Some(v) => parse_bool_str(node, v)?,
        None => false,
    };
    Ok(Bound { value, exclusive })
}

fn range_value(ctx: &mut Ctx, node: &Node) -> Res<RangeValue> {
    let mut out = RangeValue::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &RANGE_VALUE) {
        match slot {
            Some("UpperBoundedRange") => {
                once.check("UpperBoundedRange", child)?;
                out.upper_bounded = Some(bound(ctx, child)?);
            }
            Some("LowerBoundedRange") => {
                once.check("LowerBoundedRange", child)?;
                out.lower_bounded = Some(bound(ctx, child)?);
            }
            Some("Exact") => {
                let t = raw_text(ctx, child);
                let value = parse_double_str(child, &t)?;
                let epsilon = match child.attr("epsilon") {
                    Some(e) => Some(parse_double_str(child, e)?),
                    None => None,
                };
                out.exact.push(Exact { value, epsilon });
            }
            Some("Range") => {
                let (mut lower, mut upper) = (None, None);
                let mut once_r = Once::default();
                for (s, c) in ctx.children(child, &RANGE) {
                    match s {
                        Some("LowerBound") => {
                            once_r.check("LowerBound", c)?;
                            lower = Some(bound(ctx, c)?);
                        }
                        Some("UpperBound") => {
                            once_r.check("UpperBound", c)?;
                            upper = Some(bound(ctx, c)?);
                        }
                        _ => {}
                    }
                }
                out.ranges.push(Range {
                    lower: lower.ok_or_else(|| missing(child, ns::JSDL, "LowerBound"))?,
                    upper: upper.ok_or_else(|| missing(child, ns::JSDL, "UpperBound"))?,
                });
            }
            // Not allowed by the schema (already warned) and not representable: dropped.
            _ => {}
        }
    }
    Ok(out)
}

fn data_staging(ctx: &mut Ctx, node: &Node) -> Res<DataStaging> {
    let mut out = DataStaging {
        name: node.attr("name").map(str::to_owned),
        ..Default::default()
    };
    let mut file_name = None;
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &DATA_STAGING) {
        let Some(slot) = slot else {
            out.extensions.push(child.to_any());
            continue;
        };
        once.check(slot, child)?;
        match slot {
            "FileName" => file_name = Some(non_empty(ctx, child)?),
            "FilesystemName" => out.filesystem_name = Some(non_empty(ctx, child)?),
            "CreationFlag" => out.creation_flag = Some(enum_text(ctx, child)?),
            "DeleteOnTermination" => out.delete_on_termination = Some(boolean(ctx, child)?),
            "Source" => out.source = Some(staging_location(ctx, child)?),
            "Target" => out.target = Some(staging_location(ctx, child)?),
            other => unreachable!("DATA_STAGING lists {other} without a field"),
        }
    }
    out.file_name = file_name.ok_or_else(|| missing(node, ns::JSDL, "FileName"))?;
    if out.creation_flag.is_none() {
        return Err(missing(node, ns::JSDL, "CreationFlag"));
    }
    Ok(out)
}

fn staging_location(ctx: &mut Ctx, node: &Node) -> Res<StagingLocation> {
    let mut out = StagingLocation::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &SOURCE_TARGET) {
        match slot {
            Some(_) => {
                once.check("URI", child)?;
                out.uri = Some(non_empty(ctx, child)?);
            }
            None => out.extensions.push(child.to_any()),
        }
    }
    Ok(out)
}

fn instance_definition(ctx: &mut Ctx, node: &Node) -> Res<InstanceDefinition> {
    let mut description = None;
    let mut extensions = Vec::new();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &INSTANCE_DEFINITION) {
        match slot {
            Some(_) => {
                once.check("InstanceDescription", child)?;
                description = Some(instance_description(ctx, child)?);
            }
            None => extensions.push(child.to_any()),
        }
    }
    Ok(InstanceDefinition {
        description: description.ok_or_else(|| missing(node, ns::XSDL, "InstanceDescription"))?,
        extensions,
    })
}

fn instance_description(ctx: &mut Ctx, node: &Node) -> Res<InstanceDescription> {
    let mut content: Option<(InstanceContent, String, usize)> = None;
    let mut control = None;
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &INSTANCE_DESCRIPTION) {
        match slot {
            Some("Package") | Some("Instance") => {
                if let Some((_, other, other_line)) = &content {
                    return Err(JsdlError::Conflicting {
                        element: child.qname(),
                        line: child.line,
                        other: other.clone(),
                        other_line: *other_line,
                    });
                }
                let c = if slot == Some("Package") {
                    let (location, extensions) = location_holder(ctx, child)?;
                    InstanceContent::Package {
                        location,
                        extensions,
                    }
                } else {
                    InstanceContent::Instance(Box::new(instance(ctx, child)?))
                };
                content = Some((c, child.qname(), child.line));
            }
            Some(_) => {
                once.check("Control", child)?;
                control = Some(child.to_any());
            }
            None => {}
        }
    }
    let (content, _, _) = content.ok_or_else(|| missing(node, ns::XSDL, "Instance"))?;
    Ok(InstanceDescription { content, control })
}

/// Kernel / Initrd / Image / Package: a required `xsdl:Location` plus extensions.
fn location_holder(ctx: &mut Ctx, node: &Node) -> Res<(Location, Vec<AnyElement>)> {
    let mut location = None;
    let mut extensions = Vec::new();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &LOCATION_HOLDER) {
        match slot {
            Some(_) => {
                once.check("Location", child)?;
                location = Some(xsdl_location(ctx, child)?);
            }
            None => extensions.push(child.to_any()),
        }
    }
    let location = location.ok_or_else(|| missing(node, ns::XSDL, "Location"))?;
    Ok((location, extensions))
}

fn instance(ctx: &mut Ctx, node: &Node) -> Res<Instance> {
    let mut description = None;
    let mut kernel = None;
    let mut kernel_arguments = Vec::new();
    let mut initrd = None;
    let mut image = None;
    let mut image_fs_type = None;
    let mut extensions = Vec::new();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &INSTANCE) {
        let Some(slot) = slot else {
            extensions.push(child.to_any());
            continue;
        };
        once.check(slot, child)?;
        match slot {
            "Description" => description = Some(raw_text(ctx, child)),
            "Kernel" => {
                let mut location = None;
                let mut once_k = Once::default();
                for (s, c) in ctx.children(child, &KERNEL) {
                    match s {
                        Some("Location") => {
                            once_k.check("Location", c)?;
                            location = Some(xsdl_location(ctx, c)?);
                        }
                        Some(_) => kernel_arguments.push(normalized(ctx, c)),
                        // Kept on the Instance: the model has no per-kernel extensions.
                        None => extensions.push(c.to_any()),
                    }
                }
                kernel = Some(location.ok_or_else(|| missing(child, ns::XSDL, "Location"))?);
            }
            "Initrd" => {
                let (location, ext) = location_holder(ctx, child)?;
                extensions.extend(ext);
                initrd = Some(location);
            }
            "Image" => {
                if let Some(fs) = child.attr("fs-type") {
                    image_fs_type = Some(enum_value(child, fs)?);
                }
                let (location, ext) = location_holder(ctx, child)?;
                extensions.extend(ext);
                image = Some(location);
            }
            other => unreachable!("INSTANCE lists {other} without a field"),
        }
    }
    Ok(Instance {
        description,
        kernel: kernel.ok_or_else(|| missing(node, ns::XSDL, "Kernel"))?,
        kernel_arguments,
        initrd,
        image: image.ok_or_else(|| missing(node, ns::XSDL, "Image"))?,
        image_fs_type,
        extensions,
    })
}

fn xsdl_location(ctx: &mut Ctx, node: &Node) -> Res<Location> {
    let mut out = Location::default();
    let mut once = Once::default();
    for (slot, child) in ctx.children(node, &LOCATION) {
        let Some(slot) = slot else {
            out.extensions.push(child.to_any());
            continue;
        };
        once.check(slot, child)?;
        match slot {
            "URI" => out.uri = Some(non_empty(ctx, child)?),
            "Mode" => out.mode = Some(text(ctx, child)),
            "Hash" => {
                let algorithm = match child.attr("algorithm") {
                    Some(a) => enum_value(child, a)?,
                    None => {
                        return Err(JsdlError::MissingAttribute {
                            element: child.qname(),
                            line: child.line,
                            attribute: "algorithm",
                        })
                    }
                };
                let hex: String = raw_text(ctx, child)
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect::<String>()
                    .to_ascii_lowercase();
                if hex.is_empty()
                    || hex.len() & 1 == 1
                    || !hex.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(JsdlError::BadNumber {
                        element: child.qname(),
                        line: child.line,
                        value: hex,
                        expected: "a hexadecimal digest",
                    });
                }
                out.hash = Some(Hash { algorithm, hex });
            }
            "Compression" => {
                out.compression = Some(match child.attr("algorithm") {
                    Some(a) => enum_value(child, a)?,
                    None => {
                        return Err(JsdlError::MissingAttribute {
                            element: child.qname(),
                            line: child.line,
                            attribute: "algorithm",
                        })
                    }
                });
            }
            other => unreachable!("LOCATION lists {other} without a field"),
        }
    }
    Ok(out)
}
