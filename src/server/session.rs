//! One SSH connection: authentication by enrolled key, then commands.
//!
//! A key that is not enrolled is refused at authentication and the attempt
//! is audited (rate-limited). An enrolled key whose user is suspended, or
//! whose device is disabled, proves possession, is told why in the
//! disconnect message, and is disconnected before it can open a channel:
//! that way the requester learns the reason instead of a bare "Permission
//! denied", and still gets nothing. The login name carries no meaning.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use russh::keys::{Algorithm, HashAlg, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};

use super::commands::{self, exit};
use super::run::{Output, Progress, run_command};
use super::{Admission, State};
use crate::inventory::{Identity, identity_by_fingerprint};

/// Channels a connection may have open at once.
const MAX_CHANNELS: usize = 4;

/// The per-connection handler. Its state is boxed: russh keeps the handler
/// inline in the allocation of each session's task, and the way that future
/// is built stores it there four times over (352 bytes each, of which the
/// caller's identity and key are most).
pub struct Connection(Box<Inner>);

/// What a connection knows about its caller and its channels.
pub struct Inner {
    state: Arc<State>,
    peer: SocketAddr,
    /// Set once a key of an active device of an active user has authenticated.
    caller: Option<(Identity, PublicKey)>,
    /// Set when an enrolled but inactive key authenticated: the reason it is refused.
    refused: Option<String>,
    /// Session channels open now. A command's task removes its channel when
    /// it closes it, so the limit counts channels at once, not in a lifetime.
    /// With each, once it runs a command, the sender whose drop (when the
    /// client closes the channel) tells that command its client is gone.
    channels: Arc<Mutex<HashMap<ChannelId, Option<tokio::sync::oneshot::Sender<()>>>>>,
    /// Channels that have had their one exec (or shell) request.
    used: HashSet<ChannelId>,
    /// Told once a key of an active identity has authenticated, which ends
    /// the login grace; `None` after that.
    authenticated: Option<tokio::sync::oneshot::Sender<()>>,
    /// The connection's place under the limits, given back when russh drops
    /// this handler at the end of the session.
    _admission: Admission,
}

impl Connection {
    pub fn new(
        state: Arc<State>,
        peer: SocketAddr,
        authenticated: tokio::sync::oneshot::Sender<()>,
        admission: Admission,
    ) -> Connection {
        Connection(Box::new(Inner {
            state,
            peer,
            caller: None,
            refused: None,
            channels: Arc::default(),
            used: HashSet::new(),
            authenticated: Some(authenticated),
            _admission: admission,
        }))
    }

    /// Who `key` belongs to; `Err` when the database could not say.
    async fn lookup(&self, key: &PublicKey) -> Result<Option<Identity>, crate::store::StoreError> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let found = self
            .state
            .readers
            .run(move |conn| identity_by_fingerprint(conn, &fp))
            .await;
        if let Err(e) = &found {
            tracing::error!(error = %e, "identity lookup failed; refusing");
        }
        found
    }
}

impl std::ops::Deref for Connection {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.0
    }
}

