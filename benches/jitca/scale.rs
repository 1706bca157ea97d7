//! Scale: a database holding a large history and inventory, generated with
//! SQL in one big transaction; and a policy with many roles.
//!
//! The generated audit rows carry random hashes, not a valid chain: nothing
//! here runs `jitca audit verify`, and the request path only reads the
//! chain's head. Generated certificates have all expired, as most of a real
//! CA's history has.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use jitca::model::{Snapshot, now_unix};
use jitca::policy::Policy;
use jitca::server::State;
use jitca::server::issue;
use rusqlite::{Connection, params};

use crate::inproc::{PEER, params as request_params, request_once};
use crate::setup::{Ca, ROLE, Requester};
use crate::stats::{Summary, process_cpu};

/// How much history to generate.
#[derive(Clone, Copy)]
pub struct Bulk {
    /// Users, each with one device (with posture) and two groups.
    pub users: usize,
    pub audit: usize,
    /// Certificate rows, each with one of the audit records.
    pub certificates: usize,
    /// Length of each generated audit body, about that of a real `issued` record.
    pub body_bytes: usize,
}

/// The average length of the `issued` audit bodies in `ca`'s database.
pub fn issued_body_bytes(ca: &Ca) -> anyhow::Result<usize> {
    let conn = Connection::open(&ca.db)?;
    let avg: Option<f64> = conn.query_row(
        "SELECT AVG(LENGTH(body)) FROM audit WHERE kind = 'issued'",
        [],
        |r| r.get(0),
    )?;
    Ok(avg.map(|a| a as usize).unwrap_or(1500))
}

