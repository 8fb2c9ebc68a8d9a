//! The API server's syntax rules for names, labels and port names (as
//! current Kubernetes validates them), so that manifests the API server
//! would reject are rejected here too, with the same reasons.
//!
//! Each check returns `Err(message)` in the API server's words.

/// Longest DNS-1123 label (namespace names, label name parts).
const LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain (pod and policy names, label prefixes).
const SUBDOMAIN_MAX: usize = 253;
/// Longest IANA service name (container port names, named policy ports).
const SVC_NAME_MAX: usize = 15;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_shape(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum)
        && s.chars().all(|c| is_lower_alnum(c) || c == '-')
}

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63
/// characters): namespace names.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !label_shape(s) {
        return Err(format!(
            "{s:?} is not a valid DNS-1123 label: lower case alphanumeric characters or '-', starting and ending with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1035 label (a DNS-1123 label that starts with a letter, at most
/// 63 characters): Service names.
pub fn dns1035_label(s: &str) -> Result<(), String> {
    if s.len() > LABEL_MAX {
        return Err(format!("must be no more than {LABEL_MAX} characters"));
    }
    if !label_shape(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "{s:?} is not a valid DNS-1035 label: lower case alphanumeric characters or '-', starting with a letter and ending with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain (dot-separated labels, at most 253 characters):
/// pod and NetworkPolicy names, label key prefixes.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > SUBDOMAIN_MAX {
        return Err(format!("must be no more than {SUBDOMAIN_MAX} characters"));
    }
    if !s.split('.').all(label_shape) {
        return Err(format!(
            "{s:?} is not a valid DNS-1123 subdomain: lower case alphanumeric characters, '-' or '.', starting and ending with an alphanumeric character"
        ));
    }
    Ok(())
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The shape of a label value and of a label key's name part:
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn qualified_shape(s: &str) -> bool {
    s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars()
            .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// A label key (`[prefix/]name`: the prefix a DNS-1123 subdomain, the name
/// at most 63 characters of alphanumerics, `-`, `_`, `.`), also the key of a
/// selector requirement.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(format!("{s:?}: prefix part must be non-empty"));
        }
        dns1123_subdomain(p).map_err(|e| format!("{s:?}: prefix part {e}"))?;
    }
    if name.is_empty() {
        return Err(format!("{s:?}: name part must be non-empty"));
    }
    if name.len() > LABEL_MAX {
        return Err(format!(
            "{s:?}: name part must be no more than {LABEL_MAX} characters"
        ));
    }
    if !qualified_shape(name) {
        return Err(format!(
            "{s:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of alphanumerics, `-`,
/// `_`, `.`, starting and ending with an alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > LABEL_MAX {
        return Err(format!(
            "{s:?}: must be no more than {LABEL_MAX} characters"
        ));
    }
    if !qualified_shape(s) {
        return Err(format!(
            "{s:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// An IANA service name (`IANA_SVC_NAME`): at most 15 characters of
/// `[a-z0-9-]`, at least one letter, no leading, trailing or double `-`.
/// Container port names and named ports in policies.
pub fn port_name(s: &str) -> Result<(), String> {
    if s.len() > SVC_NAME_MAX {
        return Err(format!(
            "port name {s:?} must be no more than {SVC_NAME_MAX} characters"
        ));
    }
    if !label_shape(s) {
        return Err(format!(
            "port name {s:?} must contain only lower case alphanumeric characters or '-', starting and ending with an alphanumeric character"
        ));
    }
    if s.contains("--") {
        return Err(format!(
            "port name {s:?} must not contain consecutive hyphens"
        ));
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(format!(
            "port name {s:?} must contain at least one letter (a number is written without quotes)"
        ));
    }
    Ok(())
}

/// Checks every key and value of a label map; `field` is its path. Returns
/// the first problem as (field path, message).
pub fn labels<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    field: &str,
) -> Result<(), (String, String)> {
    for (k, v) in labels {
        label_key(k).map_err(|m| (field.to_string(), m))?;
        label_value(v).map_err(|m| (format!("{field}.{k}"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns1123_label("prod-1").is_ok());
        assert!(dns1123_label("Prod").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("web-0.shop").is_ok());
        assert!(dns1123_subdomain("web_0").is_err());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn labels_follow_the_api() {
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("kubernetes.io/metadata.name").is_ok());
        assert!(label_key("Tier_1.x").is_ok());
        assert!(label_key("/app").is_err());
        assert!(label_key("a/").is_err());
        assert!(label_key("a/b/c").is_err());
        assert!(label_key("Example.com/x").is_err());
        assert!(label_key("-app").is_err());
        assert!(label_key(&"a".repeat(64)).is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("a b").is_err());
        assert!(label_value("x-").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn port_names_are_iana_service_names() {
        assert!(port_name("http").is_ok());
        assert!(port_name("metrics-9090").is_ok());
        assert!(port_name("a-very-long-name").is_err()); // 16 characters
        assert!(port_name("a-very-long-nam").is_ok()); // 15
        assert!(port_name("8080").is_err());
        assert!(port_name("HTTP").is_err());
        assert!(port_name("a--b").is_err());
        assert!(port_name("-a").is_err());
    }
}
