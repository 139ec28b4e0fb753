//! Image specs: the declarative recipe an image is built from.
//!
//! A spec has two parts. The *content* (distro, suite, arch, variant, groups, packages, boot
//! profile) decides what is inside the filesystem; its canonical JSON form hashed with SHA-256
//! is the image id. The *outputs* (formats, disk size) are representations of that content: a
//! second request for the same content with another format adds an artifact to the existing
//! image instead of making a new one. `name` is an alias, never part of the identity.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::groups;
use crate::size::{parse_size, ByteSize};

/// Why a spec was refused. Each variant names the field and the bad value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unknown {field} `{value}` (known: {known})")]
    Unknown {
        field: &'static str,
        value: String,
        known: String,
    },
    #[error("invalid {field} `{value}`: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("spec file: {0}")]
    File(String),
}

impl SpecError {
    /// The field the error is about, for API error bodies.
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Unknown { field, .. } | SpecError::Invalid { field, .. } => field,
            SpecError::File(_) => "spec",
        }
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, SpecError> {
                let lower = s.trim().to_ascii_lowercase();
                $(if lower == $text { return Ok($name::$variant); })+
                Err(SpecError::Unknown {
                    field: $field,
                    value: s.to_string(),
                    known: [$($text),+].join(", "),
                })
            }
        }
        impl TryFrom<String> for $name {
            type Error = SpecError;
            fn try_from(s: String) -> Result<Self, SpecError> { s.parse() }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String { v.as_str().to_string() }
        }
    };
}

string_enum!(
    /// Which distribution (and so which builder) the image comes from.
    Distro, "distro" { Debian => "debian", Ubuntu => "ubuntu", Almalinux => "almalinux", Rocky => "rocky", CentosStream => "centos-stream", Fedora => "fedora" }
);

/// How a distribution is bootstrapped and takes packages: apt (mmdebstrap) or dnf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Apt,
    Dnf,
}

impl Distro {
    pub fn family(self) -> Family {
        match self {
            Distro::Debian | Distro::Ubuntu => Family::Apt,
            Distro::Almalinux | Distro::Rocky | Distro::CentosStream | Distro::Fedora => {
                Family::Dnf
            }
        }
    }
    /// The releases the builder knows (`suite` in the spec). Anything else is refused before
    /// a bootstrap starts.
    pub fn releases(self) -> &'static [&'static str] {
        match self {
            Distro::Debian => SUITES,
            Distro::Ubuntu => &["focal", "jammy", "noble", "oracular", "plucky", "questing"],
            Distro::Almalinux | Distro::Rocky => &["8", "9", "10"],
            Distro::CentosStream => &["9", "10"],
            Distro::Fedora => &["41", "42", "43"],
        }
    }
    pub fn default_release(self) -> &'static str {
        match self {
            Distro::Debian => "bookworm",
            Distro::Ubuntu => "noble",
            Distro::Almalinux | Distro::Rocky | Distro::CentosStream => "9",
            Distro::Fedora => "42",
        }
    }
    /// Kernel package for `--boot vm` (None: this distribution does not boot as a VM yet).
    pub fn kernel_package(self, arch: Arch) -> Option<&'static str> {
        match self {
            Distro::Debian => arch.kernel_package(),
            Distro::Ubuntu => {
                matches!(arch, Arch::Amd64 | Arch::Arm64).then_some("linux-image-virtual")
            }
            _ => None,
        }
    }
}
string_enum!(
    /// Debian architectures. Only those the host can execute without emulation build here;
    /// the builder says which (see `Arch::runs_on_x86_64`).
    Arch, "arch" { Amd64 => "amd64", I386 => "i386", Arm64 => "arm64", Armhf => "armhf", Ppc64el => "ppc64el", S390x => "s390x", Riscv64 => "riscv64" }
);
string_enum!(
    /// mmdebstrap variants (the package set bootstrapped before groups and packages).
    Variant, "variant" { Extract => "extract", Custom => "custom", Essential => "essential", Apt => "apt", Minbase => "minbase", Buildd => "buildd", Required => "required", Important => "important", Standard => "standard" }
);
string_enum!(
    /// Output formats of an image.
    Format, "format" { Tar => "tar", Raw => "raw", Qcow2 => "qcow2", Vmdk => "vmdk", Vdi => "vdi" }
);
string_enum!(
    /// What the image needs to boot. `vm` adds a kernel, an initramfs that mounts a virtio
    /// root disk, and the QEMU guest agent.
    Boot, "boot" { None => "none", Vm => "vm" }
);

