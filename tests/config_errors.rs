//! Golden tests: every kind of invalid route file is rejected with its specific error, naming the
//! file, line, column and field; and whatever a file holds, the error text stays small (quoted values
//! clipped, errors counted past a cap, files over the size limit refused unread) in `check`, at
//! start and on hot reload.
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flipgate::config::{parse, Config, ConfigError, MAX_FILE_BYTES};
use support::*;

const HEAD: &str = "[server]\nlisten = \"127.0.0.1:0\"\n\n";

/// (case, file text, line, column, field contains, message contains)
const CASES: &[(&str, &str, usize, usize, &str, &str)] = &[
    (
        "syntax error",
        "[server]\nlisten = \"127.0.0.1:0\n",
        2,
        22,
        "",
        "invalid basic string",
    ),
    ("empty file", "  \n", 1, 1, "", "file is empty"),
    (
        "unknown top-level key",
        "[server]\nlisten = \"127.0.0.1:0\"\nlistne = 1\n",
        3,
        1,
        "",
        "unknown field `listne`",
    ),
    (
        "unknown route key",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\npath_prefx = \"/\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        4,
        1,
        "",
        "unknown field `path_prefx`",
    ),
    (
        "unknown live target",
        "[[routes]]\nname = \"bot\"\nlive = \"bleu\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n",
        3,
        8,
        "routes[bot].live",
        "unknown target `bleu`; defined targets: blue, green",
    ),
    (
        "unknown canary target",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.canary]\ntarget = \"gren\"\npercent = 5.0\n",
        7,
        10,
        "routes[bot].canary.target",
        "unknown target `gren`",
    ),
    (
        "canary target equal to live",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n[routes.canary]\ntarget = \"blue\"\npercent = 5.0\n",
        8,
        10,
        "routes[bot].canary.target",
        "already the live target",
    ),
    (
        "percent above 100",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n[routes.canary]\ntarget = \"green\"\npercent = 100.5\n",
        9,
        11,
        "routes[bot].canary.percent",
        "between 0 and 100, got 100.5",
    ),
    (
        "negative percent",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n[routes.canary]\ntarget = \"green\"\npercent = -1.0\n",
        9,
        11,
        "routes[bot].canary.percent",
        "between 0 and 100",
    ),
    (
        "empty target list",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = []\n",
        5,
        8,
        "routes[bot].targets.blue",
        "target has no instances",
    ),
    (
        "no targets at all",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\n",
        4,
        1,
        "routes[bot].targets",
        "at least one target",
    ),
    (
        "bad host:port",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"10.0.0.1\"]\n",
        5,
        8,
        "routes[bot].targets.blue",
        "`10.0.0.1` is not a host:port address",
    ),
    (
        "port out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"10.0.0.1:99999\"]\n",
        5,
        8,
        "routes[bot].targets.blue",
        "not a host:port",
    ),
    (
        "duplicate route names",
        "[[routes]]\nname = \"bot\"\npath_prefix = \"/a\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"bot\"\npath_prefix = \"/b\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        9,
        8,
        "routes[bot].name",
        "duplicate route name",
    ),
    (
        "identical host and prefix",
        "[[routes]]\nname = \"a\"\nhosts = [\"Bot.example.com\"]\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"b\"\nhosts = [\"bot.example.com\"]\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        9,
        8,
        "routes[b]",
        "(bot.example.com, path_prefix \"/\") is already taken",
    ),
    (
        "bad duration",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nwindow = \"30 parsecs\"\n",
        7,
        10,
        "routes[bot].circuit.window",
        "is not a duration",
    ),
    (
        "zero duration",
        "[server]\nupstream_timeout = \"0s\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        20,
        "server.upstream_timeout",
        "greater than zero",
    ),
    (
        "absurd timeout",
        "[server]\ndrain_timeout = \"100000000y\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        17,
        "server.drain_timeout",
        "`100000000y` is longer than the maximum of 1day for this setting",
    ),
    (
        "timeout just over a day",
        "[server]\nupstream_timeout = \"86401s\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        20,
        "server.upstream_timeout",
        "longer than the maximum of 1day",
    ),
    (
        "bake over 30 days",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nbake = \"1000y\"\n",
        7,
        8,
        "routes[bot].circuit.bake",
        "longer than the maximum of 30days",
    ),
    (
        "tunnel lifetime over 30 days",
        "[server]\ntunnel_max_lifetime_after_flip = \"31d\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        34,
        "server.tunnel_max_lifetime_after_flip",
        "longer than the maximum of 30days",
    ),
    (
        "circuit window over a day",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nwindow = \"2d\"\n",
        7,
        10,
        "routes[bot].circuit.window",
        "longer than the maximum of 1day",
    ),
    (
        "outlier ejection over a day",
        "[server]\noutlier_ejection = \"100000000y\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        20,
        "server.outlier_ejection",
        "longer than the maximum of 1day",
    ),
    (
        "bad CIDR",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.preview]\nallow_from = [\"10.0.0.0/33\"]\n",
        7,
        15,
        "routes[bot].preview.allow_from",
        "`10.0.0.0/33` is not a CIDR",
    ),
    (
        "bad sticky key",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n[routes.canary]\ntarget = \"green\"\npercent = 5.0\nsticky = \"ip\"\n",
        10,
        10,
        "routes[bot].canary.sticky",
        "expected \"header:NAME\", \"cookie:NAME\" or \"none\"",
    ),
    (
        "path prefix without slash",
        "[[routes]]\nname = \"bot\"\npath_prefix = \"api\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        3,
        15,
        "routes[bot].path_prefix",
        "must start with '/'",
    ),
    (
        "bad host pattern",
        "[[routes]]\nname = \"bot\"\nhosts = [\"https://bot.example.com\"]\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        3,
        10,
        "routes[bot].hosts",
        "is not a host name",
    ),
    (
        "bad listen address",
        "[server]\nlisten = \"localhost:http\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        2,
        10,
        "server.listen",
        "is not an IP:port address",
    ),
    (
        "admin on the traffic port",
        "[server]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        4,
        10,
        "admin.listen",
        "overlaps server.listen `0.0.0.0:8080`: the admin API needs a port of its own",
    ),
    (
        "no routes",
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        1,
        1,
        "routes",
        "no [[routes]] defined",
    ),
    (
        "health check path without slash",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [\"127.0.0.1:1\"], health_check = \"healthz\" }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "health_check `healthz` must be a path starting with '/'",
    ),
    (
        "health interval too short",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [\"127.0.0.1:1\"], health_check = \"/hz\", health_interval = \"1ms\" }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "health_interval must be a duration of at least 100ms",
    ),
    (
        "health interval too long",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [\"127.0.0.1:1\"], health_check = \"/hz\", health_interval = \"100000000y\" }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "at least 100ms and at most 1day",
    ),
    (
        "unknown balancing policy",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [\"127.0.0.1:1\"], lb = \"least_conn\" }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "lb `least_conn` is not a balancing policy; use \"p2c\"",
    ),
    (
        "instance weight zero",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [{ addr = \"127.0.0.1:1\", weight = 0 }] }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "weight of `127.0.0.1:1` must be an integer from 1 to 10000, found 0",
    ),
    (
        "instance table without addr",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [{ weight = 2 }] }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "an instance table needs `addr = \"host:port\"`",
    ),
    (
        "unknown instance field",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [{ addr = \"127.0.0.1:1\", wieght = 2 }] }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "unknown field `wieght` in an instance; expected `addr` or `weight`",
    ),
    (
        "instance table in the list form",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [{ addr = \"127.0.0.1:1\" }]\n",
        5,
        8,
        "routes[bot].targets.blue",
        "instances must be \"host:port\" strings, found table",
    ),
    (
        "unknown target option",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = { instances = [\"127.0.0.1:1\"], helth = 1 }\n",
        5,
        8,
        "routes[bot].targets.blue",
        "unknown field `helth`",
    ),
    (
        "max_error_rate out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nmax_error_rate = 5.0\n",
        7,
        18,
        "routes[bot].circuit.max_error_rate",
        "between 0.0 and 1.0",
    ),
    (
        "unknown circuit mode",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nmode = \"bayes\"\n",
        7,
        8,
        "routes[bot].circuit.mode",
        "expected \"threshold\" or \"sequential\"",
    ),
    (
        "detect ratio not above 1",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\ndetect = 0.5\n",
        7,
        10,
        "routes[bot].circuit.detect",
        "an error-rate ratio above 1.0",
    ),
    (
        "detect and detect_points both",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\ndetect = 2.0\ndetect_points = 1.0\n",
        8,
        17,
        "routes[bot].circuit.detect_points",
        "not both",
    ),
    (
        "false_trip out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nfalse_trip = 0.5\n",
        7,
        14,
        "routes[bot].circuit.false_trip",
        "at most 0.2",
    ),
    (
        "power out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\npower = 1.0\n",
        7,
        9,
        "routes[bot].circuit.power",
        "from 0.5 to below 1",
    ),
    (
        "sequential worse rate not below 1",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nmode = \"sequential\"\nmax_error_rate = 0.6\ndetect = 2.0\n",
        9,
        10,
        "routes[bot].circuit.detect",
        "a \"worse\" rate below 1.0",
    ),
    (
        "max_latency_ratio below 1",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nmax_latency_ratio = 0.5\n",
        7,
        21,
        "routes[bot].circuit.max_latency_ratio",
        "a latency ratio from 1.0 to 100",
    ),
    (
        "latency_quantile out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nlatency_quantile = 0.9999\n",
        7,
        20,
        "routes[bot].circuit.latency_quantile",
        "a quantile from 0.5 to 0.999",
    ),
    (
        "rollout steps not increasing",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nsteps = [5, 50, 25, 100]\n",
        7,
        17,
        "routes[bot].rollout.steps",
        "strictly increasing: 25 follows 50",
    ),
    (
        "rollout last step not 100",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nsteps = [5, 50]\n",
        7,
        13,
        "routes[bot].rollout.steps",
        "the last step must be 100",
    ),
    (
        "rollout step out of range",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nsteps = [0, 100]\n",
        7,
        10,
        "routes[bot].rollout.steps",
        "from 1 to 100",
    ),
    (
        "rollout without steps",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nsteps = []\n",
        7,
        9,
        "routes[bot].rollout.steps",
        "at least one step",
    ),
    (
        "rollout hold zero",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nhold = \"0s\"\n",
        7,
        8,
        "routes[bot].rollout.hold",
        "greater than zero",
    ),
    (
        "rollout hold not a duration",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nhold = \"soon\"\n",
        7,
        8,
        "routes[bot].rollout.hold",
        "is not a duration",
    ),
    (
        "rollout unknown key",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nholds = \"2m\"\n",
        7,
        1,
        "",
        "unknown field `holds`",
    ),
    (
        "rollout negative min_requests_per_step",
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.rollout]\nmin_requests_per_step = -1\n",
        7,
        25,
        "routes[bot].rollout.min_requests_per_step",
        "must be at least 0",
    ),
];

fn check(
    case: &str,
    text: &str,
    line: usize,
    col: usize,
    field: &str,
    msg: &str,
) -> Result<(), String> {
    let path = Path::new("/etc/flipgate/routes.toml");
    let errors = match parse(path, text) {
        Ok(_) => return Err(format!("{case}: accepted an invalid file")),
        Err(e) => e,
    };
    let e: &ConfigError = errors.first();
    let shown = errors.to_string();
    let ok = e.file == path
        && (e.line, e.col) == (line, col)
        && e.field.contains(field)
        && e.message.contains(msg)
        && shown.starts_with(&format!("/etc/flipgate/routes.toml:{line}:{col}: "));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{case}: expected {line}:{col} field~`{field}` msg~`{msg}`, got: {shown}"
        ))
    }
}

#[test]
fn every_invalid_case_names_its_error_and_location() {
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(case, text, line, col, field, msg)| {
            check(case, text, *line, *col, field, msg).err()
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const ROUTE: &str =
    "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n";

#[test]
fn state_backend_errors_name_the_setting() {
    let cases = [
        (
            "unknown backend",
            format!("[state]\nbackend = \"consul\"\n{ROUTE}"),
            2,
            11,
            "state.backend",
            "unknown state backend `consul`; expected \"file\" or \"etcd\"",
        ),
        (
            "etcd table with the file backend",
            format!("[state]\n[state.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n{ROUTE}"),
            2,
            1,
            "state.etcd",
            "add `backend = \"etcd\"`",
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(case, text, line, col, field, msg)| {
            check(case, text, *line, *col, field, msg).err()
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A binary built without the `etcd` feature says how to get one that has it.
#[cfg(not(feature = "etcd"))]
#[test]
fn the_etcd_backend_needs_a_build_with_the_etcd_feature() {
    let text = format!(
        "[state]\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n{ROUTE}"
    );
    check(
        "etcd backend without the feature",
        &text,
        2,
        11,
        "state.backend",
        "built without etcd support; build it with `cargo build --release --features etcd`",
    )
    .unwrap(); // `flipgate check` and `flipgate run` both refuse it, saying how to get a build that has it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(&file, &text).unwrap();
    for cmd in ["check", "run"] {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"));
        match cmd {
            "check" => c.arg("check").arg(&file),
            _ => c.arg("run").arg("-c").arg(&file),
        };
        let out = c.output().unwrap();
        assert_ne!(out.status.code(), Some(0), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--features etcd"), "{cmd}: {err}");
    }
}

/// With the feature, the etcd table is checked setting by setting.
#[cfg(feature = "etcd")]
#[test]
fn etcd_settings_are_checked() {
    let text = format!(
        "[state]\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n{ROUTE}"
    );
    check(
        "endpoint without scheme",
        &text,
        4,
        14,
        "state.etcd.endpoints",
        "is not an etcd endpoint URL",
    )
    .unwrap();
    let tls = format!(
        "[state]\nbackend = \"etcd\"\n[state.etcd]\nendpoints = [\"https://etcd:2379\"]\n{ROUTE}"
    );
    check("TLS without a CA", &tls, 3, 1, "state.etcd.ca", "set `ca`").unwrap();
}

#[test]
fn header_defaults_apply_and_several_errors_are_reported_at_once() {
    let text = format!(
        "{HEAD}[[routes]]\nname = \"bot\"\nlive = \"nope\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.canary]\ntarget = \"blue2\"\npercent = 500.0\n"
    );
    let errors = parse(Path::new("f.toml"), &text).unwrap_err();
    assert_eq!(errors.0.len(), 3, "{errors}");
}

#[test]
fn shipped_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = flipgate::config::Config::load(&p) {
                panic!("{} is invalid:\n{e}", p.display());
            }
            n += 1;
        }
    }
    let examples = dir.join("examples");
    for entry in std::fs::read_dir(&examples).unwrap() {
        let p = entry.unwrap().path();
        if let Err(e) = flipgate::config::Config::load(&p) {
            panic!("{} is invalid:\n{e}", p.display());
        }
        n += 1;
    }
    assert!(
        n >= 4,
        "expected config/flipgate.toml and examples, found {n}"
    );
}

/// A route file whose `server.listen` is a string of `len` bytes (invalid: not an address).
fn huge_listen(len: usize) -> String {
    format!(
        "[server]\nlisten = \"{}\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n",
        "x".repeat(len)
    )
}

#[test]
fn a_huge_value_is_quoted_clipped_and_the_error_stays_one_short_line() {
    let len = 3 * 1024 * 1024;
    let errors = parse(Path::new("f.toml"), &huge_listen(len)).unwrap_err();
    let shown = errors.to_string();
    assert!(shown.len() < 1024, "{} bytes of error text", shown.len());
    assert!(
        shown.starts_with("f.toml:2:10: server.listen: `xxxx"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("… ({len} bytes)` is not an IP:port address")),
        "{shown}"
    );

    // A huge route name is clipped in the field as well, and a multi-line value stays one line.
    let name = "n".repeat(100_000);
    let text = format!(
        "[[routes]]\nname = \"{name}\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.canary]\ntarget = \"\"\"a\nb\"\"\"\npercent = 5.0\n"
    );
    let errors = parse(Path::new("f.toml"), &text).unwrap_err();
    let shown = errors.to_string();
    assert!(shown.len() < 4096, "{} bytes of error text", shown.len());
    assert!(
        errors.0.iter().all(|e| e.field.chars().count() <= 400),
        "{shown}"
    );
    assert!(shown.contains("unknown target `a\\nb`"), "{shown}");
    assert_eq!(shown.lines().count(), errors.0.len(), "{shown}");
}

#[test]
fn errors_past_the_cap_are_counted_not_listed() {
    let hosts = (0..10_000)
        .map(|i| format!("\"bad host {i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "[[routes]]\nname = \"bot\"\nhosts = [{hosts}]\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n"
    );
    let errors = parse(Path::new("f.toml"), &text).unwrap_err();
    assert_eq!(errors.0.len(), 21, "20 errors and the count of the rest");
    let last = errors.0.last().unwrap();
    assert!(
        last.message.contains("9980 more errors not shown"),
        "{last}"
    );
    assert!(errors.to_string().len() < 8 * 1024);
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(&file, huge_listen(MAX_FILE_BYTES as usize)).unwrap();
    let errors = Config::load(&file).unwrap_err();
    let shown = errors.to_string();
    assert_eq!(errors.0.len(), 1, "{shown}");
    assert!(
        shown.contains("over the 4 MiB (4194304 bytes) limit for a route file; not read"),
        "{shown}"
    );
    assert!(shown.len() < 512, "{shown}");
}

/// A FIFO claims no size: the read itself must stop at the limit instead of taking all there is.
#[cfg(unix)]
#[test]
fn a_stream_over_the_size_limit_is_cut_at_the_limit() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("flipgate.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let total: usize = 64 * 1024 * 1024;
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            let chunk = vec![b'#'; 64 * 1024];
            let mut written = 0;
            while written < total {
                match f.write(&chunk) {
                    Ok(n) => written += n,
                    Err(_) => break, // the reader is gone (broken pipe)
                }
            }
            written
        })
    };
    let errors = Config::load(&fifo).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("more than 4194304 bytes, over the 4 MiB"),
        "{errors}"
    );
    let written = writer.join().unwrap();
    assert!(
        written < total,
        "the loader read all {written} bytes instead of stopping"
    );
}

#[test]
fn check_prints_a_bounded_error_for_a_huge_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(&file, huge_listen(3 * 1024 * 1024)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.len() < 1024, "{} bytes on stderr", err.len());
    assert!(err.contains("server.listen"), "{err}");
}

#[tokio::test]
async fn hot_reload_of_a_huge_or_oversized_file_keeps_the_old_config_and_small_errors() {
    let blue = spawn_upstream("blue").await;
    let gw = Gw::start(&config("blue", &[("blue", blue.addr)], "")).await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // An invalid file under the size limit, with a 3 MiB value.
    let huge = config("blue", &[("blue", blue.addr)], "").replace(
        "upstream_timeout = \"5s\"",
        &format!("upstream_timeout = \"{}\"", "9".repeat(3 * 1024 * 1024)),
    );
    gw.rewrite(&huge);
    let last_error = || async {
        let v = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await.json();
        v["config"]["last_reload"]["error"]
            .as_str()
            .map(str::to_string)
    };
    wait_until(
        "the huge file rejected",
        Duration::from_secs(10),
        || async { last_error().await.is_some() },
    )
    .await;
    let err = last_error().await.unwrap();
    assert!(err.contains("server.upstream_timeout"), "{err}");
    assert!(err.len() < 1024, "{} bytes", err.len());
    let events = get(&c, &gw.admin_url("/api/v1/events"), &[]).await;
    assert!(events.body.len() < 4096, "{} bytes", events.body.len());
    let routes = get(&c, &gw.admin_url("/api/v1/routes"), &[]).await;
    assert!(routes.body.len() < 8192, "{} bytes", routes.body.len());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");

    // Over the size limit: refused unread, with the limit named.
    let mut oversized = config("blue", &[("blue", blue.addr)], "");
    oversized.push_str(&"#".repeat(MAX_FILE_BYTES as usize));
    gw.rewrite(&oversized);
    wait_until(
        "the oversized file rejected",
        Duration::from_secs(10),
        || async { last_error().await.is_some_and(|e| e.contains("4 MiB")) },
    )
    .await;
    let events = get(&c, &gw.admin_url("/api/v1/events"), &[]).await;
    assert!(events.body.len() < 4096, "{} bytes", events.body.len());
    assert_eq!(get(&c, &gw.url("/"), &[]).await.text(), "blue");
    gw.stop().await;
}

#[test]
fn the_longest_accepted_durations_are_accepted() {
    let text = "[server]\ndrain_timeout = \"1day\"\ntunnel_max_lifetime_after_flip = \"30days\"\n[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n[routes.circuit]\nbake = \"30d\"\nwindow = \"24h\"\n";
    let c = parse(Path::new("f.toml"), text).unwrap();
    assert_eq!(c.server.drain_timeout, flipgate::config::MAX_TIMEOUT);
    assert_eq!(
        c.routes[0].circuit.as_ref().unwrap().bake,
        flipgate::config::MAX_LONG
    );
}

/// Validation bounds every duration, but the code that adds one to a clock must not rely on it:
/// with durations no file can hold, forced into a `Config`, requests, a flip (its bake deadline)
/// and the drain at shutdown neither panic nor wrap.
#[tokio::test]
async fn durations_past_the_bounds_cannot_panic_the_code_that_adds_them() {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info)
    }));
    let blue = spawn_upstream("blue").await;
    let green = spawn_upstream("green").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    write_atomic(
        &file,
        &config(
            "blue",
            &[("blue", blue.addr), ("green", green.addr)],
            "[routes.circuit]\n",
        ),
    );
    let mut cfg = Config::load(&file).unwrap();
    cfg.server.upstream_timeout = Duration::MAX;
    cfg.server.drain_timeout = Duration::MAX;
    cfg.server.outlier_ejection = Duration::MAX;
    cfg.routes[0].circuit.as_mut().unwrap().bake = Duration::MAX;
    let gw = flipgate::Gateway::start_with(cfg, file).await.unwrap();
    let c = client();
    let url = format!("http://{}/", gw.addr);
    assert_eq!(get(&c, &url, &[]).await.text(), "blue");
    gw.control
        .act(
            "bot",
            flipgate::control::Action::Flip {
                target: Some("green".into()),
            },
        )
        .unwrap();
    let state = gw
        .control
        .snapshots()
        .load()
        .route("bot")
        .unwrap()
        .state
        .clone();
    assert_eq!(
        state.bake_until_unix_ms,
        Some(u64::MAX),
        "saturated, not wrapped"
    );
    assert_eq!(get(&c, &url, &[]).await.text(), "green");
    gw.shutdown().await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// Issue 17 item 2: the documented flip by editing `live` works with the shipped files: an idle
/// canary (0 %) left on the new live target is no canary, not an error. A canary on the live
/// target that would take traffic is still refused, saying how to fix it.
#[test]
fn flip_by_editing_live_is_accepted_with_the_shipped_files() {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/flipgate.toml"))
            .unwrap();
    let edited = shipped.replacen("\nlive = \"blue\"", "\nlive = \"green\"", 1);
    assert_ne!(shipped, edited, "the shipped file has `live = \"blue\"`");
    let config = flipgate::config::parse(Path::new("flipgate.toml"), &edited)
        .unwrap_or_else(|e| panic!("the edited file is refused: {e}"));
    let route = &config.routes[0];
    assert_eq!(route.live, "green");
    assert!(route.canary.is_none(), "the idle canary on live is dropped");

    let busy = edited.replacen("percent = 0.0", "percent = 5.0", 1);
    let err = flipgate::config::parse(Path::new("flipgate.toml"), &busy)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("already the live target; point the canary"),
        "{err}"
    );
}

/// Issue 17 item 3: `check` makes every check `run` makes before binding, so a file it passes is
/// not refused at start for a missing certificate or an unprotected non-loopback admin listener.
#[test]
fn check_refuses_what_run_refuses() {
    let routes =
        "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\n";
    let cases = [
        (
            "missing certificate",
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\ncerts = [{{ cert = \"nope.pem\", key = \"nope.key\" }}]\n{routes}"),
            "nope.pem",
        ),
        (
            "non-loopback admin without a token",
            format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken_env = \"\"\n{routes}"),
            "not loopback",
        ),
        (
            "non-loopback admin with a token file that is missing",
            format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken_env = \"\"\ntoken_file = \"missing-token\"\n{routes}"),
            "missing-token: not found",
        ),
    ];
    for (case, text, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flipgate.toml");
        std::fs::write(&file, &text).unwrap();
        for cmd in ["check", "run"] {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"));
            if cmd == "check" {
                c.arg("check").arg(&file);
            } else {
                c.arg("run").arg("-c").arg(&file);
            }
            let out = c.env_remove("FLIPGATE_ADMIN_TOKEN").output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{case}: {cmd}: {err}");
            assert!(err.contains(says), "{case}: {cmd}: {err}");
        }
    }
    // A file that cannot be read is named without a made-up position (`FILE:0:0`).
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!("{}: ", dir.path().display())) && !err.contains(":0:0"),
        "{err}"
    );

    // And a good file prints every circuit setting it read.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(
        &file,
        format!("{routes}[routes.circuit]\ncompare = \"live\"\nmax_p99 = \"250ms\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("compare live") && said.contains("max_p99 250ms"),
        "{said}"
    );
}

