//! Replays every committed fuzz input (seed corpus and crash regressions) through the same entry
//! points the fuzz targets use, so a fixed crash stays fixed without a fuzzer installed.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_file() {
                f(&std::fs::read(&p).unwrap());
                n += 1;
            }
        }
    }
    n
}

#[test]
fn config_parse_corpus() {
    assert!(replay("config_parse", flipgate::fuzzing::config_parse) > 0);
}

#[test]
fn route_request_corpus() {
    assert!(replay("route_request", flipgate::fuzzing::route_request) > 0);
}
