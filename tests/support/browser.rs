//! Headless Chromium for the tests that render a page (status page, charts, rollout ladder, the
//! cross-site attack page). One way to find and run the browser, so every such test runs it alike.
//!
//! Invariants: a test without a browser installed SKIPS LOUDLY (it prints why and returns); a run
//! has its own throwaway profile, no network beyond what the page asks for, and a 90 s deadline.

use std::process::Stdio;
use std::time::Duration;

/// The installed Chromium's command, or `None` after printing that `what` was skipped.
pub fn chromium(what: &str) -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        eprintln!("SKIPPED: no chromium installed (Debian: apt-get install chromium); {what}");
    }
    found
}

/// Runs headless Chromium with `args` on `url`; returns (stdout, stderr). Its console is logged
/// to stderr (see `console_problems`).
pub async fn run(bin: &str, url: &str, args: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finishes within 90 s")
        .expect("chromium output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The page's console messages Chromium logged, uncaught errors, and CSP refusals.
pub fn console_problems(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused to"))
        .collect()
}

/// Renders `url` at each `(name, "W,H")` size to `PREFIX-NAME.png` and asserts each is a real,
/// non-blank PNG and that the page logged no console problem. The files go to a temporary
/// directory, or to `FLIPGATE_SCREENSHOT_DIR` when set (kept, and their paths printed).
pub async fn screenshots(bin: &str, url: &str, prefix: &str, sizes: &[(&str, &str)]) {
    let keep = std::env::var_os("FLIPGATE_SCREENSHOT_DIR").map(std::path::PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    let dir = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    for (name, size) in sizes {
        let file = dir.join(format!("{prefix}-{name}.png"));
        let (_, stderr) = run(
            bin,
            url,
            &[
                format!("--screenshot={}", file.display()),
                format!("--window-size={size}"),
            ],
        )
        .await;
        let problems = console_problems(&stderr);
        assert!(
            problems.is_empty(),
            "console errors ({name}): {problems:#?}"
        );
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", file.display());
        assert!(bytes.len() > 10_000, "{} is not blank", file.display());
        if keep.is_some() {
            eprintln!("screenshot: {}", file.display());
        }
    }
}
