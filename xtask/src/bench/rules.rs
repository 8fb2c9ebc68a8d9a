//! The comparators: a cluster's NetworkPolicies written as iptables rules
//! the way kube-router writes them, in two flavours — every address a rule
//! of its own (`Linear`), or addresses in ipsets matched by one rule
//! (`Ipset`). Both go into the FORWARD chain of the node namespace, which
//! bridged pod traffic passes through (br_netfilter), and both accept
//! RELATED/ESTABLISHED first, so only a connection's first packet walks
//! the policy rules.
//!
//! Shape, per isolated pod and direction: `PAL-FWD` jumps to the pod's
//! chain on its address; the pod chain accepts established traffic, drops
//! invalid, jumps to one chain per policy selecting the pod, drops what no
//! policy marked (mark bit 0x10000) and clears the mark. A policy chain
//! jumps to one chain per rule; a rule chain returns early on an `except`,
//! and otherwise marks and returns on each allowed (peer, port) pair.
//!
//! IPv4 only, numeric ports (named ports resolved on the destination pod
//! for ingress); anything else is refused with what it was, not guessed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{bail, Result};
use ipnet::IpNet;
use policy_engine::model::{
    Direction, Peer, PodInfo, PodPhase, Policy, PortRef, PortSpec, Protocol, Snapshot,
};

/// How addresses are matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// One `-s`/`-d` rule per address or CIDR.
    Linear,
    /// `hash:net` / `hash:ip` sets, one `-m set` rule per peer kind.
    Ipset,
}

/// A ruleset ready to load.
#[derive(Debug, Default)]
pub struct Ruleset {
    /// `iptables-restore --noflush` input that installs the rules.
    pub install: String,
    /// `iptables-restore --noflush` input that removes them again.
    pub remove: String,
    /// `ipset restore` input creating the sets (empty for `Linear`).
    pub sets: String,
    /// Names of the sets, to destroy after `remove`.
    pub set_names: Vec<String>,
    /// How many rules `install` holds.
    pub rules: usize,
}

const MARK: &str = "0x10000/0x10000";

