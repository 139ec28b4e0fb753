//! An image's package manifest (issue 26): the exact packages a build put in, read from the
//! rootfs's own package database before it is packed (`images/<id>/manifest.json`), and the
//! difference between two manifests. Parsing and diffing are pure.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The source package (Debian) or source RPM it was built from.
    pub source: String,
}

/// What changed from one manifest to another.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDiff {
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub changed: Vec<Changed>,
}

impl ManifestDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A package in both, at another version (or architecture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The installed packages of dpkg's `status` file, sorted by name.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for line in para.lines() {
            // Continuation lines (descriptions, conffiles) start with a space.
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                f.insert(k, v.trim());
            }
        }
        let installed = f.get("Status").is_some_and(|s| s.ends_with(" installed"));
        let (Some(name), Some(version)) = (f.get("Package"), f.get("Version")) else {
            continue;
        };
        if !installed {
            continue;
        }
        // `Source: name (version)` when the source's version differs.
        let source = f
            .get("Source")
            .map(|s| s.split_whitespace().next().unwrap_or(s))
            .unwrap_or(name);
        out.push(Package {
            name: name.to_string(),
            version: version.to_string(),
            arch: f.get("Architecture").unwrap_or(&"").to_string(),
            source: source.to_string(),
        });
    }
    out.sort();
    out
}

/// `rpm -qa` lines of [`RPM_FORMAT`], sorted by name.
pub fn parse_rpm_list(text: &str) -> Vec<Package> {
    let mut out: Vec<Package> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let (name, version, arch, source) = (it.next()?, it.next()?, it.next()?, it.next()?);
            Some(Package {
                name: name.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
                source: source.to_string(),
            })
        })
        .filter(|p| p.name != "gpg-pubkey")
        .collect();
    out.sort();
    out
}

/// Name, epoch:version-release, arch, source RPM.
pub const RPM_FORMAT: &str =
    "%{NAME}\\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\t%{ARCH}\\t%{SOURCERPM}\\n";

/// The packages installed in the tree at `root`: dpkg's database, else rpm's (asked with the
/// host's `rpm`, which reads the tree's database without running anything from it). None
/// when the tree has neither.
pub fn of_rootfs(root: &Path) -> Result<Option<Vec<Package>>, ImageError> {
    let status = root.join("var/lib/dpkg/status");
    if status.is_file() {
        let text = std::fs::read_to_string(&status).map_err(ImageError::io("read", &status))?;
        return Ok(Some(parse_dpkg_status(&text)));
    }
    let dbpath = ["usr/lib/sysimage/rpm", "var/lib/rpm"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir());
    let Some(dbpath) = dbpath else {
        return Ok(None);
    };
    let out = Command::new("rpm")
        .arg("--root")
        .arg(root)
        .arg("--dbpath")
        .arg(Path::new("/").join(dbpath.strip_prefix(root).unwrap_or(&dbpath)))
        .args(["-qa", "--qf", RPM_FORMAT])
        .output()
        .map_err(ImageError::io("run rpm -qa in", root))?;
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            tool: "rpm",
            status: out.status.to_string(),
            tail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            log: None,
        });
    }
    Ok(Some(parse_rpm_list(&String::from_utf8_lossy(&out.stdout))))
}

/// What `b` has that `a` has not, what it lost, and what changed version.
pub fn diff(a: &[Package], b: &[Package]) -> ManifestDiff {
    let index = |m: &[Package]| -> BTreeMap<(String, String), Package> {
        m.iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.clone()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut d = ManifestDiff::default();
    for (k, p) in &ib {
        match ia.get(k) {
            None => d.added.push(p.clone()),
            Some(old) if old.version != p.version => d.changed.push(Changed {
                name: if p.arch.is_empty() {
                    p.name.clone()
                } else {
                    format!("{}:{}", p.name, p.arch)
                },
                from: old.version.clone(),
                to: p.version.clone(),
            }),
            Some(_) => {}
        }
    }
    for (k, p) in &ia {
        if !ib.contains_key(k) {
            d.removed.push(p.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: curl\nStatus: install ok installed\nPriority: optional\n\
Architecture: amd64\nVersion: 7.88.1-10+deb12u8\nDescription: command line tool\n continued: text\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\n\
Version: 2.36-9+deb12u9\n\n\
Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n\
Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n\
Source: openssl (3.0.15-1~deb12u1)\nVersion: 3.0.15-1~deb12u1\n";

    #[test]
    fn dpkg_status_gives_installed_packages_with_sources() {
        let m = parse_dpkg_status(STATUS);
        let names: Vec<(&str, &str)> = m
            .iter()
            .map(|p| (p.name.as_str(), p.source.as_str()))
            .collect();
        assert_eq!(
            names,
            [("curl", "curl"), ("libc6", "glibc"), ("libssl3", "openssl")]
        );
        assert_eq!(m[0].version, "7.88.1-10+deb12u8");
        assert_eq!(m[0].arch, "amd64");
    }

    #[test]
    fn rpm_lines_skip_keys() {
        let m = parse_rpm_list(
            "bash\t5.1.8-9.el9\tx86_64\tbash-5.1.8-9.el9.src.rpm\n\
             gpg-pubkey\tabc-def\t(none)\t(none)\nbroken line\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].source, "bash-5.1.8-9.el9.src.rpm");
    }

    #[test]
    fn diff_names_added_removed_and_changed() {
        let p = |n: &str, v: &str| Package {
            name: n.into(),
            version: v.into(),
            arch: "amd64".into(),
            source: n.into(),
        };
        let a = vec![p("bash", "5.2"), p("curl", "7.88"), p("old", "1")];
        let b = vec![p("bash", "5.2"), p("curl", "7.89"), p("new", "2")];
        let d = diff(&a, &b);
        assert_eq!(d.added, vec![p("new", "2")]);
        assert_eq!(d.removed, vec![p("old", "1")]);
        assert_eq!(
            d.changed,
            vec![Changed {
                name: "curl:amd64".into(),
                from: "7.88".into(),
                to: "7.89".into()
            }]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
