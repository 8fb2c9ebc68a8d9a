//! Whether each kind of cluster state is in sync with its source.

use std::collections::BTreeMap;

use crate::source::Kind;

/// One kind's state. A kind never listed has no entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KindState {
    /// Listed, and its watch is running.
    Synced,
    /// Its watch failed: why.
    Lost(String),
}

/// Per-kind sync state (see [`crate::source::Change::Listed`] and
/// [`crate::source::Change::Lost`]).
#[derive(Clone, Debug, Default)]
pub struct SyncState {
    kinds: BTreeMap<Kind, KindState>,
    /// Every kind has been listed at least once.
    ever_complete: bool,
}

impl SyncState {
    /// `kind` was listed; returns true when this completes the first sync
    /// of every kind.
    pub fn listed(&mut self, kind: Kind) -> bool {
        if let Some(KindState::Lost(_)) = self.kinds.get(&kind) {
            tracing::info!(resource = %kind, "watch back: listed again");
        }
        self.kinds.insert(kind, KindState::Synced);
        let first = !self.ever_complete && Kind::ALL.iter().all(|k| self.kinds.contains_key(k));
        self.ever_complete |= first;
        first
    }

    /// `kind`'s watch failed.
    pub fn lost(&mut self, kind: Kind, reason: String) {
        self.kinds.insert(kind, KindState::Lost(reason));
    }

    /// Every kind has been listed at least once (what has been listed can
    /// be compiled, even while a watch is lost).
    pub fn ever_complete(&self) -> bool {
        self.ever_complete
    }

    /// What keeps the state from being in sync, one sentence each (empty
    /// when every kind is).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let unlisted: Vec<&str> = Kind::ALL
            .iter()
            .filter(|k| !self.kinds.contains_key(k))
            .map(|k| k.resource())
            .collect();
        if !unlisted.is_empty() {
            out.push(format!("not listed yet: {}", unlisted.join(", ")));
        }
        for (kind, state) in &self.kinds {
            if let KindState::Lost(reason) = state {
                out.push(format!("watch of {kind} lost: {reason}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_only_once_every_kind_is_listed_and_none_is_lost() {
        let mut s = SyncState::default();
        assert_eq!(
            s.problems(),
            ["not listed yet: pods, namespaces, networkpolicies, services, endpointslices"]
        );
        assert!(!s.listed(Kind::Services));
        assert!(!s.listed(Kind::EndpointSlices));
        assert!(!s.listed(Kind::Pods));
        assert!(!s.listed(Kind::Namespaces));
        assert!(s.listed(Kind::NetworkPolicies));
        assert!(s.problems().is_empty());
        assert!(!s.listed(Kind::NetworkPolicies), "only the first time");
        s.lost(Kind::Pods, "403 Forbidden: pods is forbidden".into());
        assert_eq!(
            s.problems(),
            ["watch of pods lost: 403 Forbidden: pods is forbidden"]
        );
        assert!(s.ever_complete());
        s.listed(Kind::Pods);
        assert!(s.problems().is_empty());
    }
}
