//! IPv4 subnets and the choice of a free address in one. Pure: no I/O.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::NetError;

/// An IPv4 subnet, `a.b.c.d/p` with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parse `a.b.c.d/p`; `field` names the config key in errors. Prefixes 8–30: a /31 or
    /// /32 has no room for a gateway and an instance.
    pub fn parse(field: &'static str, s: &str) -> Result<Subnet, NetError> {
        let bad = |reason: String| NetError::Invalid {
            field,
            reason: format!("`{s}`: {reason}"),
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("not a subnet (a.b.c.d/prefix)".into()))?;
        let network: Ipv4Addr = a
            .parse()
            .map_err(|_| bad(format!("`{a}` is not an IPv4 address")))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| bad(format!("`{p}` is not a prefix length")))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be 8 to 30".into()));
        }
        let sub = Subnet { network, prefix };
        if u32::from(network) & !sub.mask() != 0 {
            return Err(bad(format!(
                "host bits are set (the subnet is {}/{prefix})",
                Ipv4Addr::from(u32::from(network) & sub.mask())
            )));
        }
        Ok(sub)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network)
    }

    /// The first usable address: the host's (gateway's) address on the network's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The lowest address that is neither the network, the gateway, the broadcast address
    /// nor in `taken`.
    pub fn free(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast());
        (first..last)
            .map(Ipv4Addr::from)
            .find(|a| !taken.contains(a))
    }

    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.network) & m == u32::from(other.network) & m
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_naming_the_field() {
        let s = Subnet::parse("subnet", "10.20.30.0/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 20, 30, 1));
        assert!(s.contains(Ipv4Addr::new(10, 20, 30, 254)));
        assert!(!s.contains(Ipv4Addr::new(10, 20, 31, 1)));
        assert_eq!(s.to_string(), "10.20.30.0/24");
        for (bad, why) in [
            ("10.20.30.0", "not a subnet"),
            (
                "10.20.30.5/24",
                "host bits are set (the subnet is 10.20.30.0/24)",
            ),
            ("10.20.30.0/31", "8 to 30"),
            ("10.20.300.0/24", "not an IPv4 address"),
            ("10.20.30.0/x", "not a prefix length"),
        ] {
            match Subnet::parse("subnet", bad) {
                Err(NetError::Invalid { field, reason }) => {
                    assert_eq!(field, "subnet");
                    assert!(reason.contains(why), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn free_addresses_skip_network_gateway_broadcast_and_taken() {
        let s = Subnet::parse("subnet", "192.0.2.0/30").unwrap();
        let mut taken = BTreeSet::new();
        assert_eq!(s.free(&taken), Some(Ipv4Addr::new(192, 0, 2, 2)));
        taken.insert(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(s.free(&taken), None, "a /30 holds one instance");
        let a = Subnet::parse("subnet", "10.0.0.0/16").unwrap();
        let b = Subnet::parse("subnet", "10.0.5.0/24").unwrap();
        let c = Subnet::parse("subnet", "10.1.0.0/24").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
