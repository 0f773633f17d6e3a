//! The request policy both engines apply, written once: the request decision (`decide`: route,
//! preview, cohort rules, split), the forwarding headers (`forward`: one table of rules both
//! header representations apply; `headers` its helpers), the outcome classification
//! and local answers (`error`, `grpc`), when a failed attempt may be sent again (`resend`),
//! when a failed connect moves a request to another instance (`connect_retry`), and whether a
//! request is copied to its route's shadow target (`shadow`).
//!
//! Invariants: nothing here does I/O or holds a connection; each function takes what an engine
//! parsed (through `decide::Fields` for either header representation) and returns a plain value,
//! so the HTTP/1.1 engine (`serve::h1`) and hyper's path (`serve::proxy`) cannot drift apart.

pub mod connect_retry;
pub mod decide;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod resend;
pub mod rules;
pub mod shadow;
