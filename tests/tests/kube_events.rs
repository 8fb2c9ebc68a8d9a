//! Enforcement visible from the API (issue 21, item 3), against the bed's
//! real API server (Kubernetes 1.20.2) with two nodes, each with its
//! agent as the Palisade ServiceAccount: a NetworkPolicy change gets one
//! Normal `Enforced` Event from each node, a storm of changes a bounded
//! number, an invalid policy a Warning naming the field (its repeat merged
//! into the Event's series), and `policy-agent status --kube` shows both
//! nodes. Needs root and the binaries (see `palisade_tests::bin_dir`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use palisade_tests::{bin_dir, scenarios, start_kube_bed, wait_until};
use testbed::controlplane::ControlPlane;

/// Enough for a watch event, an apply and the writer's per-policy
/// interval, on two loaded cores.
const SEEN: Duration = Duration::from_secs(60);
/// How many updates the storm makes.
const STORM: i64 = 50;

fn policy(name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

/// Every pod of `default` may reach every other on `port`.
fn open_spec(port: i64) -> serde_json::Value {
    serde_json::json!({
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": port}]}],
    })
}

/// An IPv4-mapped IPv6 except of an IPv4 cidr: the 1.20 API server
/// compares the except's address as IPv4 and its prefix length in bits
/// of its own family, and stores it; the agent's model compares prefixes
/// as written and refuses it, so the policy fails closed.
fn broken_spec(port: i64) -> serde_json::Value {
    serde_json::json!({
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{
            "from": [{"ipBlock": {"cidr": "198.51.100.0/24", "except": ["::ffff:198.51.100.0/120"]}}],
            "ports": [{"port": port}],
        }],
    })
}

fn create(cp: &ControlPlane, np: NetworkPolicy) -> String {
    let client = cp.client();
    cp.run(async move {
        Api::<NetworkPolicy>::namespaced(client, "default")
            .create(&PostParams::default(), &np)
            .await
    })
    .unwrap_or_else(|e| panic!("creating a NetworkPolicy: {e}"))
    .metadata
    .uid
    .unwrap()
}

/// Replaces `name`'s spec with each of `specs` as fast as the API server
/// takes them.
fn update(cp: &ControlPlane, name: &str, specs: Vec<serde_json::Value>) {
    let (client, owned) = (cp.client(), name.to_string());
    cp.run(async move {
        let name = owned;
        let api = Api::<NetworkPolicy>::namespaced(client, "default");
        for spec in specs {
            let patch = serde_json::json!({"spec": spec});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok::<_, kube::Error>(())
    })
    .unwrap_or_else(|e| panic!("updating {name}: {e}"));
}

/// The agents' Events about the policy with `uid`.
fn events(cp: &ControlPlane, uid: &str) -> Vec<Event> {
    let client = cp.client();
    let all = cp
        .run(async move {
            Api::<Event>::namespaced(client, "default")
                .list(&ListParams::default())
                .await
        })
        .unwrap_or_else(|e| panic!("listing events: {e}"));
    all.items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid)
                && e.reporting_controller.as_deref() == Some("palisade.dev/policy-agent")
        })
        .collect()
}

fn from_node<'a>(events: &'a [Event], node: &str) -> Vec<&'a Event> {
    let instance = format!("policy-agent-{node}");
    events
        .iter()
        .filter(|e| e.reporting_instance.as_deref() == Some(instance.as_str()))
        .collect()
}

fn note(e: &Event) -> &str {
    e.note.as_deref().unwrap_or_default()
}

