//! Dual-stack pods through the netns test bed: every pod has an IPv4 and an
//! IPv6 address, the policies use podSelector, namespaceSelector (alone and
//! ANDed with a podSelector) and ipBlocks (with an except) of both families,
//! one pod is isolated both ways (its replies need conntrack), and the full
//! TCP and UDP pod matrix runs over IPv4 and over IPv6, plus probes from and
//! to outside hosts of both families.
//!
//! With Palisade every probe must get the verdict `policy-agent simulate`
//! gives (the engine's lookup model over the compiled state), some of them
//! denials over IPv6, and the IPv6 pod matrix must mirror the IPv4 one (the
//! pod selectors do not care about families); on the plain bridge the
//! policies are ignored and everything gets through.
//!
//! Needs root, bpffs at /sys/fs/bpf, and the `policy-agent` and
//! `palisade-cni` binaries (see `palisade_tests::bin_dir`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_tests::bin_dir;
use policy_engine::tools::simulate::{self, Simulation};
use testbed::{
    default_probes, default_probes_v6, load_snapshot, mismatches, parse_probes, report, End,
    Observation, Probe, Protocol, Testbed, TestbedOptions,
};

/// Two namespaces, four dual-stack pods (pod IPv6 addresses from a ULA
/// range; outside hosts use documentation addresses), four policies.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {kubernetes.io/metadata.name: web, team: web}}
---
apiVersion: v1
kind: Namespace
metadata: {name: data, labels: {kubernetes.io/metadata.name: data, team: data}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: web, labels: {app: client}}
spec:
  containers: [{name: c, image: x, ports: [{containerPort: 80}]}]
status:
  podIP: 10.244.0.10
  podIPs: [{ip: 10.244.0.10}, {ip: "fd00:10:244::10"}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: web, labels: {app: server}}
spec:
  containers:
  - name: s
    image: x
    ports: [{containerPort: 80}, {containerPort: 53, protocol: UDP}]
status:
  podIP: 10.244.0.11
  podIPs: [{ip: 10.244.0.11}, {ip: "fd00:10:244::11"}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: data, labels: {app: db}}
spec:
  containers:
  - name: d
    image: x
    ports: [{containerPort: 5432}, {containerPort: 5353, protocol: UDP}]
status:
  podIP: 10.244.0.20
  podIPs: [{ip: 10.244.0.20}, {ip: "fd00:10:244::20"}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: data, labels: {app: other}}
spec:
  containers: [{name: o, image: x, ports: [{containerPort: 80}]}]
status:
  podIP: 10.244.0.21
  podIPs: [{ip: 10.244.0.21}, {ip: "fd00:10:244::21"}]
---
# db: TCP 5432 only from server pods in team=web namespaces (one peer, AND);
# UDP 5353 only from the outside host 2001:db8::10; TCP 5432 also from the
# outside host 192.0.2.10.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: data}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: web}}
      podSelector: {matchLabels: {app: server}}
    ports: [{port: 5432}]
  - from: [{ipBlock: {cidr: "2001:db8::10/128"}}]
    ports: [{port: 5353, protocol: UDP}]
  - from: [{ipBlock: {cidr: 192.0.2.10/32}}]
    ports: [{port: 5432}]
---
# server: TCP 80 and UDP 53 from client pods of its namespace only.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-ingress, namespace: web}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}]
---
# client: no ingress at all, so the replies to its allowed connections
# (TCP and UDP, both families) get in only through conntrack (rule 9).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-no-ingress, namespace: web}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress]
---
# client: egress to its namespace's server, to any pod of team=data
# namespaces, and to outside hosts of each family on TCP 443, one excepted.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: web}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
  - to: [{namespaceSelector: {matchLabels: {team: data}}}]
  - to:
    - ipBlock: {cidr: "2001:db8::/64", except: ["2001:db8::11/128"]}
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.11/32]}
    ports: [{port: 443}]
"#;

/// Probes from and to outside hosts, in both families: hosts an ipBlock
/// allows and neighbours that no ipBlock covers or that are excepted.
const OUTSIDE_PROBES: &str = r#"
{"from": "2001:db8::10", "to": "data/db", "port": 5353, "protocol": "UDP"}
{"from": "2001:db8::11", "to": "data/db", "port": 5353, "protocol": "UDP"}
{"from": "2001:db8::10", "to": "data/db", "port": 5432}
{"from": "192.0.2.10", "to": "data/db", "port": 5432}
{"from": "192.0.2.11", "to": "data/db", "port": 5432}
{"from": "192.0.2.10", "to": "data/db", "port": 5353, "protocol": "UDP"}
{"from": "2001:db8::10", "to": "web/server", "port": 80}
{"from": "2001:db8::10", "to": "data/other", "port": 80}
{"from": "192.0.2.10", "to": "data/other", "port": 80}
{"from": "web/client", "to": "2001:db8::10", "port": 443}
{"from": "web/client", "to": "2001:db8::11", "port": 443}
{"from": "web/client", "to": "2001:db8::10", "port": 443, "protocol": "UDP"}
{"from": "web/client", "to": "198.51.100.10", "port": 443}
{"from": "web/client", "to": "198.51.100.11", "port": 443}
{"from": "web/client", "to": "2001:db8::12", "port": 443}
{"from": "web/client", "to": "198.51.100.12", "port": 443}
{"from": "data/other", "to": "2001:db8::11", "port": 443}
{"from": "data/other", "to": "2001:db8::11", "port": 443, "protocol": "UDP"}
"#;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The cluster manifest in a folder of its own, removed on drop.
struct Manifest {
    dir: PathBuf,
    file: PathBuf,
}

