//! Loading manifests: shapes, defaults, strictness, locations.
use super::*;
use crate::model::{PodRef, Protocol};

fn load(text: &str, name: &str) -> Result<Loaded, ManifestError> {
    let mut l = Loaded::default();
    load_str(text, Path::new(name), &mut l).map(|()| l)
}

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  containers:
  - name: c
    image: x
    ports: [{containerPort: 80, name: http}, {containerPort: 53, protocol: UDP}]
status:
  podIP: 10.0.0.1
  podIPs: [{ip: 10.0.0.1}, {ip: "2001:db8::1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: s}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec: {clusterIP: 10.96.0.8, selector: {app: web}, ports: [{port: 8000, targetPort: http}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  egress: [{}]
"#;

#[test]
fn loads_yaml_with_defaults() {
    let l = load(YAML, "c.yaml").unwrap();
    assert!(l.unknown_fields.is_empty(), "{:?}", l.unknown_fields);
    let s = &l.snapshot;
    assert_eq!(
        s.namespaces["prod"].labels["kubernetes.io/metadata.name"],
        "prod"
    );
    let pod = &s.pods[&PodRef::new("prod", "web")];
    assert_eq!(pod.ips.len(), 2);
    assert_eq!(pod.ports[0].name.as_deref(), Some("http"));
    assert_eq!(pod.ports[1].protocol, Protocol::Udp);
    let p = &s.policies[&PodRef::new("prod", "p")];
    assert!(p.ingress.is_some() && p.egress.is_some());
    assert_eq!(l.warnings.len(), 1);
    let svc = PodRef::new("prod", "web");
    let sp = s.services[&svc].port(8000, Protocol::Tcp).unwrap();
    let b = s.backends(&svc, sp);
    assert_eq!((b[0].port, b.len()), (80, 2), "{b:?}");
}

#[test]
fn loads_json_list() {
    let json = r#"{"kind":"List","items":[{"kind":"Pod","metadata":{"name":"a","namespace":"x"},
        "status":{"podIP":"10.0.0.2"}}]}"#;
    let l = load(json, "l.json").unwrap();
    assert_eq!(l.snapshot.pods.len(), 1);
}

