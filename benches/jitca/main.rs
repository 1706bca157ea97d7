//! jitca's benchmark (issue 5): everything it compares runs in this one
//! invocation, so that the ratios hold on a noisy machine.
//!
//! - `cargo bench --bench jitca`: the full run (a few minutes; it generates
//!   a database of about 2 GB in a temporary directory, removed at the end);
//! - `cargo bench --bench jitca -- --smoke`: every part with tiny counts, to
//!   show that the benchmark still works (CI runs this).
//!
//! Run as root on a machine with OpenSSH installed: the `sshd` baseline logs
//! in as root. `jitca serve` is the release binary Cargo builds for this
//! benchmark (`CARGO_BIN_EXE_jitca`). BENCHMARKS.md holds the results and
//! what bounds them.
#![forbid(unsafe_code)]

mod e2e;
mod inproc;
mod machine;
mod memory;
mod scale;
mod servers;
mod setup;
mod stats;
mod targets;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use e2e::{Run, Target};
use jitca::policy::Policy;
use servers::{SSHD_LINE, Server};
use stats::{Summary, Table, dur, rate, thousands};
use targets::Check;

/// Where OpenSSH's programs are (Debian paths).
pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// The concurrency levels of the end-to-end measurement.
const LEVELS: [usize; 4] = [1, 8, 32, 128];

/// How much each part does.
struct Counts {
    issue_one: usize,
    issue_many: usize,
    signatures: usize,
    builder: usize,
    commits: usize,
    e2e: Run,
    bulk: scale::Bulk,
    rounds: usize,
    per_round: usize,
    roles: usize,
    evaluations: usize,
    idle_connections: usize,
}

impl Counts {
    fn full() -> Counts {
        Counts {
            issue_one: 2_000,
            issue_many: 30_000,
            signatures: 20_000,
            builder: 5_000,
            commits: 500,
            e2e: Run::For(Duration::from_secs(8)),
            bulk: scale::Bulk {
                users: 100_000,
                audit: 1_000_000,
                certificates: 800_000,
                body_bytes: 0,
            },
            rounds: 10,
            per_round: 300,
            roles: 1_000,
            evaluations: 20_000,
            idle_connections: 1_000,
        }
    }

