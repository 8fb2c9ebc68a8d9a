//! `cargo xtask kind-e2e`: the connectivity matrix on a real cluster. A kind
//! cluster with Flannel (default CNI off, pod subnet 10.244.0.0/16) and
//! Palisade installed with `kubectl apply -k manifests/`, the upstream
//! x/y/z × a/b/c model, and the conformance cases' policies; every pair of
//! distinct pods is probed through the pod IP and through the Service's
//! ClusterIP, and each table is printed expected vs observed. Exit 1 on any
//! mismatch. Needs Docker, kind and kubectl, so it is not part of
//! `cargo xtask test`; its expected tables are checked against the policy
//! engine there (see `cases`).

mod cases;
mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use policy_engine::model::Protocol;
use policy_engine::testutil::conformance::{Step, Truth};
use policy_engine::testutil::XYZ_NAMESPACES;

use crate::cmd;
use crate::image;
use crate::prereq::{self, Tool};
use cluster::{apply, kubectl, output};

/// Flannel's release manifest (override with `--flannel-manifest`).
const FLANNEL_MANIFEST: &str =
    "https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml";
/// The upstream e2e test image (serve-hostname, connect).
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// Options of `cargo xtask kind-e2e`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// kind cluster name (reused if it exists).
    #[arg(long, default_value = "palisade")]
    pub cluster: String,
    /// Leave the cluster running at the end.
    #[arg(long)]
    pub keep: bool,
    /// Every conformance case, not only the default policy set.
    #[arg(long)]
    pub all_cases: bool,
    /// Also SCTP cases (the nodes' kernel needs SCTP).
    #[arg(long)]
    pub sctp: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Load this image archive instead of building one with `cargo xtask
    /// image`.
    #[arg(long)]
    pub image_archive: Option<PathBuf>,
    /// Flannel manifest (URL or file).
    #[arg(long, default_value = FLANNEL_MANIFEST)]
    pub flannel_manifest: String,
    /// Test image with `agnhost`.
    #[arg(long, default_value = AGNHOST)]
    pub agnhost: String,
    /// Static reference CNI plugins (the upstream release tarball's), of
    /// which those the nodes lack are copied onto them: Flannel delegates
    /// to `bridge`, which kind's node image does not have. The nodes' own
    /// plugins are never replaced.
    #[arg(long)]
    pub cni_plugins_dir: Option<PathBuf>,
    /// Probes run at once.
    #[arg(long, default_value_t = 12)]
    pub parallel: usize,
}

/// What kind-e2e needs besides what `setup` installs.
pub const TOOLS: &[Tool] = &[Tool::Docker, Tool::Kind, Tool::Kubectl];

/// `cargo xtask kind-e2e`.
pub fn run(opts: &Options) -> Result<ExitCode> {
    prereq::require("cargo xtask kind-e2e", TOOLS)?;
    let selected = cases::select(opts.all_cases, opts.sctp, opts.only.as_deref());
    if selected.is_empty() {
        bail!("no case matches {:?}", opts.only);
    }
    let archive = match &opts.image_archive {
        Some(path) => path.clone(),
        None => {
            crate::setup::run_only(crate::setup::BUILD_STEPS)?;
            image::build(image::DEFAULT_TAG, None, true)?
        }
    };
    let context = format!("kind-{}", opts.cluster);
    let outcome = install_and_probe(opts, &context, &archive, &selected);
    if !opts.keep {
        let _ = cmd::run(Command::new("kind").args(["delete", "cluster", "--name", &opts.cluster]));
    }
    outcome
}

/// The plugins Flannel's conflist runs (besides its own `flannel`, which
/// its DaemonSet installs).
const FLANNEL_PLUGINS: &[&str] = &["bridge", "host-local", "portmap", "loopback"];

/// Of `needed`, the plugins a node lacks (`present` is its /opt/cni/bin).
fn plugins_to_copy<'a>(needed: &[&'a str], present: &str) -> Vec<&'a str> {
    needed
        .iter()
        .copied()
        .filter(|p| !present.lines().any(|l| l.trim() == *p))
        .collect()
}