#[test]
fn errors_name_file_object_and_field() {
    let bad = "kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.300}\n";
    let e = load(bad, "bad.yaml").unwrap_err().to_string();
    assert!(
        e.contains("bad.yaml") && e.contains("x/a") && e.contains("status.podIP"),
        "{e}"
    );
    let bad = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n";
    let l = load(bad, "np.yaml").unwrap();
    let e = l.strict().unwrap_err().to_string();
    assert!(
        e.contains("np.yaml:5: NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.cidr"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_errors_naming_path_and_line() {
    let text = "kind: Namespace\nmetadata: {name: x}\n---\nkind: NetworkPolicy\nmetadata:\n  name: foo\n  namespace: default\nspec:\n  podSelector: {}\n  ingres:\n  - from: [{podSelector: {}}]\n";
    let l = load(text, "np.yaml").unwrap();
    assert_eq!(l.unknown_fields.len(), 1);
    let e = l.clone().strict().unwrap_err().to_string();
    assert_eq!(
        e,
        "np.yaml:10: NetworkPolicy default/foo: spec.ingres: unknown field \"ingres\""
    );
    // --lenient: a warning, and the policy as read (deny all ingress).
    let l = l.lenient().unwrap();
    assert!(
        l.warnings.iter().any(|w| w.contains("spec.ingres")),
        "{:?}",
        l.warnings
    );
    let p = &l.snapshot.policies[&PodRef::new("default", "foo")];
    assert_eq!(p.ingress.as_deref().map(<[_]>::len), Some(0));
    // Deep in a list, with indexes.
    let pod = "kind: List\nitems:\n- kind: Pod\n  metadata: {name: a, namespace: x}\n- kind: Pod\n  metadata: {name: b, namespace: x}\n  spec:\n    containers:\n    - name: c\n      image: i\n      ports:\n      - containerPort: 80\n        nmae: http\n";
    let l = load(pod, "l.yaml").unwrap();
    let d = &l.unknown_fields[0];
    assert_eq!(d.field, "spec.containers[0].ports[0].nmae");
    assert_eq!(d.object, "Pod x/b");
    assert_eq!(d.location.line, 13);
    // Services and Endpoints are read as strictly.
    let svc = "kind: Service\nmetadata: {name: web, namespace: x}\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPrt: 8080\n---\nkind: Endpoints\nmetadata: {name: web, namespace: x}\nsubsets:\n- adresses: [{ip: 10.0.0.1}]\n  ports: [{port: 8080}]\n";
    let e = load(svc, "s.yaml")
        .unwrap()
        .strict()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s.yaml:7: Service x/web: spec.ports[0].targetPrt: unknown field \"targetPrt\"")
            && e.contains(
                "s.yaml:12: Endpoints x/web: subsets[0].adresses: unknown field \"adresses\""
            ),
        "{e}"
    );
}

#[test]
fn type_errors_name_the_field() {
    let text = "kind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: eighty\n";
    let e = load(text, "p.yaml").unwrap_err().to_string();
    assert!(
        e.starts_with("p.yaml:7: Pod x/a: spec.containers[0].ports[0].containerPort: invalid type"),
        "{e}"
    );
    let e = load("kind: Pod\nmetadata: [1]\n", "p.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("p.yaml:2") && e.contains("metadata"), "{e}");
    let e = load(
        "{\"kind\": \"Pod\",\n \"metadata\": {\"name\": 1}}",
        "p.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("p.json:2: Pod x") || e.starts_with("p.json:2:"),
        "{e}"
    );
    let e = load("kind: Pod\nmetadata: {name: a\n", "bad.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("bad.yaml:") && e.contains("invalid YAML"),
        "{e}"
    );
}

#[test]
fn api_validation() {
    let cases = [
        ("kind: Namespace\nmetadata: {name: Prod}\n", "metadata.name"),
        ("kind: Pod\nmetadata: {name: web_1, namespace: x}\n", "metadata.name"),
        ("kind: Pod\nmetadata: {name: a, namespace: x, labels: {\"bad key\": v}}\n", "metadata.labels"),
        ("kind: Pod\nmetadata: {name: a, namespace: x, labels: {app: \"-v\"}}\n", "metadata.labels.app"),
        ("kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: a-very-long-name}]}]}\n", "spec.containers[0].ports[0].name"),
        ("kind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: h}, {containerPort: 81, name: h}]}]}\n", "spec.containers[0].ports[1].name"),
        ("kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.2}]}\n", "status.podIP"),
        ("kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIPs: [{ip: 10.0.0.2}, {ip: 10.0.0.3}]}\n", "status.podIPs[1].ip"),
        ("kind: NetworkPolicy\nmetadata: {name: Foo, namespace: x}\n", "metadata.name"),
        ("kind: Service\nmetadata: {name: 1web, namespace: x}\n", "metadata.name"),
        ("kind: Service\nmetadata: {name: web, namespace: x}\nspec: {ports: [{port: 80}, {port: 81, name: b}]}\n", "spec.ports[0].name"),
        ("kind: Service\nmetadata: {name: web, namespace: x}\nspec: {ports: [{port: 80, name: a}, {port: 81, name: a}]}\n", "spec.ports[1].name"),
        ("kind: Service\nmetadata: {name: web, namespace: x}\nspec: {ports: [{port: 80, protocol: tcp}]}\n", "spec.ports[0].protocol"),
        ("kind: Service\nmetadata: {name: web, namespace: x}\nspec: {ports: [{port: 80, targetPort: a-very-long-name}]}\n", "spec.ports[0].targetPort"),
        ("kind: Service\nmetadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n", "spec.clusterIP"),
        ("kind: Endpoints\nmetadata: {name: web, namespace: x}\nsubsets: [{addresses: [{ip: nope}], ports: [{port: 80}]}]\n", "subsets[0].addresses[0].ip"),
        ("kind: Endpoints\nmetadata: {name: web, namespace: x}\nsubsets: [{ports: [{port: 80, name: Http}]}]\n", "subsets[0].ports[0].name"),
    ];
    for (text, field) in cases {
        let e = load(text, "v.yaml").unwrap_err().to_string();
        assert!(e.contains(&format!(": {field}: ")), "{text}: {e}");
    }
    let policies = [
        ("ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]", "spec.ingress[0].from[0].ipBlock.except[0]"),
        ("ingress: [{ports: [{port: a-very-long-name}]}]", "spec.ingress[0].ports[0].port"),
        ("ingress: [{ports: [{port: \"80\"}]}]", "spec.ingress[0].ports[0].port"),
        ("ingress: [{from: [{podSelector: {matchLabels: {app: \"a b\"}}}]}]", "spec.ingress[0].from[0].podSelector.matchLabels.app"),
        ("ingress: [{from: [{podSelector: {matchExpressions: [{key: \"/x\", operator: Exists}]}}]}]", "spec.ingress[0].from[0].podSelector.matchExpressions[0].key"),
    ];
    for (spec, field) in policies {
        let text = format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  {spec}\n");
        let e = load(&text, "np.yaml")
            .unwrap()
            .strict()
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!(": {field}: ")), "{spec}: {e}");
    }
    // IPv6 excepts inside ::/0 (also IPv4-mapped ones) are fine.
    for except in ["2001:db8::/32", "\"::ffff:0:0/96\"", "\"::/1\""] {
        let text = format!("kind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress: [{{to: [{{ipBlock: {{cidr: \"::/0\", except: [{except}]}}}}]}}]\n");
        load(&text, "np.yaml").unwrap().strict().unwrap();
    }
}

