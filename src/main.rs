//! jitca: a just-in-time SSH certificate authority.
//!
//! The binary is thin: it parses the command line, sets up tracing and hands
//! over to [`cli`].
#![forbid(unsafe_code)]

mod approval;
mod audit;
mod ca;
mod cli;
mod inventory;
mod model;
mod notify;
mod policy;
mod server;
mod store;

fn main() -> std::process::ExitCode {
    cli::main()
}
