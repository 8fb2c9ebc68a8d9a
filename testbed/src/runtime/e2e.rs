//! The upstream Kubernetes e2e suite (`e2e.test` and `ginkgo`, built from
//! the same 1.20.2 source as the nodes) run unmodified against a cluster
//! of real nodes, from inside the control plane's namespace (the API
//! server is reachable only there).
//!
//! The NetworkPolicy focus holds 33 specs; the three `SCTPConnectivity`
//! ones need SCTP sockets, which this machine's kernel lacks
//! (`CONFIG_IP_SCTP` is off), and are always skipped. The other 30 (29
//! over TCP, one of which only writes an SCTP policy, and "NetworkPolicy
//! API") are what [`NETWORK_POLICY_FOCUS`] runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::controlplane::ControlPlane;
use crate::error::TestbedError;
use crate::netns::netns_path;

/// The suite's NetworkPolicy specs.
pub const NETWORK_POLICY_FOCUS: &str = "NetworkPolicy";
/// Always skipped: this kernel has no SCTP sockets.
pub const SCTP_SKIP: &str = "SCTPConnectivity";

/// What to run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Ginkgo's `-focus` regular expression.
    pub focus: String,
    /// More to skip (besides [`SCTP_SKIP`]), as a regular expression.
    pub skip: Option<String>,
    /// Ginkgo's parallel nodes (1: serial).
    pub parallel: usize,
    /// The folder for JUnit reports and the suite's output.
    pub report_dir: PathBuf,
}

/// How the run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuiteResult {
    /// Specs that passed.
    pub passed: usize,
    /// Specs that failed, by name.
    pub failed: Vec<String>,
    /// Whether ginkgo exited 0.
    pub success: bool,
}

/// Runs the suite: ginkgo's output goes to `log` (and is returned in the
/// result's counts from the JUnit reports).
pub fn run_suite(
    cp: &ControlPlane,
    nodes: usize,
    opts: &SuiteOptions,
    log: &Path,
) -> Result<SuiteResult, TestbedError> {
    let bin = cp.kube_bin();
    for b in ["e2e.test", "ginkgo"] {
        if !bin.join(b).is_file() {
            return Err(TestbedError::MissingBinary {
                what: format!("{b} (run `cargo xtask setup`)"),
                path: bin.join(b),
            });
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TestbedError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.report_dir).map_err(io(&opts.report_dir))?;
    let out_dir = opts.report_dir.join("output");
    std::fs::create_dir_all(&out_dir).map_err(io(&out_dir))?;
    let skip = match &opts.skip {
        Some(s) => format!("{SCTP_SKIP}|{s}"),
        None => SCTP_SKIP.to_string(),
    };
    let logfile = std::fs::File::create(log).map_err(io(log))?;
    let logfile2 = logfile.try_clone().map_err(io(log))?;
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(cp.netns()).display()))
        .arg(bin.join("ginkgo"))
        .arg(format!("-nodes={}", opts.parallel.max(1)))
        .arg("-noColor")
        .arg(format!("-focus={}", opts.focus))
        .arg(format!("-skip={skip}"))
        .arg(bin.join("e2e.test"))
        .arg("--")
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .arg("--provider=skeleton")
        .arg(format!("--num-nodes={nodes}"))
        .arg(format!("--kubectl-path={}", bin.join("kubectl").display()))
        .arg(format!("--report-dir={}", opts.report_dir.display()))
        // Without it the suite's end runs an ssh-based log dump.
        .arg("--disable-log-dump")
        .arg(format!("--e2e-output-dir={}", out_dir.display()))
        .stdin(Stdio::null())
        .stdout(logfile)
        .stderr(logfile2);
    let status = cmd.status().map_err(|source| TestbedError::Spawn {
        command: format!("{cmd:?}"),
        source,
    })?;
    let mut result = read_junit(&opts.report_dir)?;
    result.success = status.success();
    Ok(result)
}

/// Counts the specs of every `junit_*.xml` in `dir`: those that ran and
/// passed, and the names of those that failed (skipped ones are neither).
pub fn read_junit(dir: &Path) -> Result<SuiteResult, TestbedError> {
    let mut result = SuiteResult::default();
    let entries = std::fs::read_dir(dir).map_err(|source| TestbedError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("junit") && name.ends_with(".xml")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        count_cases(&text, &mut result);
    }
    Ok(result)
}

/// Adds the test cases of one JUnit report to `result`.
fn count_cases(text: &str, result: &mut SuiteResult) {
    let mut rest = text;
    while let Some(start) = rest.find("<testcase ") {
        let case = &rest[start..];
        let end = case
            .find("</testcase>")
            .map(|e| e + "</testcase>".len())
            .or_else(|| case.find("/>").map(|e| e + 2))
            .unwrap_or(case.len());
        let body = &case[..end];
        rest = &case[end..];
        let name = attr(body, "name").unwrap_or_default();
        if body.contains("<skipped") {
            continue;
        }
        if body.contains("<failure") || body.contains("<error") {
            result.failed.push(unescape(&name));
        } else {
            result.passed += 1;
        }
    }
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

fn unescape(s: &str) -> String {
    s.replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_cases_are_counted_by_outcome() {
        let xml = r#"<testsuite tests="3">
  <testcase name="[sig-network] NetworkPolicy API should support creating NetworkPolicy API operations" classname="Kubernetes e2e suite" time="0.2"></testcase>
  <testcase name="should support a &#39;default-deny-ingress&#39; policy" classname="x" time="60"><failure type="Failure">boom</failure></testcase>
  <testcase name="other" classname="x" time="0"><skipped></skipped></testcase>
</testsuite>"#;
        let mut r = SuiteResult::default();
        count_cases(xml, &mut r);
        assert_eq!(r.passed, 1);
        assert_eq!(
            r.failed,
            vec!["should support a 'default-deny-ingress' policy".to_string()]
        );
    }
}
