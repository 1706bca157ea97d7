//! The load generator: russh clients, each doing a full connection — TCP
//! connect, key exchange, public-key authentication, one exec request,
//! reading the reply to the channel's close — then disconnecting, in a loop.
//!
//! Both servers negotiate the same algorithms, pinned here (and in the
//! `sshd` config): key exchange `curve25519-sha256`, host key and user key
//! `ssh-ed25519`, cipher `chacha20-poly1305@openssh.com`, no compression.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use russh::client::{self, Handle};
use russh::keys::{
    Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, Disconnect, cipher, compression, kex};

use crate::stats::Summary;

/// What a client asks of a server, and what it must get back on stdout.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub host_key: PublicKey,
    pub user: &'static str,
    pub command: &'static str,
    /// The reply's stdout must start with this.
    pub expect: &'static str,
}

/// The client configuration both servers are measured with.
pub fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        preferred: russh::Preferred {
            kex: Cow::Owned(vec![
                kex::CURVE25519,
                kex::EXTENSION_SUPPORT_AS_CLIENT,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            ]),
            key: Cow::Owned(vec![Algorithm::Ed25519]),
            cipher: Cow::Owned(vec![cipher::CHACHA20_POLY1305]),
            compression: Cow::Owned(vec![compression::NONE]),
            ..Default::default()
        },
        inactivity_timeout: Some(Duration::from_secs(120)),
        nodelay: true,
        ..Default::default()
    })
}

/// Accepts the server only if it presents the host key it was started with.
pub struct Client {
    host_key: PublicKey,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.host_key.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// Connects and authenticates with `key`; the handle of the open session.
pub async fn login(
    config: Arc<client::Config>,
    target: &Target,
    key: &Arc<PrivateKey>,
) -> anyhow::Result<Handle<Client>> {
    let client = Client {
        host_key: target.host_key.clone(),
    };
    let mut handle = client::connect(config, target.addr, client)
        .await
        .with_context(|| format!("cannot connect to {}", target.name))?;
    let auth = handle
        .authenticate_publickey(target.user, PrivateKeyWithHashAlg::new(key.clone(), None))
        .await?;
    if !auth.success() {
        bail!("{} refused the key", target.name);
    }
    Ok(handle)
}

/// One full connection; its latency, up to the channel's close.
pub async fn session(
    config: Arc<client::Config>,
    target: &Target,
    key: &Arc<PrivateKey>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let handle = login(config, target, key).await?;
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, target.command).await?;
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let took = started.elapsed();
    let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
    if status != Some(0) || !stdout.starts_with(target.expect.as_bytes()) {
        bail!(
            "{}: exit status {status:?}, stdout {:?}",
            target.name,
            String::from_utf8_lossy(&stdout[..stdout.len().min(80)])
        );
    }
    Ok(took)
}

/// How long each client keeps connecting.
#[derive(Clone, Copy)]
pub enum Run {
    /// Until this much time has passed since the start.
    For(Duration),
    /// This many connections per client.
    Each(usize),
}

/// `clients` concurrent clients, client `i` using `keys[i % len]`. A failed
/// connection is counted and the first failure kept; the run goes on.
pub async fn load(
    target: Arc<Target>,
    keys: &[Arc<PrivateKey>],
    clients: usize,
    run: Run,
) -> (Summary, Option<String>) {
    let config = config();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let (config, target) = (config.clone(), target.clone());
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut first_error = None;
            let mut done = 0;
            loop {
                let more = match run {
                    Run::For(d) => started.elapsed() < d,
                    Run::Each(n) => done < n,
                };
                if !more {
                    break;
                }
                done += 1;
                match session(config.clone(), &target, &key).await {
                    Ok(took) => latencies.push(took),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok((l, e, f)) => {
                all.extend(l);
                errors += e;
                if first_error.is_none() {
                    first_error = f;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("a client task failed: {e}"));
            }
        }
    }
    (Summary::new(all, errors, started.elapsed()), first_error)
}
