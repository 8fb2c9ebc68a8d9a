use super::probing::probe_family_v6;
use super::*;
use crate::layout::{self, tests::snapshot};
use crate::netns;
use crate::probe::parse_probes;

/// A bed for `snapshot` serving what `probes` need.
fn start(probes: &[Probe], snapshot: &Snapshot) -> Testbed {
    Testbed::start_with_snapshot(
        TestbedOptions {
            probes: probes.to_vec(),
            ..Default::default()
        },
        snapshot,
    )
    .unwrap()
}

#[test]
fn plain_bridge_end_to_end() {
    let snapshot = snapshot(&[
        ("prod/db", Some("10.244.1.10"), &[3306]),
        ("prod/api", Some("10.244.1.11"), &[8080]),
        ("dev/api", Some("10.244.2.11"), &[8080]),
        ("dev/dyn", None, &[80]),
    ]);
    let probes = parse_probes(
        r#"{"from": "prod/api", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "dev/api", "to": "prod/db", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "203.0.113.10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "prod/db", "to": "203.0.113.10", "port": 80, "allowed": true}
{"from": "prod/db", "to": "203.0.113.11", "port": 443, "protocol": "UDP", "allowed": true}
{"from": "dev/dyn", "to": "prod/api", "port": 8080, "allowed": true}
{"from": "prod/api", "to": "dev/dyn", "port": 80, "allowed": true}
{"from": "prod/api", "to": "prod/db", "port": 9, "protocol": "SCTP", "allowed": false}"#,
        Path::new("t"),
    )
    .unwrap();
    let bed = start(&probes, &snapshot);
    let t0 = std::time::Instant::now();
    let seen = bed.probe(&probes);
    eprintln!("{}", crate::report::table(&seen));
    assert_eq!(crate::report::mismatches(&seen), 0);
    assert_eq!(seen[7].allowed, None);
    // A port nobody serves is refused quickly: the test can fail.
    let closed = parse_probes(
        r#"{"from": "prod/api", "to": "prod/db", "port": 3307, "allowed": true}"#,
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(bed.probe(&closed)[0].allowed, Some(false));
    eprintln!("probing took {:?}", t0.elapsed());
    let node = bed.node_netns().to_string();
    drop(bed);
    assert!(!netns::netns_path(&node).exists());
}

#[test]
fn probe_family_follows_the_named_address() {
    let probes = parse_probes(
        r#"{"from": "a/x", "to": "a/y", "port": 80}
{"from": "a/x", "to": "fd00::1", "port": 80}
{"from": "2001:db8::1", "to": "a/y", "port": 80}
{"from": "192.0.2.1", "to": "a/y", "port": 80}
{"from": "192.0.2.1", "to": "fd00::1", "port": 80}"#,
        Path::new("t"),
    )
    .unwrap();
    let fam: Vec<_> = probes.iter().map(probe_family_v6).collect();
    assert_eq!(fam[..4], [Ok(false), Ok(true), Ok(true), Ok(false)]);
    assert!(fam[4].is_err());
}

#[test]
fn plain_bridge_dual_stack_end_to_end() {
    let mut snapshot = snapshot(&[
        ("prod/db", Some("10.244.1.10"), &[3306]),
        ("dev/api", Some("10.244.1.11"), &[8080]),
        ("dev/dyn", None, &[80]),
    ]);
    for (p, ip) in [
        ("prod/db", "fd00:10:244::10"),
        ("dev/api", "fd00:10:244::11"),
    ] {
        let p: PodRef = p.parse().unwrap();
        snapshot
            .pods
            .get_mut(&p)
            .unwrap()
            .ips
            .push(ip.parse().unwrap());
    }
    let probes = parse_probes(
        r#"{"from": "dev/api", "to": "fd00:10:244::10", "port": 3306, "allowed": true}
{"from": "dev/api", "to": "fd00:10:244::10", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "dev/api", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "fd00:10:244::10", "to": "dev/api", "port": 8080, "allowed": true}
{"from": "2001:db8::10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "2001:db8::10", "to": "prod/db", "port": 3306, "protocol": "UDP", "allowed": true}
{"from": "prod/db", "to": "2001:db8::11", "port": 443, "allowed": true}
{"from": "dev/dyn", "to": "fd00:10:244::11", "port": 8080, "allowed": true}
{"from": "203.0.113.10", "to": "prod/db", "port": 3306, "allowed": true}
{"from": "192.0.2.1", "to": "fd00:10:244::10", "port": 3306}"#,
        Path::new("t"),
    )
    .unwrap();
    let bed = start(&probes, &snapshot);
    assert!(bed.dual_stack());
    let db = &bed.pods()[&"prod/db".parse().unwrap()];
    assert_eq!(db.ip6, Some("fd00:10:244::10".parse().unwrap()));
    let dyn_pod = &bed.pods()[&"dev/dyn".parse().unwrap()];
    let dyn6 = dyn_pod.ip6.expect("IPAM gives every pod an IPv6 address");
    assert!(layout::in_subnet6(dyn6, bed.pod_subnet6().unwrap()));
    let t0 = std::time::Instant::now();
    let seen = bed.probe(&probes);
    eprintln!("{}", crate::report::table(&seen));
    eprintln!("probing took {:?}", t0.elapsed());
    assert_eq!(crate::report::mismatches(&seen), 0);
    assert!(seen[..9].iter().all(|o| o.allowed.is_some()));
    // Mixed families cannot run.
    assert_eq!(seen[9].allowed, None, "{}", seen[9].detail);
    // A port nobody serves is refused over IPv6 too: the test can fail.
    let closed = parse_probes(
        r#"{"from": "fd00:10:244::10", "to": "dev/api", "port": 8081}"#,
        Path::new("t"),
    )
    .unwrap();
    let closed = bed.probe(&closed);
    assert_eq!(closed[0].allowed, Some(false), "{}", closed[0].detail);
}
