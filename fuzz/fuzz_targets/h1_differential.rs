//! Any request head both ways: the HTTP/1.1 engine's head writer and the forwarding policy on a
//! `HeaderMap` built as hyper builds it must forward the same fields (or both refuse the request);
//! nothing may panic. The shim over `flipgate::fuzzing::h1_differential`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = flipgate::fuzzing::h1_differential(data);
});
