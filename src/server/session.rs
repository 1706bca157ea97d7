//! One SSH connection: authentication by enrolled key, then commands.
//!
//! A key that is not enrolled is refused at authentication and the attempt
//! is audited (rate-limited). An enrolled key whose user is suspended, or
//! whose device is disabled, proves possession, is told why in the
//! disconnect message, and is disconnected before it can open a channel:
//! that way the requester learns the reason instead of a bare "Permission
//! denied", and still gets nothing. The login name carries no meaning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use russh::keys::{HashAlg, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};

use super::State;
use super::commands::{self, exit};
use super::run::{Output, Progress, run_command};
use crate::inventory::{Identity, identity_by_fingerprint};

/// Channels a connection may have open at once.
const MAX_CHANNELS: usize = 4;

/// The per-connection handler.
pub struct Connection {
    state: Arc<State>,
    peer: SocketAddr,
    /// Set once a key of an active device of an active user has authenticated.
    caller: Option<(Identity, PublicKey)>,
    /// Set when an enrolled but inactive key authenticated: the reason it is refused.
    refused: Option<String>,
    channels: Vec<ChannelId>,
    running: Vec<ChannelId>,
    /// Set once authentication succeeded; read by the login grace timer.
    authenticated: Arc<AtomicBool>,
}

impl Connection {
    pub fn new(state: Arc<State>, peer: SocketAddr, authenticated: Arc<AtomicBool>) -> Connection {
        Connection {
            state,
            peer,
            caller: None,
            refused: None,
            channels: Vec::new(),
            running: Vec::new(),
            authenticated,
        }
    }

    async fn lookup(&self, key: &PublicKey) -> Option<Identity> {
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        match self
            .state
            .readers
            .run(move |conn| identity_by_fingerprint(conn, &fp))
            .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "identity lookup failed; refusing");
                None
            }
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
        if self.lookup(offer.public_key).await.is_some() {
            return Ok(Auth::Accept);
        }
        let fp = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        tracing::warn!(peer = %self.peer, fingerprint = %fp, "refused a key that is not enrolled");
        self.state
            .record_refusal(
                self.peer.ip(),
                &fp,
                offer.algorithm.as_str(),
                None,
                "the key is not enrolled",
            )
            .await;
        Ok(Auth::reject())
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some(who) = self.lookup(key.public_key).await else {
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
        self.authenticated.store(true, Ordering::Release);
        Ok(Auth::Accept)
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
        if self.channels.len() >= MAX_CHANNELS {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.push(channel.id());
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.retain(|c| *c != channel);
        self.running.retain(|c| *c != channel);
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
        let Some((who, key)) = self.caller.clone() else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if self.running.contains(&channel) || !self.channels.contains(&channel) {
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.running.push(channel);
        session.channel_success(channel)?;

        let handle = session.handle();
        let state = self.state.clone();
        let peer = self.peer.ip();
        let line = data.to_vec();
        tokio::spawn(async move {
            // Progress lines go out as they come; the final reply after them.
            let (lines, mut queue) = tokio::sync::mpsc::unbounded_channel::<String>();
            let forward = {
                let handle = handle.clone();
                tokio::spawn(async move {
                    while let Some(line) = queue.recv().await {
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
                commands::Parsed::Run(cmd) => {
                    run_command(&state, &who, &key, peer, cmd, &progress).await
                }
            };
            drop(progress);
            let _ = forward.await;
            if !out.stdout.is_empty() {
                let _ = handle.data(channel, out.stdout.into_bytes()).await;
            }
            if !out.stderr.is_empty() {
                let _ = handle
                    .extended_data(channel, 1, out.stderr.into_bytes())
                    .await;
            }
            let _ = handle.exit_status_request(channel, out.status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }
}
