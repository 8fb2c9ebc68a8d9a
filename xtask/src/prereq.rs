//! The external tools a task needs that `setup` cannot install here (Docker,
//! kind, kubectl): found or not, and what to do about each missing one. A
//! task checks all of them first and names every missing one at once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool a task needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// The Docker CLI *and* an engine answering it.
    Docker,
    /// kind (Kubernetes in Docker).
    Kind,
    /// kubectl.
    Kubectl,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::Docker => "docker",
            Tool::Kind => "kind",
            Tool::Kubectl => "kubectl",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Tool::Docker => "install Docker Engine (or a compatible engine with the docker CLI)",
            Tool::Kind => "install kind (https://kind.sigs.k8s.io), v0.20 or newer",
            Tool::Kubectl => "install kubectl, within one minor version of the cluster",
        }
    }
}

/// The first executable called `program` in the folders of `path` (a
/// `PATH`-style list).
pub fn find_in(program: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why a tool cannot be used, as one line for the user.
fn problem(tool: Tool, path: &std::ffi::OsStr) -> Option<String> {
    let Some(exe) = find_in(tool.program(), path) else {
        return Some(format!(
            "{}: not found on PATH: {}",
            tool.program(),
            tool.install_hint()
        ));
    };
    match tool {
        Tool::Docker => engine_problem(&exe),
        Tool::Kind | Tool::Kubectl => None,
    }
}

/// `docker version` answers for the client even with no engine: ask the
/// server's version, which needs the engine.
fn engine_problem(docker: &Path) -> Option<String> {
    let out = Command::new(docker)
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match out {
        Ok(o) if o.status.success() && !o.stdout.trim_ascii().is_empty() => None,
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            let why = why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            Some(format!(
                "docker: the CLI is at {} but no Docker engine answers it ({}): start the engine \
                 (dockerd) or point DOCKER_HOST at one",
                docker.display(),
                if why.is_empty() {
                    "no reply"
                } else {
                    why.trim()
                }
            ))
        }
        Err(e) => Some(format!("docker: cannot run {}: {e}", docker.display())),
    }
}

/// Every problem with `tools` on `path`, one line each (empty: all there).
pub fn problems(tools: &[Tool], path: &std::ffi::OsStr) -> Vec<String> {
    tools.iter().filter_map(|t| problem(*t, path)).collect()
}

/// Fails with one line per missing tool, telling `task` cannot run here.
pub fn require(task: &str, tools: &[Tool]) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing = problems(tools, &path);
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{task} cannot run on this machine; missing:\n  - {}",
        missing.join("\n  - ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn every_missing_tool_is_named_with_what_to_do() {
        let empty = tempfile::tempdir().unwrap();
        let got = problems(
            &[Tool::Docker, Tool::Kind, Tool::Kubectl],
            empty.path().as_os_str(),
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("docker: not found on PATH: install Docker Engine"));
        assert!(got[1].starts_with("kind: not found on PATH"));
        assert!(got[2].starts_with("kubectl: not found on PATH"));
    }

    #[test]
    fn a_docker_cli_without_an_engine_is_not_enough() {
        // What this machine has: the CLI, whose server query fails.
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "docker",
            "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2; exit 1",
        );
        script(dir.path(), "kubectl", "exit 0");
        let got = problems(&[Tool::Docker, Tool::Kubectl], dir.path().as_os_str());
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains("no Docker engine answers it"), "{}", got[0]);
        assert!(
            got[0].contains("Cannot connect to the Docker daemon"),
            "{}",
            got[0]
        );
        // An engine that answers is enough.
        script(dir.path(), "docker", "echo 28.2.2");
        assert!(problems(&[Tool::Docker], dir.path().as_os_str()).is_empty());
    }

    #[test]
    fn only_executables_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kind"), "not executable").unwrap();
        assert_eq!(find_in("kind", dir.path().as_os_str()), None);
        script(dir.path(), "kind", "exit 0");
        assert_eq!(
            find_in("kind", dir.path().as_os_str()),
            Some(dir.path().join("kind"))
        );
    }
}
