//! The bed's agents (one per node when Palisade is on): waiting until they
//! have caught up with the API server, stopping and restarting them, their
//! status and logs.

use std::path::Path;

use super::{Testbed, KUBE_SYNC_TIMEOUT};
use crate::agent::{log_tail, Agent};
use crate::error::TestbedError;

impl Testbed {
    /// Node 0's agent's log file (palisade on).
    pub fn agent_log(&self) -> Option<&Path> {
        self.nodes[0].agent_log.as_deref()
    }

    /// Installs Palisade on the running bed of
    /// `KubeOptions::agent_after_pods`: starts each node's agent (the pods
    /// are wired and running already, and the chain has no `palisade-cni`)
    /// and waits until it has caught up with the API server. A no-op once
    /// the agents run.
    pub fn start_pending_agents(&mut self) -> Result<(), TestbedError> {
        for agent in std::mem::take(&mut self.pending_agents) {
            agent.start(&self.resources)?;
        }
        self.wait_for_agent_sync()
    }

    /// Stops every node's agent (SIGTERM, as the kubelet stops a pod),
    /// waiting for each to exit; the rest of the bed stays up. Idempotent.
    pub fn stop_agents(&self) {
        self.resources.with(|r| {
            for agent in r.agents.iter_mut() {
                agent.stop();
            }
        });
    }

    /// Restarts every node's agent as it was started (after
    /// [`Self::stop_agents`], or under a running one), waiting until each
    /// answers.
    pub fn restart_agents(&self) -> Result<(), TestbedError> {
        self.resources
            .with(|r| r.agents.iter_mut().try_for_each(Agent::restart))
    }

    /// [`Self::restart_agents`], waiting only until each answers, ready or
    /// not.
    pub fn restart_agents_unready(&self) -> Result<(), TestbedError> {
        self.resources
            .with(|r| r.agents.iter_mut().try_for_each(Agent::restart_unready))
    }

    /// Each node's agent's process id.
    pub fn agent_pids(&self) -> Vec<u32> {
        self.resources
            .with(|r| r.agents.iter().map(Agent::pid).collect())
    }

    /// Each node's agent's answer to `Status` (see [`Agent::status`]).
    pub fn agent_status(&self) -> Vec<Result<(), String>> {
        self.resources
            .with(|r| r.agents.iter().map(Agent::status).collect())
    }

    /// The last `lines` lines of each agent's log ("" when palisade is
    /// off), headed by the node's name on a bed of several nodes.
    pub fn agent_log_tail(&self, lines: usize) -> String {
        let tails: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| Some((n, n.agent_log.as_deref()?)))
            .map(|(n, log)| {
                if self.nodes.len() == 1 {
                    log_tail(log, lines)
                } else {
                    format!("--- {} ---\n{}", n.name, log_tail(log, lines))
                }
            })
            .collect();
        tails.join("\n")
    }

    /// Kube mode: waits until the agent has applied what the API server
    /// holds now (after changes made through [`Self::kube`]).
    pub fn wait_for_agent_sync(&self) -> Result<(), TestbedError> {
        if self.nodes.len() > 1 {
            self.wait_for_node_devices()?;
        }
        for node in &self.nodes {
            if let (Some(c), Some(log), Some(socket)) =
                (&self.cluster, &node.agent_log, &node.agent_socket)
            {
                c.wait_for_agent(log, socket, KUBE_SYNC_TIMEOUT)?;
            }
        }
        Ok(())
    }

    /// Waits until every running agent has attached its check to the
    /// node's VXLAN device (the bed creates it after the agents start; until
    /// then, Services with backends on other nodes fail closed).
    fn wait_for_node_devices(&self) -> Result<(), TestbedError> {
        let deadline = std::time::Instant::now() + KUBE_SYNC_TIMEOUT;
        let attached = format!("device={}", crate::overlay::VXLAN_IF);
        for log in self.nodes.iter().filter_map(|n| n.agent_log.as_ref()) {
            loop {
                let text = crate::controlplane::sync::strip_ansi(
                    &std::fs::read_to_string(log).unwrap_or_default(),
                );
                if text
                    .lines()
                    .any(|l| l.contains("node device check attached") && l.contains(&attached))
                {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(TestbedError::Layout {
                        reason: format!(
                            "the agent did not attach to {} within {KUBE_SYNC_TIMEOUT:?}:\n{}",
                            crate::overlay::VXLAN_IF,
                            log_tail(log, 20)
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Node 0's agent's CNI socket (palisade on).
    pub fn agent_socket(&self) -> Option<&Path> {
        self.nodes[0].agent_socket.as_deref()
    }
}
