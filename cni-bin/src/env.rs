//! Where the plugin reads its `CNI_*` parameters from.

use std::collections::HashMap;

/// A source of environment variables: the real process environment, or a map
/// in tests.
pub trait Environment {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;
}

/// The environment of this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Parses `CNI_ARGS` (`KEY=VALUE;KEY=VALUE`) into pairs. Entries without `=`
/// are skipped: the spec lets runtimes pass arguments a plugin ignores.
pub fn parse_cni_args(raw: &str) -> HashMap<String, String> {
    raw.split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_pairs_are_split_and_junk_skipped() {
        let args = parse_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;junk;=x;K8S_POD_UID=a=b",
        );
        assert_eq!(args["K8S_POD_NAMESPACE"], "default");
        assert_eq!(args["K8S_POD_NAME"], "web-0");
        assert_eq!(args["K8S_POD_UID"], "a=b");
        assert!(!args.contains_key("junk"));
        assert!(!args.contains_key(""));
        assert_eq!(args.len(), 4);
    }

    #[test]
    fn empty_cni_args_give_nothing() {
        assert!(parse_cni_args("").is_empty());
    }
}
