//! The Kubernetes manifests' route files (config/kubernetes) against the binary: each ConfigMap's
//! `flipgate.toml` is cut out of the YAML as written and given to `flipgate check`, so a manifest
//! and the flipgate it deploys cannot drift apart. The etcd overlay replaces the edge's whole
//! route file (a ConfigMap's TOML cannot be patched piece by piece), so it must equal the edge's
//! everywhere but `[state]`. Schema validation of the manifests themselves is `.ci/kubernetes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The token file the manifests mount (the Secret `*-admin-token`).
const TOKEN_FILE: &str = "/var/run/secrets/flipgate/token";

fn manifest(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/kubernetes")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of the ConfigMap key `flipgate.toml`, a YAML literal block scalar (`flipgate.toml: |`):
/// the lines after the key that are blank or indented deeper than it, less the first line's
/// indentation, with one final newline (YAML's default "clip" chomping). Exactly one such key.
fn route_file(yaml: &str) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let keys: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == "flipgate.toml: |")
        .collect();
    assert_eq!(keys.len(), 1, "expected one `flipgate.toml: |` key");
    let key_indent = indent(lines[keys[0]]);
    let body = &lines[keys[0] + 1..];
    let first = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .expect("flipgate.toml is empty");
    let n = indent(first);
    assert!(
        n > key_indent,
        "flipgate.toml's text is not indented under its key"
    );
    let mut out = String::new();
    for line in body {
        if line.trim().is_empty() {
            out.push('\n');
            continue;
        }
        if indent(line) < n {
            break;
        }
        out.push_str(&line[n..]);
        out.push('\n');
    }
    out.truncate(out.trim_end_matches('\n').len());
    out.push('\n');
    out
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// `flipgate check` on `text`, written as `flipgate.toml` in a fresh directory; with
/// `FLIPGATE_ADMIN_TOKEN` (the default `admin.token_env`, read before the token file) when `token`.
fn check(text: &str, token: Option<&str>) -> (Output, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flipgate"));
    cmd.arg("check")
        .arg(&file)
        .env_remove("FLIPGATE_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("FLIPGATE_ADMIN_TOKEN", t);
    }
    (cmd.output().unwrap(), dir, file)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_block_scalar_reader_keeps_blank_lines_and_stops_at_the_next_key() {
    let yaml = "data:\n  flipgate.toml: |\n    [server]\n      # deeper\n\n    x = 1\n\n\n  other: |\n    no\n";
    assert_eq!(route_file(yaml), "[server]\n  # deeper\n\nx = 1\n");
}

#[test]
fn the_edge_and_sidecar_route_files_pass_flipgate_check() {
    for rel in ["edge/configmap.yaml", "sidecar/configmap.yaml"] {
        let routes = route_file(&manifest(rel));

        // As deployed the admin listener is not loopback, so the file's token source must yield a
        // token: the Secret's file, absent here. `check` refuses, naming it.
        let (o, _dir, _) = check(&routes, None);
        assert!(!o.status.success(), "{rel}: passed without a token");
        let err = text(&o.stderr);
        assert!(
            err.contains("not loopback") && err.contains(TOKEN_FILE),
            "{rel}: expected the non-loopback admin listener to need {TOKEN_FILE}: {err}"
        );

        // With a token, everything else in the file is valid.
        let (o, _dir, file) = check(&routes, Some("a-test-token"));
        assert!(
            o.status.success(),
            "{rel}: `flipgate check` failed:\n{}",
            text(&o.stderr)
        );
        let summary = text(&o.stdout);
        assert!(
            summary.starts_with(&format!("{}: OK", file.display())),
            "{rel}: {summary}"
        );
        assert!(
            summary.contains("admin 0.0.0.0:9901"),
            "{rel}: the probes and the ServiceMonitor use the admin port 9901: {summary}"
        );
    }
}

#[test]
fn the_etcd_overlay_is_the_edge_route_file_with_another_state_section() {
    let edge = route_file(&manifest("edge/configmap.yaml"));
    let etcd = route_file(&manifest("overlays/etcd/configmap.yaml"));
    let mut edge: toml::Table = toml::from_str(&edge).unwrap();
    let mut etcd_t: toml::Table = toml::from_str(&etcd).unwrap();
    let edge_state = edge.remove("state").expect("edge has [state]");
    let etcd_state = etcd_t.remove("state").expect("overlay has [state]");
    assert_eq!(
        edge, etcd_t,
        "overlays/etcd/configmap.yaml must equal edge/configmap.yaml outside [state]"
    );
    assert_eq!(etcd_state["backend"].as_str(), Some("etcd"));
    assert_eq!(
        etcd_state["dir"], edge_state["dir"],
        "the same state volume in both"
    );
    let endpoints = etcd_state["etcd"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());

    // A flipgate built with the `etcd` feature accepts the file; one built without it refuses
    // it and says how to get the feature.
    let (o, _dir, _) = check(&etcd, Some("a-test-token"));
    let err = text(&o.stderr);
    if o.status.success() {
        return;
    }
    assert!(
        err.contains("--features etcd"),
        "a flipgate without the etcd backend must refuse the overlay saying how to build it: {err}"
    );
}
