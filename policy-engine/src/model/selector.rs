//! Label selectors (`matchLabels` + `matchExpressions`), parsed once.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::policy::PolicyIssue;

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// One `matchExpressions` requirement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// `key In (values)`.
    In(String, BTreeSet<String>),
    /// `key NotIn (values)`: also true when the key is absent.
    NotIn(String, BTreeSet<String>),
    /// `key Exists`.
    Exists(String),
    /// `key DoesNotExist`.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: all `match_labels` and all `requirements` must
/// hold (AND). The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// `matchLabels`.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether this is `{}` (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.requirements.is_empty()
    }

    /// Parses a k8s selector; `field` is its path in the object, used in
    /// the issue reported for an unknown operator or a malformed requirement.
    pub fn parse(sel: &LabelSelector, field: &str) -> Result<Self, PolicyIssue> {
        let mut out = Selector {
            match_labels: sel.match_labels.clone().unwrap_or_default(),
            requirements: Vec::new(),
        };
        super::validate::labels(&out.match_labels, &format!("{field}.matchLabels"))
            .map_err(|(f, m)| PolicyIssue::new(f, m))?;
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let key = e.key.clone();
            super::validate::label_key(&key)
                .map_err(|m| PolicyIssue::new(format!("{f}.key"), m))?;
            for (j, v) in e.values.iter().flatten().enumerate() {
                super::validate::label_value(v)
                    .map_err(|m| PolicyIssue::new(format!("{f}.values[{j}]"), m))?;
            }
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(PolicyIssue::new(
                        format!("{f}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ))
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(PolicyIssue::new(
                        format!("{f}.values"),
                        format!("operator {} takes no values", e.operator),
                    ))
                }
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(PolicyIssue::new(
                        format!("{f}.operator"),
                        format!(
                        "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ),
                    ))
                }
            };
            out.requirements.push(req);
        }
        Ok(out)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("{} (everything)");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.requirements {
            let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r {
                Requirement::In(k, vs) => format!("{k} in ({})", join(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", join(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn operators_and_labels_are_anded() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                req("tier", "In", &["a", "b"]),
                req("env", "NotIn", &["dev"]),
                req("team", "Exists", &[]),
                req("legacy", "DoesNotExist", &[]),
            ]),
        };
        let s = Selector::parse(&sel, "spec.podSelector").unwrap();
        let good = labels(&[("app", "web"), ("tier", "a"), ("team", "x")]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.remove("team");
        assert!(!s.matches(&bad));
        assert!(Selector::default().matches(&bad));
    }

    #[test]
    fn unknown_operator_names_the_field() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![req("a", "Like", &["x"])]),
        };
        let e = Selector::parse(&sel, "spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
    }
}