/// A route `bot` over `blue` and `green` (lines 1-6), then `$rules` from line 7 on.
macro_rules! with_rules {
    ($rules:literal) => {
        concat!(
            "[[routes]]\nname = \"bot\"\nlive = \"blue\"\n[routes.targets]\nblue = [\"127.0.0.1:1\"]\ngreen = [\"127.0.0.1:2\"]\n",
            $rules
        )
    };
}

/// Cohort rules (`[[routes.rules]]`), as `CASES`.
const RULE_CASES: &[(&str, &str, usize, usize, &str, &str)] = &[
    (
        "rule without header, cookie or source",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nvalues = [\"beta\"]\n"),
        7,
        1,
        "routes[bot].rules[beta].header",
        "exactly one of `header = NAME`, `cookie = NAME` or `source = [CIDR, ...]`",
    ),
    (
        "rule with header and cookie",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x-user-tier\"\ncookie = \"tier\"\nvalues = [\"beta\"]\n"),
        11,
        10,
        "routes[bot].rules[beta].cookie",
        "`header` and `cookie` both given",
    ),
    (
        "rule with cookie and source",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nsource = [\"10.0.0.0/8\"]\ncookie = \"tier\"\nvalues = [\"beta\"]\n"),
        11,
        10,
        "routes[bot].rules[beta].cookie",
        "`source` and `cookie` both given",
    ),
    (
        "header rule without values",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x-user-tier\"\n"),
        10,
        10,
        "routes[bot].rules[beta].values",
        "a `header` rule needs `values`",
    ),
    (
        "cookie rule with empty values",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\ncookie = \"tier\"\nvalues = []\n"),
        11,
        10,
        "routes[bot].rules[beta].values",
        "must list at least one value",
    ),
    (
        "rule with an empty value",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x-user-tier\"\nvalues = [\"beta\", \"\"]\n"),
        11,
        19,
        "routes[bot].rules[beta].values",
        "an empty value never matches",
    ),
    (
        "source rule with an empty list",
        with_rules!("[[routes.rules]]\nname = \"office\"\ntarget = \"green\"\nsource = []\n"),
        10,
        10,
        "routes[bot].rules[office].source",
        "at least one CIDR",
    ),
    (
        "source rule with a bad CIDR",
        with_rules!("[[routes.rules]]\nname = \"office\"\ntarget = \"green\"\nsource = [\"10.1.0.0/16\", \"10.1.0.0/33\"]\n"),
        10,
        26,
        "routes[bot].rules[office].source",
        "`10.1.0.0/33` is not a CIDR",
    ),
    (
        "source rule with an IPv6 CIDR typo",
        with_rules!("[[routes.rules]]\nname = \"office\"\ntarget = \"green\"\nsource = [\"fd00::/129\"]\n"),
        10,
        11,
        "routes[bot].rules[office].source",
        "`fd00::/129` is not a CIDR",
    ),
    (
        "source rule with values",
        with_rules!("[[routes.rules]]\nname = \"office\"\ntarget = \"green\"\nsource = [\"10.0.0.0/8\"]\nvalues = [\"10.0.0.0/8\"]\n"),
        11,
        10,
        "routes[bot].rules[office].values",
        "a source rule lists its CIDRs in `source`",
    ),
    (
        "rule target unknown",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"gren\"\nheader = \"x-user-tier\"\nvalues = [\"beta\"]\n"),
        9,
        10,
        "routes[bot].rules[beta].target",
        "unknown target `gren`; defined targets: blue, green",
    ),
    (
        "duplicate rule names",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x-user-tier\"\nvalues = [\"beta\"]\n[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\ncookie = \"tier\"\nvalues = [\"beta\"]\n"),
        13,
        8,
        "routes[bot].rules[beta].name",
        "duplicate rule name `beta`",
    ),
    (
        "rule name not a label value",
        with_rules!("[[routes.rules]]\nname = \"beta testers\"\ntarget = \"green\"\nheader = \"x-user-tier\"\nvalues = [\"beta\"]\n"),
        8,
        8,
        "routes[bot].rules.name",
        "rule name `beta testers` must be non-empty and use only letters, digits",
    ),
    (
        "rule with a bad header name",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x user\"\nvalues = [\"beta\"]\n"),
        10,
        10,
        "routes[bot].rules[beta].header",
        "`x user` is not a valid header name",
    ),
    (
        "rule with a bad cookie name",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\ncookie = \"ti;er\"\nvalues = [\"beta\"]\n"),
        10,
        10,
        "routes[bot].rules[beta].cookie",
        "`ti;er` is not a valid cookie name",
    ),
    (
        "unknown rule key",
        with_rules!("[[routes.rules]]\nname = \"beta\"\ntarget = \"green\"\nheader = \"x-user-tier\"\nvalue = [\"beta\"]\n"),
        11,
        1,
        "",
        "unknown field `value`",
    ),
];