impl Arch {
    /// The host architecture name as Debian spells it (this build's target).
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "x86" => Some(Arch::I386),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
    /// Whether an x86_64 kernel runs this architecture's binaries natively.
    pub fn native_on(self, host: Arch) -> bool {
        self == host || (host == Arch::Amd64 && self == Arch::I386)
    }
    /// The architecture as RPM spells it (dnf's `basearch`); None where EL has no port.
    pub fn rpm_name(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => Some("x86_64"),
            Arch::Arm64 => Some("aarch64"),
            Arch::Ppc64el => Some("ppc64le"),
            Arch::S390x => Some("s390x"),
            _ => None,
        }
    }
    /// Kernel package for `--boot vm` of a Debian image.
    pub fn kernel_package(self) -> Option<&'static str> {
        match self {
            Arch::Amd64 => Some("linux-image-cloud-amd64"),
            Arch::I386 => Some("linux-image-686"),
            Arch::Arm64 => Some("linux-image-cloud-arm64"),
            _ => None,
        }
    }
}

impl Format {
    /// Disk formats need a filesystem size; `tar` does not.
    pub fn is_disk(self) -> bool {
        !matches!(self, Format::Tar)
    }
    /// File name of the artifact inside the image directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Tar => "rootfs.tar",
            Format::Raw => "disk.raw",
            Format::Qcow2 => "disk.qcow2",
            Format::Vmdk => "disk.vmdk",
            Format::Vdi => "disk.vdi",
        }
    }
}

/// Debian suites the builder knows. Anything else is refused before a bootstrap starts.
pub const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "sid",
    "unstable",
    "testing",
    "stable",
    "oldstable",
];

/// Disk sizes outside this range are refused: below it no Debian root filesystem fits, above
/// it is almost certainly a typo (sizes are sparse, but e2fsck and conversions still scan).
pub const MIN_DISK: u64 = 64 << 20;
pub const MAX_DISK: u64 = 2 << 40;

/// What the user asked for: flags or a TOML file, before validation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpecRequest {
    pub name: Option<String>,
    pub distro: Option<String>,
    pub suite: Option<String>,
    pub arch: Option<String>,
    pub variant: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub formats: Vec<String>,
    pub size: Option<String>,
    pub boot: Option<String>,
    /// The site's own package repositories, added to the distribution's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<RepoRequest>,
}

/// A package repository as the user names it: apt takes `url`, `suite` (default: the
/// image's) and `components` (default `main`); dnf takes `baseurl` (or `url`). `key` is the
/// ASCII-armored OpenPGP public key the repository is signed with (the CLI reads a file
/// path given here; the service takes the key itself).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoRequest {
    pub name: Option<String>,
    pub url: Option<String>,
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    pub baseurl: Option<String>,
    pub key: Option<String>,
}

/// A validated repository of a spec. Part of the image id (the key by its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub name: String,
    /// apt: the archive root; dnf: the baseurl.
    pub url: String,
    /// apt only: suite and components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// The armored public key.
    pub key: String,
}

const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
const ARMOR_END: &str = "-----END PGP PUBLIC KEY BLOCK-----";

/// Whether `text` is an ASCII-armored OpenPGP public key block (as opposed to a path).
pub fn is_armored_key(text: &str) -> bool {
    text.trim_start().starts_with(ARMOR_BEGIN)
}

impl Repository {
    /// SHA-256 of the key text with line ends normalised: the key's part of the image id.
    pub fn key_sha256(&self) -> String {
        let norm: String = self
            .key
            .trim()
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        hex::encode(Sha256::digest(norm.as_bytes()))
    }
}

