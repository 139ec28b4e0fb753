//! Typed model of a JSDL 1.0 `JobDefinition` (GFD.56 core, POSIX, HPC Profile Application,
//! SPMD, the XenBEE `xsdl` VM-image extension and the vfarm extension).
//!
//! Units follow GFD.56: memory and disk in bytes, times in seconds, CPU speed in Hz,
//! network bandwidth in bits per second.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Namespace URIs.
pub mod ns {
    pub const JSDL: &str = "http://schemas.ggf.org/jsdl/2005/11/jsdl";
    pub const POSIX: &str = "http://schemas.ggf.org/jsdl/2005/11/jsdl-posix";
    /// HPC Profile Application as published (GFD.111).
    pub const HPCPA: &str = "http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa";
    /// The same HPC Profile Application namespace under the ogf.org domain, as some producers write it.
    pub const HPCPA_OGF: &str = "http://schemas.ogf.org/jsdl/2006/07/jsdl-hpcpa";
    pub const SPMD: &str = "http://schemas.ogf.org/jsdl/2007/02/jsdl-spmd";
    /// XenBEE VM-image ("instance") extension.
    pub const XSDL: &str = "http://www.example.com/schemas/xbe/2007/01/xsdl";
    /// vfarm's own extension: `<vfarm:Image>` and `<vfarm:Driver>`.
    pub const VFARM: &str = "urn:vfarm:jsdl:1";

    /// Conventional prefix for a known namespace (used in messages and by the writer).
    pub fn prefix(uri: &str) -> Option<&'static str> {
        Some(match uri {
            JSDL => "jsdl",
            POSIX => "jsdl-posix",
            HPCPA | HPCPA_OGF => "jsdl-hpcpa",
            SPMD => "jsdl-spmd",
            XSDL => "xsdl",
            VFARM => "vfarm",
            _ => return None,
        })
    }
}

/// A namespace-qualified element or attribute name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QName {
    /// `None` for names in no namespace.
    pub namespace: Option<String>,
    pub local: String,
}

impl QName {
    pub fn new(namespace: Option<&str>, local: &str) -> Self {
        QName {
            namespace: namespace.map(str::to_owned),
            local: local.to_owned(),
        }
    }
}

impl fmt::Display for QName {
    /// `jsdl:FileName` for known namespaces, `{uri}local` for others, `local` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            None => f.write_str(&self.local),
            Some(uri) => match ns::prefix(uri) {
                Some(p) => write!(f, "{p}:{}", self.local),
                None => write!(f, "{{{uri}}}{}", self.local),
            },
        }
    }
}

/// An element this model has no type for (a foreign extension), kept whole so that the writer
/// can emit it again. Whitespace-only text between child elements is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyElement {
    pub name: QName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AnyAttribute>,
    /// Direct text content, trimmed; `None` when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyAttribute {
    pub name: QName,
    pub value: String,
}

/// The enumerations of the schemas, spelled exactly as in XML.
pub trait XmlEnum: Sized + Copy {
    /// What the value is, for error messages.
    const KIND: &'static str;
    fn from_xml(s: &str) -> Option<Self>;
    fn suggest(s: &str) -> Option<&'static str>;
    fn as_str(self) -> &'static str;
}