/// Translates every policy of `snap` into one ruleset.
pub fn translate(snap: &Snapshot, flavour: Flavour) -> Result<Ruleset> {
    let mut out = Ruleset::default();
    let mut chains: Vec<String> = vec!["PAL-FWD".into()];
    let mut body = String::new();
    let mut policy_chain = std::collections::BTreeMap::new();
    let mut sets = String::new();
    for (pi, (pref, policy)) in snap.policies.iter().enumerate() {
        for dir in [Direction::Ingress, Direction::Egress] {
            let Some(rules) = policy.rules(dir) else {
                continue;
            };
            let chain = format!("PAL-NWPLCY-{pi}-{}", tag(dir));
            chains.push(chain.clone());
            policy_chain.insert((pref.clone(), tag(dir)), chain.clone());
            if !policy.issues.is_empty() {
                continue; // allows nothing: an empty chain
            }
            for (ri, rule) in rules.iter().enumerate() {
                let rchain = format!("{chain}-R{ri}");
                chains.push(rchain.clone());
                line(&mut body, format!("-A {chain} -j {rchain}"));
                let ports = port_matches(&rule.ports, dir, policy, snap, pref)?;
                let peer_dir = if dir == Direction::Ingress { "s" } else { "d" };
                let set_dir = if dir == Direction::Ingress {
                    "src"
                } else {
                    "dst"
                };
                let mut sources: Vec<String> = Vec::new();
                if rule.peers.is_empty() {
                    sources.push(String::new());
                }
                match flavour {
                    Flavour::Linear => {
                        // In the policy's order, as kube-router walks a
                        // rule's peers (the benchmark's client, a pod peer
                        // listed after the ipBlocks, is found after every
                        // CIDR rule). An ipBlock with excepts gets a chain
                        // of its own, so an except skips that block only.
                        for (k, peer) in rule.peers.iter().enumerate() {
                            match peer {
                                Peer::IpBlock(b) if b.except.is_empty() => {
                                    let n = v4(&b.cidr)?;
                                    for port in &ports {
                                        allow(
                                            &mut body,
                                            &rchain,
                                            &format!("-{peer_dir} {n} {port}"),
                                        );
                                    }
                                }
                                Peer::IpBlock(b) => {
                                    let n = v4(&b.cidr)?;
                                    let bchain = format!("{rchain}-B{k}");
                                    chains.push(bchain.clone());
                                    line(
                                        &mut body,
                                        format!("-A {rchain} -{peer_dir} {n} -j {bchain}"),
                                    );
                                    line(
                                        &mut body,
                                        format!("-A {rchain} -m mark --mark {MARK} -j RETURN"),
                                    );
                                    for e in &b.except {
                                        line(
                                            &mut body,
                                            format!("-A {bchain} -{peer_dir} {} -j RETURN", v4(e)?),
                                        );
                                    }
                                    for port in &ports {
                                        allow(&mut body, &bchain, port);
                                    }
                                }
                                Peer::Pods { .. } => {
                                    for ip in peer_pods(snap, &pref.namespace, peer) {
                                        for port in &ports {
                                            allow(
                                                &mut body,
                                                &rchain,
                                                &format!("-{peer_dir} {ip}/32 {port}"),
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Flavour::Ipset => {
                        let (mut nets, mut pods, mut excepts) =
                            (Vec::new(), BTreeSet::new(), Vec::new());
                        for peer in &rule.peers {
                            match peer {
                                Peer::IpBlock(b) => {
                                    nets.push(v4(&b.cidr)?);
                                    for e in &b.except {
                                        excepts.push(v4(e)?);
                                    }
                                }
                                Peer::Pods { .. } => {
                                    pods.extend(peer_pods(snap, &pref.namespace, peer))
                                }
                            }
                        }
                        // One set per peer kind and rule: an except of one
                        // ipBlock (a `nomatch` entry) also hides what
                        // another ipBlock of the rule allows, as it does in
                        // kube-router's sets.
                        if !nets.is_empty() {
                            let name = format!("PAL-{pi}{}{ri}-NET", tag(dir));
                            let _ = writeln!(
                                sets,
                                "create {name} hash:net family inet maxelem {}",
                                (nets.len() + excepts.len()).max(64) * 2
                            );
                            for n in &nets {
                                let _ = writeln!(sets, "add {name} {n}");
                            }
                            for e in &excepts {
                                let _ = writeln!(sets, "add {name} {e} nomatch");
                            }
                            sources.push(format!("-m set --match-set {name} {set_dir} "));
                            out.set_names.push(name);
                        }
                        if !pods.is_empty() {
                            let name = format!("PAL-{pi}{}{ri}-POD", tag(dir));
                            let _ = writeln!(
                                sets,
                                "create {name} hash:ip family inet maxelem {}",
                                pods.len().max(64) * 2
                            );
                            for ip in &pods {
                                let _ = writeln!(sets, "add {name} {ip}");
                            }
                            sources.push(format!("-m set --match-set {name} {set_dir} "));
                            out.set_names.push(name);
                        }
                    }
                }
                for src in &sources {
                    for port in &ports {
                        allow(&mut body, &rchain, &format!("{src}{port}"));
                    }
                }
            }
        }
    }
    // The pods' chains.
    for (i, (pod, info)) in snap.pods.iter().enumerate() {
        if !enforceable(info) {
            continue;
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            let selecting: Vec<&String> = snap
                .policies
                .iter()
                .filter(|(r, p)| {
                    r.namespace == pod.namespace && p.rules(dir).is_some() && selects(p, info)
                })
                .filter_map(|(r, _)| policy_chain.get(&(r.clone(), tag(dir))))
                .collect();
            if selecting.is_empty() {
                continue;
            }
            let chain = format!("PAL-POD-{i}-{}", tag(dir));
            chains.push(chain.clone());
            let side = if dir == Direction::Ingress { "d" } else { "s" };
            for ip in info.ips.iter() {
                let IpAddr::V4(ip) = ip else {
                    bail!("pod {pod}: the comparators are IPv4 only, not {ip}");
                };
                line(&mut body, format!("-A PAL-FWD -{side} {ip}/32 -j {chain}"));
            }
            line(
                &mut body,
                format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            );
            line(
                &mut body,
                format!("-A {chain} -m conntrack --ctstate INVALID -j DROP"),
            );
            for p in selecting {
                line(&mut body, format!("-A {chain} -j {p}"));
            }
            line(
                &mut body,
                format!("-A {chain} -m mark ! --mark {MARK} -j DROP"),
            );
            line(
                &mut body,
                format!("-A {chain} -j MARK --set-xmark 0x0/0x10000"),
            );
        }
    }
    out.rules = body.lines().count() + 1;
    let mut install = String::from("*filter\n");
    for c in &chains {
        let _ = writeln!(install, ":{c} - [0:0]");
    }
    install.push_str(&body);
    install.push_str("-A FORWARD -j PAL-FWD\nCOMMIT\n");
    let mut remove = String::from("*filter\n-D FORWARD -j PAL-FWD\n");
    for c in &chains {
        let _ = writeln!(remove, "-F {c}");
    }
    for c in &chains {
        let _ = writeln!(remove, "-X {c}");
    }
    remove.push_str("COMMIT\n");
    out.install = install;
    out.remove = remove;
    out.sets = sets;
    Ok(out)
}

/// Appends one rule.
fn line(body: &mut String, rule: String) {
    body.push_str(&rule);
    body.push('\n');
}

/// Marks what `matches` (`-s … -p … --dport … `) and returns, as
/// kube-router writes each allowed peer: two rules.
fn allow(body: &mut String, chain: &str, matches: &str) {
    line(
        body,
        format!("-A {chain} {matches}-j MARK --set-xmark {MARK}"),
    );
    line(
        body,
        format!("-A {chain} {matches}-m mark --mark {MARK} -j RETURN"),
    );
}

fn tag(dir: Direction) -> &'static str {
    match dir {
        Direction::Ingress => "I",
        Direction::Egress => "E",
    }
}

fn v4(net: &IpNet) -> Result<IpNet> {
    match net {
        IpNet::V4(_) => Ok(*net),
        IpNet::V6(_) => bail!("the comparators are IPv4 only, not ipBlock {net}"),
    }
}

/// Pods a policy can be enforced on: running, addressed, not hostNetwork.
fn enforceable(info: &PodInfo) -> bool {
    info.phase == PodPhase::Running && !info.ips.is_empty() && !info.host_network
}

fn selects(policy: &Policy, pod: &PodInfo) -> bool {
    // An invalid podSelector isolates the whole namespace (fail closed).
    policy
        .pod_selector
        .as_ref()
        .is_none_or(|s| s.matches(&pod.labels))
}

/// The IPv4 addresses of the pods a `Peer::Pods` chooses.
fn peer_pods(snap: &Snapshot, own_ns: &str, peer: &Peer) -> Vec<IpAddr> {
    let Peer::Pods { namespaces, pods } = peer else {
        return Vec::new();
    };
    snap.pods
        .iter()
        .filter(|(r, _)| match namespaces {
            None => r.namespace == own_ns,
            Some(sel) => snap
                .namespaces
                .get(&r.namespace)
                .is_some_and(|n| sel.matches(&n.labels)),
        })
        .filter(|(_, p)| enforceable(p) && pods.as_ref().is_none_or(|s| s.matches(&p.labels)))
        .flat_map(|(_, p)| p.ips.iter().copied().filter(IpAddr::is_ipv4))
        .collect()
}

/// The `-p … --dport …` part of each allowed port (one empty string when
/// any port is allowed).
fn port_matches(
    ports: &[PortSpec],
    dir: Direction,
    policy: &Policy,
    snap: &Snapshot,
    pref: &policy_engine::model::PolicyRef,
) -> Result<Vec<String>> {
    if ports.is_empty() {
        return Ok(vec![String::new()]);
    }
    let mut out = BTreeSet::new();
    for spec in ports {
        let proto = match spec.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        match (&spec.port, spec.end_port) {
            (None, _) => {
                out.insert(format!("-p {proto} "));
            }
            (Some(PortRef::Number(p)), None) => {
                out.insert(format!("-p {proto} --dport {p} "));
            }
            (Some(PortRef::Number(p)), Some(e)) => {
                out.insert(format!("-p {proto} --dport {p}:{e} "));
            }
            (Some(PortRef::Name(name)), _) => {
                if dir == Direction::Egress {
                    bail!("policy {pref}: named egress port {name:?} is not translated by the comparators");
                }
                // Resolved on each selected pod; one rule per number found.
                for (r, p) in &snap.pods {
                    if r.namespace != pref.namespace || !selects(policy, p) {
                        continue;
                    }
                    for cp in p
                        .ports
                        .iter()
                        .filter(|c| c.name.as_deref() == Some(name) && c.protocol == spec.protocol)
                    {
                        out.insert(format!("-p {proto} --dport {} ", cp.port));
                    }
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::cluster;

    fn snapshot(cidrs: usize) -> Snapshot {
        let mut loaded = policy_engine::manifest::Loaded::default();
        policy_engine::manifest::load_str(
            &cluster::manifest(cidrs),
            "b.yaml".as_ref(),
            &mut loaded,
        )
        .unwrap();
        loaded.snapshot
    }

    #[test]
    fn linear_rules_hold_one_line_per_cidr_and_port() {
        let r = translate(&snapshot(5), Flavour::Linear).unwrap();
        // (5 CIDRs + 1 pod) × 3 ports × (mark + return).
        let marks = r
            .install
            .lines()
            .filter(|l| l.contains("--set-xmark 0x10000"))
            .count();
        assert_eq!(marks, 18);
        assert!(r
            .install
            .contains("-A PAL-FWD -d 10.244.0.11/32 -j PAL-POD-1-I"));
        assert!(r
            .install
            .contains("-s 100.64.0.4/30 -p tcp --dport 8080 -j MARK"));
        assert!(r
            .install
            .contains("-s 10.244.0.10/32 -p tcp --dport 5201 -j MARK"));
        let est = r.install.find("ESTABLISHED").unwrap();
        assert!(est < r.install.find("-A PAL-POD-1-I -j PAL-NWPLCY").unwrap());
        assert!(r.sets.is_empty());
        assert!(r.remove.contains("-D FORWARD -j PAL-FWD"));
    }

    #[test]
    fn linear_rules_keep_the_policy_order_and_scope_excepts_to_their_block() {
        let r = translate(&snapshot(5), Flavour::Linear).unwrap();
        let cidr = r.install.find("-s 100.64.0.16/30").unwrap();
        let client = r.install.find("-s 10.244.0.10/32").unwrap();
        assert!(cidr < client, "the client's rules come after the CIDRs'");
        let mut snap = snapshot(0);
        let policy = snap.policies.values_mut().next().unwrap();
        policy.ingress.as_mut().unwrap()[0].peers.insert(
            0,
            Peer::IpBlock(policy_engine::model::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.244.0.0/24".parse().unwrap()],
            }),
        );
        let r = translate(&snap, Flavour::Linear).unwrap();
        let jump = r
            .install
            .find("-s 10.0.0.0/8 -j PAL-NWPLCY-0-I-R0-B0")
            .unwrap();
        let except = r
            .install
            .find("-A PAL-NWPLCY-0-I-R0-B0 -s 10.244.0.0/24 -j RETURN")
            .unwrap();
        let client = r
            .install
            .find("-A PAL-NWPLCY-0-I-R0 -s 10.244.0.10/32")
            .unwrap();
        assert!(jump < client && except > 0);
        assert!(r.install.contains(":PAL-NWPLCY-0-I-R0-B0 - [0:0]"));
    }

    #[test]
    fn ipset_rules_match_sets() {
        let r = translate(&snapshot(5), Flavour::Ipset).unwrap();
        assert_eq!(r.set_names.len(), 2);
        assert_eq!(
            r.sets
                .lines()
                .filter(|l| l.starts_with("add PAL-0I0-NET"))
                .count(),
            5
        );
        assert!(r.sets.contains("add PAL-0I0-POD 10.244.0.10"));
        let marks = r
            .install
            .lines()
            .filter(|l| l.contains("--set-xmark 0x10000"))
            .count();
        assert_eq!(marks, 6);
    }
}