#[test]
fn every_invalid_rule_names_its_error_and_location() {
    let failures: Vec<String> = RULE_CASES
        .iter()
        .filter_map(|(case, text, line, col, field, msg)| {
            check(case, text, *line, *col, field, msg).err()
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn valid_rules_are_accepted_in_file_order() {
    let text = with_rules!(
        "[[routes.rules]]\nname = \"beta-testers\"\ntarget = \"green\"\nheader = \"X-User-Tier\"\nvalues = [\"beta\", \"staff\"]\n\
         [[routes.rules]]\nname = \"cookie.tier\"\ntarget = \"green\"\ncookie = \"tier\"\nvalues = [\"beta\"]\n\
         [[routes.rules]]\nname = \"office_v6\"\ntarget = \"blue\"\nsource = [\"10.1.2.3/16\", \"fd00::/8\", \"192.0.2.7\"]\n"
    );
    let config = parse(Path::new("f.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let rules = &config.routes[0].rules;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["beta-testers", "cookie.tier", "office_v6"]);
    match &rules[0].matcher {
        flipgate::config::RuleMatch::Header { name, values } => {
            assert_eq!(name.as_str(), "x-user-tier");
            assert_eq!(values, &["beta", "staff"]);
        }
        other => panic!("{other:?}"),
    }
    match &rules[2].matcher {
        flipgate::config::RuleMatch::Source(nets) => {
            let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            assert_eq!(shown, ["10.1.0.0/16", "fd00::/8", "192.0.2.7/32"]);
        }
        other => panic!("{other:?}"),
    }
    // `flipgate check` lists them, in order, with what each matches.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flipgate.toml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipgate"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    let listed: Vec<&str> = said.lines().filter(|l| l.contains(" rule ")).collect();
    assert_eq!(
        listed,
        [
            "    rule beta-testers: header x-user-tier in [beta, staff] -> green",
            "    rule cookie.tier: cookie tier in [beta] -> green",
            "    rule office_v6: source in [10.1.0.0/16, fd00::/8, 192.0.2.7/32] -> blue",
        ],
        "{said}"
    );
}

/// `[routes.shadow]` (issue 15 item 3): each mistake names its field and place.
const SHADOW_CASES: &[(&str, &str, usize, usize, &str, &str)] = &[
    (
        "unknown shadow target",
        with_rules!("[routes.shadow]\ntarget = \"gren\"\npercent = 10\n"),
        8,
        10,
        "routes[bot].shadow.target",
        "unknown target `gren`; defined targets: blue, green",
    ),
    (
        "shadow target is live",
        with_rules!("[routes.shadow]\ntarget = \"blue\"\npercent = 10\n"),
        8,
        10,
        "routes[bot].shadow.target",
        "shadow target `blue` is the live target",
    ),
    (
        "shadow percent out of range",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 100.5\n"),
        9,
        11,
        "routes[bot].shadow.percent",
        "must be between 0 and 100, got 100.5",
    ),
    (
        "shadow percent missing",
        with_rules!("[routes.shadow]\ntarget = \"green\"\n"),
        7,
        1,
        "",
        "missing field `percent`",
    ),
    (
        "shadow methods empty",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmethods = []\n"),
        10,
        11,
        "routes[bot].shadow.methods",
        "must name at least one method",
    ),
    (
        "shadow method CONNECT",
        with_rules!(
            "[routes.shadow]\ntarget = \"green\"\npercent = 10\nmethods = [\"GET\", \"CONNECT\"]\n"
        ),
        10,
        19,
        "routes[bot].shadow.methods",
        "CONNECT opens a tunnel and cannot be shadowed",
    ),
    (
        "shadow method not a token",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmethods = [\"GE T\"]\n"),
        10,
        12,
        "routes[bot].shadow.methods",
        "`GE T` is not a valid method name",
    ),
    (
        "shadow body copies too large",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmax_body_bytes = 100000\n"),
        10,
        18,
        "routes[bot].shadow.max_body_bytes",
        "at most 65536 (got 100000)",
    ),
    (
        "shadow body copies negative",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmax_body_bytes = -1\n"),
        10,
        18,
        "routes[bot].shadow.max_body_bytes",
        "must be at least 0, got -1",
    ),
    (
        "shadow timeout zero",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\ntimeout = \"0s\"\n"),
        10,
        11,
        "routes[bot].shadow.timeout",
        "duration must be greater than zero",
    ),
    (
        "shadow max_in_flight zero",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmax_in_flight = 0\n"),
        10,
        17,
        "routes[bot].shadow.max_in_flight",
        "must be at least 1, got 0",
    ),
    (
        "unknown shadow key",
        with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 10\nmethod = [\"GET\"]\n"),
        10,
        1,
        "",
        "unknown field `method`",
    ),
];

#[test]
fn every_invalid_shadow_names_its_error_and_location() {
    let failures: Vec<String> = SHADOW_CASES
        .iter()
        .filter_map(|(case, text, line, col, field, msg)| {
            check(case, text, *line, *col, field, msg).err()
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_valid_shadow_gets_its_defaults() {
    let text = with_rules!("[routes.shadow]\ntarget = \"green\"\npercent = 2.5\n");
    let config = parse(Path::new("f.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let s = config.routes[0].shadow.as_ref().expect("shadow");
    assert_eq!(s.target, "green");
    assert_eq!(s.basis_points, 250);
    assert_eq!(s.methods, [http::Method::GET, http::Method::HEAD]);
    assert_eq!(s.timeout, Duration::from_secs(5));
    assert_eq!(s.max_in_flight, 64);
    assert_eq!(s.max_body_bytes, 0, "bodyless requests only by default");
    let text = with_rules!(
        "[routes.shadow]\ntarget = \"green\"\npercent = 100\nmethods = [\"GET\", \"POST\"]\nmax_body_bytes = 0\ntimeout = \"250ms\"\nmax_in_flight = 3\n"
    );
    let config = parse(Path::new("f.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    let s = config.routes[0].shadow.as_ref().expect("shadow");
    assert_eq!(s.basis_points, 10_000);
    assert_eq!(s.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(s.timeout, Duration::from_millis(250));
    assert_eq!(s.max_in_flight, 3);
    let text = with_rules!(
        "[routes.shadow]\ntarget = \"green\"\npercent = 100\nmethods = [\"POST\"]\nmax_body_bytes = 65536\n"
    );
    let config = parse(Path::new("f.toml"), text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.routes[0].shadow.as_ref().unwrap().max_body_bytes,
        65536
    );
}