macro_rules! xml_enum {
    ($(#[$m:meta])* $name:ident, $kind:literal {
        $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)?
    }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $( $(#[$vm])* #[serde(rename = $s)] $var ),+ }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The exact schema spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            /// Parses the exact (case-sensitive) schema spelling.
            pub fn from_xml(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$var),)+ _ => None }
            }

            /// A value whose spelling differs only in letter case, for "did you mean".
            pub fn suggest(s: &str) -> Option<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).find(|v| v.eq_ignore_ascii_case(s))
            }
        }

        impl XmlEnum for $name {
            const KIND: &'static str = $kind;
            fn from_xml(s: &str) -> Option<Self> { $name::from_xml(s) }
            fn suggest(s: &str) -> Option<&'static str> { $name::suggest(s) }
            fn as_str(self) -> &'static str { $name::as_str(self) }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

xml_enum!(
    /// `jsdl:OperatingSystemName` (CIM-derived; Linux is `LINUX`).
    #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
    OperatingSystemName, "OperatingSystemName" {
        Unknown => "Unknown", MACOS => "MACOS", ATTUNIX => "ATTUNIX", DGUX => "DGUX",
        DECNT => "DECNT", Tru64_UNIX => "Tru64_UNIX", OpenVMS => "OpenVMS", HPUX => "HPUX",
        AIX => "AIX", MVS => "MVS", OS400 => "OS400", OS_2 => "OS_2", JavaVM => "JavaVM",
        MSDOS => "MSDOS", WIN3x => "WIN3x", WIN95 => "WIN95", WIN98 => "WIN98", WINNT => "WINNT",
        WINCE => "WINCE", NCR3000 => "NCR3000", NetWare => "NetWare", OSF => "OSF",
        DC_OS => "DC_OS", Reliant_UNIX => "Reliant_UNIX", SCO_UnixWare => "SCO_UnixWare",
        SCO_OpenServer => "SCO_OpenServer", Sequent => "Sequent", IRIX => "IRIX",
        Solaris => "Solaris", SunOS => "SunOS", U6000 => "U6000", ASERIES => "ASERIES",
        TandemNSK => "TandemNSK", TandemNT => "TandemNT", BS2000 => "BS2000", LINUX => "LINUX",
        Lynx => "Lynx", XENIX => "XENIX", VM => "VM", Interactive_UNIX => "Interactive_UNIX",
        BSDUNIX => "BSDUNIX", FreeBSD => "FreeBSD", NetBSD => "NetBSD", GNU_Hurd => "GNU_Hurd",
        OS9 => "OS9", MACH_Kernel => "MACH_Kernel", Inferno => "Inferno", QNX => "QNX",
        EPOC => "EPOC", IxWorks => "IxWorks", VxWorks => "VxWorks", MiNT => "MiNT",
        BeOS => "BeOS", HP_MPE => "HP_MPE", NextStep => "NextStep", PalmPilot => "PalmPilot",
        Rhapsody => "Rhapsody", Windows_2000 => "Windows_2000", Dedicated => "Dedicated",
        OS_390 => "OS_390", VSE => "VSE", TPF => "TPF", Windows_R_Me => "Windows_R_Me",
        Caldera_Open_UNIX => "Caldera_Open_UNIX", OpenBSD => "OpenBSD",
        Not_Applicable => "Not_Applicable", Windows_XP => "Windows_XP", z_OS => "z_OS",
        Other => "other",
    }
);

xml_enum!(
    /// `jsdl:CPUArchitectureName`.
    #[allow(non_camel_case_types)]
    CpuArchitectureName, "CPUArchitectureName" {
        Sparc => "sparc", Powerpc => "powerpc", X86 => "x86", X86_32 => "x86_32",
        X86_64 => "x86_64", Parisc => "parisc", Mips => "mips", Ia64 => "ia64", Arm => "arm",
        Other => "other",
    }
);

xml_enum!(
    /// `jsdl:FileSystemType`.
    FileSystemType, "FileSystemType" {
        Swap => "swap", Temporary => "temporary", Spool => "spool", Normal => "normal",
    }
);

xml_enum!(
    /// `jsdl:CreationFlag`: what to do when the staged file already exists.
    CreationFlag, "CreationFlag" {
        Overwrite => "overwrite", Append => "append", DontOverwrite => "dontOverwrite",
    }
);

xml_enum!(
    /// `xsdl:Hash/@algorithm`.
    HashAlgorithm, "hash algorithm" {
        Md5 => "md5", Sha1 => "sha1", Sha224 => "sha224", Sha256 => "sha256",
        Sha384 => "sha384", Sha512 => "sha512",
    }
);

xml_enum!(
    /// `xsdl:Compression/@algorithm`.
    CompressionType, "compression algorithm" {
        Bzip2 => "bzip2", Gzip => "gzip", Tbz => "tbz", Tgz => "tgz",
    }
);

xml_enum!(
    /// `xsdl:Image/@fs-type`.
    ImageFsType, "image fs-type" { Ext2 => "ext2", Ext3 => "ext3" }
);

xml_enum!(
    /// `vfarm:Driver`: how vfarm should run the job's environment (`Any` when not given).
    #[derive(Default)]
    Driver, "vfarm Driver (oci, qemu, any)" {
        Oci => "oci",
        Qemu => "qemu",
        #[default]
        Any => "any",
    }
);

/// The root `jsdl:JobDefinition`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobDefinition {
    /// `@id`.
    pub id: Option<String>,
    pub description: JobDescription,
    /// Foreign elements after JobDescription.
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobDescription {
    pub identification: Option<JobIdentification>,
    pub application: Option<Application>,
    pub resources: Option<Resources>,
    pub data_staging: Vec<DataStaging>,
    /// `vfarm:Image` / `vfarm:Driver` given directly inside JobDescription.
    pub vfarm: VfarmExtension,
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobIdentification {
    pub job_name: Option<String>,
    pub description: Option<String>,
    pub annotations: Vec<String>,
    pub projects: Vec<String>,
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Application {
    pub name: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    /// The POSIX / HPC Profile / SPMD application; or, when none of those is present, the first
    /// foreign element (e.g. a site-specific MPI application), recorded whole.
    pub body: Option<ApplicationBody>,
    /// Further foreign elements.
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApplicationBody {
    Posix(PosixApplication),
    HpcProfile(HpcProfileApplication),
    Spmd(SpmdApplication),
    /// An application element of a namespace this crate does not know; `name` says which.
    Foreign(AnyElement),
}

/// A path (or argument) with the optional `@filesystemName` that makes it relative to a
/// `Resources/FileSystem`'s mount point.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FileRef {
    pub value: String,
    pub filesystem_name: Option<String>,
}

impl FileRef {
    pub fn new(value: &str) -> Self {
        FileRef {
            value: value.to_owned(),
            filesystem_name: None,
        }
    }
}

/// `Environment` (`@name` required; value is the text, possibly empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    pub filesystem_name: Option<String>,
}

/// `jsdl-posix:POSIXApplication`. Limits are `xsd:nonNegativeInteger`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PosixApplication {
    pub name: Option<String>,
    pub executable: Option<FileRef>,
    pub arguments: Vec<FileRef>,
    pub input: Option<FileRef>,
    pub output: Option<FileRef>,
    pub error: Option<FileRef>,
    pub working_directory: Option<FileRef>,
    pub environment: Vec<EnvVar>,
    /// Seconds.
    pub wall_time_limit: Option<u64>,
    /// Bytes.
    pub file_size_limit: Option<u64>,
    /// Bytes.
    pub core_dump_limit: Option<u64>,
    /// Bytes.
    pub data_segment_limit: Option<u64>,
    /// Bytes.
    pub locked_memory_limit: Option<u64>,
    /// Bytes.
    pub memory_limit: Option<u64>,
    pub open_descriptors_limit: Option<u64>,
    /// Bytes.
    pub pipe_size_limit: Option<u64>,
    /// Bytes.
    pub stack_size_limit: Option<u64>,
    /// Seconds.
    pub cpu_time_limit: Option<u64>,
    pub process_count_limit: Option<u64>,
    /// Bytes.
    pub virtual_memory_limit: Option<u64>,
    pub thread_count_limit: Option<u64>,
    pub user_name: Option<String>,
    pub group_name: Option<String>,
    /// Foreign elements (the schema allows none here; each also produced a warning).
    pub extensions: Vec<AnyElement>,
}

/// Which of the two HPC Profile Application namespaces a document used (kept so the writer
/// can reproduce it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HpcpaNamespace {
    /// `http://schemas.ggf.org/jsdl/2006/07/jsdl-hpcpa`
    #[default]
    Ggf,
    /// `http://schemas.ogf.org/jsdl/2006/07/jsdl-hpcpa`
    Ogf,
}

