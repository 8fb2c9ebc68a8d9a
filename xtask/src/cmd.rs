//! Running external commands, loudly: every command is printed before it runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `cargo` that runs us (falls back to the one on PATH).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn describe(c: &Command) -> String {
    let mut s = String::new();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&c.get_program().to_string_lossy());
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Prints (on stderr) and runs `c`; fails unless it exits 0.
pub fn run(c: &mut Command) -> Result<()> {
    let what = describe(c);
    eprintln!("$ {what}");
    let status = c
        .status()
        .with_context(|| format!("cannot start `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status})");
    }
    Ok(())
}

/// [`run`] with the command's own output on stderr too, so that stdout
/// carries only what the task itself prints (setup and build chatter never
/// mixes with `testbed --format json`).
pub fn run_to_stderr(c: &mut Command) -> Result<()> {
    c.stdout(std::io::stderr());
    run(c)
}

/// Runs `c` quietly and returns its stdout if it exits 0, `None` otherwise
/// (including when the program does not exist). For cheap "is it there?"
/// probes.
pub fn probe(c: &mut Command) -> Option<String> {
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Puts cargo's bin directory (where `cargo install` puts bpf-linker and
/// cargo-nextest) on PATH for us and every child, if it is not there.
pub fn ensure_cargo_bin_on_path() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(bin) = home.map(|h| h.join("bin")) else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if dirs.contains(&bin) {
        return;
    }
    dirs.push(bin);
    if let Ok(joined) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", joined);
    }
}
