//! Any host, path and headers against a fixed routing table: routing and the split decision must
//! never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flipgate::fuzzing::route_request(data);
});