impl RepoRequest {
    fn resolve(&self, family: Family, image_suite: &str) -> Result<Repository, SpecError> {
        let name = self.name.clone().unwrap_or_default();
        let bad = |field: &'static str, value: &str, reason: String| SpecError::Invalid {
            field,
            value: value.to_string(),
            reason: format!("repository `{name}`: {reason}"),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !name_ok {
            return Err(SpecError::Invalid {
                field: "repository.name",
                value: name.clone(),
                reason: "every repository needs a name of 1-64 characters from a-z 0-9 . _ - (it names its files in the image)".into(),
            });
        }
        let url = match (family, &self.url, &self.baseurl) {
            (Family::Apt, _, Some(b)) => {
                return Err(bad(
                    "repository.baseurl",
                    b,
                    "apt repositories take `url`, `suite` and `components`, not `baseurl`".into(),
                ))
            }
            (Family::Dnf, Some(_), Some(b)) => {
                return Err(bad(
                    "repository.baseurl",
                    b,
                    "give `baseurl` or `url`, not both".into(),
                ))
            }
            (_, _, Some(u)) | (_, Some(u), None) => u.trim().to_string(),
            (_, None, None) => {
                return Err(bad(
                    "repository.url",
                    "",
                    "missing: give the repository's URL".into(),
                ))
            }
        };
        // The URL lands in a sources.list line or a .repo file: nothing that could end or
        // extend that line. file:// is refused because a service would read its own host.
        let url_ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() > "https://".len()
            && !url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "[]\"'\\".contains(c));
        if !url_ok {
            return Err(bad(
                "repository.url",
                &url,
                "must be an http:// or https:// URL without spaces, quotes or brackets".into(),
            ));
        }
        let word_ok = |w: &str, slash: bool| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || (slash && c == '/'))
        };
        let (suite, components) = match family {
            Family::Apt => {
                let suite = self
                    .suite
                    .clone()
                    .unwrap_or_else(|| image_suite.to_string());
                if !word_ok(&suite, true) {
                    return Err(bad(
                        "repository.suite",
                        &suite,
                        "letters, digits and . _ - / only".into(),
                    ));
                }
                let mut components = self.components.clone();
                if components.is_empty() {
                    components.push("main".into());
                }
                for c in &components {
                    if !word_ok(c, false) {
                        return Err(bad(
                            "repository.components",
                            c,
                            "letters, digits and . _ - only".into(),
                        ));
                    }
                }
                (Some(suite), components)
            }
            Family::Dnf => {
                if let Some(s) = &self.suite {
                    return Err(bad(
                        "repository.suite",
                        s,
                        "dnf repositories take a `baseurl` only".into(),
                    ));
                }
                if let Some(c) = self.components.first() {
                    return Err(bad(
                        "repository.components",
                        c,
                        "dnf repositories take a `baseurl` only".into(),
                    ));
                }
                (None, Vec::new())
            }
        };
        let key = match &self.key {
            None => {
                return Err(bad("repository.key", "", "missing: every repository needs the armored public key it is signed with (unsigned repositories are refused)".into()))
            }
            Some(k) => k.trim().to_string(),
        };
        let armored = is_armored_key(&key) && key.ends_with(ARMOR_END);
        if !armored || !key.is_ascii() {
            let shown: String = key.chars().take(40).collect();
            return Err(bad("repository.key", &shown, "not an ASCII-armored OpenPGP public key block (`gpg --armor --export`); the CLI reads a file path given here".into()));
        }
        Ok(Repository {
            name,
            url,
            suite,
            components,
            key,
        })
    }
}

