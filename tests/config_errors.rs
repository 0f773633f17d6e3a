//! Golden tests: every kind of invalid route file is rejected with its specific error, naming the
//! file, line, column and field.

use std::path::Path;

use flipgate::config::{parse, ConfigError};

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
