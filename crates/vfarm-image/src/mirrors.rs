//! `<data>/mirrors.toml`: where each distribution's packages come from on this site.
//!
//! Mirrors are site configuration, never code: Debian without a table uses the host's apt
//! sources (as mmdebstrap does); every other distribution needs its table, and a build of it
//! without one is refused naming the file and the table to add. Not part of image ids, like
//! the host's apt sources before it.
//!
//! ```toml
//! [ubuntu]
//! url = "http://MIRROR/ubuntu"
//! key = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
//! components = ["main", "universe"]
//!
//! [almalinux]
//! key = "/etc/vfarm/RPM-GPG-KEY-AlmaLinux-$releasever"
//! [[almalinux.repos]]
//! name = "baseos"
//! baseurl = "http://MIRROR/almalinux/$releasever/BaseOS/$basearch/os/"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vfarm_core::{Distro, Family};

use crate::error::{ImageError, Result};

/// One distribution's table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// apt: the archive root.
    pub url: Option<String>,
    /// apt: a keyring file (`.gpg` or `.asc`), copied into the image's `trusted.gpg.d`;
    /// dnf: the armored key every repo without its
    /// own `key` is checked with. Relative paths are relative to the data dir; dnf expands
    /// `$releasever` and `$basearch` in it.
    pub key: Option<String>,
    /// apt: components (default `main`).
    #[serde(default)]
    pub components: Vec<String>,
    /// dnf: the repositories.
    #[serde(default)]
    pub repos: Vec<DnfRepo>,
    /// dnf: also check the signature of the repository metadata (`repomd.xml.asc`), for
    /// mirrors that sign it. Package signatures are always checked.
    #[serde(default)]
    pub repo_gpgcheck: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnfRepo {
    pub name: String,
    pub baseurl: String,
    pub key: Option<String>,
}

/// The whole file: a table per distribution name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mirrors {
    path: PathBuf,
    tables: BTreeMap<String, Mirror>,
}

impl Mirrors {
    /// Read `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<Mirrors> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(ImageError::io("read", path)(e)),
        };
        Mirrors::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Mirrors> {
        let bad = |reason: String| ImageError::MirrorConfig {
            path: path.to_path_buf(),
            reason,
        };
        let tables: BTreeMap<String, Mirror> =
            toml::from_str(text).map_err(|e| bad(e.message().to_string()))?;
        for (name, m) in &tables {
            let distro: Distro = name
                .parse()
                .map_err(|e| bad(format!("table [{name}]: {e}")))?;
            let check_word = |what: &str, s: &str| {
                if s.is_empty()
                    || s.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "[]\"'".contains(c))
                {
                    Err(bad(format!(
                        "[{name}] {what} `{s}`: empty, or spaces, quotes or brackets"
                    )))
                } else {
                    Ok(())
                }
            };
            match distro.family() {
                Family::Apt => {
                    if !m.repos.is_empty() {
                        return Err(bad(format!(
                            "[{name}] is an apt distribution: give url, key, components, not repos"
                        )));
                    }
                    match &m.url {
                        Some(u) => check_word("url", u)?,
                        None => return Err(bad(format!("[{name}] needs url = \"http://…\""))),
                    }
                    for c in &m.components {
                        check_word("component", c)?;
                    }
                }
                Family::Dnf => {
                    if m.url.is_some() || !m.components.is_empty() {
                        return Err(bad(format!("[{name}] is a dnf distribution: give [[{name}.repos]] with name and baseurl, and key")));
                    }
                    if m.repos.is_empty() {
                        return Err(bad(format!(
                            "[{name}] needs at least one [[{name}.repos]] (name, baseurl)"
                        )));
                    }
                    for r in &m.repos {
                        check_word("repo name", &r.name)?;
                        check_word("baseurl", &r.baseurl)?;
                        if r.key.as_ref().or(m.key.as_ref()).is_none() {
                            return Err(bad(format!("[{name}] repo `{}` has no key (GPG checking is always on): set key in [{name}] or in the repo", r.name)));
                        }
                    }
                }
            }
            if let Some(k) = &m.key {
                check_word("key", k)?;
            }
        }
        Ok(Mirrors {
            path: path.to_path_buf(),
            tables,
        })
    }

    /// The table of `distro`: None for Debian without one (the host's apt sources serve);
    /// refused, naming the file and what to add, for every other distribution.
    pub fn for_distro(&self, distro: Distro) -> Result<Option<&Mirror>> {
        match self.tables.get(distro.as_str()) {
            Some(m) => Ok(Some(m)),
            None if distro == Distro::Debian => Ok(None),
            None => Err(ImageError::MirrorMissing {
                distro: distro.to_string(),
                path: self.path.clone(),
            }),
        }
    }

    /// A key path as the tools need it: absolute, relative ones taken from the data dir.
    pub fn key_path(&self, key: &str) -> PathBuf {
        let p = Path::new(key);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Mirrors> {
        Mirrors::parse(Path::new("/d/mirrors.toml"), t)
    }

    #[test]
    fn tables_per_distribution() {
        let m = parse(
            "[ubuntu]\nurl = \"http://m/ubuntu\"\nkey = \"k.gpg\"\ncomponents = [\"main\", \"universe\"]\n\
             [almalinux]\nkey = \"/k/RPM-GPG-KEY-$releasever\"\n[[almalinux.repos]]\nname = \"baseos\"\nbaseurl = \"http://m/$releasever/BaseOS/$basearch/os/\"\n",
        )
        .unwrap();
        assert_eq!(
            m.for_distro(Distro::Ubuntu).unwrap().unwrap().components,
            ["main", "universe"]
        );
        assert_eq!(m.key_path("k.gpg"), Path::new("/d/k.gpg"));
        assert!(m.for_distro(Distro::Debian).unwrap().is_none());
        let e = m.for_distro(Distro::Rocky).unwrap_err();
        assert!(
            e.to_string().contains("[rocky]") && e.to_string().contains("/d/mirrors.toml"),
            "{e}"
        );
        assert_eq!(e.field(), Some("distro"));
    }

    #[test]
    fn bad_tables_are_named() {
        for (t, needle) in [
            ("[slackware]\nurl = \"http://x\"\n", "slackware"),
            ("[ubuntu]\nkey = \"k\"\n", "needs url"),
            ("[rocky]\nkey = \"k\"\n", "[[rocky.repos]]"),
            (
                "[rocky]\n[[rocky.repos]]\nname = \"a\"\nbaseurl = \"http://x\"\n",
                "no key",
            ),
            ("[ubuntu]\nurl = \"http://x y\"\n", "http://x y"),
            ("[ubuntu]\nmirror = \"x\"\n", "mirror"),
        ] {
            let e = parse(t).unwrap_err();
            assert!(e.to_string().contains(needle), "{t}: {e}");
        }
    }
}
