//! Any bytes as a chunked response body, fed whole, split in two and byte by byte: the scanner
//! must agree with itself, never consume past its input or after the end, and never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    flipgate::fuzzing::h1_chunked(data);
});
