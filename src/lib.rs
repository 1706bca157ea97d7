//! jitca: a just-in-time SSH certificate authority.
//!
//! The library holds every part; the `jitca` binary (`main.rs`) only calls
//! [`cli::main`]. It is a library so that the benchmarks can drive the
//! request path in-process, exactly as the daemon does.
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod ca;
pub mod cli;
pub mod inventory;
pub mod model;
pub mod notify;
pub mod policy;
pub mod server;
pub mod store;
