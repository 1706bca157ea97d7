//! `jitca revoke` and `jitca krl`: revocation, and the KRL hosts read.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::{Paths, open_db};
use crate::ca::krl;
use crate::ca::revocation::{Target, cancel_requests, krl_spec, revoke};
use crate::model::now_unix;
use crate::store;

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Why, for the audit log
    #[arg(long)]
    reason: Option<String>,
}

/// Exactly one of the four.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// The certificate with this serial
    #[arg(long)]
    serial: Option<u64>,
    /// The certificate of this approved request (r-...)
    #[arg(long)]
    request: Option<String>,
    /// Every live certificate of this user
    #[arg(long)]
    user: Option<String>,
    /// Every live certificate of this device
    #[arg(long)]
    device: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct KrlArgs {
    /// Write the KRL to this file, atomically (default: binary to stdout)
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_revoke(paths: &Paths, args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let t = args.target;
    let target = match (t.serial, t.request, t.user, t.device) {
        (Some(s), ..) => Target::Serial(s),
        (_, Some(r), ..) => Target::Request(r),
        (_, _, Some(u), _) => Target::User(u),
        (_, _, _, Some(d)) => Target::Device(d),
        _ => anyhow::bail!("say what to revoke: --serial, --request, --user or --device"),
    };
    let mut conn = open_db(paths)?;
    let now = now_unix();
    let reason = args.reason;
    let (serials, cancelled) = store::write(&mut conn, |c| {
        let cancelled = cancel_requests(c, &target, reason.as_deref(), now)?;
        Ok((revoke(c, &target, reason.as_deref(), now)?, cancelled))
    })?;
    if !cancelled.is_empty() {
        println!(
            "cancelled {} open request(s): {}; they will issue nothing",
            cancelled.len(),
            cancelled.join(", ")
        );
    }
    if serials.is_empty() {
        if cancelled.is_empty() {
            println!(
                "nothing to revoke: no live certificate matches (expired certificates need none)"
            );
        }
    } else {
        let list: Vec<String> = serials.iter().map(u64::to_string).collect();
        println!(
            "revoked {} certificate(s): serial {}\nhosts refuse them once their KRL is rewritten (`jitca krl --out FILE`, or `jitca serve --krl FILE` does it within seconds)",
            serials.len(),
            list.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_krl(paths: &Paths, args: KrlArgs) -> anyhow::Result<ExitCode> {
    let conn = open_db(paths)?;
    let policy = crate::policy::Policy::load(&paths.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let spec = krl_spec(&conn, now_unix(), policy.backdate())?;
    let bytes = krl::encode(&spec)?;
    match args.out {
        Some(path) => {
            krl::write_atomically(&path, &bytes)
                .with_context(|| format!("cannot write the KRL to {}", path.display()))?;
            let serials: usize = spec.ca_serials.iter().map(|(_, s)| s.len()).sum();
            eprintln!(
                "wrote {} ({} bytes): {serials} revoked serial(s), {} key(s), {} revoked CA key(s)",
                path.display(),
                bytes.len(),
                spec.keys.len(),
                spec.revoked_cas.len()
            );
        }
        None => {
            std::io::stdout()
                .write_all(&bytes)
                .context("cannot write the KRL to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
