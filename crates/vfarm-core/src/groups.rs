//! The shipped catalogue of package groups, in the spirit of OS Farm's yum groups.
//!
//! A group is a name for a set of Debian packages that exist in every supported suite.

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

pub fn lookup(name: &str) -> Option<&'static Group> {
    CATALOGUE.iter().find(|g| g.name == name)
}

pub fn names() -> Vec<&'static str> {
    CATALOGUE.iter().map(|g| g.name).collect()
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
    }
}
