//! The daemon: the russh front end and the state its connections share.
//!
//! Connections are accepted under a limit; each runs its own
//! [`session::Connection`] handler. Data flows one way: connection →
//! identity → snapshot → decision → issuance → audit → reply.

mod approve;
pub mod commands;
pub mod issue;
pub mod limits;
mod readers;
mod run;
mod session;
mod signing;
#[cfg(test)]
mod testutil;

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::{cipher, compression, kex, mac};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::audit::{self, Event};
use crate::ca::registry::Signers;
use crate::inventory::Identity;
use crate::model::now_unix;
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::store::writer::Writer;
pub use readers::Readers;

/// Requests one device may make per minute unless `serve` is told otherwise.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 60;

/// What every connection shares.
pub struct State {
    pub policy_path: PathBuf,
    policy: RwLock<Arc<Policy>>,
    pub writer: Writer,
    pub readers: Readers,
    pub signers: Signers,
    /// Serial blocks and the CA key last seen active, for signing outside
    /// the writer.
    issuer: signing::Issuer,
    refusals: limits::RefusalLimiter,
    /// Each device's allowance of `request`s.
    pub requests: limits::RequestLimiter,
    notifier: Notifier,
    /// Woken whenever a request changes state, so that waiting requesters
    /// look again at once instead of at their next poll.
    pub changes: Notify,
}

