//! The `jitca` binary: parses the command line, sets up tracing and hands
//! over to [`jitca::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    jitca::cli::main()
}