impl SpecRequest {
    /// Parse a TOML spec file. Unknown keys are refused, naming the key.
    pub fn from_toml(text: &str) -> Result<SpecRequest, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::File(e.message().to_string()))
    }

    /// Fill unset fields from `other` (flags override a file) and append lists.
    pub fn merge(mut self, other: SpecRequest) -> SpecRequest {
        macro_rules! take {
            ($($f:ident),*) => { $(if other.$f.is_some() { self.$f = other.$f; })* };
        }
        take!(name, distro, suite, arch, variant, size, boot);
        self.groups.extend(other.groups);
        self.repositories.extend(other.repositories);
        self.packages.extend(other.packages);
        self.formats.extend(other.formats);
        self
    }

    /// Validate and normalise into a [`ImageSpec`] plus its outputs.
    pub fn resolve(&self) -> Result<BuildRequest, SpecError> {
        let distro: Distro = self.distro.as_deref().unwrap_or("debian").parse()?;
        let family = distro.family();
        let suite = self
            .suite
            .as_deref()
            .unwrap_or(distro.default_release())
            .trim()
            .to_ascii_lowercase();
        if !distro.releases().contains(&suite.as_str()) {
            return Err(SpecError::Unknown {
                field: "suite",
                value: self.suite.clone().unwrap_or_default(),
                known: format!("{distro} releases: {}", distro.releases().join(", ")),
            });
        }
        let arch: Arch = match self.arch.as_deref() {
            Some(a) => a.parse()?,
            None => Arch::host().unwrap_or(Arch::Amd64),
        };
        if family == Family::Dnf && arch.rpm_name().is_none() {
            return Err(SpecError::Invalid {
                field: "arch",
                value: arch.to_string(),
                reason: format!("{distro} has no port for it (amd64, arm64, ppc64el, s390x)"),
            });
        }
        let variant: Variant = self.variant.as_deref().unwrap_or("minbase").parse()?;
        if family == Family::Dnf && variant != Variant::Minbase {
            return Err(SpecError::Invalid {
                field: "variant",
                value: variant.to_string(),
                reason: format!("{distro} images bootstrap the `core` comps group: only minbase applies; add groups for more"),
            });
        }
        let boot: Boot = self.boot.as_deref().unwrap_or("none").parse()?;
        if boot == Boot::Vm && distro.kernel_package(arch).is_none() {
            return Err(SpecError::Invalid {
                field: "boot",
                value: "vm".into(),
                reason: format!("no kernel package is known for {distro} on {arch} (debian and ubuntu images boot as VMs)"),
            });
        }

        let mut group_set = BTreeSet::new();
        for g in &self.groups {
            let g = g.trim().to_ascii_lowercase();
            if groups::lookup_in(family, &g).is_none() {
                return Err(SpecError::Unknown {
                    field: "group",
                    value: g,
                    known: format!("{distro} groups: {}", groups::names_in(family).join(", ")),
                });
            }
            group_set.insert(g);
        }
        let mut packages = BTreeSet::new();
        for p in &self.packages {
            let p = p.trim();
            match family {
                Family::Apt => validate_package_name(p)?,
                Family::Dnf => validate_rpm_name(p)?,
            }
            packages.insert(p.to_string());
        }
        let mut repositories: Vec<Repository> = Vec::new();
        for r in &self.repositories {
            let repo = r.resolve(family, &suite)?;
            if repositories.iter().any(|o| o.name == repo.name) {
                return Err(SpecError::Invalid {
                    field: "repository.name",
                    value: repo.name,
                    reason: "two repositories of one spec share this name".into(),
                });
            }
            repositories.push(repo);
        }
        repositories.sort_by(|a, b| a.name.cmp(&b.name));

        let mut formats = BTreeSet::new();
        for f in &self.formats {
            formats.insert(f.parse::<Format>()?);
        }
        if formats.is_empty() {
            formats.insert(Format::Tar);
        }
        let size = match &self.size {
            Some(s) => {
                let bytes = parse_size(s).map_err(|reason| SpecError::Invalid {
                    field: "size",
                    value: s.clone(),
                    reason,
                })?;
                if !(MIN_DISK..=MAX_DISK).contains(&bytes) {
                    return Err(SpecError::Invalid {
                        field: "size",
                        value: s.clone(),
                        reason: format!(
                            "must be between {} and {}",
                            ByteSize(MIN_DISK),
                            ByteSize(MAX_DISK)
                        ),
                    });
                }
                Some(bytes)
            }
            None => None,
        };
        if let Some(name) = &self.name {
            validate_image_name(name)?;
        }
        Ok(BuildRequest {
            spec: ImageSpec {
                distro,
                suite,
                arch,
                variant,
                groups: group_set,
                packages,
                boot,
                repositories,
            },
            formats,
            disk_size: size,
            name: self.name.clone().filter(|n| !n.is_empty()),
        })
    }
}

/// Debian policy: lowercase letters, digits, `+ - .`, at least two characters, starting
/// alphanumeric. An optional `:arch` suffix and `=version` are allowed as apt takes them
/// (`name[:arch][=version]`); each part is checked in full, since the whole string reaches
/// apt's command line.
pub fn validate_package_name(p: &str) -> Result<(), SpecError> {
    let refuse = |reason: &str| SpecError::Invalid {
        field: "package",
        value: p.to_string(),
        reason: reason.into(),
    };
    let (rest, version) = match p.split_once('=') {
        Some((r, v)) => (r, Some(v)),
        None => (p, None),
    };
    let (base, arch) = match rest.split_once(':') {
        Some((b, a)) => (b, Some(a)),
        None => (rest, None),
    };
    let ok = base.len() >= 2
        && base
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && base
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !ok {
        return Err(refuse(
            "not a Debian package name (lowercase letters, digits, + - .)",
        ));
    }
    if let Some(a) = arch {
        let ok = !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(refuse(
                "the architecture after `:` must be lowercase letters, digits and -",
            ));
        }
    }
    if let Some(v) = version {
        // Debian policy 5.6.12: [epoch:]upstream[-revision], alphanumerics and . + ~ - :
        let ok = v.starts_with(|c: char| c.is_ascii_digit())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c));
        if !ok {
            return Err(refuse(
                "the version after `=` must start with a digit and use letters, digits and . + ~ - :",
            ));
        }
    }
    Ok(())
}

