//! Resident memory of `jitca serve`: idle, then holding many authenticated
//! connections that do nothing.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use russh::keys::PrivateKey;
use tokio::sync::Semaphore;

use crate::e2e::{Target, config, login};
use crate::servers::Server;

/// Connections in their handshake at once while the idle ones are opened.
const OPENING_AT_ONCE: usize = 32;

/// `VmRSS` and `VmHWM`, in KiB.
pub type Memory = (u64, u64);

/// What [`idle_connections`] measured.
pub struct Measured {
    pub idle: Memory,
    /// After one certificate request, so that the lazily built parts (the
    /// reader pool, the CA key cache) are counted as idle state.
    pub warm: Memory,
    pub loaded: Memory,
    pub connections: usize,
}

/// Measures `server` idle, after one request, and with `count` open,
/// authenticated, idle connections.
pub async fn idle_connections(
    server: &Server,
    target: Arc<Target>,
    keys: &[Arc<PrivateKey>],
    count: usize,
) -> anyhow::Result<Measured> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.memory_kib()?;
    crate::e2e::session(config(), &target, &keys[0]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm = server.memory_kib()?;

    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let config = config();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (gate, config, target) = (gate.clone(), config.clone(), target.clone());
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            login(config, &target, &key).await
        }));
    }
    let mut open = Vec::with_capacity(count);
    for t in tasks {
        open.push(t.await.context("a client task panicked")??);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = server.memory_kib()?;
    let connections = open.len();
    for handle in open {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
    Ok(Measured {
        idle,
        warm,
        loaded,
        connections,
    })
}