/// The caller's identity as it is now, or the reply refusing them.
async fn still_allowed(state: &State, key: &PublicKey) -> Result<Identity, Output> {
    let fp = key.fingerprint(HashAlg::Sha256).to_string();
    match state
        .readers
        .run(move |conn| identity_by_fingerprint(conn, &fp))
        .await
    {
        Ok(Some(who)) => match who.refusal() {
            None => Ok(who),
            Some(reason) => Err(Output::stderr(format!("denied: {reason}\n"), exit::DENIED)),
        },
        Ok(None) => Err(Output::stderr(
            "denied: this key is no longer enrolled\n".into(),
            exit::DENIED,
        )),
        Err(e) => {
            tracing::error!(error = %e, "identity lookup failed; refusing");
            Err(Output::stderr(
                "error: internal error; nothing was done\n".into(),
                exit::INTERNAL,
            ))
        }
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let known = self.lookup(offer.public_key).await;
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        let reason = if matches!(offer.algorithm, Algorithm::Rsa { hash: None }) {
            // RFC 8332: ssh-rsa signs with SHA-1, which no longer proves
            // possession. russh still negotiates it, so that an old client's
            // attempt reaches this handler and is refused with an audit record.
            "ssh-rsa (SHA-1) signatures are refused: use rsa-sha2-512 or rsa-sha2-256"
        } else {
            match &known {
                Ok(Some(_)) => return Ok(Auth::Accept),
                Ok(None) => {
                    tracing::warn!(peer = %self.peer, fingerprint = %fp, "refused a key that is not enrolled");
                    "the key is not enrolled"
                }
                // Not "not enrolled": the record must not blame the key.
                Err(_) => "the key could not be looked up: a database error (see the daemon log)",
            }
        };
        let who = known.as_ref().ok().and_then(Option::as_ref);
        self.state
            .record_refusal(self.peer.ip(), &fp, offer.algorithm.as_str(), who, reason)
            .await;
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Ok(Some(who)) = self.lookup(key.public_key).await else {
            return Ok(Auth::reject());
        };
        if let Some(reason) = who.refusal() {
            let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
            tracing::warn!(peer = %self.peer, user = %who.user, device = %who.device, %reason, "refused an inactive identity");
            self.state
                .record_refusal(
                    self.peer.ip(),
                    &fp,
                    key.algorithm.as_str(),
                    Some(&who),
                    &reason,
                )
                .await;
            self.refused = Some(reason);
            // Accepted only so that the reason can be sent; see the module doc.
            return Ok(Auth::Accept);
        }
        tracing::info!(peer = %self.peer, user = %who.user, device = %who.device, "authenticated");
        self.caller = Some((who, key.public_key.clone()));
        if let Some(tell) = self.authenticated.take() {
            let _ = tell.send(());
        }
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let fp = certificate
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        tracing::warn!(peer = %self.peer, fingerprint = %fp, "refused a certificate offered for authentication");
        self.state
            .record_refusal(
                self.peer.ip(),
                &fp,
                certificate.algorithm().as_str(),
                None,
                "a certificate was offered: authenticate with the enrolled key itself",
            )
            .await;
        Ok(Auth::reject())
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = &self.refused {
            session.disconnect(Disconnect::ByApplication, reason, "")?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.caller.is_none() || self.refused.is_some() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let admitted = match self.channels.lock() {
            Ok(mut open) if open.len() < MAX_CHANNELS => {
                open.insert(channel.id(), None);
                true
            }
            _ => false,
        };
        if !admitted {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Ok(mut open) = self.channels.lock() {
            open.remove(&channel);
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Output is plain lines; a terminal would only mangle a certificate.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(peer = %self.peer, subsystem = name, "refused a subsystem request");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.exec_request(channel, b"", session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((_, key)) = self.caller.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let (close, on_close) = tokio::sync::oneshot::channel::<()>();
        let is_open = self.channels.lock().is_ok_and(|mut open| {
            open.get_mut(&channel)
                .map(|slot| *slot = Some(close))
                .is_some()
        });
        if self.used.contains(&channel) || !is_open {
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.used.insert(channel);
        let channels = self.channels.clone();
        session.channel_success(channel)?;

        let handle = session.handle();
        let state = self.state.clone();
        let peer = self.peer.ip();
        let line = data.to_vec();
        tokio::spawn(async move {
            // Progress lines go out as they come; the final reply after them.
            // The forwarder stops, and so the command sees its client gone,
            // when the session ends or the client closes the channel: russh
            // takes a closed channel's data without an error.
            let (lines, mut queue) = tokio::sync::mpsc::unbounded_channel::<String>();
            let forward = {
                let handle = handle.clone();
                let mut on_close = on_close;
                tokio::spawn(async move {
                    while let Some(line) = tokio::select! {
                        line = queue.recv() => line,
                        _ = &mut on_close => None,
                    } {
                        if handle
                            .extended_data(channel, 1, line.into_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                })
            };
            let progress = Progress(lines);
            let out = match commands::parse(&line) {
                commands::Parsed::Help(text) => Output::stdout(text, exit::OK),
                commands::Parsed::Usage(text) => Output::stderr(text, exit::USAGE),
                commands::Parsed::Run(cmd) => match still_allowed(&state, &key).await {
                    // Checked again for every command: a connection opened
                    // before a suspension must not outlive it.
                    Ok(who) => run_command(&state, &who, &key, peer, cmd, &progress).await,
                    Err(out) => out,
                },
            };
            drop(progress);
            let _ = forward.await;
            if !out.stdout.is_empty() {
                let _ = handle.data(channel, out.stdout).await;
            }
            if !out.stderr.is_empty() {
                let _ = handle
                    .extended_data(channel, 1, out.stderr.into_bytes())
                    .await;
            }
            let _ = handle.exit_status_request(channel, out.status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            if let Ok(mut open) = channels.lock() {
                open.remove(&channel);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The connection's life around the handler: the login grace, and the
    //! limits given back when a session ends, against a real listener.

    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
    use russh::{ChannelMsg, Disconnect, client};
    use tokio::io::AsyncReadExt;

    use crate::server::{Limits, serve};

    const GRACE: Duration = Duration::from_secs(1);

    /// Accepts any host key: the tests talk to the server they started.
    struct Client;

    impl client::Handler for Client {
        type Error = russh::Error;

        async fn check_server_key(
            &mut self,
            _presented: &PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    /// Serves a fresh database on 127.0.0.1 with a login grace of [`GRACE`]
    /// and at most `max_connections`; returns the address and the enrolled
    /// key of alice (group ops).
    async fn daemon(dir: &Path, max_connections: usize) -> (SocketAddr, PrivateKey) {
        let (state, key, _) = crate::server::testutil::state_with_alice(dir, "s.db");
        let state = Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let limits = Limits {
            max_connections,
            max_per_peer: max_connections,
            login_grace: GRACE,
            idle_timeout: Duration::from_secs(60),
        };
        tokio::spawn(serve(state, listener, host_key, limits));
        (addr, key)
    }

    async fn login(
        addr: SocketAddr,
        key: &PrivateKey,
    ) -> Result<client::Handle<Client>, russh::Error> {
        let mut handle = client::connect(Arc::new(client::Config::default()), addr, Client).await?;
        let auth = handle
            .authenticate_publickey(
                "alice",
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
            )
            .await?;
        assert!(auth.success(), "the enrolled key was refused");
        Ok(handle)
    }

    /// Runs `command` on a new channel; its stdout and exit status.
    async fn run(handle: &client::Handle<Client>, command: &str) -> (String, Option<u32>) {
        let mut channel = handle.channel_open_session().await.unwrap();
        channel.exec(true, command).await.unwrap();
        let (mut stdout, mut status) = (Vec::new(), None);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        (String::from_utf8_lossy(&stdout).into_owned(), status)
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_closed_at_the_login_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = daemon(dir.path(), 8).await;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(GRACE * 5, async {
            // The server's identification string, then nothing until it closes.
            while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "a silent client outlived the login grace");
        assert!(started.elapsed() >= GRACE - Duration::from_millis(100));
    }

    #[tokio::test]
    async fn an_authenticated_connection_outlives_the_login_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, key) = daemon(dir.path(), 8).await;
        let handle = login(addr, &key).await.unwrap();
        tokio::time::sleep(GRACE * 2).await;
        let (stdout, status) = run(&handle, "whoami").await;
        assert_eq!(status, Some(0), "{stdout}");
        assert!(stdout.contains("alice"), "{stdout}");
    }

    #[tokio::test]
    async fn the_connection_limit_is_given_back_when_a_session_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, key) = daemon(dir.path(), 1).await;
        let first = login(addr, &key).await.unwrap();
        assert!(
            login(addr, &key).await.is_err(),
            "a second connection was served beyond a limit of one"
        );
        first
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
            .unwrap();
        drop(first);
        // The slot comes back once the server has seen the session end.
        let deadline = Instant::now() + Duration::from_secs(5);
        let again = loop {
            match login(addr, &key).await {
                Ok(handle) => break handle,
                Err(e) if Instant::now() > deadline => panic!("the slot never came back: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (stdout, status) = run(&again, "whoami").await;
        assert_eq!(status, Some(0), "{stdout}");
    }

    #[tokio::test]
    async fn a_key_that_cannot_be_looked_up_is_refused_without_being_called_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, key) = daemon(dir.path(), 8).await;
        // Every identity lookup now fails with a database error.
        let db = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        db.execute_batch("ALTER TABLE devices RENAME TO devices_gone")
            .unwrap();
        let mut handle = client::connect(Arc::new(client::Config::default()), addr, Client)
            .await
            .unwrap();
        let auth = handle
            .authenticate_publickey(
                "alice",
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
            )
            .await
            .unwrap();
        assert!(!auth.success(), "a key was let in without its identity");
        let reasons: Vec<String> = db
            .prepare("SELECT body FROM audit WHERE kind = 'auth-refused'")
            .unwrap()
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| crate::audit::body::open(&b.unwrap()).unwrap())
            .collect();
        assert!(
            reasons.iter().any(|b| b.contains("could not be looked up")),
            "{reasons:?}"
        );
        assert!(
            !reasons.iter().any(|b| b.contains("not enrolled")),
            "an enrolled key was recorded as not enrolled: {reasons:?}"
        );
    }
}