impl HpcpaNamespace {
    pub fn uri(self) -> &'static str {
        match self {
            HpcpaNamespace::Ggf => ns::HPCPA,
            HpcpaNamespace::Ogf => ns::HPCPA_OGF,
        }
    }
}

/// `jsdl-hpcpa:HPCProfileApplication` (no filesystemName attributes, no limits).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HpcProfileApplication {
    pub namespace: HpcpaNamespace,
    pub name: Option<String>,
    pub executable: Option<String>,
    pub arguments: Vec<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub working_directory: Option<String>,
    pub environment: Vec<EnvVar>,
    pub user_name: Option<String>,
    pub extensions: Vec<AnyElement>,
}

/// `jsdl-spmd:SPMDApplication`: the POSIX subset (elements in the jsdl-posix namespace) plus
/// process layout and the required MPI variation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SpmdApplication {
    pub name: Option<String>,
    pub executable: Option<FileRef>,
    pub arguments: Vec<FileRef>,
    pub input: Option<FileRef>,
    pub output: Option<FileRef>,
    pub error: Option<FileRef>,
    pub working_directory: Option<FileRef>,
    pub environment: Vec<EnvVar>,
    pub user_name: Option<String>,
    pub number_of_processes: Option<ProcessCount>,
    pub processes_per_host: Option<u64>,
    pub threads_per_process: Option<ProcessCount>,
    /// e.g. `http://www.ogf.org/jsdl/2007/02/jsdl-spmd/OpenMPI`.
    pub spmd_variation: String,
    pub extensions: Vec<AnyElement>,
}

