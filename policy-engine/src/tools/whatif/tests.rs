use super::*;
use crate::manifest::{load_str, Loaded};
use crate::tools::probe::End;

/// x/a and x/b serve 80; x/c serves 80 and 443. x/p lets only app=b into
/// x/a on 80.
const CLUSTER: &str = r#"
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.0.2}
---
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}, {containerPort: 443}]}]}
status: {podIP: 10.0.0.3}
---
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
"#;

/// Denies all ingress to x/c.
const DENY_C: &str = r#"
kind: NetworkPolicy
metadata: {name: deny-c, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
"#;

fn snapshot(text: &str) -> Snapshot {
    let mut loaded = Loaded::default();
    load_str(text, std::path::Path::new("test.yaml"), &mut loaded).unwrap();
    loaded.snapshot
}

fn overlay(candidate: &str, delete: &[&str]) -> Overlay {
    Overlay {
        candidate: snapshot(candidate),
        delete: delete.iter().map(|d| d.parse().unwrap()).collect(),
    }
}

fn run_to_string(
    before: &Snapshot,
    ov: &Overlay,
    output: Output,
    fail_on_deny: bool,
) -> (Outcome, String) {
    let after = ov.apply(before).unwrap();
    let opts = Options {
        probes: None,
        output,
        fail_on_deny,
    };
    let mut out = Vec::new();
    let o = run_with(
        before.clone(),
        after,
        Vec::new(),
        &opts,
        None::<&[u8]>,
        &mut out,
    )
    .unwrap();
    (o, String::from_utf8(out).unwrap())
}

fn pod(s: &str) -> End {
    End::Pod(s.parse().unwrap())
}

#[test]
fn a_denying_candidate_lists_exactly_what_it_denies() {
    let before = snapshot(CLUSTER);
    let ov = overlay(DENY_C, &[]);
    let (o, text) = run_to_string(&before, &ov, Output::Json, true);
    // x/a and x/b lose x/c on 80 and 443: four probes, nothing else.
    assert_eq!(
        (o.changed, o.newly_denied, o.one_sided),
        (4, 4, 0),
        "{text}"
    );
    assert_eq!(o.exit_code(true), 1);
    assert_eq!(o.exit_code(false), 0);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["to"], "x/c", "{l}");
        assert_eq!(l["before"]["allowed"], true, "{l}");
        assert_eq!(l["after"]["allowed"], false, "{l}");
        assert_eq!(l["after"]["reason"], "ingress:no-rule", "{l}");
        assert_eq!(l["change"], "denied", "{l}");
    }
    // The table names them and sums up.
    let (_, table) = run_to_string(&before, &ov, Output::Table, true);
    let row = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        table
            .lines()
            .any(|l| row(l) == "x/b x/c 443/TCP allowed DENIED ingress:no-rule"),
        "{table}"
    );
    assert!(
        table.contains("4 of 8 probe(s) change: 4 newly denied, 0 newly allowed."),
        "{table}"
    );
    let (_, yaml) = run_to_string(&before, &ov, Output::Yaml, true);
    assert_eq!(yaml.matches("change: denied").count(), 4, "{yaml}");
}

#[test]
fn deleting_a_policy_opens_what_it_isolated() {
    let before = snapshot(CLUSTER);
    let ov = overlay("", &["x/p"]);
    let (o, text) = run_to_string(&before, &ov, Output::Json, true);
    // x/c -> x/a on 80 was denied by x/p: the only change, and it opens.
    assert_eq!((o.changed, o.newly_denied), (1, 0), "{text}");
    assert_eq!(o.exit_code(true), 0);
    let l: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (&l["from"], &l["to"], &l["change"]),
        (&json!("x/c"), &json!("x/a"), &json!("allowed"))
    );
    assert_eq!(l["before"]["reason"], "ingress:no-rule");
    // A policy the cluster does not have is an error, not a no-op.
    let e = overlay("", &["x/nope"]).apply(&before).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("no NetworkPolicy x/nope"), "{e}");
}