impl State {
    pub fn new(
        db: &Path,
        ca_dir: &Path,
        policy_path: &Path,
        policy: Policy,
    ) -> Result<State, crate::store::StoreError> {
        Ok(State {
            policy_path: policy_path.to_path_buf(),
            policy: RwLock::new(Arc::new(policy)),
            writer: Writer::spawn(db)?,
            readers: Readers::new(db),
            signers: Signers::new(ca_dir),
            issuer: signing::Issuer::default(),
            refusals: limits::RefusalLimiter::default(),
            requests: limits::RequestLimiter::new(DEFAULT_REQUESTS_PER_MINUTE),
            notifier: Notifier::default(),
            changes: Notify::new(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rereads the policy file; on any error keeps the policy it had and logs why.
    pub fn reload_policy(&self) {
        match Policy::load(&self.policy_path) {
            Ok(p) => {
                tracing::info!(sha256 = %p.sha256(), roles = p.roles().count(), "policy reloaded");
                for w in p.warnings() {
                    tracing::warn!(warning = %w, "policy warning");
                }
                match self.policy.write() {
                    Ok(mut slot) => *slot = Arc::new(p),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(p),
                }
            }
            Err(e) => {
                tracing::error!(
                    file = %self.policy_path.display(),
                    errors = %e,
                    kept = %self.policy().sha256(),
                    "policy reload refused; keeping the policy in force"
                );
            }
        }
    }

    /// Sends an event to the policy's notifier, if it has one; never blocks.
    pub fn notify(&self, event: serde_json::Value) {
        if let Some(program) = self.policy().notify() {
            self.notifier.send(program, event);
        }
    }

    /// Audits an authentication refusal, at most once per key and peer per
    /// interval, and within a global rate, so that a flood of attempts cannot
    /// flood the audit log.
    ///
    /// The work is boxed: the authentication handlers that await this run
    /// inside russh's session future, whose size every connection pays for
    /// as long as it lasts.
    pub async fn record_refusal(
        &self,
        peer: IpAddr,
        fingerprint: &str,
        key_type: &str,
        who: Option<&Identity>,
        reason: &str,
    ) {
        Box::pin(self.audit_refusal(peer, fingerprint, key_type, who, reason)).await
    }

    async fn audit_refusal(
        &self,
        peer: IpAddr,
        fingerprint: &str,
        key_type: &str,
        who: Option<&Identity>,
        reason: &str,
    ) {
        let (repeats, dropped) = match self
            .refusals
            .admit(peer, fingerprint, reason, who.is_some())
        {
            limits::Admit::Record { repeats, dropped } => (repeats, dropped),
            limits::Admit::Drop => return,
        };
        let mut event = Event::new(
            "auth-refused",
            json!({
                "peer": peer.to_string(),
                "fingerprint": fingerprint,
                "key_type": key_type,
                "reason": reason,
                "repeats_folded_in": repeats,
                "unknown_keys_dropped": dropped,
            }),
        );
        if let Some(w) = who {
            event = event.user(&w.user).device(&w.device);
        }
        self.append_now(event, "an authentication refusal").await;
    }

    /// Audits a `request` refused because its device used up its
    /// allowance: at most once a minute per device (the record counts the
    /// refusals folded into it), so that the refusals cannot flood the log
    /// the limit protects.
    pub async fn record_request_limited(&self, who: &Identity, peer: IpAddr, fingerprint: &str) {
        let reason = "request rate";
        let repeats = match self.refusals.admit(peer, fingerprint, reason, true) {
            limits::Admit::Record { repeats, .. } => repeats,
            limits::Admit::Drop => return,
        };
        let event = Event::new(
            "request-limited",
            json!({
                "peer": peer.to_string(),
                "fingerprint": fingerprint,
                "per_minute": self.requests.per_minute(),
                "repeats_folded_in": repeats,
            }),
        )
        .user(&who.user)
        .device(&who.device);
        self.append_now(event, "a request refused by the rate limit")
            .await;
    }

    /// Appends `event`, dated `at`, to the audit log in a writer job, and
    /// returns its sequence number once committed.
    pub async fn append(&self, at: i64, event: Event) -> Result<i64, crate::store::StoreError> {
        self.writer.run(move |c| audit::append(c, at, &event)).await
    }

    /// Appends `event` to the audit log now; a failure is logged (`what`
    /// names the record), for records whose loss must not stop the reply.
    async fn append_now(&self, event: Event, what: &str) {
        if let Err(e) = self.append(now_unix(), event).await {
            tracing::error!(error = %e, "cannot audit {what}");
        }
    }
}

/// How often the daemon expires requests past their deadline. Expiry does
/// not depend on it: any access to a request expires it first if it is due.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

impl State {
    /// Expires every request past its deadline, audits and announces each.
    pub async fn expire_due(&self) {
        match self
            .writer
            .run(|c| crate::approval::expire_due(c, now_unix()))
            .await
        {
            Ok(expired) => {
                for req in &expired {
                    approve::announce_expired(self, req);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot expire requests"),
        }
    }
}

/// Keeps `path` holding the current KRL: writes it at start, then looks
/// every [`SWEEP_EVERY`] and rewrites it (atomically) whenever what it must
/// list has changed, including certificates dropping out as they expire,
/// or the file is missing or differs from what was written.
pub async fn keep_krl(state: Arc<State>, path: PathBuf) {
    // What was last written: its content (without version and date) and bytes.
    let mut written: Option<(Vec<u8>, Vec<u8>)> = None;
    loop {
        let skew = state.policy().backdate();
        let spec = state
            .readers
            .run(move |conn| crate::ca::revocation::krl_spec(conn, now_unix(), skew))
            .await;
        match spec {
            Ok(mut spec) => {
                let version = spec.version;
                let date = spec.generated_date;
                // Compare content only: the version and date change every second.
                spec.version = 0;
                spec.generated_date = 0;
                let content = crate::ca::krl::encode(&spec);
                spec.version = version;
                spec.generated_date = date;
                // Rewritten when what it must list changed, and also when
                // the file on disk is not what was last written (deleted or
                // damaged: sshd would refuse every login).
                let on_disk_ok = || match (&written, std::fs::read(&path)) {
                    (Some((_, bytes)), Ok(disk)) => &disk == bytes,
                    _ => false,
                };
                match (content, crate::ca::krl::encode(&spec)) {
                    (Ok(content), Ok(bytes))
                        if written.as_ref().map(|(c, _)| c) != Some(&content) || !on_disk_ok() =>
                    {
                        match crate::ca::krl::write_atomically(&path, &bytes) {
                            Ok(()) => {
                                tracing::info!(file = %path.display(), bytes = bytes.len(), "KRL rewritten");
                                written = Some((content, bytes));
                            }
                            Err(e) => {
                                tracing::error!(file = %path.display(), error = %e, "cannot write the KRL")
                            }
                        }
                    }
                    (Ok(_), Ok(_)) => {}
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!(error = %e, "cannot encode the KRL")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot build the KRL"),
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Limits of the listener.
pub struct Limits {
    pub max_connections: usize,
    /// Connections from one peer address at once, at most.
    pub max_per_peer: usize,
    /// A connection that has not authenticated this long after it opened is closed.
    pub login_grace: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

/// The algorithms offered: what every OpenSSH since 6.5 negotiates, and
/// clients limited to FIPS algorithms (Diffie-Hellman groups 14 and 16,
/// AES-GCM or AES-CTR with an encrypt-then-MAC), and nothing more. Left out
/// of russh's defaults: compression (a client that asks for zlib makes the
/// server keep deflate and inflate state, about 110 KB per connection),
/// Diffie-Hellman groups 15 and 17 (not in OpenSSH), group 18 (8192 bits:
/// costly for the server) and group exchange, 128- and 192-bit AES-CTR, and
/// the encrypt-and-MAC MACs. The server's KEXINIT is kept by russh for the
/// life of a connection; this list makes it 493 bytes instead of 764, and
/// saves about 1 KB per connection in the buffers sized by it.
fn preferred() -> russh::Preferred {
    russh::Preferred {
        kex: Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::DH_G16_SHA512,
            kex::DH_G14_SHA256,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        cipher: Cow::Borrowed(&[
            cipher::CHACHA20_POLY1305,
            cipher::AES_256_GCM,
            cipher::AES_256_CTR,
        ]),
        mac: Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
        compression: Cow::Borrowed(&[compression::NONE]),
        ..Default::default()
    }
}

/// The russh configuration: our host key, public-key authentication only.
fn config(host_key: PrivateKey, limits: &Limits) -> russh::server::Config {
    let mut methods = russh::MethodSet::empty();
    methods.push(russh::MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-jitca_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        max_auth_attempts: 6,
        inactivity_timeout: Some(limits.idle_timeout),
        nodelay: true,
        preferred: preferred(),
        ..Default::default()
    }
}

/// Accepts connections until the process is stopped. SIGHUP rereads the policy.
pub async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    host_key: PrivateKey,
    limits: Limits,
) -> std::io::Result<()> {
    let config = Arc::new(config(host_key, &limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_peer: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();

    let reload = state.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; policy reload needs a restart");
            return;
        };
        while hup.recv().await.is_some() {
            reload.reload_policy();
        }
    });

    let sweeper = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            sweeper.expire_due().await;
        }
    });

    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection limit reached; closing");
            drop(socket);
            continue;
        };
        let Some(slot) = PeerSlot::take(&per_peer, peer.ip(), limits.max_per_peer) else {
            tracing::warn!(%peer, max = limits.max_per_peer, "per-peer connection limit reached; closing");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let admission = Admission {
            _permit: permit,
            _slot: slot,
        };
        tokio::spawn(connection(
            config.clone(),
            state.clone(),
            socket,
            peer,
            limits.login_grace,
            admission,
        ));
    }
}

/// A connection's place under the connection limits, given back when it
/// is dropped: with the connection's handler, when russh ends the session
/// (or the handshake fails).
pub(super) struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: PeerSlot,
}

/// What the per-peer limit counts connections by: an IPv4 address (also
/// when it arrives IPv4-mapped, `::ffff:a.b.c.d`, on a dual-stack socket),
/// or an IPv6 /64. One IPv6 host is normally given a whole /64, so counting
/// single IPv6 addresses would let it take as many slots as it likes.
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// One peer's share of the connection limit, given back on drop.
struct PeerSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
}

impl PeerSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        peer: IpAddr,
        max: usize,
    ) -> Option<PeerSlot> {
        let peer = peer_key(peer);
        let mut map = counts.lock().ok()?;
        let n = map.entry(peer).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: counts.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.lock() {
            if let Some(n) = map.get_mut(&self.peer) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.peer);
                }
            }
        }
    }
}

