//! A scenario (cluster manifests and probes with expectations) run end to
//! end, and the one place that chooses who plays the kubelet: the bed's
//! own code ([`Kubelet::Played`], [`Kubelet::PlayedWithApi`]: it makes the
//! pod namespaces, calls the CNI chain and runs the agent as a process) or
//! real kubelets and containerd ([`Kubelet::Containerd`], see
//! [`crate::runtime`]). Both hand back [`Observation`]s, so the reports
//! ([`crate::report`]) and the CLIs do not care which ran.

use std::path::{Path, PathBuf};

use agent_api::FlowRecord;

use crate::bed::{load_snapshot, Testbed, TestbedOptions};
use crate::controlplane::cluster::KubeOptions;
use crate::error::TestbedError;
use crate::probe::{default_probes, read_probes, read_probes_without_services, Observation};
use crate::runtime::images::ImageArchive;
use crate::runtime::scenario::{RealScenario, ScenarioOptions};

/// Who plays the kubelet.
#[derive(Clone, Debug)]
pub enum Kubelet {
    /// The bed's own code, with no API server: the agent reads the
    /// manifests (file mode).
    Played,
    /// The bed's own code against a real control plane (kube mode).
    PlayedWithApi(KubeOptions),
    /// Real kubelets and containerd on real nodes; Palisade installed
    /// from its image with `kubectl apply -k`.
    Containerd(RealNodes),
}

/// What real nodes need.
#[derive(Clone, Debug)]
pub struct RealNodes {
    /// The bed's Flannel CNI plugin.
    pub flannel_plugin: PathBuf,
    /// Palisade's image (needed when Palisade is on).
    pub palisade_image: Option<ImageArchive>,
    /// The kustomize folder Palisade is installed from
    /// (`overlays/testbed`: `manifests/` with the image the nodes hold).
    pub overlay: PathBuf,
}

/// A scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Cluster manifest.
    pub manifests: PathBuf,
    /// Probe file (default: every pod to every declared port).
    pub probes: Option<PathBuf>,
    /// With Palisade.
    pub palisade: bool,
    /// How many nodes.
    pub nodes: usize,
    /// Holds `policy-agent` and `palisade-cni` (the played kubelet's).
    pub bin_dir: PathBuf,
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// One observation per probe, in order.
    pub observations: Vec<Observation>,
    /// The drops the agents reported while the probes ran (played
    /// kubelet with Palisade; none on real nodes).
    pub drops: Vec<FlowRecord>,
    /// What was done on the way (commands and their output), one line
    /// each, for a human reader.
    pub notes: Vec<String>,
}

/// The demo's two halves: before Palisade (policies applied, enforced by
/// nobody) and after.
#[derive(Clone, Debug, Default)]
pub struct Demo {
    /// Without Palisade.
    pub before: Vec<Observation>,
    /// With Palisade.
    pub after: Outcome,
}

fn probes_for(
    scenario: &Scenario,
    kubelet: &Kubelet,
    notes: &mut Vec<String>,
) -> Result<Vec<crate::probe::Probe>, TestbedError> {
    let snapshot = load_snapshot(std::slice::from_ref(&scenario.manifests))?;
    Ok(match &scenario.probes {
        // Service ClusterIPs are translated by the real kube-proxy, which
        // only runs with an API server.
        Some(file) if !matches!(kubelet, Kubelet::Played) => read_probes(file)?,
        Some(file) => {
            let (probes, skipped) = read_probes_without_services(file)?;
            if skipped > 0 {
                notes.push(format!(
                    "({skipped} probes to svc: targets left out: Services need kube-proxy, run with --kube)"
                ));
            }
            probes
        }
        None => default_probes(&snapshot),
    })
}

