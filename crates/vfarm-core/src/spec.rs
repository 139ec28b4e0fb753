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
    /// Which distribution family (and so which builder) the image comes from.
    Distro, "distro" { Debian => "debian" }
);
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
    /// Kernel package for `--boot vm`.
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
        self.packages.extend(other.packages);
        self.formats.extend(other.formats);
        self
    }

    /// Validate and normalise into a [`ImageSpec`] plus its outputs.
    pub fn resolve(&self) -> Result<BuildRequest, SpecError> {
        let distro: Distro = self.distro.as_deref().unwrap_or("debian").parse()?;
        let suite = self
            .suite
            .as_deref()
            .unwrap_or("bookworm")
            .trim()
            .to_ascii_lowercase();
        if !SUITES.contains(&suite.as_str()) {
            return Err(SpecError::Unknown {
                field: "suite",
                value: self.suite.clone().unwrap_or_default(),
                known: SUITES.join(", "),
            });
        }
        let arch: Arch = match self.arch.as_deref() {
            Some(a) => a.parse()?,
            None => Arch::host().unwrap_or(Arch::Amd64),
        };
        let variant: Variant = self.variant.as_deref().unwrap_or("minbase").parse()?;
        let boot: Boot = self.boot.as_deref().unwrap_or("none").parse()?;
        if boot == Boot::Vm && arch.kernel_package().is_none() {
            return Err(SpecError::Invalid {
                field: "boot",
                value: "vm".into(),
                reason: format!("no kernel package is known for arch {arch}"),
            });
        }

        let mut group_set = BTreeSet::new();
        for g in &self.groups {
            let g = g.trim().to_ascii_lowercase();
            if groups::lookup(&g).is_none() {
                return Err(SpecError::Unknown {
                    field: "group",
                    value: g,
                    known: groups::names().join(", "),
                });
            }
            group_set.insert(g);
        }
        let mut packages = BTreeSet::new();
        for p in &self.packages {
            let p = p.trim();
            validate_package_name(p)?;
            packages.insert(p.to_string());
        }

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
    pub fn canonical_json(&self) -> String {
        let canon = serde_json::json!({
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
            if let Some(group) = groups::lookup(g) {
                all.extend(group.packages.iter().map(|p| p.to_string()));
            }
        }
        if self.boot == Boot::Vm {
            if let Some(k) = self.arch.kernel_package() {
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
}
