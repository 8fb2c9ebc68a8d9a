//! Addresses in the datapath's form: IPv4 as IPv4-mapped IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use policy_common::{v4_mapped, Addr, V4_MAPPED_PREFIX_BITS};

use crate::state::CidrPrefix;

/// The 16-byte map form of an address (IPv4-mapped for IPv4).
pub fn to_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Back from the map form (IPv4-mapped addresses become IPv4).
pub fn from_addr(addr: Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An IP address normalised: IPv4-mapped IPv6 becomes IPv4.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    from_addr(to_addr(ip))
}

/// A network normalised: host bits cleared, IPv4-mapped IPv6 prefixes of
/// at least /96 written as IPv4.
pub fn normalize_net(net: &IpNet) -> IpNet {
    match net {
        IpNet::V4(n) => IpNet::V4(n.trunc()),
        IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
            Some(v4) if n.prefix_len() >= 96 => {
                let len = n.prefix_len() - 96;
                Ipv4Net::new(v4, len)
                    .map(|n| IpNet::V4(n.trunc()))
                    .unwrap_or(IpNet::V6(n.trunc()))
            }
            _ => IpNet::V6(n.trunc()),
        },
    }
}

/// The ipcache LPM key of a (normalised) network.
pub fn to_prefix(net: &IpNet) -> CidrPrefix {
    let net = normalize_net(net);
    let (addr, extra) = match net {
        IpNet::V4(n) => (to_addr(IpAddr::V4(n.addr())), V4_MAPPED_PREFIX_BITS as u8),
        IpNet::V6(n) => (to_addr(IpAddr::V6(n.addr())), 0),
    };
    CidrPrefix {
        prefix_len: net.prefix_len() + extra,
        addr,
    }
}

/// The IPv4 world prefix `0.0.0.0/0`.
pub fn world_v4() -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default())
}

/// The IPv6 world prefix `::/0`.
pub fn world_v6() -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap_or_default())
}

/// `addr` with the bits past `len` cleared.
pub fn mask(addr: Addr, len: u8) -> Addr {
    let bits = u128::from_be_bytes(addr);
    let m = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    };
    (bits & m).to_be_bytes()
}

/// Whether `inner` lies within `outer` and both are the same family.
pub fn net_within(inner: &IpNet, outer: &IpNet) -> bool {
    match (inner, outer) {
        (IpNet::V4(i), IpNet::V4(o)) => o.contains(i),
        (IpNet::V6(i), IpNet::V6(o)) => o.contains(i),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_prefix_is_mapped() {
        let p = to_prefix(&"10.1.2.3/8".parse().unwrap());
        assert_eq!(p.prefix_len, 104);
        assert_eq!(from_addr(p.addr), "10.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(to_prefix(&world_v4()).prefix_len, 96);
        assert_eq!(to_prefix(&world_v6()).prefix_len, 0);
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(
            normalize_net(&mapped),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn families_never_nest() {
        let v6all = world_v6();
        assert!(!net_within(&world_v4(), &v6all));
        assert!(net_within(&"2001:db8::/32".parse().unwrap(), &v6all));
        assert_eq!(
            mask(to_addr("10.1.2.3".parse().unwrap()), 120),
            to_addr("10.1.2.0".parse().unwrap())
        );
    }
}