    fn smoke() -> Counts {
        Counts {
            issue_one: 20,
            issue_many: 64,
            signatures: 100,
            builder: 20,
            commits: 10,
            e2e: Run::Each(1),
            bulk: scale::Bulk {
                users: 1_000,
                audit: 10_000,
                certificates: 8_000,
                body_bytes: 0,
            },
            rounds: 2,
            per_round: 10,
            roles: 1_000,
            evaluations: 100,
            idle_connections: 20,
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and gets the smoke pass.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    // `--only PART` (inproc, e2e, scale, memory) runs one part, for profiling.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    machine::print(smoke);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let counts = if smoke {
        Counts::smoke()
    } else {
        Counts::full()
    };
    match runtime.block_on(run(&counts, smoke, only.as_deref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(counts: &Counts, smoke: bool, only: Option<&str>) -> anyhow::Result<()> {
    for tool in [SSHD, SSH, SSH_KEYGEN] {
        if !Path::new(tool).is_file() {
            anyhow::bail!("{tool} is missing: install openssh-server and openssh-client");
        }
    }
    let tmp = tempfile::Builder::new().prefix("jitca-bench-").tempdir()?;
    let result = parts(counts, smoke, only, tmp.path()).await;
    let path = tmp.path().display().to_string();
    // Gigabytes of generated database: say so if they stay behind.
    let removed = tmp
        .close()
        .with_context(|| format!("cannot remove {path}: remove it by hand"));
    result.and(removed)
}

async fn parts(counts: &Counts, smoke: bool, only: Option<&str>, dir: &Path) -> anyhow::Result<()> {
    let mut checks = Vec::new();
    let part = |name: &str| only.is_none_or(|o| o == name);
    let mut body_bytes = 2_000;
    if part("inproc") {
        body_bytes = in_process(counts, dir, &mut checks).await?;
    }
    if part("e2e") {
        end_to_end(counts, dir, &mut checks).await?;
    }
    if part("scale") {
        scale(counts, dir, body_bytes, &mut checks).await?;
    }
    if part("memory") {
        memory(counts, dir, &mut checks).await?;
    }
    targets::print(&checks, smoke);
    println!(
        "\nload average at the end: {}",
        machine::load_average().unwrap_or_else(|| "unknown".into())
    );
    Ok(())
}

/// The columns of [`summary_row`].
const SUMMARY: [&str; 6] = [
    "count",
    "throughput",
    "wall per op",
    "CPU per op",
    "p50",
    "p99",
];

fn summary_row(t: &mut Table, what: &str, s: &Summary) {
    t.row(vec![
        what.to_string(),
        thousands(s.count as u64),
        rate(s.per_sec()),
        dur(s.per_op()),
        s.cpu_per_op().map(dur).unwrap_or_else(|| "-".into()),
        dur(s.p50),
        dur(s.p99),
    ]);
}

/// A table whose rows are [`summary_row`]s under a first column `what`.
fn summary_table(title: &str, what: &str) -> Table {
    let mut headers = vec![what];
    headers.extend(SUMMARY);
    Table::new(title, &headers)
}

/// Part 1; returns the average size of an `issued` audit body, for part 3.
async fn in_process(counts: &Counts, dir: &Path, checks: &mut Vec<Check>) -> anyhow::Result<usize> {
    let ca = setup::create(dir, "inproc", &setup::shipped_policy(), 32)?;
    let state = Arc::new(ca.state()?);
    inproc::issuance(&state, &ca.requesters, 4, 64).await?;

    let one = inproc::issuance(&state, &ca.requesters, 1, counts.issue_one).await?;
    let written = stats::process_writes();
    let many = inproc::issuance(&state, &ca.requesters, 32, counts.issue_many).await?;
    let written = stats::process_writes().since(written);
    let commit = inproc::durable_commit(&state, counts.commits).await?;
    let builder = inproc::certificate_builder(&ca, counts.builder)?;
    let (sign, verify) = inproc::ed25519(counts.signatures)?;
    // As many keys as the 32 requesters certified, and after the rest:
    // tens of thousands of processes slow what runs next in this process
    // (requesters alternating with them in rounds measured 18% slower).
    let keygen = inproc::ssh_keygen(&ca, dir, many.count)?;

    let mut t = summary_table(
        "1. In-process issuance (durable) and its references",
        "what",
    );
    summary_row(&mut t, "jitca issuance, 1 requester", &one);
    summary_row(&mut t, "jitca issuance, 32 requesters", &many);
    summary_row(&mut t, "durable commit of one row (writer)", &commit);
    summary_row(&mut t, "jitca certificate builder alone", &builder);
    summary_row(&mut t, "Ed25519 signature (floor)", &sign);
    summary_row(&mut t, "Ed25519 verification", &verify);
    summary_row(&mut t, "ssh-keygen -s, one process per cert", &keygen);
    t.note(
        "issuance: snapshot, policy evaluation (role prod-db of the shipped policy.toml), \
         serial, signing, audit record and certificate row, group commit \
         (WAL, synchronous=FULL); the certificate is returned after its commit.",
    );
    t.note(
        "certificate builder: build, sign (an RSA or ECDSA signature is verified too), encode, without \
         snapshot, policy or database. ssh-keygen: one process after the other, the same options, \
         as many certificates as the 32 requesters.",
    );
    t.note(format!(
        "32 requesters vs ssh-keygen per certificate: {:.0}x; vs the raw signature: {:.1}x its cost.",
        keygen.per_op().as_secs_f64() / many.per_op().as_secs_f64().max(1e-12),
        many.per_op().as_secs_f64() / sign.p50.as_secs_f64().max(1e-12),
    ));
    t.note(format!(
        "32 requesters, per certificate: {:.1} KB written to files in {:.1} write calls \
         (the WAL's frames and the checkpoints' copies).",
        written.bytes as f64 / 1024.0 / many.count.max(1) as f64,
        written.calls as f64 / many.count.max(1) as f64,
    ));
    t.print();

    checks.push(Check::rate_at_least(
        "in-process durable issuance, 32 requesters",
        many.per_sec(),
        5_000.0,
    ));
    checks.push(Check::at_least(
        "issuance vs ssh-keygen -s, per certificate",
        keygen.per_op().as_secs_f64() / many.per_op().as_secs_f64().max(1e-12),
        100.0,
        "x",
    ));
    drop(state);
    scale::issued_body_bytes(&ca)
}

/// Part 2: the same load generator against `jitca serve` and `sshd`.
async fn end_to_end(counts: &Counts, dir: &Path, checks: &mut Vec<Check>) -> anyhow::Result<()> {
    let ca = setup::create(dir, "e2e", &setup::shipped_policy(), 128)?;
    let keys: Vec<_> = ca.requesters.iter().map(|r| r.key.clone()).collect();
    let jitca_server = Server::jitca(&ca, dir, "jitca-serve")?;
    let sshd = Server::sshd(&ca, dir)?;
    let jitca_target = Arc::new(Target {
        name: "jitca serve",
        addr: jitca_server.addr,
        host_key: jitca_server.host_key.clone(),
        user: "requester",
        command: "request prod-db --reason INC-4242",
        expect: "ssh-ed25519-cert-v01@openssh.com ",
    });
    let sshd_target = Arc::new(Target {
        name: "sshd + ForceCommand",
        addr: sshd.addr,
        host_key: sshd.host_key.clone(),
        user: "root",
        command: "request prod-db --reason INC-4242",
        expect: SSHD_LINE,
    });
    for target in [&jitca_target, &sshd_target] {
        let (_, err) = e2e::load(target.clone(), &keys, 4, Run::Each(2)).await;
        if let Some(e) = err {
            anyhow::bail!("warm-up against {} failed: {e}", target.name);
        }
    }

    let mut t = Table::new(
        "2. End to end over SSH (russh load generator, full connection each)",
        &[
            "clients",
            "server",
            "connections",
            "conn/s",
            "p50",
            "p99",
            "server CPU per conn",
            "errors",
        ],
    );
    let mut at_32 = Vec::new();
    let mut first_errors = Vec::new();
    for (n, clients) in LEVELS.iter().enumerate() {
        // Alternate which server goes first, so that neither always runs on
        // a machine warmed (or tired) by the other.
        let order = if n % 2 == 0 {
            [&jitca_target, &sshd_target]
        } else {
            [&sshd_target, &jitca_target]
        };
        for target in order {
            let server = if target.name == jitca_target.name {
                &jitca_server
            } else {
                &sshd
            };
            let cpu = server.cpu();
            let (s, err) = e2e::load(target.clone(), &keys, *clients, counts.e2e).await;
            let server_cpu = server.cpu().saturating_sub(cpu) / (s.count.max(1) as u32);
            if let Some(e) = err {
                first_errors.push(format!("{} at {clients}: {e}", target.name));
            }
            t.row(vec![
                clients.to_string(),
                target.name.to_string(),
                thousands(s.count as u64),
                format!("{:.1}", s.per_sec()),
                dur(s.p50),
                dur(s.p99),
                dur(server_cpu),
                s.errors.to_string(),
            ]);
            if *clients == 32 {
                at_32.push((target.name, s));
            }
        }
    }
    t.note(
        "one connection: TCP connect, key exchange curve25519-sha256 (pinned in the client \
         and in sshd_config), ssh-ed25519 host key and user key, chacha20-poly1305, \
         public-key authentication, exec, the reply read to the channel's close. \
         jitca: `request prod-db` returns a certificate (durable audit record first); \
         sshd: root's ForceCommand prints one line. Client and servers share the machine. \
         server CPU: user and system time of the server process, and for sshd also of the \
         per-connection processes it reaped.",
    );
    for e in &first_errors {
        t.note(format!("first error: {e}"));
    }
    let (rss, _) = jitca_server.memory_kib()?;
    t.note(format!(
        "jitca serve resident after this load: {:.1} MB",
        rss as f64 * 1024.0 / 1e6
    ));
    t.print();

    let find = |name: &str| {
        at_32
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone())
    };
    if let (Some(j), Some(s)) = (find(jitca_target.name), find(sshd_target.name)) {
        checks.push(Check::at_least(
            "end to end at 32 clients: conn/s vs sshd",
            j.per_sec() / s.per_sec().max(1e-9),
            1.5,
            "x",
        ));
        checks.push(Check::latency_at_most(
            "end to end at 32 clients: p99 vs sshd's",
            j.p99,
            s.p99,
        ));
    }
    Ok(())
}

/// Part 3: a big database against an empty one, and a policy of many roles.
async fn scale(
    counts: &Counts,
    dir: &Path,
    body_bytes: usize,
    checks: &mut Vec<Check>,
) -> anyhow::Result<()> {
    let shipped = setup::shipped_policy();
    let empty = setup::create(dir, "scale-empty", &shipped, 1)?;
    let big = setup::create(dir, "scale-big", &shipped, 1)?;
    let roles_file = dir.join("many-roles.toml");
    let roles_text = scale::many_roles_policy(counts.roles);
    std::fs::write(&roles_file, &roles_text)?;
    let roles = setup::create(dir, "scale-roles", &roles_file, 1)?;

    let bulk = scale::Bulk {
        body_bytes,
        ..counts.bulk
    };
    let filled_in = scale::fill(&big, bulk)?;
    let (users, devices, audit, certificates) = scale::counts(&big)?;
    let db_bytes = std::fs::metadata(&big.db)?.len();

    let mut states = Vec::new();
    for ca in [&empty, &big, &roles] {
        let state = Arc::new(ca.state()?);
        let who = ca.requesters[0].clone();
        inproc::issuance(&state, std::slice::from_ref(&who), 1, 20).await?;
        states.push((state, who));
    }
    let results = scale::alternate(&states, counts.rounds, counts.per_round).await?;

    let mut t = summary_table(
        "3a. Scale: sequential issuance (1 requester) by database and policy size",
        "database / policy",
    );
    let labels = [
        "empty database, shipped policy (5 roles)".to_string(),
        format!(
            "{} audit records, {} users and devices, shipped policy",
            thousands(audit as u64),
            thousands(users.min(devices) as u64)
        ),
        format!("empty database, policy of {} roles", counts.roles),
    ];
    for (label, s) in labels.iter().zip(&results) {
        summary_row(&mut t, label, s);
    }
    t.note(format!(
        "big database: {} users, {} devices (4 posture attributes each), {} audit records \
         (bodies of about {body_bytes} bytes, like the real `issued` records), {} certificate \
         rows; {:.2} GB on disk; generated in {:.1} s. The three alternate in rounds of {}.",
        thousands(users as u64),
        thousands(devices as u64),
        thousands(audit as u64),
        thousands(certificates as u64),
        db_bytes as f64 / 1e9,
        filled_in.as_secs_f64(),
        counts.per_round,
    ));
    t.print();
    let ratio = |i: usize| results[i].p50.as_secs_f64() / results[0].p50.as_secs_f64().max(1e-12);
    checks.push(Check::at_most(
        "p50 issuance, big database vs empty",
        ratio(1),
        1.2,
        "x",
    ));

    let shipped_policy = Policy::load(&shipped).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (parse_shipped, _) = scale::parse_time(&std::fs::read_to_string(&shipped)?, 20)?;
    let (parse_many, many) = scale::parse_time(&roles_text, 5)?;
    scale::check_role(&many)?;
    let snap = scale::snapshot(&states[0].0, &states[0].1).await?;
    let n = counts.evaluations;
    let one_shipped = scale::evaluation(&shipped_policy, &snap, Some(setup::ROLE), n)?;
    let one_many = scale::evaluation(&many, &snap, Some(setup::ROLE), n)?;
    let all_many = scale::evaluation(&many, &snap, None, (n / 100).max(5))?;

    let mut t = summary_table("3b. Policy evaluation", "what");
    summary_row(
        &mut t,
        "evaluate prod-db, shipped policy (5 roles)",
        &one_shipped,
    );
    let label = format!("evaluate prod-db, policy of {} roles", counts.roles);
    summary_row(&mut t, &label, &one_many);
    let label = format!("evaluate all {} roles (whoami)", counts.roles);
    summary_row(&mut t, &label, &all_many);
    t.note(format!(
        "parse and validate: shipped policy {}, policy of {} roles {} ({} bytes); \
         issuance with it is in table 3a.",
        dur(parse_shipped),
        counts.roles,
        dur(parse_many),
        thousands(roles_text.len() as u64)
    ));
    t.print();
    checks.push(Check::at_most(
        "p50 issuance, 1,000-role policy vs shipped",
        ratio(2),
        1.2,
        "x",
    ));
    Ok(())
}

/// Part 4: resident memory of a fresh `jitca serve`.
async fn memory(counts: &Counts, dir: &Path, checks: &mut Vec<Check>) -> anyhow::Result<()> {
    let ca = setup::create(dir, "memory", &setup::shipped_policy(), 32)?;
    let keys: Vec<_> = ca.requesters.iter().map(|r| r.key.clone()).collect();
    let server = Server::jitca(&ca, dir, "jitca-serve-memory")?;
    let target = Arc::new(Target {
        name: "jitca serve",
        addr: server.addr,
        host_key: server.host_key.clone(),
        user: "requester",
        command: "request prod-db --reason INC-4242",
        expect: "ssh-ed25519-cert-v01@openssh.com ",
    });
    let m = memory::idle_connections(&server, target, &keys, counts.idle_connections).await?;
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 * 1024.0 / 1e6);
    let mut t = Table::new(
        "4. Memory of jitca serve (VmRSS from /proc/PID/status)",
        &["state", "resident (VmRSS)", "peak (VmHWM)"],
    );
    t.row(vec!["just started".into(), mb(m.idle.0), mb(m.idle.1)]);
    t.row(vec!["after one request".into(), mb(m.warm.0), mb(m.warm.1)]);
    let label = format!("{} idle authenticated connections", m.connections);
    t.row(vec![label, mb(m.loaded.0), mb(m.loaded.1)]);
    t.note(format!(
        "per idle connection: {:.1} KiB",
        m.loaded.0.saturating_sub(m.warm.0) as f64 / m.connections.max(1) as f64
    ));
    t.print();
    checks.push(Check::at_most(
        "resident with 1,000 idle connections",
        m.loaded.0 as f64 * 1024.0 / 1e6,
        50.0,
        " MB",
    ));
    Ok(())
}
