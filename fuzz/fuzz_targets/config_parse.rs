//! Any bytes as a route file: `parse` must return Ok or located errors, never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flipgate::fuzzing::config_parse(data);
});
