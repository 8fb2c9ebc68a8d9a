//! Finding a running pod's host veth from its address, the way the agent
//! adopts pods that started before Palisade (`links::find_pod_veths`),
//! with real namespaces and veths: the veth is proven by its peer's
//! namespace and interface index, a name says nothing, and an address
//! claimed by two pods' interfaces adopts neither. Needs root.

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeMap;
use std::net::IpAddr;

use netns::{veth, NetNs, VethSpec};
use policy_agent::links::{find_pod_veths, find_pod_veths_among, FoundVeth, LinkError};

fn lookup(
    node: &NetNs,
    pods: &BTreeMap<&'static str, Vec<IpAddr>>,
) -> BTreeMap<&'static str, Result<FoundVeth, LinkError>> {
    lookup_among(node, pods, None)
}

/// [`lookup`], among the named host veths only (as a CNI ADD looks).
fn lookup_among(
    node: &NetNs,
    pods: &BTreeMap<&'static str, Vec<IpAddr>>,
    among: Option<&[String]>,
) -> BTreeMap<&'static str, Result<FoundVeth, LinkError>> {
    let path = node.path();
    std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            match among {
                None => rt.block_on(find_pod_veths(pods)).unwrap(),
                Some(names) => rt.block_on(find_pod_veths_among(pods, names)).unwrap(),
            }
        })
        .join()
        .unwrap()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_pods_veth_is_the_one_whose_peer_holds_its_address() {
    kernel::require_root();
    let node = NetNs::new("adopt-node");
    let (a, b) = (NetNs::new("adopt-a"), NetNs::new("adopt-b"));
    // Names that lie: the veth named like pod a's leads to pod b.
    veth(
        Some(&node),
        &a,
        &VethSpec {
            host: "vethb",
            host_cidr: "10.98.0.1/32",
            pod_if: "eth0",
            pod_cidr: "10.98.0.2/24",
            gateway: None,
        },
    );
    veth(
        Some(&node),
        &b,
        &VethSpec {
            host: "vetha",
            host_cidr: "10.98.1.1/32",
            pod_if: "eth0",
            pod_cidr: "10.98.0.3/24",
            gateway: None,
        },
    );
    b.exec(&[
        "ip",
        "addr",
        "add",
        "2001:db8:98::3/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let pods = BTreeMap::from([
        ("a", vec![ip("10.98.0.2")]),
        ("b", vec![ip("10.98.0.3"), ip("2001:db8:98::3")]),
        ("gone", vec![ip("10.98.0.9")]),
    ]);
    let found = lookup(&node, &pods);
    assert_eq!(found["a"].as_ref().unwrap().ifname, "vethb");
    assert_eq!(found["b"].as_ref().unwrap().ifname, "vetha");
    assert!(
        !found.contains_key("gone"),
        "a pod with no veth here is not found"
    );
    // An IPv6-only lookup finds it too.
    let v6 = lookup(&node, &BTreeMap::from([("b", vec![ip("2001:db8:98::3")])]));
    assert_eq!(v6["b"].as_ref().unwrap().ifname, "vetha");

    // Pod b claims a's address as well: neither veth is taken for a.
    b.exec(&["ip", "addr", "add", "10.98.0.2/32", "dev", "eth0"]);
    let found = lookup(&node, &pods);
    match &found["a"] {
        Err(LinkError::Ambiguous { ifnames, .. }) => {
            let mut names = ifnames.clone();
            names.sort();
            assert_eq!(names, ["vetha", "vethb"]);
        }
        other => panic!("a contested address was adopted: {other:?}"),
    }
    // A CNI ADD names pod a's veth: b's claim does not make it ambiguous,
    // and a veth not named is never the answer.
    let named = |n: &str| vec![n.to_string()];
    let a_only = BTreeMap::from([("a", vec![ip("10.98.0.2")])]);
    let found = lookup_among(&node, &a_only, Some(&named("vethb")));
    assert_eq!(found["a"].as_ref().unwrap().ifname, "vethb");
    let found = lookup_among(&node, &a_only, Some(&named("vetha")));
    assert_eq!(
        found["a"].as_ref().unwrap().ifname,
        "vetha",
        "b's veth holds it too"
    );
    let found = lookup_among(&node, &a_only, Some(&named("veth-none")));
    assert!(found.is_empty(), "{found:?}");
}