impl Manifest {
    fn write() -> Manifest {
        let dir = std::env::temp_dir().join(format!(
            "pal-dual-stack-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.yaml");
        std::fs::write(&file, CLUSTER).unwrap();
        Manifest { dir, file }
    }
}

impl Drop for Manifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_v6(p: &Probe) -> bool {
    [&p.from, &p.to]
        .iter()
        .any(|e| matches!(e, End::Ip(ip) if ip.is_ipv6()))
}

/// Every probe of this test, each with the verdict `policy-agent simulate`
/// gives it: the TCP and UDP pod matrix over IPv4 and over IPv6, then the
/// outside probes.
fn probes(cluster: &Path) -> Vec<Probe> {
    let snapshot = load_snapshot(&[cluster.to_path_buf()]).unwrap();
    let v4 = default_probes(&snapshot);
    let v6 = default_probes_v6(&snapshot);
    assert_eq!(v4.len(), v6.len(), "every pod is dual-stack");
    assert!(v4.iter().any(|p| p.protocol == Protocol::Udp));
    let outside = parse_probes(OUTSIDE_PROBES, Path::new("OUTSIDE_PROBES")).unwrap();
    let sim = Simulation::new(snapshot);
    v4.into_iter()
        .chain(v6)
        .chain(outside)
        .map(|mut p| {
            let judged = sim
                .judge(&simulate::Probe {
                    from: p.from.to_string().parse().unwrap(),
                    to: p.to.to_string().parse().unwrap(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .unwrap_or_else(|e| panic!("simulate cannot judge {p}: {e}"));
            assert_eq!(
                judged.connection.dst_ip.is_some_and(|ip| ip.is_ipv6()),
                is_v6(&p),
                "{p}: simulate picked another family than the test bed"
            );
            p.expected = Some(judged.connection.allowed());
            p
        })
        .collect()
}

fn start(cluster: &Path, probes: &[Probe], palisade: bool) -> Testbed {
    let bed = Testbed::start(TestbedOptions {
        manifests: vec![cluster.to_path_buf()],
        palisade,
        bin_dir: if palisade { bin_dir() } else { PathBuf::new() },
        probes: probes.to_vec(),
        nodes: 1,
        agent_args: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("dual-stack bed (palisade={palisade}): {e}"));
    assert!(bed.dual_stack());
    for (pod, w) in bed.pods() {
        assert!(w.ip6.is_some(), "{pod} has no IPv6 address");
    }
    bed
}

fn verdict_of(seen: &[Observation], line: &str) -> Option<bool> {
    let want = &parse_probes(line, Path::new("inline")).unwrap()[0];
    seen.iter()
        .find(|o| o.probe.key() == want.key())
        .unwrap_or_else(|| panic!("no probe {want}"))
        .allowed
}

#[test]
fn policies_hold_over_ipv4_and_ipv6_with_palisade() {
    let manifest = Manifest::write();
    let probes = probes(&manifest.file);
    let bed = start(&manifest.file, &probes, true);
    let seen = bed.probe(&probes);
    let table = report::table(&seen);
    eprintln!("{table}");
    if mismatches(&seen) > 0 {
        eprintln!("--- agent log tail ---\n{}", bed.agent_log_tail(40));
    }
    assert!(
        seen.iter().all(|o| o.allowed.is_some()),
        "some probes could not run:\n{table}"
    );
    assert_eq!(mismatches(&seen), 0, "with Palisade:\n{table}");

    // Both outcomes occur over IPv6, for TCP and for UDP: the test can fail.
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for allowed in [true, false] {
            assert!(
                seen.iter().any(|o| is_v6(&o.probe)
                    && o.probe.protocol == protocol
                    && o.allowed == Some(allowed)),
                "no IPv6 {protocol:?} probe was {}:\n{table}",
                if allowed { "allowed" } else { "denied" }
            );
        }
    }

    // The IPv6 pod matrix mirrors the IPv4 one.
    let addr6: BTreeMap<End, End> = bed
        .pods()
        .iter()
        .filter_map(|(p, w)| Some((End::Ip(w.ip6?.into()), End::Pod(p.clone()))))
        .collect();
    let pods_only =
        |o: &&Observation| matches!((&o.probe.from, &o.probe.to), (End::Pod(_), End::Pod(_)));
    let v4: BTreeMap<_, _> = seen
        .iter()
        .filter(pods_only)
        .map(|o| (o.probe.key(), o.allowed))
        .collect();
    let v6: BTreeMap<_, _> = seen
        .iter()
        .filter_map(|o| {
            let to = addr6.get(&o.probe.to)?;
            let mut p = o.probe.clone();
            p.to = to.clone();
            Some((p.key(), o.allowed))
        })
        .collect();
    assert!(!v4.is_empty());
    assert_eq!(v4, v6, "IPv4 and IPv6 pod matrices differ:\n{table}");

    // A few verdicts spelled out, independently of the simulator.
    for (line, allowed) in [
        (
            r#"{"from": "web/client", "to": "fd00:10:244::11", "port": 80}"#,
            true,
        ),
        (
            r#"{"from": "web/server", "to": "fd00:10:244::10", "port": 80}"#,
            false,
        ),
        (
            r#"{"from": "web/client", "to": "fd00:10:244::11", "port": 53, "protocol": "UDP"}"#,
            true,
        ),
        (
            r#"{"from": "data/other", "to": "fd00:10:244::11", "port": 80}"#,
            false,
        ),
        (
            r#"{"from": "web/server", "to": "fd00:10:244::20", "port": 5432}"#,
            true,
        ),
        (
            r#"{"from": "web/client", "to": "fd00:10:244::20", "port": 5432}"#,
            false,
        ),
        (
            r#"{"from": "data/other", "to": "fd00:10:244::20", "port": 5432}"#,
            false,
        ),
        (
            r#"{"from": "2001:db8::10", "to": "data/db", "port": 5353, "protocol": "UDP"}"#,
            true,
        ),
        (
            r#"{"from": "2001:db8::11", "to": "data/db", "port": 5353, "protocol": "UDP"}"#,
            false,
        ),
        (
            r#"{"from": "2001:db8::10", "to": "data/db", "port": 5432}"#,
            false,
        ),
        (
            r#"{"from": "192.0.2.10", "to": "data/db", "port": 5432}"#,
            true,
        ),
        (
            r#"{"from": "192.0.2.10", "to": "data/db", "port": 5353, "protocol": "UDP"}"#,
            false,
        ),
        (
            r#"{"from": "web/client", "to": "2001:db8::10", "port": 443}"#,
            true,
        ),
        (
            r#"{"from": "web/client", "to": "2001:db8::11", "port": 443}"#,
            false,
        ),
        (
            r#"{"from": "web/client", "to": "2001:db8::10", "port": 443, "protocol": "UDP"}"#,
            false,
        ),
        (
            r#"{"from": "web/client", "to": "2001:db8::12", "port": 443}"#,
            true,
        ),
        (
            r#"{"from": "data/other", "to": "2001:db8::11", "port": 443, "protocol": "UDP"}"#,
            true,
        ),
    ] {
        assert_eq!(verdict_of(&seen, line), Some(allowed), "{line}\n{table}");
    }

    // The node itself (kubelet probes) reaches an ingress-isolated pod over
    // both families: the agent was told both of its addresses (rule 12).
    let node6 = bed.node_addr6().expect("dual-stack node address");
    let from_node = parse_probes(
        &format!(
            r#"{{"from": "{}", "to": "web/server", "port": 80, "allowed": true}}
{{"from": "{node6}", "to": "web/server", "port": 80, "allowed": true}}"#,
            bed.node_addr()
        ),
        Path::new("inline"),
    )
    .unwrap();
    let seen = bed.probe(&from_node);
    assert_eq!(mismatches(&seen), 0, "{}", report::table(&seen));
    assert!(
        seen.iter().all(|o| o.allowed.is_some()),
        "{}",
        report::table(&seen)
    );
}

#[test]
fn policies_are_ignored_on_the_plain_bridge_over_both_families() {
    let manifest = Manifest::write();
    let probes = probes(&manifest.file);
    let expected_denials = probes.iter().filter(|p| p.expected == Some(false)).count();
    let v6_denials = probes
        .iter()
        .filter(|p| p.expected == Some(false) && is_v6(p))
        .count();
    assert!(v6_denials > 0, "nothing to enforce over IPv6");
    let bed = start(&manifest.file, &probes, false);
    let seen = bed.probe(&probes);
    let table = report::table(&seen);
    assert!(
        seen.iter().all(|o| o.allowed == Some(true)),
        "on the plain bridge every probe should get through:\n{table}"
    );
    assert_eq!(mismatches(&seen), expected_denials, "{table}");
}
