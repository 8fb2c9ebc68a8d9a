//! A snapshot compiled with every pod as an endpoint, judging probes.

use std::collections::BTreeMap;

use super::{Probe, ProbeResult};
use crate::compile::{self, Allocator, Compiled};
use crate::model::{Direction, PodRef, PolicyRef, Snapshot};
use crate::tools::probe::{self, Connection, End, Judge};

/// A snapshot compiled with every non-hostNetwork pod as an endpoint.
pub struct Simulation {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Endpoint ids.
    pub endpoints: BTreeMap<PodRef, u32>,
    /// The compile.
    pub compiled: Compiled,
    /// Each pod's identity in the compile.
    pub identities: BTreeMap<PodRef, u32>,
}

impl Simulation {
    /// Compiles `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let endpoints = compile::all_endpoints(&snapshot);
        let compiled = compile::compile(&snapshot, &endpoints, &mut Allocator::new());
        let identities = probe::pod_identities(&compiled.identities);
        Simulation {
            snapshot,
            endpoints,
            compiled,
            identities,
        }
    }

    fn judge_with(&self) -> Judge<'_> {
        Judge {
            snapshot: &self.snapshot,
            state: &self.compiled.state,
            endpoints: &self.endpoints,
            identities: &self.identities,
        }
    }

    /// The NetworkPolicies that isolate `pod` in `dir`: the compiler's own
    /// list ([`Compiled::isolating`]), as `flows` reports it for a drop.
    pub fn isolating(&self, pod: &PodRef, dir: Direction) -> Vec<&PolicyRef> {
        self.endpoints
            .get(pod)
            .map(|ep| self.compiled.isolating(*ep, dir).collect())
            .unwrap_or_default()
    }

    /// Judges one probe.
    pub fn judge(&self, probe: &Probe) -> Result<ProbeResult, probe::ProbeError> {
        if let End::Service(svc) = &probe.to {
            return self.judge_service(probe, svc);
        }
        let connection =
            self.judge_with()
                .connection(&probe.from, &probe.to, probe.protocol, probe.port)?;
        Ok(ProbeResult {
            probe: probe.clone(),
            connection,
            backends: Vec::new(),
        })
    }

    fn judge_service(&self, probe: &Probe, svc: &PodRef) -> Result<ProbeResult, probe::ProbeError> {
        let judge = self.judge_with();
        let backends = judge.service_connections(&probe.from, svc, probe.protocol, probe.port)?;
        let connection = match backends.first() {
            Some(b) => b.connection.clone(),
            None => {
                // No backend: a connection to the ClusterIP that no
                // endpoint judges (kube-proxy rejects it).
                let from =
                    judge.connection(&probe.from, &probe.from, probe.protocol, probe.port)?;
                Connection {
                    dst_ip: self.snapshot.services[svc].cluster_ips.first().copied(),
                    dst_pod: None,
                    egress: None,
                    ingress: None,
                    note: None,
                    ..from
                }
            }
        };
        Ok(ProbeResult {
            probe: probe.clone(),
            connection,
            backends,
        })
    }
}