/// Serves one connection: the handshake and the login grace, then hands
/// the wait for the session's end to a small task of its own.
///
/// The handshake's state is boxed: it is only needed until the session
/// starts, and inline it would size this task's allocation. Once the caller
/// has authenticated, no timer and no second handle on the socket are left.
async fn connection(
    config: Arc<russh::server::Config>,
    state: Arc<State>,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    login_grace: Duration,
    admission: Admission,
) {
    let deadline = tokio::time::Instant::now() + login_grace;
    // A second handle on the socket, to cut a client off even while russh
    // waits in a key exchange and cannot act on a disconnect request.
    let (socket, cutter) = match socket.into_std().and_then(|std| {
        let cutter = std.try_clone()?;
        Ok((tokio::net::TcpStream::from_std(std)?, cutter))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot set up the connection");
            return;
        }
    };
    let (authenticated, on_authenticated) = tokio::sync::oneshot::channel();
    let handler = session::Connection::new(state, peer, authenticated, admission);
    let handshake = Box::pin(russh::server::run_stream(config, socket, handler));
    let mut running = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            // No identification string in time: dropping the handshake
            // closes the socket.
            tracing::warn!(%peer, "no authentication within the grace time; disconnecting");
            return;
        }
    };
    let in_time = tokio::select! {
        ended = &mut running => return ended_with(peer, ended),
        // An error means that the handler is gone, and so is the session.
        _ = on_authenticated => true,
        () = tokio::time::sleep_until(deadline) => false,
    };
    if in_time {
        drop(cutter);
        // What is left is a wait for the session's end, to log how it
        // ended: in a task of its own, whose allocation that wait alone
        // sizes, rather than everything this task did before.
        tokio::spawn(async move { ended_with(peer, running.await) });
    } else {
        // Boxed: a disconnect is a large future, and rare.
        Box::pin(cut_off(peer, running.handle(), cutter)).await;
        ended_with(peer, running.await);
    }
}