/// `NumberOfProcesses` / `ThreadsPerProcess`: an optional count plus a flag saying "use the
/// actual CPU count" (`@actualtotalcpucount` / `@actualindividualcpucount`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessCount {
    pub value: Option<u64>,
    pub actual_cpu_count: Option<bool>,
}

/// `jsdl:Resources`. Range-valued requirements use [`RangeValue`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// `CandidateHosts/HostName+`; `None` when CandidateHosts is absent.
    pub candidate_hosts: Option<Vec<String>>,
    pub file_systems: Vec<FileSystem>,
    pub exclusive_execution: Option<bool>,
    pub operating_system: Option<OperatingSystem>,
    pub cpu_architecture: Option<CpuArchitectureName>,
    /// Hz.
    pub individual_cpu_speed: Option<RangeValue>,
    /// Seconds.
    pub individual_cpu_time: Option<RangeValue>,
    pub individual_cpu_count: Option<RangeValue>,
    /// Bits per second.
    pub individual_network_bandwidth: Option<RangeValue>,
    /// Bytes.
    pub individual_physical_memory: Option<RangeValue>,
    /// Bytes.
    pub individual_virtual_memory: Option<RangeValue>,
    /// Bytes.
    pub individual_disk_space: Option<RangeValue>,
    /// Seconds.
    pub total_cpu_time: Option<RangeValue>,
    pub total_cpu_count: Option<RangeValue>,
    /// Bytes.
    pub total_physical_memory: Option<RangeValue>,
    /// Bytes.
    pub total_virtual_memory: Option<RangeValue>,
    /// Bytes.
    pub total_disk_space: Option<RangeValue>,
    pub total_resource_count: Option<RangeValue>,
    /// XenBEE `xsdl:InstanceDefinition`: the VM kernel/initrd/image to boot.
    pub instance_definition: Option<InstanceDefinition>,
    /// `vfarm:Image` / `vfarm:Driver` given inside Resources.
    pub vfarm: VfarmExtension,
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FileSystem {
    /// `@name` (required), referenced by `filesystemName` attributes and `FilesystemName`.
    pub name: String,
    pub fs_type: Option<FileSystemType>,
    pub description: Option<String>,
    /// `MountSource` from the GFD.136 errata (e.g. `server:/export`).
    pub mount_source: Option<String>,
    pub mount_point: Option<String>,
    /// Bytes.
    pub disk_space: Option<RangeValue>,
    pub extensions: Vec<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OperatingSystem {
    /// `OperatingSystemType/OperatingSystemName`.
    pub name: Option<OperatingSystemName>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub extensions: Vec<AnyElement>,
}

/// One bound of a range; `exclusive` is `@exclusiveBound` (absent = inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    pub value: f64,
    #[serde(default)]
    pub exclusive: bool,
}

