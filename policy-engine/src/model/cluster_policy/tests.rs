use super::*;

fn parse(yaml: &str) -> ClusterPolicy {
    let obj: ClusterNetworkPolicy = serde_norway::from_str(yaml).unwrap();
    ClusterPolicy::from_object(&obj)
}

fn fields(p: &ClusterPolicy) -> Vec<&str> {
    p.issues.iter().map(|i| i.field.as_str()).collect()
}

#[test]
fn a_valid_policy_parses() {
    let p = parse(
        r#"
metadata: {name: protect}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: kube-system}}}
  ingress:
  - name: deny-all
    action: Deny
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}, {destinationNamedPort: dns}]
  egress:
  - action: Accept
    to: [{networks: ["10.0.0.1/8"]}, {nodes: {}}]
"#,
    );
    assert!(p.is_valid(), "{:?}", p.issues);
    assert_eq!(p.tier, Tier::Admin);
    assert_eq!(p.ingress[0].action, Action::Deny);
    assert_eq!(
        p.ingress[0].ports,
        vec![
            CnpPort::Range {
                protocol: Protocol::Tcp,
                start: 80,
                end: 90
            },
            CnpPort::Named("dns".into())
        ]
    );
    // Normalized, as ipBlocks are.
    assert_eq!(
        p.egress[0].peers[0],
        CnpPeer::Networks(vec!["10.0.0.0/8".parse().unwrap()])
    );
}

#[test]
fn what_the_schema_and_its_cel_rules_forbid_is_reported_by_field() {
    let p = parse(
        r#"
metadata: {name: bad}
spec:
  tier: Middle
  priority: 1001
  subject: {namespaces: {}, pods: {podSelector: {}}}
  egress:
  - action: Allow
    to: []
  - action: Deny
    to: [{networks: ["10.0.0.0/33"]}, {}]
    protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}, {tcp: {}}]
  - action: Accept
    to: [{networks: ["10.0.0.0/8"]}]
    protocols: [{destinationNamedPort: http}]
  ingress:
  - action: Pass
    from: [{networks: ["10.0.0.0/8"]}]
"#,
    );
    assert_eq!(
        fields(&p),
        vec![
            "spec.tier",
            "spec.priority",
            "spec.subject",
            "spec.ingress[0].from[0].networks",
            "spec.egress[0].action",
            "spec.egress[0].to",
            "spec.egress[1].to[0].networks[0]",
            "spec.egress[1].to[1]",
            "spec.egress[1].protocols[0].tcp.destinationPort.range",
            "spec.egress[1].protocols[1].tcp.destinationPort",
            "spec.egress[2]",
        ]
    );
    assert_eq!(p.fail_dirs(), vec![Direction::Ingress, Direction::Egress]);
    assert_eq!(p.subject, None);
}

#[test]
fn domain_names_parse_and_are_flagged() {
    let p = parse(
        r#"
metadata: {name: dns}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Accept
    to: [{domainNames: ["*.example.com", "example.org."]}]
"#,
    );
    assert!(p.is_valid(), "{:?}", p.issues);
    assert!(p.uses_domain_names());
    let bad = parse(
        r#"
metadata: {name: dns}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
  - action: Accept
    to: [{domainNames: ["-x.example.com", "localhost"]}]
"#,
    );
    assert_eq!(
        fields(&bad),
        vec![
            "spec.egress[0].to[0].domainNames[0]",
            "spec.egress[0].to[0].domainNames[1]"
        ]
    );
}