/// Ends a connection whose login grace ran out: asks russh to disconnect,
/// then shuts the socket in case russh is stuck in a key exchange.
async fn cut_off(peer: SocketAddr, handle: russh::server::Handle, cutter: std::net::TcpStream) {
    tracing::warn!(%peer, "no authentication within the grace time; disconnecting");
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            "authentication took too long".into(),
            String::new(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = cutter.shutdown(std::net::Shutdown::Both);
}

/// Logs how a session ended, if with an error.
fn ended_with(peer: SocketAddr, ended: Result<(), russh::Error>) {
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv4_mapped_address_and_one_ipv6_64_each_count_as_one_peer() {
        let counts = Arc::default();
        let a = PeerSlot::take(&counts, ip("10.0.0.1"), 2).unwrap();
        let b = PeerSlot::take(&counts, ip("::ffff:10.0.0.1"), 2).unwrap();
        assert!(
            PeerSlot::take(&counts, ip("10.0.0.1"), 2).is_none(),
            "a mapped address is the same peer"
        );
        let c = PeerSlot::take(&counts, ip("2001:db8::1"), 2).unwrap();
        let d = PeerSlot::take(&counts, ip("2001:db8::ffff:2"), 2).unwrap();
        assert!(
            PeerSlot::take(&counts, ip("2001:db8::3"), 2).is_none(),
            "one /64 is one peer"
        );
        let other = PeerSlot::take(&counts, ip("2001:db8:0:1::1"), 2);
        assert!(other.is_some(), "the next /64 is another peer");
        drop((a, c));
        assert!(PeerSlot::take(&counts, ip("10.0.0.1"), 2).is_some());
        assert!(PeerSlot::take(&counts, ip("2001:db8::4"), 2).is_some());
        drop((b, d, other));
    }
}
