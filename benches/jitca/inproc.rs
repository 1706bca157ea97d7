//! In-process issuance through `jitca::server::issue::request` (snapshot,
//! policy evaluation, signing, the durable group commit of the audit
//! record), and beside it the floors and the references: one Ed25519
//! signature, one durable SQLite commit, and `ssh-keygen -s` run once per
//! certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use jitca::ca::cert::{CertRequest, certificate_line, sign_certificate};
use jitca::ca::keys::load_ca_key;
use jitca::ca::signer::{CaSigner, ed25519_signing_key};
use jitca::policy::RequestParams;
use jitca::server::State;
use jitca::server::issue::{self, Reply};
use russh::keys::signature::{Signer, Verifier};
use russh::keys::ssh_key::Signature;
use russh::keys::{Algorithm, PrivateKey};

use crate::setup::{Ca, ROLE, Requester};
use crate::stats::{Summary, process_cpu};

/// The peer address in-process requests come from.
pub const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What a benchmark requester sends with `request prod-db`.
pub fn params() -> RequestParams {
    RequestParams {
        ttl: None,
        reason: Some("INC-4242 benchmark".into()),
    }
}

/// One `request prod-db`, which must issue a certificate; its latency.
pub async fn request_once(state: &State, who: &Requester) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let reply = issue::request(state, &who.identity, &who.public, PEER, ROLE, params()).await;
    let took = started.elapsed();
    match reply {
        Ok(Reply::Issued(i)) if i.line.starts_with("ssh-ed25519-cert-v01@openssh.com ") => Ok(took),
        Ok(Reply::Issued(i)) => bail!("unexpected certificate line {:?}", i.line),
        Ok(Reply::Denied(d)) => bail!(
            "request denied: {:?}",
            d.failed().map(|r| r.rule.clone()).collect::<Vec<_>>()
        ),
        Ok(Reply::Pending(p)) => bail!("request {} is pending", p.id),
        Err(e) => bail!("request failed: {e}"),
    }
}

/// `total` issuances from `concurrency` requesters at once, each looping
/// on its own device; every one must issue.
pub async fn issuance(
    state: &Arc<State>,
    requesters: &[Requester],
    concurrency: usize,
    total: usize,
) -> anyhow::Result<Summary> {
    // The requesters take requests from one count, so that all of them
    // stay busy until the last few (a fixed share each left the fastest
    // idle at the end, below the concurrency asked for).
    let left = Arc::new(AtomicUsize::new(total));
    let cpu = process_cpu();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (state, left) = (state.clone(), left.clone());
        let who = requesters[i % requesters.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total / concurrency + 1);
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                latencies.push(request_once(&state, &who).await?);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.context("a requester task panicked")??);
    }
    Ok(Summary::new(all, 0, started.elapsed()).with_cpu(cpu))
}

/// Sequential durable commits of one small row through the daemon's
/// writer: the cost of making one batch durable (`synchronous=FULL`).
pub async fn durable_commit(state: &State, count: usize) -> anyhow::Result<Summary> {
    let cpu = process_cpu();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        state
            .writer
            .run(|c| {
                c.execute(
                    "INSERT INTO counters (name, value) VALUES ('benchmark', 1)
                     ON CONFLICT (name) DO UPDATE SET value = value + 1",
                    [],
                )?;
                Ok(())
            })
            .await?;
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, 0, started.elapsed()).with_cpu(cpu))
}

/// Raw Ed25519: `count` signatures (and verifications) of a message the size
/// of a certificate's signed part, signed as jitca signs (the signing key
/// built once).
pub fn ed25519(count: usize) -> anyhow::Result<(Summary, Summary)> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    let signing = ed25519_signing_key(&key)
        .map_err(anyhow::Error::msg)?
        .context("an Ed25519 key has an Ed25519 signing key")?;
    let signer = CaSigner::Ed25519 {
        key: &signing,
        public: key.public_key().key_data(),
    };
    let message = vec![0x5a_u8; 400];
    let mut signed = Vec::with_capacity(count);
    let mut verified = Vec::with_capacity(count);
    let cpu = process_cpu();
    let started = Instant::now();
    let mut signature: Option<Signature> = None;
    for _ in 0..count {
        let t = Instant::now();
        let sig: Signature = signer.try_sign(&message)?;
        signed.push(t.elapsed());
        signature = Some(sig);
    }
    let sign = Summary::new(signed, 0, started.elapsed()).with_cpu(cpu);
    let signature = signature.context("no signature made")?;
    let cpu = process_cpu();
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        Verifier::verify(key.public_key().key_data(), &message, &signature)?;
        verified.push(t.elapsed());
    }
    Ok((
        sign,
        Summary::new(verified, 0, started.elapsed()).with_cpu(cpu),
    ))
}

/// jitca's certificate builder alone (build, sign, encode),
/// without snapshot, policy or database.
pub fn certificate_builder(ca: &Ca, count: usize) -> anyhow::Result<Summary> {
    let key = load_ca_key(&ca.ca_key_file()?)?;
    let subject = &ca.requesters[0].public;
    let principals = vec!["postgres".to_string()];
    let options = BTreeMap::from([("source-address".to_string(), "127.0.0.1/32".to_string())]);
    let extensions = BTreeSet::from(["permit-pty".to_string()]);
    let now = jitca::model::now_unix() as u64;
    let mut latencies = Vec::with_capacity(count);
    let cpu = process_cpu();
    let started = Instant::now();
    for serial in 1..=count as u64 {
        let t = Instant::now();
        let cert = sign_certificate(
            &key,
            &CertRequest {
                subject,
                serial,
                key_id: format!("jitca:bench:dev:{ROLE}:{serial}"),
                principals: &principals,
                valid_after: now - 120,
                valid_before: now + 900,
                critical_options: &options,
                extensions: &extensions,
            },
        )?;
        certificate_line(&cert)?;
        latencies.push(t.elapsed());
    }
    Ok(Summary::new(latencies, 0, started.elapsed()).with_cpu(cpu))
}

/// `ssh-keygen -s` once per certificate, `count` times one after the
/// other, with the options the `prod-db` role grants: what a shell-script
/// CA does.
pub fn ssh_keygen(ca: &Ca, dir: &Path, count: usize) -> anyhow::Result<Summary> {
    let ca_key = ca.ca_key_file()?;
    let subject = dir.join("ssh-keygen-subject.pub");
    std::fs::write(
        &subject,
        format!("{}\n", ca.requesters[0].public.to_openssh()?),
    )?;
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for serial in 1..=count {
        let t = Instant::now();
        let status = Command::new(crate::SSH_KEYGEN)
            .arg("-q")
            .arg("-s")
            .arg(&ca_key)
            .args(["-I", &format!("jitca:bench:dev:{ROLE}:{serial}")])
            .args([
                "-n",
                "postgres",
                "-V",
                "-2m:+15m",
                "-z",
                &serial.to_string(),
            ])
            .args(["-O", "clear", "-O", "permit-pty"])
            .args(["-O", "source-address=127.0.0.1/32"])
            .arg(&subject)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("cannot run ssh-keygen")?;
        if !status.status.success() {
            bail!(
                "ssh-keygen -s failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        latencies.push(t.elapsed());
    }
    let wall = started.elapsed();
    let cert = dir.join("ssh-keygen-subject-cert.pub");
    if !std::fs::read_to_string(&cert)?.starts_with("ssh-ed25519-cert-v01@openssh.com ") {
        bail!("ssh-keygen wrote no certificate to {}", cert.display());
    }
    Ok(Summary::new(latencies, 0, wall))
}
