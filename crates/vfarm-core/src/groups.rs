//! The shipped catalogue of package groups, in the spirit of OS Farm's yum groups.
//!
//! A group is a name for a set of packages that exist in every supported release of its
//! family: Debian and Ubuntu share the apt catalogue; the EL family's groups are mostly
//! comps groups (`@core`), which dnf expands from the repository's own metadata.

use crate::spec::Family;

/// One named package group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub name: &'static str,
    pub description: &'static str,
    pub packages: &'static [&'static str],
}

pub const CATALOGUE: &[Group] = &[
    Group {
        name: "core",
        description: "the bootstrap variant alone (present for OS Farm compatibility)",
        packages: &[],
    },
    Group {
        name: "base",
        description: "what an interactive login expects: CA certificates, less, procps, vim-tiny",
        packages: &[
            "ca-certificates",
            "less",
            "procps",
            "vim-tiny",
            "bash-completion",
            "locales",
            "tzdata",
        ],
    },
    Group {
        name: "build-essential",
        description: "C/C++ compilers, make and the Debian packaging helpers",
        packages: &["build-essential", "pkg-config", "git"],
    },
    Group {
        name: "python3",
        description: "Python 3 with pip and venv",
        packages: &["python3", "python3-pip", "python3-venv"],
    },
    Group {
        name: "ssh-server",
        description: "OpenSSH server for interactive login",
        packages: &["openssh-server"],
    },
    Group {
        name: "networking",
        description: "network configuration and diagnosis tools",
        packages: &[
            "iproute2",
            "iputils-ping",
            "netbase",
            "curl",
            "wget",
            "dnsutils",
            "ifupdown",
        ],
    },
];

/// Groups of Enterprise Linux and Fedora images: comps groups by id (`@id`, defined by the
/// repositories), plus a few package sets named like the apt ones.
pub const EL_CATALOGUE: &[Group] = &[
    Group {
        name: "core",
        description: "the comps group `core`: the smallest system (also the bootstrap)",
        packages: &["@core"],
    },
    Group {
        name: "base",
        description: "the comps group `base`",
        packages: &["@base"],
    },
    Group {
        name: "standard",
        description: "the comps group `standard`: what an interactive login expects",
        packages: &["@standard"],
    },
    Group {
        name: "development",
        description: "the comps group `development`: compilers, make, git",
        packages: &["@development"],
    },
    Group {
        name: "python3",
        description: "Python 3 with pip",
        packages: &["python3", "python3-pip"],
    },
    Group {
        name: "ssh-server",
        description: "OpenSSH server for interactive login",
        packages: &["openssh-server"],
    },
    Group {
        name: "networking",
        description: "network configuration and diagnosis tools",
        packages: &["iproute", "iputils", "curl", "wget", "bind-utils"],
    },
];

/// The catalogue of a distribution family.
pub fn catalogue(family: Family) -> &'static [Group] {
    match family {
        Family::Apt => CATALOGUE,
        Family::Dnf => EL_CATALOGUE,
    }
}

pub fn lookup_in(family: Family, name: &str) -> Option<&'static Group> {
    catalogue(family).iter().find(|g| g.name == name)
}

pub fn names_in(family: Family) -> Vec<&'static str> {
    catalogue(family).iter().map(|g| g.name).collect()
}

pub fn lookup(name: &str) -> Option<&'static Group> {
    lookup_in(Family::Apt, name)
}

pub fn names() -> Vec<&'static str> {
    names_in(Family::Apt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_the_promised_groups_and_valid_names() {
        for n in [
            "core",
            "base",
            "build-essential",
            "python3",
            "ssh-server",
            "networking",
        ] {
            assert!(lookup(n).is_some(), "{n}");
        }
        for g in CATALOGUE {
            for p in g.packages {
                crate::spec::validate_package_name(p).unwrap();
            }
        }
        assert!(lookup("kde").is_none());
        for g in EL_CATALOGUE {
            for p in g.packages {
                let p = p.strip_prefix('@').unwrap_or(p);
                crate::spec::validate_rpm_name(p).unwrap();
            }
        }
        assert_eq!(lookup_in(Family::Dnf, "core").unwrap().packages, ["@core"]);
    }
}