/// Starts the scenario on `kubelet`, runs its probes and tears everything
/// down. With the played kubelet in kube mode and `policies_later`, the
/// policies are applied with kubectl once the pods are up.
pub fn run(scenario: &Scenario, kubelet: &Kubelet) -> Result<Outcome, TestbedError> {
    let mut notes = Vec::new();
    let probes = probes_for(scenario, kubelet, &mut notes)?;
    let manifests = vec![scenario.manifests.clone()];
    let snapshot = load_snapshot(&manifests)?;
    let kube = match kubelet {
        Kubelet::Containerd(real) => {
            let mut outcome = run_real(scenario, real, &probes, &snapshot)?;
            notes.append(&mut outcome.notes);
            outcome.notes = notes;
            return Ok(outcome);
        }
        Kubelet::Played => None,
        Kubelet::PlayedWithApi(k) => Some(k),
    };
    let opts = TestbedOptions {
        manifests,
        palisade: scenario.palisade,
        bin_dir: scenario.bin_dir.clone(),
        probes: probes.clone(),
        nodes: scenario.nodes,
        agent_args: Vec::new(),
    };
    let bed = match kube {
        Some(k) => Testbed::start_with_kube(opts, &snapshot, k)?,
        None => Testbed::start_with_snapshot(opts, &snapshot)?,
    };
    if let (Some(cluster), Some(true)) = (bed.kube(), kube.map(|k| k.policies_later)) {
        notes.push("$ kubectl apply -f policies.json".into());
        notes.extend(
            cluster
                .apply_policies_with_kubectl()?
                .lines()
                .map(String::from),
        );
        bed.wait_for_agent_sync()?;
    }
    let (observations, drops) = bed.probe_collecting_drops(&probes);
    Ok(Outcome {
        observations,
        drops,
        notes,
    })
}

fn real_options(
    scenario: &Scenario,
    real: &RealNodes,
    probes: &[crate::probe::Probe],
    policies_later: bool,
) -> Result<ScenarioOptions, TestbedError> {
    if scenario.palisade && real.palisade_image.is_none() {
        return Err(TestbedError::Environment {
            reason: "Palisade on real nodes needs its image".into(),
        });
    }
    Ok(ScenarioOptions {
        manifests: vec![scenario.manifests.clone()],
        probes: probes.to_vec(),
        nodes: scenario.nodes,
        flannel_plugin: real.flannel_plugin.clone(),
        palisade_image: real.palisade_image.clone().filter(|_| scenario.palisade),
        policies_later,
    })
}

fn install(
    bed: &mut RealScenario,
    overlay: &Path,
    notes: &mut Vec<String>,
) -> Result<(), TestbedError> {
    notes.push(format!("$ kubectl apply -k {}", overlay.display()));
    notes.extend(bed.install(overlay)?.lines().map(String::from));
    Ok(())
}

/// Real nodes: Palisade installed first (unless off), then the scenario's
/// objects and pods, then the probes.
fn run_real(
    scenario: &Scenario,
    real: &RealNodes,
    probes: &[crate::probe::Probe],
    snapshot: &crate::probe::Snapshot,
) -> Result<Outcome, TestbedError> {
    let mut notes = Vec::new();
    let mut bed = RealScenario::start(real_options(scenario, real, probes, false)?, snapshot)?;
    if scenario.palisade {
        install(&mut bed, &real.overlay, &mut notes)?;
    }
    Ok(Outcome {
        observations: bed.probe(probes),
        drops: Vec::new(),
        notes,
    })
}

/// The demo of one scenario: the policies applied with kubectl on a
/// Flannel cluster, enforced by nobody (`before`); then Palisade (`after`).
/// On real nodes that is one cluster: `kubectl apply -f` of the policies,
/// the probes, `kubectl apply -k` of the overlay, the same probes. With
/// the played kubelet, `before` is the plain bridge (file mode, one node)
/// and `after` two nodes and a real API server, the policies applied with
/// kubectl once the pods run (`kube` must have `policies_later`).
pub fn demo(scenario: &Scenario, kubelet: &Kubelet) -> Result<Demo, TestbedError> {
    let real = match kubelet {
        Kubelet::Containerd(real) => real,
        _ => {
            let plain = Scenario {
                palisade: false,
                nodes: 1,
                ..scenario.clone()
            };
            let before = run(&plain, &Kubelet::Played)?.observations;
            let after = run(
                &Scenario {
                    palisade: true,
                    ..scenario.clone()
                },
                kubelet,
            )?;
            return Ok(Demo { before, after });
        }
    };
    let mut notes = Vec::new();
    let probes = probes_for(scenario, kubelet, &mut notes)?;
    let snapshot = load_snapshot(std::slice::from_ref(&scenario.manifests))?;
    let on = Scenario {
        palisade: true,
        ..scenario.clone()
    };
    let mut bed = RealScenario::start(real_options(&on, real, &probes, true)?, &snapshot)?;
    notes.push("$ kubectl apply -f policies.json".into());
    notes.extend(bed.apply_policies_with_kubectl()?.lines().map(String::from));
    let before = bed.probe(&probes);
    install(&mut bed, &real.overlay, &mut notes)?;
    let observations = bed.probe(&probes);
    Ok(Demo {
        before,
        after: Outcome {
            observations,
            drops: Vec::new(),
            notes,
        },
    })
}
