//! `jitca init`, `serve`, `ca` and `policy`: setting up and running the CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::{Paths, open_db};
use crate::ca::host_key::load_or_create_host_key;
use crate::ca::registry;
use crate::model::now_unix;
use crate::policy::Policy;
use crate::server::{self, Limits, State};
use crate::store;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:2222")]
    listen: SocketAddr,
    /// Most connections served at once; more are closed at once
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections from one peer at once: an IPv4 address, or an IPv6 /64
    #[arg(long, default_value_t = 256)]
    max_per_peer: usize,
    /// Close a connection that has not authenticated this long after opening
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    login_grace: Duration,
    /// Close a connection that sends nothing for this long
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Most `request`s one device may make a minute (and in one burst); 0 for no limit
    #[arg(long, default_value_t = crate::server::DEFAULT_REQUESTS_PER_MINUTE)]
    max_requests_per_minute: u32,
    /// Keep this file holding the current KRL (for sshd's RevokedKeys on this host, or to publish)
    #[arg(long)]
    krl: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA public keys hosts should trust (a TrustedUserCAKeys file)
    Trusted,
    /// List the CA keys and their states
    List,
    /// Rotate the CA key one step: idempotent, meant for a daily timer
    Rotate,
    /// Revoke a compromised CA key: nothing it signed logs in once hosts refresh
    Revoke {
        /// The key's fingerprint (SHA256:..., see `jitca ca list`)
        fingerprint: String,
        /// Why, for the audit log
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the daemon's SSH host key as a known_hosts line, for requesters
    HostKey {
        /// The name and port requesters connect to, e.g. ca.example.com:2222
        #[arg(long, default_value = "127.0.0.1:2222")]
        host: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (default: the --policy file); exit 1 when invalid
    Check { file: Option<PathBuf> },
}

/// What `init` created, for the operator or the log.
struct Created {
    database: bool,
    ca_key: Option<String>,
    host_key: bool,
}

fn create_state(paths: &Paths) -> anyhow::Result<Created> {
    let (mut conn, database) = store::open(&paths.db)?;
    let now = now_unix();
    let ca_key = store::write(&mut conn, |c| {
        registry::ensure_active(c, &paths.ca_keys, now)
    })?;
    // The signing key must load before anything else is created beside it:
    // a missing or exposed key file stops here, with nothing new on disk.
    registry::Signers::new(&paths.ca_keys).active(&conn)?;
    let (_, host_key) = load_or_create_host_key(&paths.ca_keys)?;
    Ok(Created {
        database,
        ca_key,
        host_key,
    })
}

fn sshd_lines() -> &'static str {
    "# On every host that should accept jitca certificates, in /etc/ssh/sshd_config:\n\
     TrustedUserCAKeys /etc/ssh/jitca_user_ca.pub\n\
     # and fill that file with the output of `jitca ca trusted` (refresh it after a rotation).\n\
     # A certificate logs in as any of its principals: the role's `principals` in policy.toml.\n"
}

pub fn init(paths: &Paths) -> anyhow::Result<ExitCode> {
    let created = create_state(paths)?;
    let mut any = false;
    if created.database {
        println!("created database {}", paths.db.display());
        any = true;
    }
    if let Some(fp) = &created.ca_key {
        println!("created CA key {fp} in {}", paths.ca_keys.display());
        any = true;
    }
    if created.host_key {
        println!("created host key in {}", paths.ca_keys.display());
        any = true;
    }
    if !any {
        println!(
            "nothing to create: {} and {} are already set up",
            paths.db.display(),
            paths.ca_keys.display()
        );
    }
    print!("\n{}", sshd_lines());
    Ok(ExitCode::SUCCESS)
}

/// Threads for tokio's blocking work, at most. The daemon's database reads
/// have threads of their own (`server::readers`), so little is left for
/// tokio's pool; the cap keeps it that way: tokio's default of 512 once let
/// a burst of logins start dozens of threads, each keeping a stack and a
/// malloc arena.
fn blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).max(4)
}

