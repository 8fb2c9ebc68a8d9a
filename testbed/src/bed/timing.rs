//! What benchmarks need from a running bed: running code inside a pod's
//! namespace, and timing CNI ADDs through the bed's own chain.

use std::time::{Duration, Instant};

use super::Testbed;
use crate::error::TestbedError;
use crate::netns;
use crate::probe::PodRef;

impl Testbed {
    /// Runs `f` on a thread inside `pod`'s network namespace (sockets it
    /// opens belong to the pod), returning what it returns.
    pub fn in_pod<T, F>(&self, pod: &PodRef, f: F) -> Result<T, TestbedError>
    where
        T: Send,
        F: FnOnce() -> std::io::Result<T> + Send,
    {
        let wired = self
            .pods
            .get(pod)
            .ok_or_else(|| TestbedError::Environment {
                reason: format!("no wired pod {pod}"),
            })?;
        netns::in_netns(&wired.netns, f)
    }

    /// Runs `f` on a thread inside node `index`'s network namespace (a
    /// socket it opens is the node's own, as a hostNetwork pod's is).
    pub fn in_node<T, F>(&self, index: usize, f: F) -> Result<T, TestbedError>
    where
        T: Send,
        F: FnOnce() -> std::io::Result<T> + Send,
    {
        let node = self
            .nodes
            .get(index)
            .ok_or_else(|| TestbedError::Environment {
                reason: format!("no node {index}"),
            })?;
        netns::in_netns(&node.netns, f)
    }

    /// Times `count` CNI ADDs on node 0, each of a fresh pod namespace
    /// (`bench/cni-w<i>` through Palisade's chain, `bench/cni-o<i>`
    /// without: the agent must know the first ones), through the bed's chain (`palisade: true`, with
    /// `palisade-cni` when the bed runs Palisade) or through the chain
    /// without `palisade-cni`, alternately: the two figures share the
    /// machine's noise. Each pod is DELeted and its namespace removed
    /// right after its ADD (not timed), so the pod range never fills.
    /// Returns the ADD latencies `(with, without)`.
    pub fn time_cni_adds(
        &self,
        count: usize,
    ) -> Result<(Vec<Duration>, Vec<Duration>), TestbedError> {
        let network = self.first_network()?;
        let mut without = network.clone();
        if let Some(plugins) = without.conflist["plugins"].as_array_mut() {
            plugins.retain(|p| p["type"] != crate::PLUGIN_BINARY);
        }
        let chains = [("w", &network), ("o", &without)];
        let mut times = [Vec::with_capacity(count), Vec::with_capacity(count)];
        for i in 0..count {
            for (k, (tag, net)) in chains.iter().enumerate() {
                let ns = format!("{}-t{tag}{i}", self.id);
                self.resources.with(|r| r.netns.push(ns.clone()));
                netns::create(&ns)?;
                let name = format!("cni-{tag}{i}");
                let container = format!("{}-ct{tag}{i}", self.id);
                let started = Instant::now();
                let att = net.add_ips(
                    &format!("bench/{name}"),
                    "bench",
                    &name,
                    &container,
                    &ns,
                    &[],
                )?;
                times[k].push(started.elapsed());
                let deleted = net.del(&att);
                netns::delete(&ns);
                self.resources.with(|r| r.netns.retain(|x| *x != ns));
                deleted?;
            }
        }
        let [with, without] = times;
        Ok((with, without))
    }
}