impl Bound {
    pub fn inclusive(value: f64) -> Self {
        Bound {
            value,
            exclusive: false,
        }
    }
}

/// `Exact` with optional `@epsilon` (absent = 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Exact {
    pub value: f64,
    pub epsilon: Option<f64>,
}

/// `Range`: both bounds are required.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub lower: Bound,
    pub upper: Bound,
}

/// `jsdl:RangeValue_Type`. The parts are alternatives: a value satisfies the range when it
/// satisfies any one of them (their union).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RangeValue {
    /// `UpperBoundedRange`: value ≤ bound (< when exclusive).
    pub upper_bounded: Option<Bound>,
    /// `LowerBoundedRange`: value ≥ bound (> when exclusive).
    pub lower_bounded: Option<Bound>,
    pub exact: Vec<Exact>,
    pub ranges: Vec<Range>,
}

fn above(x: f64, b: Bound) -> bool {
    if b.exclusive {
        x > b.value
    } else {
        x >= b.value
    }
}

fn below(x: f64, b: Bound) -> bool {
    if b.exclusive {
        x < b.value
    } else {
        x <= b.value
    }
}

impl RangeValue {
    /// A range holding one `Exact` value.
    pub fn exact(value: f64) -> Self {
        RangeValue {
            exact: vec![Exact {
                value,
                epsilon: None,
            }],
            ..Default::default()
        }
    }

    /// A range holding only a `LowerBoundedRange`.
    pub fn at_least(value: f64) -> Self {
        RangeValue {
            lower_bounded: Some(Bound::inclusive(value)),
            ..Default::default()
        }
    }

    /// True when no part is given (the schema allows it; such a range admits nothing).
    pub fn is_empty(&self) -> bool {
        self.upper_bounded.is_none()
            && self.lower_bounded.is_none()
            && self.exact.is_empty()
            && self.ranges.is_empty()
    }

    /// Whether `x` satisfies the range: the union of its parts, honouring exclusive bounds
    /// and `Exact/@epsilon` (|x − v| ≤ ε). NaN matches nothing.
    pub fn matches(&self, x: f64) -> bool {
        if x.is_nan() {
            return false;
        }
        self.upper_bounded.is_some_and(|b| below(x, b))
            || self.lower_bounded.is_some_and(|b| above(x, b))
            || self
                .exact
                .iter()
                .any(|e| (x - e.value).abs() <= e.epsilon.unwrap_or(0.0).abs())
            || self
                .ranges
                .iter()
                .any(|r| above(x, r.lower) && below(x, r.upper))
    }

    /// The whole-number amount a scheduler should allocate for this requirement (CPUs, bytes,
    /// seconds): the smallest non-negative integer admitted by an `Exact`, `Range` or
    /// `LowerBoundedRange` part; failing those, the largest admitted by `UpperBoundedRange`
    /// (an "at most" requirement is met most generously by its bound). `None` when the range
    /// admits no non-negative integer.
    pub fn allocation(&self) -> Option<u64> {
        let mut candidates: Vec<f64> = Vec::new();
        for e in &self.exact {
            let eps = e.epsilon.unwrap_or(0.0).abs();
            candidates.push((e.value - eps).ceil());
        }
        for r in &self.ranges {
            candidates.push(first_above(r.lower));
        }
        if let Some(b) = self.lower_bounded {
            candidates.push(first_above(b));
        }
        let smallest = candidates
            .into_iter()
            .map(|c| c.max(0.0))
            .filter(|&c| c.is_finite() && self.matches(c))
            .fold(None, |acc: Option<f64>, c| {
                Some(acc.map_or(c, |a| a.min(c)))
            });
        if let Some(c) = smallest {
            return Some(c as u64);
        }
        let b = self.upper_bounded?;
        let mut c = b.value.floor();
        if b.exclusive && c == b.value {
            c -= 1.0;
        }
        (c.is_finite() && c >= 0.0).then_some(c as u64)
    }
}