/// Fills `ca`'s database with `bulk`. No daemon may have it open.
pub fn fill(ca: &Ca, bulk: Bulk) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut conn = Connection::open(&ca.db)?;
    // Fast and unsafe only while generating: a rollback journal instead of
    // the WAL, no fsync, a large page cache. WAL mode is restored at the end.
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let now = now_unix();
    let tx = conn.transaction()?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO users (name, status, created_at)
         SELECT printf('bulk-u%07d', i), 'active', ?2 FROM n",
        params![bulk.users as i64, now],
    )?;
    tx.execute_batch(
        "INSERT INTO user_groups (user_id, grp)
             SELECT id, 'dba' FROM users WHERE name GLOB 'bulk-u*';
         INSERT INTO user_groups (user_id, grp)
             SELECT id, printf('team-%03d', id % 500) FROM users WHERE name GLOB 'bulk-u*';",
    )?;
    tx.execute(
        "INSERT INTO devices (name, user_id, fingerprint, key_type, public_key, label, status, created_at)
         SELECT 'bulk-d' || substr(name, 7), id, 'SHA256:' || hex(randomblob(32)), 'ssh-ed25519',
                'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI' || hex(randomblob(24)), 'bulk device',
                'active', ?1
         FROM users WHERE name GLOB 'bulk-u*' ORDER BY id",
        [now],
    )?;
    tx.execute(
        "INSERT INTO posture (device_id, attr, value, reported_at)
         SELECT d.id, a.attr, a.value, ?1 FROM devices d,
           (SELECT 'disk_encrypted' AS attr, 'true' AS value
            UNION ALL SELECT 'os_family', '\"linux\"'
            UNION ALL SELECT 'os_version', '\"14.6\"'
            UNION ALL SELECT 'mdm_enrolled', 'true') a
         WHERE d.name GLOB 'bulk-d*'",
        [now],
    )?;
    let first = |sql: &str| -> anyhow::Result<i64> { Ok(tx.query_row(sql, [], |r| r.get(0))?) };
    let first_user = first("SELECT MIN(id) FROM users WHERE name GLOB 'bulk-u*'")?;
    let first_device = first("SELECT MIN(id) FROM devices WHERE name GLOB 'bulk-d*'")?;
    let base_seq = first("SELECT COALESCE(MAX(seq), 0) FROM audit")?;
    let base_serial = first("SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'serial'")?
        .max(first("SELECT COALESCE(MAX(serial), 0) FROM certificates")?);
    let ca_key = first("SELECT id FROM ca_keys WHERE state = 'active'")?;
    let pad = bulk.body_bytes.saturating_sub(40) / 2;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO audit (seq, at, kind, user, device, role, request_id, body, prev_hash, hash)
         SELECT ?2 + i, ?3 - ?1 + i, CASE WHEN i <= ?4 THEN 'issued' ELSE 'denied' END,
                printf('bulk-u%07d', i % ?5 + 1), printf('bulk-d%07d', i % ?5 + 1), 'prod-db', NULL,
                printf('{\"bulk\":%d,\"pad\":\"%s\"}', i, hex(randomblob(?6))),
                lower(hex(randomblob(32))), lower(hex(randomblob(32)))
         FROM n",
        params![
            bulk.audit as i64,
            base_seq,
            now,
            bulk.certificates as i64,
            bulk.users as i64,
            pad as i64
        ],
    )?;
    tx.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO certificates (serial, key_id, user_id, device_id, role, ca_key_id, principals,
                                   valid_after, valid_before, issued_at, audit_seq, certificate)
         SELECT ?2 + i,
                printf('jitca:bulk-u%07d:bulk-d%07d:prod-db:%d', i % ?3 + 1, i % ?3 + 1, ?2 + i),
                ?4 + i % ?3, ?5 + i % ?3, 'prod-db', ?6, '[\"postgres\"]',
                ?7 - ?8 + i - 120, ?7 - ?8 + i + 900 - 86400, ?7 - ?8 + i, ?9 + i,
                'ssh-ed25519-cert-v01@openssh.com AAAA' || hex(randomblob(300))
         FROM n",
        params![
            bulk.certificates as i64,
            base_serial,
            bulk.users as i64,
            first_user,
            first_device,
            ca_key,
            now,
            bulk.audit as i64,
            base_seq
        ],
    )?;
    tx.execute(
        "INSERT INTO counters (name, value) VALUES ('serial', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [base_serial + bulk.certificates as i64],
    )?;
    tx.commit()?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    drop(conn);
    // Write the generated pages out now: a writeback of gigabytes running
    // under the measurement would slow its commits, not the size.
    std::fs::File::open(&ca.db)?.sync_all()?;
    Ok(started.elapsed())
}

