//! Replays every committed fuzz input (seed corpus and crash regressions) through the same entry
//! points the fuzz targets use, so a fixed crash stays fixed without a fuzzer installed.

use std::path::Path;

fn replay(target: &str, mut f: impl FnMut(&[u8])) -> usize {
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

#[test]
fn h1_chunked_corpus() {
    assert!(replay("h1_chunked", flipgate::fuzzing::h1_chunked) > 0);
}

#[test]
fn h1_response_corpus() {
    assert!(replay("h1_response", flipgate::fuzzing::h1_response) > 0);
}

#[test]
fn h1_request_corpus() {
    let mut forwarded = 0;
    let n = replay("h1_request", |d| {
        forwarded += usize::from(flipgate::fuzzing::h1_request(d))
    });
    // The seeds must reach the checks on the upstream head, not only the fallbacks.
    assert!(forwarded >= 10, "{forwarded} of {n} seeds forwarded");
}

#[test]
fn admin_request_corpus() {
    let (mut through, mut refused) = (0, 0);
    replay("admin_request", |d| {
        if flipgate::fuzzing::admin_request(d) {
            through += 1
        } else {
            refused += 1
        }
    });
    // The seeds must reach both sides of the guard.
    assert!(
        through >= 5 && refused >= 5,
        "{through} let through, {refused} refused"
    );
}

#[test]
fn state_load_corpus() {
    assert!(replay("state_load", flipgate::fuzzing::state_load) > 0);
}

/// A state file whose canary is over 100 % (a `u16` of basis points) is not restored: the fuzz
/// target's first seed run found that nothing bounded it.
#[test]
fn state_file_canary_over_100_percent_is_not_restored() {
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/state_load/canary-over-100"),
    )
    .unwrap();
    flipgate::fuzzing::state_load(&bytes);
}