#[test]
fn a_candidate_replaces_the_policy_of_its_name() {
    let before = snapshot(CLUSTER);
    // x/p now admits app=c instead of app=b.
    let ov = overlay(
        &CLUSTER[CLUSTER.find("kind: NetworkPolicy").unwrap()..]
            .replace("{app: b}}}]", "{app: c}}}]"),
        &[],
    );
    let after = ov.apply(&before).unwrap();
    assert_eq!(after.policies.len(), 1);
    let d = diff(
        &Simulation::new(before.clone()),
        &Simulation::new(after.clone()),
        &all_pairs_of_both(&before, &after),
    );
    let changed: Vec<(String, bool)> = d
        .changes()
        .map(|p| {
            (
                p.probe.from.to_string(),
                p.after.as_ref().unwrap().allowed(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        vec![("x/b".to_string(), false), ("x/c".to_string(), true)]
    );
    assert!(d.changes().all(|p| p.probe.to == pod("x/a")));
}

#[test]
fn nothing_changes_and_one_sided_probes_are_counted_not_listed() {
    let before = snapshot(CLUSTER);
    let (o, text) = run_to_string(&before, &Overlay::default(), Output::Table, true);
    assert_eq!((o.changed, o.exit_code(true)), (0, 0));
    assert!(
        text.contains("No probe changes its verdict (8 probe(s) judged)."),
        "{text}"
    );
    // A new pod: its probes exist only after the change.
    let ov = overlay(
        "kind: Pod\nmetadata: {name: d, namespace: x, labels: {app: d}}\nspec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}\nstatus: {podIP: 10.0.0.4}\n",
        &[],
    );
    let (o, text) = run_to_string(&before, &ov, Output::Table, true);
    // d -> a:80, b:80, c:80, c:443, and a, b, c -> d:80.
    assert_eq!((o.changed, o.one_sided), (0, 7), "{text}");
    assert!(
        text.contains("7 probe(s) judged only before or only after"),
        "{text}"
    );
}

#[test]
fn probes_files_are_judged_in_both_states_and_checked_after() {
    let before = snapshot(CLUSTER);
    let after = overlay(DENY_C, &[]).apply(&before).unwrap();
    let probes = "{\"from\":\"x/a\",\"to\":\"x/c\",\"port\":80,\"allowed\":true}\n\
                  {\"from\":\"x/zz\",\"to\":\"x/c\",\"port\":80}\n";
    let opts = Options {
        probes: Some("p.jsonl".into()),
        output: Output::Json,
        fail_on_deny: false,
    };
    let mut out = Vec::new();
    let o = run_with(
        before,
        after,
        vec![],
        &opts,
        Some(probes.as_bytes()),
        &mut out,
    )
    .unwrap();
    assert_eq!((o.probes, o.changed), (1, 1));
    assert_eq!(o.mismatches.len(), 1, "{:?}", o.mismatches);
    assert!(o.errors[0].starts_with("p.jsonl:2: x/zz"), "{:?}", o.errors);
    assert_eq!(o.exit_code(false), 2);
}

#[test]
fn the_page_marks_the_changed_cells_and_names_the_policies() {
    let before = snapshot(CLUSTER);
    let ov = overlay(DENY_C, &[]);
    let (o, page) = run_to_string(&before, &ov, Output::Html, true);
    assert_eq!(
        page.matches("class=\"cell denied changed\"").count(),
        o.changed
    );
    // The after verdict of a changed cell names the new policy.
    assert!(
        page.contains("ingress of x/c: isolated by x/deny-c; no rule matches"),
        "{page}"
    );
    // An allowed cell into x/a names the rule that allows it.
    assert!(
        page.contains("allowed by NetworkPolicy x/p spec.ingress[0]"),
        "{page}"
    );
}

#[test]
fn wide_adds_the_reason_before_the_change() {
    let before = snapshot(CLUSTER);
    let (_, text) = run_to_string(&before, &overlay("", &["x/p"]), Output::Wide, false);
    let head = text.lines().next().unwrap();
    assert!(head.ends_with("BEFORE-REASON"), "{text}");
    let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "x/c",
            "x/a",
            "80/TCP",
            "DENIED",
            "allowed",
            "egress:not-isolated,ingress:not-isolated",
            "ingress:no-rule"
        ],
        "{text}"
    );
}