/// Row counts of the tables that grew, for the report.
pub fn counts(ca: &Ca) -> anyhow::Result<(i64, i64, i64, i64)> {
    let conn = Connection::open(&ca.db)?;
    let count = |table: &str| -> anyhow::Result<i64> {
        Ok(conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok((
        count("users")?,
        count("devices")?,
        count("audit")?,
        count("certificates")?,
    ))
}

/// Sequential issuance on several CAs, alternating between them round by
/// round so that drift on a noisy machine hits all of them alike.
pub async fn alternate(
    states: &[(Arc<State>, Requester)],
    rounds: usize,
    per_round: usize,
) -> anyhow::Result<Vec<Summary>> {
    let mut latencies = vec![Vec::with_capacity(rounds * per_round); states.len()];
    let mut walls = vec![Duration::ZERO; states.len()];
    let mut cpus = vec![Duration::ZERO; states.len()];
    for _ in 0..rounds {
        for (i, (state, who)) in states.iter().enumerate() {
            let cpu = process_cpu();
            let started = Instant::now();
            for _ in 0..per_round {
                latencies[i].push(request_once(state, who).await?);
            }
            walls[i] += started.elapsed();
            cpus[i] += process_cpu().saturating_sub(cpu);
        }
    }
    Ok(latencies
        .into_iter()
        .zip(walls)
        .zip(cpus)
        .map(|((l, w), cpu)| {
            let mut s = Summary::new(l, 0, w);
            s.cpu = Some(cpu);
            s
        })
        .collect())
}

/// A policy like the shipped one, with `roles` roles in all: `prod-db`
/// exactly as shipped, and the rest, `team-NNNN`, each with its own group,
/// principal, networks and a posture profile among ten.
pub fn many_roles_policy(roles: usize) -> String {
    let mut text = String::from(
        "[ca]\nbackdate = \"2m\"\nmax_ttl = \"8h\"\n\n\
         [posture.managed-laptop]\nmax_report_age = \"24h\"\nrequire = [\n\
         \x20 \"device.disk_encrypted == true\",\n\
         \x20 \"device.os_family in [\\\"macos\\\", \\\"linux\\\"]\",\n\
         \x20 \"device.os_version >= 14.5\",\n\
         \x20 \"device.mdm_enrolled == true\",\n]\n\n\
         [role.prod-db]\ngroups = [\"dba\"]\nprincipals = [\"postgres\"]\nttl = \"15m\"\n\
         max_ttl = \"1h\"\nposture = \"managed-laptop\"\nsource_address = \"peer\"\n\
         extensions = [\"permit-pty\"]\n",
    );
    for p in 0..10 {
        let _ = write!(
            text,
            "\n[posture.profile-{p}]\nmax_report_age = \"{}h\"\nrequire = [\n\
             \x20 \"device.disk_encrypted == true\",\n\
             \x20 \"device.os_version >= 14.{p}\",\n]\n",
            12 + p
        );
    }
    for r in 1..roles {
        let _ = write!(
            text,
            "\n[role.team-{r:04}]\ndescription = \"team {r} hosts\"\n\
             groups = [\"team-{g:03}\", \"leads-{g:03}\"]\nprincipals = [\"svc-{r:04}\", \"deploy-{r:04}\"]\n\
             ttl = \"10m\"\nmax_ttl = \"1h\"\nposture = \"profile-{p}\"\n\
             networks = [\"10.{a}.0.0/16\", \"127.0.0.0/8\"]\nextensions = [\"permit-pty\"]\n",
            g = r % 500,
            p = r % 10,
            a = r % 256,
        );
    }
    text
}

/// A snapshot of `who` on `state`, as a request takes it.
pub async fn snapshot(state: &State, who: &Requester) -> anyhow::Result<Snapshot> {
    let (_, snap) = issue::snapshot(state, &who.identity, PEER).await?;
    Ok(snap)
}

/// `count` evaluations of `role` (or of every role, as `whoami` does, when
/// `role` is `None`) against `snap`.
pub fn evaluation(
    policy: &Policy,
    snap: &Snapshot,
    role: Option<&str>,
    count: usize,
) -> anyhow::Result<Summary> {
    let params = request_params();
    let names: Vec<String> = match role {
        Some(r) => vec![r.to_string()],
        None => policy.roles().map(|r| r.name.clone()).collect(),
    };
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        for name in &names {
            let d = policy.evaluate(name, snap, &params)?;
            std::hint::black_box(&d);
        }
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, 0, started.elapsed()))
}

/// Time to parse and validate `text` as a policy, best of `tries`.
pub fn parse_time(text: &str, tries: usize) -> anyhow::Result<(Duration, Policy)> {
    let mut best = Duration::MAX;
    let mut parsed = None;
    for _ in 0..tries.max(1) {
        let t = Instant::now();
        let p = Policy::parse("many-roles.toml", text).map_err(|e| anyhow::anyhow!("{e}"))?;
        best = best.min(t.elapsed());
        parsed = Some(p);
    }
    Ok((best, parsed.context("no parse ran")?))
}

/// The role every issuance asks for, checked to exist in `policy`.
pub fn check_role(policy: &Policy) -> anyhow::Result<()> {
    policy
        .role(ROLE)
        .map(|_| ())
        .with_context(|| format!("the policy has no role {ROLE}"))
}