/// An OS-Farm `class` (`bookworm`, `noble`, `almalinux9`, `rocky-8`, `centos-stream9`,
/// `fedora42`) as (distro, release). A class no distribution claims comes back as a Debian
/// suite, for `resolve` to refuse naming the suite.
pub fn osfarm_class(class: &str) -> (Distro, String) {
    let class = class.trim().to_ascii_lowercase();
    for d in Distro::ALL {
        if d.family() == Family::Apt && d.releases().contains(&class.as_str()) {
            return (*d, class);
        }
    }
    // Longest names first: `centos-stream9` is not a `centos…` of some other distribution.
    let mut dnf: Vec<Distro> = Distro::ALL
        .iter()
        .copied()
        .filter(|d| d.family() == Family::Dnf)
        .collect();
    dnf.sort_by_key(|d| std::cmp::Reverse(d.as_str().len()));
    for d in dnf {
        if let Some(rest) = class.strip_prefix(d.as_str()) {
            let release = rest.trim_start_matches('-');
            if !release.is_empty() {
                return (d, release.to_string());
            }
        }
    }
    (Distro::Debian, class)
}

/// RPM package names (with an optional version, `name-1.0-1.el9`): letters (either case),
/// digits and `. _ + -`, starting alphanumeric. Groups come through `groups` only, so `@`
/// is refused here, as is everything a shell or dnf would read as an option.
pub fn validate_rpm_name(p: &str) -> Result<(), SpecError> {
    let ok = !p.is_empty()
        && p.len() <= 200
        && p.starts_with(|c: char| c.is_ascii_alphanumeric())
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if !ok {
        return Err(SpecError::Invalid {
            field: "package",
            value: p.to_string(),
            reason: "not an RPM package name (letters, digits, . _ + -; groups go in `groups`)"
                .into(),
        });
    }
    Ok(())
}

/// Image names are aliases used on command lines and in URLs.
pub fn validate_image_name(n: &str) -> Result<(), SpecError> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !n.starts_with(['.', '-']);
    if !ok {
        return Err(SpecError::Invalid {
            field: "name",
            value: n.to_string(),
            reason: "use 1-64 characters from A-Z a-z 0-9 . _ - (not starting with . or -)".into(),
        });
    }
    // References resolve ids and id prefixes of 4+ hex digits (any case): such a name
    // could shadow another image's id.
    if n.len() >= 4 && n.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SpecError::Invalid {
            field: "name",
            value: n.to_string(),
            reason: "a name of 4 or more hex digits could be taken for an image id; add another letter or a -".into(),
        });
    }
    Ok(())
}

/// The content of an image. Its canonical JSON, hashed, is the image id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub distro: Distro,
    pub suite: String,
    pub arch: Arch,
    pub variant: Variant,
    pub groups: BTreeSet<String>,
    pub packages: BTreeSet<String>,
    pub boot: Boot,
    /// The site's repositories, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<Repository>,
}

/// Validated request: content plus outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub spec: ImageSpec,
    pub formats: BTreeSet<Format>,
    pub disk_size: Option<u64>,
    pub name: Option<String>,
}

/// The bootstrap a spec starts from: specs that share it share a cached base layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BaseKey {
    pub distro: Distro,
    pub suite: String,
    pub arch: Arch,
    pub variant: Variant,
}

impl BaseKey {
    pub fn slug(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.distro, self.suite, self.arch, self.variant
        )
    }
}

