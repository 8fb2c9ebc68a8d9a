//! The node's own addresses, followed as they change.
//!
//! Traffic the node itself originates reaches local pods whatever their
//! policy (rule 12): the kubelet's probes. Their source is the node
//! address of the route toward the pod, which for pods on a bridge is the
//! bridge's gateway address; Flannel's `bridge` plugin gives `cni0` that
//! address at the node's first pod ADD, usually after the agent started.
//! So the agent does not read the addresses once: it subscribes to the
//! kernel's address notifications (netlink `RTNLGRP_IPV4_IFADDR` and
//! `RTNLGRP_IPV6_IFADDR`), reads every address again after a burst of
//! them, and enforces the new set ([`Agent::set_node_addrs`]) when more
//! than IPv6 link-local addresses changed (each pod's host veth brings
//! one; those alone would cost a full compile per pod). It also
//! reads them every [`RESYNC_EVERY`], in case the kernel dropped a
//! notification (a full socket buffer) or the subscription failed.
//! Used when `--node-addr` is not given.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rtnetlink::MulticastGroup;
use tokio::sync::Mutex;

use crate::dataplane::Dataplane;
use crate::reconcile::Agent;

/// How long a burst of notifications is let settle before reading.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How often the addresses are read without a notification.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// Follows the addresses of the agent's network namespace into `agent`
/// until the task is aborted.
pub async fn follow<D: Dataplane + 'static>(agent: Arc<Mutex<Agent<D>>>) {
    let mut messages = match rtnetlink::new_multicast_connection(&[
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ]) {
        Ok((connection, _handle, messages)) => {
            tokio::spawn(connection);
            Some(messages)
        }
        Err(e) => {
            tracing::error!(error = %e, every = ?RESYNC_EVERY, "cannot subscribe to the node's address changes: reading them periodically");
            None
        }
    };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    let mut known = significant(agent.lock().await.node_addrs());
    loop {
        let ended = match messages.as_mut() {
            Some(m) => {
                let got = tokio::select! {
                    got = m.next() => Some(got.is_some()),
                    _ = resync.tick() => None,
                };
                if got == Some(true) {
                    // Let the burst settle, then read once for all of it.
                    tokio::time::sleep(SETTLE).await;
                    while let Some(Some(_)) = m.next().now_or_never() {}
                }
                got == Some(false)
            }
            None => {
                resync.tick().await;
                false
            }
        };
        if ended {
            tracing::error!("the node's address notifications stopped: reading them periodically");
            messages = None;
        }
        let addrs = crate::run::local_addresses();
        // Every pod's host veth brings an IPv6 link-local address: those
        // alone do not make a full compile per pod.
        let now = significant(&addrs);
        if now == known {
            continue;
        }
        known = now;
        let result = agent.lock().await.set_node_addrs(addrs.clone());
        match result {
            Ok(true) => {
                tracing::info!(addrs = ?addrs, "the node's addresses changed: traffic from them to local pods is allowed")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "enforcing the node's new addresses failed; retrying")
            }
        }
    }
}

/// The addresses that decide whether the node's set changed: all but IPv6
/// link-local ones (`fe80::/10`, one per pod veth).
fn significant(addrs: &[std::net::IpAddr]) -> std::collections::BTreeSet<std::net::IpAddr> {
    addrs
        .iter()
        .copied()
        .filter(|a| match a {
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn link_local_addresses_alone_are_no_change() {
        let a: Vec<std::net::IpAddr> =
            vec!["10.244.0.1".parse().unwrap(), "fe80::1".parse().unwrap()];
        let b: Vec<std::net::IpAddr> =
            vec!["10.244.0.1".parse().unwrap(), "fe80::2".parse().unwrap()];
        assert_eq!(super::significant(&a), super::significant(&b));
        let c: Vec<std::net::IpAddr> = vec![
            "10.244.0.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        ];
        assert_ne!(super::significant(&a), super::significant(&c));
    }
}