/// Copies onto `node` the plugins of [`FLANNEL_PLUGINS`] it lacks, from
/// `dir`, refusing dynamically linked ones (a host's glibc build may not
/// run on the node's libc).
fn copy_missing_plugins(node: &str, dir: Option<&Path>) -> Result<()> {
    let present = output(Command::new("docker").args(["exec", node, "ls", "/opt/cni/bin"]))?;
    let missing = plugins_to_copy(FLANNEL_PLUGINS, &present);
    if missing.is_empty() {
        return Ok(());
    }
    let Some(dir) = dir else {
        bail!(
            "{node} lacks the CNI plugins {missing:?}: pass --cni-plugins-dir with static ones \
             (the containernetworking/plugins release tarball's)"
        );
    };
    for plugin in missing {
        let path = dir.join(plugin);
        let data = std::fs::read(&path)
            .with_context(|| format!("{node} lacks {plugin}: cannot read {}", path.display()))?;
        image::require_static(&data).with_context(|| format!("{}", path.display()))?;
        cmd::run(
            Command::new("docker")
                .arg("cp")
                .arg(&path)
                .arg(format!("{node}:/opt/cni/bin/{plugin}")),
        )?;
    }
    Ok(())
}

fn install_and_probe(
    opts: &Options,
    ctx: &str,
    archive: &Path,
    selected: &[cases::KindCase],
) -> Result<ExitCode> {
    let root = cmd::workspace_root();
    cluster::create_cluster(&opts.cluster, &root.join("manifests/kind/kind-config.yaml"))?;
    let nodes = cluster::nodes(&opts.cluster)?;
    for node in &nodes {
        copy_missing_plugins(node, opts.cni_plugins_dir.as_deref())?;
    }
    println!("\n== Flannel");
    cmd::run(kubectl(ctx).args(["apply", "-f", &opts.flannel_manifest]))?;
    rollout(ctx, "kube-flannel", "kube-flannel-ds")?;

    println!("\n== Palisade (kubectl apply -k manifests/)");
    cmd::run(
        Command::new("kind")
            .args(["load", "image-archive"])
            .arg(archive)
            .args(["--name", &opts.cluster]),
    )?;
    cmd::run(
        kubectl(ctx)
            .arg("apply")
            .arg("-k")
            .arg(root.join("manifests")),
    )?;
    rollout(ctx, "palisade-system", "palisade-agent")?;
    for node in &nodes {
        let conf = output(Command::new("docker").args([
            "exec",
            node,
            "sh",
            "-c",
            "cat /etc/cni/net.d/*.conflist",
        ]))?;
        if !conf.contains("\"palisade-cni\"") {
            bail!("palisade-cni is not chained on {node}");
        }
    }

    println!("\n== the x/y/z × a/b/c model");
    let mut protocols = vec![Protocol::Tcp, Protocol::Udp];
    if opts.sctp {
        protocols.push(Protocol::Sctp);
    }
    apply(ctx, &cluster::model_manifest(&opts.agnhost, &protocols))?;
    for ns in XYZ_NAMESPACES {
        cmd::run(kubectl(ctx).args([
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "--timeout=300s",
        ]))?;
    }
    let addrs = cluster::addresses(ctx)?;
    let map = cases::address_map(&addrs.pod_ip);

    let mut summary = Summary::default();
    for kc in selected {
        run_case(opts, ctx, kc, &addrs, &map, &mut summary)?;
    }
    println!(
        "\nkind-e2e: {} cases, {} tables, {} probes, {} mismatches",
        selected.len(),
        summary.tables,
        summary.probes,
        summary.mismatches
    );
    for m in &summary.failed {
        println!("  MISMATCH {m}");
    }
    Ok(ExitCode::from(u8::from(summary.mismatches > 0)))
}

fn rollout(ctx: &str, ns: &str, ds: &str) -> Result<()> {
    cmd::run(kubectl(ctx).args([
        "-n",
        ns,
        "rollout",
        "status",
        &format!("ds/{ds}"),
        "--timeout=300s",
    ]))
}

#[derive(Default)]
struct Summary {
    tables: usize,
    probes: usize,
    mismatches: usize,
    failed: Vec<String>,
}

/// Puts the model back as each case expects it: no policies, the original
/// labels.
fn reset(ctx: &str) -> Result<()> {
    for ns in XYZ_NAMESPACES {
        cmd::run(kubectl(ctx).args(["-n", ns, "delete", "networkpolicy", "--all"]))?;
        cmd::run(kubectl(ctx).args([
            "label",
            "namespace",
            ns,
            &format!("ns={ns}"),
            "--overwrite",
        ]))?;
        for pod in policy_engine::testutil::XYZ_PODS {
            cmd::run(kubectl(ctx).args([
                "-n",
                ns,
                "label",
                "pod",
                pod,
                &format!("pod={pod}"),
                "--overwrite",
            ]))?;
        }
    }
    Ok(())
}