impl ImageSpec {
    /// Canonical form: compact JSON with keys in a fixed order, sets sorted, and the package
    /// groups expanded (so a change to the group catalogue changes the id of affected specs).
    /// `repositories` appears only when there are some, so ids of specs without any (every
    /// id made before repositories existed) stay what they were.
    pub fn canonical_json(&self) -> String {
        let mut canon = serde_json::json!({
            "v": 1,
            "distro": self.distro,
            "suite": self.suite,
            "arch": self.arch,
            "variant": self.variant,
            "groups": self.groups,
            "packages": self.packages,
            "install": self.install_packages(),
            "boot": self.boot,
        });
        if !self.repositories.is_empty() {
            canon["repositories"] = self
                .repositories
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "url": r.url,
                        "suite": r.suite,
                        "components": r.components,
                        "key_sha256": r.key_sha256(),
                    })
                })
                .collect();
        }
        // serde_json's Map is a BTreeMap without the preserve_order feature: keys sorted.
        canon.to_string()
    }

    /// SHA-256 of the canonical form, hex: the image id.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_json().as_bytes()))
    }

    pub fn base(&self) -> BaseKey {
        BaseKey {
            distro: self.distro,
            suite: self.suite.clone(),
            arch: self.arch,
            variant: self.variant,
        }
    }

    /// Every package installed on top of the base: groups expanded, explicit packages, and
    /// what the boot profile needs.
    pub fn install_packages(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.packages.clone();
        for g in &self.groups {
            if let Some(group) = groups::lookup_in(self.distro.family(), g) {
                all.extend(group.packages.iter().map(|p| p.to_string()));
            }
        }
        if self.boot == Boot::Vm {
            if let Some(k) = self.distro.kernel_package(self.arch) {
                all.insert(k.to_string());
            }
            for p in [
                "initramfs-tools",
                "qemu-guest-agent",
                "udev",
                "systemd-sysv",
            ] {
                all.insert(p.to_string());
            }
        }
        all
    }

    /// One-line human summary, e.g. `debian bookworm amd64 minbase +curl`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {} {} {}",
            self.distro, self.suite, self.arch, self.variant
        );
        for g in &self.groups {
            s.push_str(&format!(" @{g}"));
        }
        for p in &self.packages {
            s.push_str(&format!(" +{p}"));
        }
        for r in &self.repositories {
            s.push_str(&format!(" repo={}", r.name));
        }
        if self.boot == Boot::Vm {
            s.push_str(" boot=vm");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 17 of issue 15: only the part before `=`/`:` was checked, so anything could
    /// ride along after it to apt's command line.
    /// Finding 7 of issue 15: an image name could shadow another image's id prefix.
    #[test]
    fn image_names_cannot_look_like_ids() {
        for bad in ["abcd", "DEADBEEF", "0123456789abcdef"] {
            assert_eq!(
                validate_image_name(bad).unwrap_err().field(),
                "name",
                "{bad}"
            );
        }
        for ok in ["minbase", "abc", "deadbeef-2", "v1.0"] {
            validate_image_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn package_names_are_checked_in_full() {
        for ok in [
            "curl",
            "libc6:amd64",
            "curl=7.88.1-10+deb12u5",
            "bash:arm64=5.2-1",
            "g++",
        ] {
            validate_package_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "curl=1.0 --allow-unauthenticated",
            "curl=$(id)",
            "curl:amd64;rm",
            "curl:",
            "curl=",
            "curl=x1",
            "curl:../x",
            "curl=1/../../x",
        ] {
            let e = validate_package_name(bad).unwrap_err();
            assert_eq!(e.field(), "package", "{bad}");
        }
    }

    fn req() -> SpecRequest {
        SpecRequest {
            suite: Some("bookworm".into()),
            variant: Some("minbase".into()),
            packages: vec!["curl".into()],
            formats: vec!["tar".into(), "qcow2".into()],
            ..Default::default()
        }
    }

    #[test]
    fn id_is_stable_and_ignores_order_name_and_outputs() {
        let a = req().resolve().unwrap();
        let mut r = req();
        r.packages = vec!["curl".into(), "curl".into()];
        r.formats = vec!["raw".into()];
        r.name = Some("x".into());
        let b = r.resolve().unwrap();
        assert_eq!(a.spec.id(), b.spec.id());
        assert_eq!(a.spec.id().len(), 64);
        let mut c = req();
        c.packages.push("wget".into());
        assert_ne!(a.spec.id(), c.resolve().unwrap().spec.id());
    }

    #[test]
    fn canonical_json_is_sorted_and_expanded() {
        let mut r = req();
        r.groups = vec!["ssh-server".into()];
        let s = r.resolve().unwrap().spec;
        let j = s.canonical_json();
        assert!(j.starts_with(r#"{"arch":"amd64","boot":"none","distro":"debian","groups":["ssh-server"],"install":["curl","openssh-server"]"#), "{j}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(SpecRequest, &str, &str)> = vec![
            (
                SpecRequest {
                    suite: Some("wheezy-nope".into()),
                    ..req()
                },
                "suite",
                "wheezy-nope",
            ),
            (
                SpecRequest {
                    arch: Some("vax".into()),
                    ..req()
                },
                "arch",
                "vax",
            ),
            (
                SpecRequest {
                    variant: Some("huge".into()),
                    ..req()
                },
                "variant",
                "huge",
            ),
            (
                SpecRequest {
                    groups: vec!["kde-desktop".into()],
                    ..req()
                },
                "group",
                "kde-desktop",
            ),
            (
                SpecRequest {
                    formats: vec!["iso".into()],
                    ..req()
                },
                "format",
                "iso",
            ),
            (
                SpecRequest {
                    size: Some("4X".into()),
                    ..req()
                },
                "size",
                "4X",
            ),
            (
                SpecRequest {
                    size: Some("1K".into()),
                    ..req()
                },
                "size",
                "1K",
            ),
            (
                SpecRequest {
                    packages: vec!["Bad Name".into()],
                    ..req()
                },
                "package",
                "Bad Name",
            ),
            (
                SpecRequest {
                    boot: Some("uefi".into()),
                    ..req()
                },
                "boot",
                "uefi",
            ),
            (
                SpecRequest {
                    name: Some("../x".into()),
                    ..req()
                },
                "name",
                "../x",
            ),
        ];
        for (r, field, value) in cases {
            let e = r.resolve().unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(e.to_string().contains(value), "{e} should name {value}");
        }
    }

    #[test]
    fn toml_refuses_unknown_keys() {
        let e = SpecRequest::from_toml("suite = \"bookworm\"\ncolour = \"red\"\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let ok = SpecRequest::from_toml(
            "suite = \"trixie\"\npackages = [\"curl\"]\nformats = [\"raw\"]\nsize = \"2G\"\n",
        )
        .unwrap();
        let b = ok.resolve().unwrap();
        assert_eq!(b.spec.suite, "trixie");
        assert_eq!(b.disk_size, Some(2 << 30));
    }

    #[test]
    fn flags_override_file() {
        let file = SpecRequest {
            suite: Some("trixie".into()),
            packages: vec!["a1".into()],
            ..Default::default()
        };
        let flags = SpecRequest {
            suite: Some("bookworm".into()),
            packages: vec!["b1".into()],
            ..Default::default()
        };
        let m = file.merge(flags);
        assert_eq!(m.suite.as_deref(), Some("bookworm"));
        assert_eq!(m.packages, vec!["a1", "b1"]);
    }

    #[test]
    fn boot_vm_adds_kernel_and_agent() {
        let mut r = req();
        r.boot = Some("vm".into());
        let p = r.resolve().unwrap().spec.install_packages();
        assert!(p.contains("linux-image-cloud-amd64") && p.contains("qemu-guest-agent"));
    }

    /// Ids of existing Debian images must not change when the spec grows fields: these were
    /// computed before distributions and repositories were added.
    #[test]
    fn debian_ids_are_pinned() {
        let a = SpecRequest::default().resolve().unwrap().spec;
        assert_eq!(
            a.id(),
            "e5c5ceed4ea569bf75c029be96e88d155c24ae7c119076291f5173de82f6bdb5"
        );
        let b = SpecRequest {
            suite: Some("trixie".into()),
            groups: vec!["base".into(), "ssh-server".into()],
            packages: vec!["curl".into()],
            boot: Some("vm".into()),
            ..Default::default()
        };
        assert_eq!(
            b.resolve().unwrap().spec.id(),
            "3e4ad88c61901ae1d36e67c070b6e4e9aa666df6d361ade49e6eca05596ab4fd"
        );
    }

    const KEY: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQENBGV0ZXN0\n-----END PGP PUBLIC KEY BLOCK-----\n";

    fn el() -> SpecRequest {
        SpecRequest {
            distro: Some("almalinux".into()),
            suite: Some("9".into()),
            groups: vec!["core".into()],
            packages: vec!["site-tools".into(), "perl-Data-Dumper".into()],
            ..Default::default()
        }
    }

    #[test]
    fn el_specs_resolve_with_comps_groups_and_their_own_base() {
        let s = el().resolve().unwrap().spec;
        assert_eq!(s.distro.family(), Family::Dnf);
        assert!(s.install_packages().contains("@core"));
        assert_eq!(s.base().slug(), "almalinux-9-amd64-minbase");
        let mut rocky = el();
        rocky.distro = Some("rocky".into());
        assert_ne!(rocky.resolve().unwrap().spec.id(), s.id());
        let u = SpecRequest {
            distro: Some("ubuntu".into()),
            ..Default::default()
        };
        let u = u.resolve().unwrap().spec;
        assert_eq!(
            (u.suite.as_str(), u.base().slug().as_str()),
            ("noble", "ubuntu-noble-amd64-minbase")
        );
    }

    fn repo() -> RepoRequest {
        RepoRequest {
            name: Some("site".into()),
            url: Some("http://127.0.0.1:8080/debian".into()),
            key: Some(KEY.into()),
            ..Default::default()
        }
    }

    #[test]
    fn repositories_are_part_of_the_id_key_included() {
        let plain = req().resolve().unwrap().spec;
        let mut r = req();
        r.repositories = vec![repo()];
        let with = r.resolve().unwrap().spec;
        assert_ne!(plain.id(), with.id());
        assert_eq!(with.repositories[0].suite.as_deref(), Some("bookworm"));
        assert_eq!(with.repositories[0].components, ["main"]);
        assert!(with.canonical_json().contains("\"key_sha256\""));
        let mut other_key = r.clone();
        other_key.repositories[0].key = Some(KEY.replace("ZXN0", "ZXN1"));
        assert_ne!(other_key.resolve().unwrap().spec.id(), with.id());
        // CRLF or trailing blanks in the key file do not make another image.
        let mut crlf = r.clone();
        crlf.repositories[0].key = Some(KEY.replace('\n', "\r\n"));
        assert_eq!(crlf.resolve().unwrap().spec.id(), with.id());
        let mut dnf = el();
        dnf.repositories = vec![RepoRequest {
            url: None,
            baseurl: Some("http://127.0.0.1:8080/el9/".into()),
            ..repo()
        }];
        let d = dnf.resolve().unwrap().spec;
        assert_eq!(d.repositories[0].url, "http://127.0.0.1:8080/el9/");
        assert_eq!(d.repositories[0].suite, None);
    }

    #[test]
    fn bad_distro_input_is_named() {
        let cases: Vec<(SpecRequest, &str, &str)> = vec![
            (
                SpecRequest {
                    distro: Some("slackware".into()),
                    ..el()
                },
                "distro",
                "slackware",
            ),
            (
                SpecRequest {
                    suite: Some("7".into()),
                    ..el()
                },
                "suite",
                "almalinux releases: 8, 9, 10",
            ),
            (
                SpecRequest {
                    suite: Some("bookworm".into()),
                    ..el()
                },
                "suite",
                "bookworm",
            ),
            (
                SpecRequest {
                    groups: vec!["build-essential".into()],
                    ..el()
                },
                "group",
                "almalinux groups",
            ),
            (
                SpecRequest {
                    variant: Some("buildd".into()),
                    ..el()
                },
                "variant",
                "only minbase",
            ),
            (
                SpecRequest {
                    arch: Some("i386".into()),
                    ..el()
                },
                "arch",
                "i386",
            ),
            (
                SpecRequest {
                    boot: Some("vm".into()),
                    ..el()
                },
                "boot",
                "almalinux",
            ),
            (
                SpecRequest {
                    packages: vec!["@core".into()],
                    ..el()
                },
                "package",
                "@core",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        key: None,
                        ..repo()
                    }],
                    ..req()
                },
                "repository.key",
                "`site`",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        key: Some("/etc/key.asc".into()),
                        ..repo()
                    }],
                    ..req()
                },
                "repository.key",
                "armored",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        name: None,
                        ..repo()
                    }],
                    ..req()
                },
                "repository.name",
                "name",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        url: Some("http://x/ y]".into()),
                        ..repo()
                    }],
                    ..req()
                },
                "repository.url",
                "http://x/ y]",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        url: Some("file:///etc".into()),
                        ..repo()
                    }],
                    ..req()
                },
                "repository.url",
                "file:///etc",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        baseurl: Some("http://x/".into()),
                        ..repo()
                    }],
                    ..req()
                },
                "repository.baseurl",
                "apt",
            ),
            (
                SpecRequest {
                    repositories: vec![RepoRequest {
                        suite: Some("9".into()),
                        ..repo()
                    }],
                    ..el()
                },
                "repository.suite",
                "baseurl",
            ),
            (
                SpecRequest {
                    repositories: vec![repo(), repo()],
                    ..req()
                },
                "repository.name",
                "share",
            ),
        ];
        for (r, field, needle) in cases {
            let e = r.resolve().unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(e.to_string().contains(needle), "{e} should name {needle}");
        }
    }

    #[test]
    fn osfarm_classes_map_to_distro_and_release() {
        for (class, d, r) in [
            ("Bookworm", Distro::Debian, "bookworm"),
            ("noble", Distro::Ubuntu, "noble"),
            ("almalinux9", Distro::Almalinux, "9"),
            ("rocky-8", Distro::Rocky, "8"),
            ("centos-stream9", Distro::CentosStream, "9"),
            ("fedora42", Distro::Fedora, "42"),
            ("SLC4", Distro::Debian, "slc4"),
        ] {
            assert_eq!(osfarm_class(class), (d, r.to_string()), "{class}");
        }
    }

    #[test]
    fn toml_takes_repositories() {
        let r = SpecRequest::from_toml(
            "distro = \"almalinux\"\nsuite = \"9\"\n[[repositories]]\nname = \"site\"\nbaseurl = \"http://127.0.0.1:1/\"\nkey = \"k.asc\"\n",
        )
        .unwrap();
        assert_eq!(r.repositories[0].key.as_deref(), Some("k.asc"));
        let e =
            SpecRequest::from_toml("[[repositories]]\nname = \"a\"\nmirror = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("mirror"), "{e}");
    }
}
