//! Any bytes as the runtime state file, parsed and reconciled with a fixed route file as a start
//! does: no panic, and what is restored names only the route's targets.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flipgate::fuzzing::state_load(data);
});