fn run_case(
    opts: &Options,
    ctx: &str,
    kc: &cases::KindCase,
    addrs: &cluster::Addresses,
    map: &cases::AddressMap,
    summary: &mut Summary,
) -> Result<()> {
    println!("\n== case {}", kc.case.name);
    reset(ctx)?;
    for step in &kc.case.steps {
        match step {
            Step::Apply {
                namespace,
                name,
                spec,
            } => apply(ctx, &cases::policy_manifest(namespace, name, spec, map))?,
            Step::DeletePolicies => {
                for ns in XYZ_NAMESPACES {
                    cmd::run(kubectl(ctx).args(["-n", ns, "delete", "networkpolicy", "--all"]))?;
                }
            }
            Step::LabelPod { pod, key, value } => {
                let (ns, name) = pod.split_once('/').context("pod is ns/name")?;
                cmd::run(kubectl(ctx).args([
                    "-n",
                    ns,
                    "label",
                    "pod",
                    name,
                    &format!("{key}={value}"),
                    "--overwrite",
                ]))?;
            }
            Step::LabelNs {
                namespace,
                key,
                value,
            } => cmd::run(kubectl(ctx).args([
                "label",
                "namespace",
                namespace,
                &format!("{key}={value}"),
                "--overwrite",
            ]))?,
            Step::Expect {
                port,
                protocol,
                truth,
            } => {
                // Changes take effect within a bounded delay (design rule 14).
                std::thread::sleep(Duration::from_secs(2));
                for (via, to) in [("pod IP", &addrs.pod_ip), ("ClusterIP", &addrs.cluster_ip)] {
                    let seen =
                        cluster::probe_table(ctx, truth, to, *port, *protocol, opts.parallel);
                    report_table(&kc.case.name, via, *port, *protocol, truth, &seen, summary);
                }
            }
        }
    }
    for d in &kc.dns {
        let ok = cluster::resolves(ctx, &d.pod);
        summary.probes += 1;
        let mark = if ok == d.allowed { "" } else { "  MISMATCH" };
        println!(
            "  dns {} -> kube-dns by name: expected {}, observed {}{mark}",
            d.pod,
            verdict(d.allowed),
            verdict(ok)
        );
        if ok != d.allowed {
            summary.mismatches += 1;
            summary
                .failed
                .push(format!("{}: {} -> kube-dns", kc.case.name, d.pod));
        }
    }
    Ok(())
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

fn report_table(
    case: &str,
    via: &str,
    port: u16,
    protocol: Protocol,
    expected: &Truth,
    seen: &Truth,
    summary: &mut Summary,
) {
    let wrong = expected
        .0
        .iter()
        .filter(|(k, v)| seen.0.get(*k) != Some(v))
        .count();
    println!("-- {port}/{protocol} via {via}: expected (! = observed differs)");
    println!("{}", expected.diff(seen));
    summary.tables += 1;
    summary.probes += expected.0.len();
    summary.mismatches += wrong;
    if wrong > 0 {
        summary.failed.push(format!(
            "{case}: {port}/{protocol} via {via}: {wrong} pairs"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn on_a_machine_like_this_one_it_names_docker_and_kind() {
        // The docker CLI without an engine, kubectl, no kind.
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in [
            (
                "docker",
                "echo 'Cannot connect to the Docker daemon' >&2; exit 1",
            ),
            ("kubectl", "exit 0"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let missing = prereq::problems(TOOLS, dir.path().as_os_str());
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].starts_with("docker: ") && missing[0].contains("no Docker engine"));
        assert!(missing[1].starts_with("kind: not found on PATH"));
    }

    #[test]
    fn only_the_plugins_a_node_lacks_are_copied() {
        // kind's node image: its own (newer, static) plugins, no bridge.
        let kind_node = "host-local\nloopback\nportmap\nptp\n";
        assert_eq!(plugins_to_copy(FLANNEL_PLUGINS, kind_node), ["bridge"]);
        assert!(
            plugins_to_copy(FLANNEL_PLUGINS, "bridge\nhost-local\nportmap\nloopback\n").is_empty()
        );
        assert_eq!(plugins_to_copy(FLANNEL_PLUGINS, "").len(), 4);
    }

    #[test]
    fn the_model_manifest_serves_every_port_and_protocol_with_a_service_per_pod() {
        let yaml = cluster::model_manifest(AGNHOST, &[Protocol::Tcp, Protocol::Udp]);
        let docs: Vec<serde_json::Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        let of = |k: &str| docs.iter().filter(|d| d["kind"] == k).count();
        assert_eq!((of("Namespace"), of("Pod"), of("Service")), (3, 9, 9));
        let pod = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
        let names: Vec<&str> = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["ports"][0]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "serve-80-tcp",
                "serve-80-udp",
                "serve-81-tcp",
                "serve-81-udp"
            ]
        );
        let ns = docs.iter().find(|d| d["kind"] == "Namespace").unwrap();
        assert_eq!(ns["metadata"]["labels"]["ns"], "x");
    }
}