fn show(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{:?} {:?} {:?} x{}: {}",
                e.reporting_instance,
                e.type_,
                e.reason,
                e.series.as_ref().map_or(1, |s| s.count),
                note(e)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `policy-agent status --kube -o json` as the admin, in the control
/// plane's network namespace.
fn status_kube(cp: &ControlPlane) -> (serde_json::Value, bool) {
    cp.status_kube(&bin_dir()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn enforcement_is_visible_from_the_api_on_two_nodes() {
    let (bed, _) = start_kube_bed(&scenarios("service-abc")[0], 2, Vec::new());
    let cp = bed.kube().expect("kube mode").control_plane();
    wait_until("both agents are ready", SEEN, || {
        bed.agent_status().iter().all(Result::is_ok)
    });
    let client = cp.client();
    let nodes: Vec<String> = cp
        .run(async move { Api::<Node>::all(client).list(&ListParams::default()).await })
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");

    // A new policy: one Enforced event per node, with the node's pods.
    let uid = create(cp, policy("watch-me", open_spec(1000)));
    wait_until("both nodes report watch-me enforced", SEEN, || {
        let ev = events(cp, &uid);
        nodes.iter().all(|n| !from_node(&ev, n).is_empty())
    });
    // Give a second, wrong, event time to show up.
    std::thread::sleep(Duration::from_secs(2));
    let ev = events(cp, &uid);
    let mut pods = 0;
    for n in &nodes {
        let mine = from_node(&ev, n);
        assert_eq!(mine.len(), 1, "one event per node:\n{}", show(&ev));
        let e = mine[0];
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.reason.as_deref(), Some("Enforced"));
        let text = note(e);
        let prefix = format!("Enforced on {n}: ");
        assert!(
            text.starts_with(&prefix) && text.ends_with("after the change (generation 1)"),
            "{text}"
        );
        pods += text[prefix.len()..]
            .split(' ')
            .next()
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no pod count in {text:?}"));
    }
    // servicea, serviceb and servicec, spread over the two nodes.
    assert_eq!(pods, 3, "{}", show(&ev));
    // The bed's own policies came from the agents' first list: no event.
    let client = cp.client();
    let deny_uid = cp
        .run(async move {
            Api::<NetworkPolicy>::namespaced(client, "default")
                .get("default-deny")
                .await
        })
        .unwrap()
        .metadata
        .uid
        .unwrap();
    assert!(events(cp, &deny_uid).is_empty());
    // What kubectl shows (kubectl 1.20's `describe networkpolicy` prints
    // no Events section; `get events` does).
    let listed = cp
        .kubectl(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "involvedObject.name=watch-me",
        ])
        .unwrap();
    for n in &nodes {
        assert!(listed.contains(&format!("Enforced on {n}")), "{listed}");
    }
    let described = cp
        .kubectl(&["describe", "networkpolicy", "-n", "default", "watch-me"])
        .unwrap();
    eprintln!("kubectl describe:\n{described}");

    // A storm: 50 quick updates make a bounded number of events, the
    // last of which names the last change.
    update(
        cp,
        "watch-me",
        (1..=STORM).map(|i| open_spec(1000 + i)).collect(),
    );
    let last = format!("(generation {})", STORM + 1);
    wait_until("both nodes report the storm's last change", SEEN, || {
        let ev = events(cp, &uid);
        nodes
            .iter()
            .all(|n| from_node(&ev, n).iter().any(|e| note(e).contains(&last)))
    });
    // Longer than the writer's per-policy interval: nothing more comes.
    std::thread::sleep(Duration::from_secs(7));
    let ev = events(cp, &uid);
    eprintln!("after the storm:\n{}", show(&ev));
    for n in &nodes {
        let mine = from_node(&ev, n);
        // The first event, then at most one per 5 s of storm and the last.
        assert!(
            mine.len() <= 4,
            "{} events from {n} for {} changes:\n{}",
            mine.len(),
            STORM + 1,
            show(&ev)
        );
    }

    // An invalid policy: a Warning from each node naming the field; a
    // change that leaves the same problem extends that Event's series.
    let broken = create(cp, policy("broken", broken_spec(80)));
    let field = "spec.ingress[0].from[0].ipBlock.except[0]";
    wait_until("both nodes warn about broken", SEEN, || {
        let ev = events(cp, &broken);
        nodes.iter().all(|n| !from_node(&ev, n).is_empty())
    });
    for e in events(cp, &broken) {
        assert_eq!(e.type_.as_deref(), Some("Warning"), "{}", note(&e));
        assert_eq!(e.reason.as_deref(), Some("InvalidPolicy"));
        assert!(note(&e).contains(field), "{}", note(&e));
    }
    update(cp, "broken", vec![broken_spec(81)]);
    wait_until("the warnings form a series", SEEN, || {
        let ev = events(cp, &broken);
        nodes.iter().all(|n| {
            let mine = from_node(&ev, n);
            mine.len() == 1 && mine[0].series.as_ref().is_some_and(|s| s.count == 2)
        })
    });

    // The summary: both nodes, their last apply and the warning.
    let (doc, healthy) = status_kube(cp);
    assert!(!healthy, "a node could not enforce broken: exit 1\n{doc}");
    let rows = doc["nodes"].as_array().unwrap();
    for n in &nodes {
        let row = rows
            .iter()
            .find(|r| r["node"] == n.as_str())
            .unwrap_or_else(|| panic!("{n} missing from {doc}"));
        assert_eq!(row["last_apply"]["policy"], "default/watch-me", "{doc}");
        assert!(row["last_apply"]["note"].as_str().unwrap().contains(&last));
        let warnings = row["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), 1, "{doc}");
        assert_eq!(warnings[0]["policy"], "default/broken");
        assert_eq!(warnings[0]["count"], 2);
    }
    // A deleted policy's warnings are no longer counted.
    cp.kubectl(&["delete", "networkpolicy", "-n", "default", "broken"])
        .unwrap();
    let (doc, healthy) = status_kube(cp);
    assert!(healthy, "{doc}");
}