#[test]
fn duplicates_and_shared_addresses_are_warnings_naming_both() {
    let text = "kind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.1}\n---\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.9}\n";
    let dir = tempdir();
    let f = dir.join("c.yaml");
    std::fs::write(&f, text).unwrap();
    let l = load_paths(&[f]).unwrap();
    let w = l.warnings.join("\n");
    assert!(
        w.contains("c.yaml:9: Pod x/a is defined again (first at ") && w.contains("c.yaml:1)"),
        "{w}"
    );
    let l2 = load_paths(&[dir.join("c.yaml")]).unwrap();
    assert_eq!(l2.snapshot.pods.len(), 2);
    let text = text.replace("10.0.0.9", "10.0.0.1");
    std::fs::write(dir.join("c.yaml"), text).unwrap();
    let w = load_paths(&[dir.join("c.yaml")])
        .unwrap()
        .warnings
        .join("\n");
    assert!(
        w.contains("pods x/b and x/a") && w.contains("both have IP 10.0.0.1"),
        "{w}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn folders_recursive_or_not() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.yaml"), "kind: Namespace\nmetadata: {name: a}\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    std::fs::write(
        dir.join("sub/b.json"),
        "{\"kind\": \"Namespace\", \"metadata\": {\"name\": \"b\"}}",
    )
    .unwrap();
    let flat = load_inputs(std::slice::from_ref(&dir), false).unwrap();
    assert_eq!(flat.snapshot.namespaces.len(), 1);
    let deep = load_inputs(std::slice::from_ref(&dir), true).unwrap();
    assert_eq!(deep.snapshot.namespaces.len(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "palisade-manifest-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn objects_without_a_namespace_take_the_one_given() {
    let d = tempdir();
    let f = d.join("c.yaml");
    std::fs::write(
        &f,
        "kind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n---\n\
         kind: NetworkPolicy\nmetadata: {name: q, namespace: other}\nspec: {podSelector: {}}\n---\n\
         kind: Namespace\nmetadata: {name: n}\n",
    )
    .unwrap();
    let names =
        |l: Loaded| -> Vec<String> { l.snapshot.policies.keys().map(|r| r.to_string()).collect() };
    let given = load_inputs_in(std::slice::from_ref(&f), false, Some("team")).unwrap();
    assert_eq!(names(given.clone()), ["other/q", "team/p"]);
    // A Namespace has no namespace of its own.
    assert!(given.snapshot.namespaces.contains_key("n"));
    assert!(
        given.unknown_fields.is_empty(),
        "{:?}",
        given.unknown_fields
    );
    let plain = load_inputs(&[f], false).unwrap();
    assert_eq!(names(plain), ["default/p", "other/q"]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn cluster_network_policies_and_nodes_are_read_and_invalid_ones_named() {
    let text = r#"
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {zone: a}}
status: {addresses: [{type: InternalIP, address: 192.0.2.10}, {type: Hostname, address: n1}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: ok}
spec:
  tier: Baseline
  priority: 10
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: broken}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - action: Deny
    to: [{networks: [10.0.0.0/8]}]
    protocols: [{udp: {destinationPort: {range: {start: 9, end: 9}}}}]
"#;
    let l = load(text, "cnp.yaml").unwrap();
    assert_eq!(
        l.snapshot.nodes["n1"].addrs,
        vec!["192.0.2.10".parse::<IpAddr>().unwrap()]
    );
    assert!(l.snapshot.cluster_policies["ok"].is_valid());
    // Kept (it fails closed) and reported by name, field and line.
    assert!(!l.snapshot.cluster_policies["broken"].is_valid());
    let e = l.strict().unwrap_err().to_string();
    assert!(
        e.contains("cnp.yaml:26: ClusterNetworkPolicy broken: spec.egress[0].protocols[0].udp.destinationPort.range"),
        "{e}"
    );
}
