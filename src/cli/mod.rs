//! The operator's commands (clap), run on the CA host.
//!
//! Each command opens the database itself, makes its change and its audit
//! record in one transaction, and prints a short confirmation. Errors are
//! printed as `error: ...` with exit status 1; usage errors exit with 2.

mod audit;
mod inventory;
mod keys;
mod revoke;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Where jitca keeps its state; shared by every command.
#[derive(Debug, clap::Args)]
pub struct Paths {
    /// The SQLite database (created by `init` or `serve`)
    #[arg(long, global = true, env = "JITCA_DB", default_value = "jitca.db")]
    pub db: PathBuf,
    /// The directory holding the CA private keys and the daemon's host key
    #[arg(
        long = "ca-keys",
        global = true,
        env = "JITCA_CA_KEYS",
        default_value = "ca-keys"
    )]
    pub ca_keys: PathBuf,
    /// The policy file
    #[arg(
        long,
        global = true,
        env = "JITCA_POLICY",
        default_value = "policy.toml"
    )]
    pub policy: PathBuf,
}

#[derive(Debug, Parser)]
#[command(
    name = "jitca",
    version,
    about = "Just-in-time SSH certificate authority"
)]
struct Cli {
    #[command(flatten)]
    paths: Paths,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database, the CA key and the host key (never overwrites a key)
    Init,
    /// Run the SSH daemon (does what `init` does on first start)
    Serve(keys::ServeArgs),
    /// CA keys
    #[command(subcommand)]
    Ca(keys::CaCommand),
    /// Users
    #[command(subcommand)]
    User(inventory::UserCommand),
    /// Group membership
    #[command(subcommand)]
    Group(inventory::GroupCommand),
    /// Devices (enrolled keys)
    #[command(subcommand)]
    Device(inventory::DeviceCommand),
    /// Device posture
    #[command(subcommand)]
    Posture(inventory::PostureCommand),
    /// The policy file
    #[command(subcommand)]
    Policy(keys::PolicyCommand),
    /// The audit log
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Revoke live certificates by serial, request, user or device
    Revoke(revoke::RevokeArgs),
    /// Write the OpenSSH key revocation list (for sshd's RevokedKeys)
    Krl(revoke::KrlArgs),
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_));
    init_tracing(if serving { "info" } else { "warn" });
    let result = match cli.command {
        Command::Init => keys::init(&cli.paths),
        Command::Serve(args) => keys::serve(&cli.paths, args),
        Command::Ca(c) => keys::ca(&cli.paths, c),
        Command::User(c) => inventory::user(&cli.paths, c),
        Command::Group(c) => inventory::group(&cli.paths, c),
        Command::Device(c) => inventory::device(&cli.paths, c),
        Command::Posture(c) => inventory::posture(&cli.paths, c),
        Command::Policy(c) => keys::policy(&cli.paths, c),
        Command::Audit(c) => audit::audit(&cli.paths, c),
        Command::Revoke(a) => revoke::run_revoke(&cli.paths, a),
        Command::Krl(a) => revoke::run_krl(&cli.paths, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("JITCA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // A line that cannot be written (the log's disk is full, its pipe is
    // closed) is lost. By default the subscriber reports that on stderr
    // with `eprintln!`, which panics when stderr is what failed: every
    // thread that logged would die with it, the writer's and the readers'
    // among them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .log_internal_errors(false)
        .try_init();
}

/// Opens the database for an operator command. Only `init` and `serve`
/// create it: a mistyped `--db` must not quietly start an empty CA.
fn open_db(paths: &Paths) -> anyhow::Result<rusqlite::Connection> {
    let empty = std::fs::metadata(&paths.db).is_ok_and(|m| m.len() == 0);
    if !paths.db.exists() || empty {
        anyhow::bail!(
            "there is no jitca database at {}: run `jitca init` first, or pass --db / JITCA_DB",
            paths.db.display()
        );
    }
    let (conn, _) = crate::store::open(&paths.db)?;
    Ok(conn)
}