pub fn serve(paths: &Paths, args: ServeArgs) -> anyhow::Result<ExitCode> {
    // An invalid policy refuses the start: nothing is created before it is known good.
    let policy = Policy::load(&paths.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in policy.warnings() {
        tracing::warn!(warning = %w, "policy warning");
    }
    if args.idle_timeout < Duration::from_secs(30) {
        anyhow::bail!(
            "--idle-timeout {} is too short: a requester waiting for approval hears from the CA every 20s; use 30s or more",
            humantime::format_duration(args.idle_timeout)
        );
    }
    // So is a port that is taken.
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    listener
        .set_nonblocking(true)
        .context("cannot set up the listener")?;
    let created = create_state(paths)?;
    if created.database {
        tracing::info!(db = %paths.db.display(), "created database");
    }
    if let Some(fp) = &created.ca_key {
        tracing::info!(fingerprint = %fp, dir = %paths.ca_keys.display(), "created CA key");
    }
    if created.host_key {
        tracing::info!(dir = %paths.ca_keys.display(), "created host key");
    }
    let (host_key, _) = load_or_create_host_key(&paths.ca_keys)?;
    let mut state = State::new(&paths.db, &paths.ca_keys, &paths.policy, policy)?;
    state.requests = crate::server::limits::RequestLimiter::new(args.max_requests_per_minute);

    // Load the signing key now, so that a bad key file stops the start
    // rather than the first request.
    let conn = open_db(paths)?;
    let (_, ca) = state.signers.active(&conn)?;
    drop(conn);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).context("cannot set up the listener")?;
        let addr = listener.local_addr()?;
        tracing::info!(
            ca = %ca.fingerprint(),
            policy = %state.policy().sha256(),
            "listening on {addr}"
        );
        let state = Arc::new(state);
        if let Some(path) = args.krl.clone() {
            // A KRL that cannot be written is a start failure, not a log line
            // every two seconds while hosts go without revocations.
            let conn = open_db(paths)?;
            let spec = crate::ca::revocation::krl_spec(&conn, now_unix(), state.policy().backdate())?;
            crate::ca::krl::write_atomically(&path, &crate::ca::krl::encode(&spec)?)
                .with_context(|| format!("cannot write the KRL to {}", path.display()))?;
            tokio::spawn(server::keep_krl(state.clone(), path));
        }
        let limits = Limits {
            max_connections: args.max_connections,
            max_per_peer: args.max_per_peer,
            login_grace: args.login_grace,
            idle_timeout: args.idle_timeout,
        };
        tokio::select! {
            r = server::serve(state, listener, host_key, limits) => r.context("the listener failed")?,
            _ = shutdown() => tracing::info!("shutting down"),
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

pub fn ca(paths: &Paths, cmd: CaCommand) -> anyhow::Result<ExitCode> {
    let conn = open_db(paths)?;
    match cmd {
        CaCommand::Trusted => {
            let keys = registry::trusted(&conn)?;
            if keys.is_empty() {
                anyhow::bail!("there is no CA key yet: run `jitca init` first");
            }
            for k in keys {
                println!("{k}");
            }
        }
        CaCommand::HostKey { host } => {
            let (key, _) = load_or_create_host_key(&paths.ca_keys)?;
            let line = key
                .public_key()
                .to_openssh()
                .context("cannot encode the host key")?;
            let name = match host.rsplit_once(':') {
                Some((h, "22")) => h.to_string(),
                Some((h, p)) => format!("[{h}]:{p}"),
                None => host.clone(),
            };
            println!("{name} {line}");
        }
        CaCommand::Rotate => {
            let policy = Policy::load(&paths.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut conn = conn;
            let now = now_unix();
            let changes = store::write(&mut conn, |c| {
                registry::rotate(
                    c,
                    &paths.ca_keys,
                    now,
                    policy.publish_ahead(),
                    policy.rotate_every(),
                )
            })?;
            if changes.is_empty() {
                println!("nothing to do: no key is due to change");
            }
            for c in changes {
                println!("{c}");
            }
        }
        CaCommand::Revoke {
            fingerprint,
            reason,
        } => {
            let mut conn = conn;
            let now = now_unix();
            let changes = store::write(&mut conn, |c| {
                registry::revoke_key(c, &paths.ca_keys, &fingerprint, reason.as_deref(), now)
            })?;
            if changes.is_empty() {
                println!("{fingerprint} was already revoked");
            }
            for c in changes {
                println!("{c}");
            }
            println!(
                "now: refresh every host's TrustedUserCAKeys (`jitca ca trusted`) and RevokedKeys (`jitca krl`)"
            );
        }
        CaCommand::List => {
            for k in registry::list(&conn)? {
                let mut line = format!(
                    "{:<9} {} {} {} created {}",
                    k.state,
                    k.fingerprint,
                    k.algorithm,
                    k.file,
                    ts(k.created_at)
                );
                if let Some(t) = k.activated_at {
                    line.push_str(&format!(" signing since {}", ts(t)));
                }
                if let Some(t) = k.retired_at {
                    line.push_str(&format!(
                        " {} {}",
                        if k.state == "retiring" {
                            "retiring since"
                        } else {
                            "ended"
                        },
                        ts(t)
                    ));
                }
                if let Some(t) = k.last_valid_before {
                    line.push_str(&format!(" last certificate expires {}", ts(t)));
                }
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ts(t: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))
        .to_string()
}

/// Roles whose approvals the enrolled users could not give: fewer active
/// approvers than the count, not counting a requester who would be both.
fn approver_warnings(conn: &rusqlite::Connection, policy: &Policy) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for role in policy.roles() {
        let Some(a) = &role.approval else { continue };
        let approvers = crate::inventory::active_members(conn, &a.approvers, 0)?;
        let requesters = crate::inventory::active_members(conn, &role.groups, 0)?;
        let n = a.count as usize;
        // A requester who is also an approver cannot approve their own request.
        let overlap = approvers.iter().any(|u| requesters.contains(u));
        let needed = if overlap { n + 1 } else { n };
        if approvers.len() < needed {
            out.push(format!(
                "role {}: needs {n} approval(s) from [{}], which have {} active member(s){}: requests could never be approved",
                role.name,
                a.approvers.join(", "),
                approvers.len(),
                if overlap { ", some of them requesters who cannot approve themselves" } else { "" }
            ));
        }
    }
    Ok(out)
}

pub fn policy(paths: &Paths, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Check { file } = cmd;
    let path: &Path = file.as_deref().unwrap_or(&paths.policy);
    match Policy::load(path) {
        Ok(p) => {
            for w in p.warnings() {
                println!("warning: {w}");
            }
            // With a database at hand, also check that approvals can be met
            // by the people enrolled now (membership changes by the minute,
            // so this warns rather than refuses).
            if paths.db.exists() {
                if let Ok(conn) = open_db(paths) {
                    for w in approver_warnings(&conn, &p)? {
                        println!("warning: {w}");
                    }
                }
            }
            println!(
                "ok: {} is valid ({} roles, sha256 {})",
                path.display(),
                p.roles().count(),
                p.sha256()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("error: {} is not a valid policy", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}