/// Smallest integer satisfying a lower bound.
fn first_above(b: Bound) -> f64 {
    let c = b.value.ceil();
    if b.exclusive && c == b.value {
        c + 1.0
    } else {
        c
    }
}

/// `jsdl:DataStaging`: a file to fetch before the job (`source`) and/or to deliver after it
/// (`target`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DataStaging {
    /// `@name`.
    pub name: Option<String>,
    /// Path relative to the working directory, or to `filesystem_name`'s mount point.
    pub file_name: String,
    pub filesystem_name: Option<String>,
    pub creation_flag: Option<CreationFlag>,
    /// Absent in the document means the schema default is unspecified; see
    /// [`DataStaging::delete_on_termination_or_default`].
    pub delete_on_termination: Option<bool>,
    pub source: Option<StagingLocation>,
    pub target: Option<StagingLocation>,
    pub extensions: Vec<AnyElement>,
}

impl DataStaging {
    /// `DeleteOnTermination` with absence read as `true`, the common reading among JSDL
    /// consumers (the schema gives no default).
    pub fn delete_on_termination_or_default(&self) -> bool {
        self.delete_on_termination.unwrap_or(true)
    }

    /// The creation flag; always `Some` after parsing (the schema requires it), `Overwrite`
    /// for hand-built values that leave it out.
    pub fn creation_flag_or_default(&self) -> CreationFlag {
        self.creation_flag.unwrap_or(CreationFlag::Overwrite)
    }
}

/// `Source` / `Target`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StagingLocation {
    pub uri: Option<String>,
    /// Foreign elements, e.g. an `xsdl:Hash` or HPC-profile credentials.
    pub extensions: Vec<AnyElement>,
}

/// The vfarm extension (`urn:vfarm:jsdl:1`): name the image to run in directly instead of
/// routing by OperatingSystem/CPUArchitecture.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VfarmExtension {
    /// `vfarm:Image`: an image reference vfarm understands (name, name:tag or digest).
    pub image: Option<String>,
    /// `vfarm:Driver`.
    pub driver: Option<Driver>,
}

impl VfarmExtension {
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.driver.is_none()
    }
}

/// XenBEE `xsdl:InstanceDefinition`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDefinition {
    pub description: InstanceDescription,
    pub extensions: Vec<AnyElement>,
}

/// `xsdl:InstanceDescription`: either a boot triple or a packaged instance, plus optional
/// set-up/tear-down scripts (kept unparsed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDescription {
    pub content: InstanceContent,
    /// `xsdl:Control`, recorded whole.
    pub control: Option<AnyElement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InstanceContent {
    Instance(Box<Instance>),
    /// `xsdl:Package`: a tar archive holding the instance.
    Package {
        location: Location,
        extensions: Vec<AnyElement>,
    },
}

/// `xsdl:Instance`: kernel, optional initrd and the root filesystem image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub description: Option<String>,
    pub kernel: Location,
    /// `xsdl:Kernel/xsdl:Argument` (kernel command-line entries).
    pub kernel_arguments: Vec<String>,
    pub initrd: Option<Location>,
    pub image: Location,
    pub image_fs_type: Option<ImageFsType>,
    pub extensions: Vec<AnyElement>,
}

/// `xsdl:Location`: where to fetch a file and how to check it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Location {
    pub uri: Option<String>,
    /// Octal file mode, e.g. `0644`.
    pub mode: Option<String>,
    pub hash: Option<Hash>,
    pub compression: Option<CompressionType>,
    pub extensions: Vec<AnyElement>,
}

/// `xsdl:Hash`: hex digest (lower-cased, whitespace removed) and its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    pub algorithm: HashAlgorithm,
    pub hex: String,
}
