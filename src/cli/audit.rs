//! `jitca audit`: list, show and verify the audit log.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{Paths, open_db};
use crate::audit::{self, Filter, Record, Verdict};
use crate::model::now_unix;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List records, oldest first; with --since, only the records of that span are read
    List {
        /// Only records about this user (checked on every record read: add --since to read
        /// only recent ones)
        #[arg(long)]
        user: Option<String>,
        /// Only records since this time: RFC 3339 (2026-12-04T10:00:00Z) or a duration ago (1h)
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only records of this kind: issued, denied, auth-refused, request-pending,
        /// approval, approval-denied, approval-refused, request-approved, request-expired,
        /// revoked, user-added, user-suspended, user-resumed, device-added, device-disabled,
        /// posture-set, posture-imported, ca-key-created, ca-key-activated, ca-key-retiring,
        /// ca-key-retired, ca-key-revoked, ...
        #[arg(long)]
        kind: Option<String>,
        /// Only uses of break-glass roles
        #[arg(long)]
        break_glass: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Show one record in full
    Show {
        /// The record's sequence number (the first column of `audit list`)
        id: i64,
    },
    /// Walk the hash chain; exit 1 naming the first record that does not match
    Verify,
}

fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        // A span longer than the epoch simply means "from the beginning".
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        return Ok(now_unix().checked_sub(secs).unwrap_or(i64::MIN).max(0));
    }
    crate::inventory::parse_time(s).map_err(|e| format!("{e}, or a duration such as 1h"))
}

pub fn audit(paths: &Paths, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let conn = open_db(paths)?;
    match cmd {
        AuditCommand::List {
            user,
            since,
            kind,
            break_glass,
            json,
        } => {
            let filter = Filter {
                user,
                since,
                kind,
                break_glass,
            };
            // Written line by line as the records are read; a reader that
            // stops early (`| head`) ends the listing, not with a panic.
            let mut out = std::io::stdout().lock();
            let listed = audit::for_each(&conn, &filter, |r| {
                let line = if json {
                    serde_json::to_string(&r)?
                } else {
                    summary(&r)
                };
                writeln!(out, "{line}")?;
                anyhow::Ok(())
            });
            match listed {
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {}
                other => other?,
            }
        }
        AuditCommand::Show { id } => match audit::get(&conn, id)? {
            Some(r) => println!("{}", serde_json::to_string_pretty(&r)?),
            None => anyhow::bail!("there is no audit record {id}: see `jitca audit list`"),
        },
        AuditCommand::Verify => match audit::verify(&conn)? {
            Verdict::Intact { records, head } => match head {
                Some((seq, hash)) => {
                    println!("audit chain ok: {records} records, head {seq} {hash}")
                }
                None => println!("audit chain ok: 0 records"),
            },
            Verdict::Broken { seq, problem } => {
                eprintln!("error: audit chain broken at audit record {seq}: {problem}");
                return Ok(ExitCode::FAILURE);
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// A record's time as RFC 3339, or as the number stored where that is no
/// time RFC 3339 can write (before 1970 or after 9999: a record altered by
/// hand), which `humantime` would panic on.
fn when(at: i64) -> String {
    /// 9999-12-31T23:59:59Z.
    const LAST: i64 = 253_402_300_799;
    if (0..=LAST).contains(&at) {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at as u64))
            .to_string()
    } else {
        format!("(at {at})")
    }
}

/// One line per record: sequence, time, kind, subject, and the gist.
fn summary(r: &Record) -> String {
    let mut line = format!("{:>6} {} {:<20}", r.seq, when(r.at), r.kind);
    for (k, v) in [
        ("user", &r.user),
        ("device", &r.device),
        ("role", &r.role),
        ("request", &r.request_id),
    ] {
        if let Some(v) = v {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    let b = &r.body;
    match r.kind.as_str() {
        "issued" => {
            let c = &b["certificate"];
            line.push_str(&format!(
                " serial={} principals={} key_id={}",
                c["serial"], c["principals"], c["key_id"]
            ));
        }
        "denied" => {
            let failed: Vec<String> = b["decision"]["rules"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .filter(|r| r["passed"] == false)
                        .map(|r| {
                            format!(
                                "{} (saw {})",
                                r["rule"].as_str().unwrap_or("?"),
                                r["seen"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            line.push_str(&format!(" failed: {}", failed.join("; ")));
        }
        "auth-refused" => {
            line.push_str(&format!(
                " peer={} fingerprint={} reason={}",
                b["peer"].as_str().unwrap_or("?"),
                b["fingerprint"].as_str().unwrap_or("?"),
                b["reason"]
            ));
        }
        _ => {}
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_past_year_9999_is_shown_as_stored_instead_of_panicking() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(when(253_402_300_800), "(at 253402300800)");
        assert_eq!(when(-1), "(at -1)");
        assert_eq!(when(i64::MAX), format!("(at {})", i64::MAX));
    }
}
