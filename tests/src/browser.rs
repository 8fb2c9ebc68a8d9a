//! Pages rendered by a real headless browser (Debian's `chromium`, which
//! `cargo xtask setup` installs): the DOM after the page's own script ran.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The browser's program name.
pub const CHROMIUM: &str = "chromium";

/// `chromium` on `PATH`; panics with what to do when it is missing.
pub fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(CHROMIUM))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{CHROMIUM} is missing: the HTML view is tested in a real headless browser; \
                 install Debian's chromium (`apt-get install chromium`, or `cargo xtask setup`, \
                 which `cargo xtask test` runs first)"
            )
        })
}

/// Renders `page` headless (as root, so without the sandbox) and returns
/// the DOM as the browser holds it once the page's scripts ran
/// (`--dump-dom`). Each call gets a profile folder of its own, removed
/// afterwards.
pub fn rendered_dom(page: &Path) -> String {
    let browser = chromium();
    let profile = std::env::temp_dir().join(format!(
        "palisade-chromium-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let page = std::fs::canonicalize(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let out = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", browser.display()));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "{CHROMIUM} failed on {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number the page's script wrote into the element `id` (`"?"` until
/// it ran: then this panics, the script did not run).
pub fn counted(dom: &str, id: &str) -> usize {
    let open = format!("id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in the rendered page:\n{dom}"))
        + open.len();
    let text = &dom[start..];
    let end = text.find('<').unwrap_or(text.len());
    text[..end].parse().unwrap_or_else(|_| {
        panic!(
            "#{id} holds {:?}: the page's script did not run",
            &text[..end]
        )
    })
}
