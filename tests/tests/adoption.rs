//! Pods that were running before Palisade was installed are enforced
//! without a restart (rule 16): the bed wires and runs the `apod`
//! scenario's pods through the plain network, connections are opened, and
//! only then does the agent start (real API server, kube path). It finds
//! each pod's host veth from the pod's address (proven by the veth peer's
//! namespace and index) and enforces it: new connections get the policy's
//! verdicts, an established connection the policy allows keeps working and
//! one it denies is cut, and no local pod is left unenforced. Needs root
//! and the Kubernetes binaries `cargo xtask setup` builds.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use palisade_tests::{bin_dir, kube_options, read_probes_without_services, scenarios, wait_until};
use testbed::controlplane::cluster::KubeOptions;
use testbed::{PodRef, Testbed, TestbedOptions};

/// Whether one byte written on `conn` comes back within a second.
fn echoes(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 1];
    conn.write_all(b"x").is_ok() && conn.read_exact(&mut buf).is_ok() && buf == *b"x"
}

fn pod(name: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

#[test]
fn pods_running_before_the_install_are_adopted_without_a_restart() {
    let scenario = &scenarios("apod")[0];
    let (probes, _) = read_probes_without_services(&scenario.probes);
    let manifests = vec![scenario.cluster.clone()];
    let snapshot = testbed::load_snapshot(&manifests).unwrap();
    let mut bed = Testbed::start_with_kube(
        TestbedOptions {
            manifests,
            palisade: true,
            bin_dir: bin_dir(),
            probes: probes.clone(),
            nodes: 1,
            agent_args: Vec::new(),
        },
        &snapshot,
        &KubeOptions {
            agent_after_pods: true,
            ..kube_options()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", scenario.label));
    // Before the install nothing is enforced: the silence Palisade ends.
    let before = bed.probe(&probes);
    assert!(before.iter().all(|o| o.allowed == Some(true)), "{before:?}");
    // apod-web may reach apod-api on its named port; sleep may not.
    let (web, sleep, api) = (pod("apod-web"), pod("sleep"), pod("apod-api"));
    let mut allowed = bed.connect(&web, &api, 80).unwrap();
    let mut denied = bed.connect(&sleep, &api, 80).unwrap();
    assert!(echoes(&mut allowed) && echoes(&mut denied));

    bed.start_pending_agents()
        .unwrap_or_else(|e| panic!("install: {e}\n{}", bed.agent_log_tail(30)));
    // Every local pod gets an endpoint within the adoption period.
    wait_until(
        "every running pod is adopted",
        Duration::from_secs(20),
        || {
            bed.agent_log_tail(400)
                .matches("adopted a running pod")
                .count()
                == 4
        },
    );
    let ready = bed.agent_status();
    assert!(
        ready.iter().all(Result::is_ok),
        "{ready:?}\n{}",
        bed.agent_log_tail(30)
    );

    let after = bed.probe(&probes);
    let wrong: Vec<_> = after
        .iter()
        .filter(|o| o.matches_expectation() == Some(false))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}\n{}", bed.agent_log_tail(30));
    assert!(
        echoes(&mut allowed),
        "an allowed established connection was cut"
    );
    assert!(
        !echoes(&mut denied),
        "a denied established connection survived the adoption"
    );
}
