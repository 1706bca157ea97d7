//! A running `jitca serve` on a free loopback port, and the real `ssh`
//! client pointed at it as a requester would use it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::cert::CertInfo;
use super::net::{Server, free_port};
use super::{Env, SSH, describe, run};

/// How long one `ssh` run may take before it is killed.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(60);

static DAEMONS: AtomicUsize = AtomicUsize::new(0);
static CERTS: AtomicUsize = AtomicUsize::new(0);

/// `jitca serve --listen 127.0.0.1:PORT`, killed on drop. Its stderr goes
/// to a log file, printed when the test fails.
pub struct Daemon {
    server: Server,
    pub port: u16,
}

impl Daemon {
    /// Starts the daemon on the environment and waits until it sends an SSH
    /// banner; fails the test with the daemon's log if it does not.
    pub fn start(env: &Env) -> Daemon {
        Daemon::start_with(env, &[])
    }

    /// Like [`Daemon::start`], with more arguments for `jitca serve` (such
    /// as `--krl FILE`).
    pub fn start_with(env: &Env, extra_args: &[&str]) -> Daemon {
        let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
        let log = env.path(&format!("jitca-serve-{n}.log"));
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = env.jitca_command();
        cmd.args(["serve", "--listen", &listen]).args(extra_args);
        let server = Server::start("jitca serve", &mut cmd, port, log, "");
        Daemon { server, port }
    }

    /// The daemon's stderr so far, with a heading.
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }

    /// Fails the test unless `out` is an issued certificate (exit 0, one
    /// certificate line on stdout); returns that line.
    pub fn expect_cert(&self, out: &Output) -> String {
        let text = super::stdout(out);
        let line = text.trim_end_matches(['\r', '\n']);
        assert!(
            out.status.success() && !line.contains('\n') && line.contains("-cert-v01@openssh.com "),
            "expected a certificate line\n{}",
            describe(out)
        );
        line.to_string()
    }

    /// Sends COMMAND (a `request ...`) with KEY, fails unless a certificate
    /// comes back, writes it to a fresh file in the environment and reads it
    /// with `ssh-keygen -L`.
    pub fn request_cert(&self, env: &Env, key: &Path, command: &str) -> (PathBuf, CertInfo) {
        let out = ssh_ca(self, key, command);
        self.save_cert(env, &out)
    }

    /// Fails the test unless `out` is an issued certificate; writes it to a
    /// fresh file in the environment and reads it with `ssh-keygen -L`.
    pub fn save_cert(&self, env: &Env, out: &Output) -> (PathBuf, CertInfo) {
        let line = self.expect_cert(out);
        let n = CERTS.fetch_add(1, Ordering::Relaxed);
        let path = env.write(&format!("issued-{n}-cert.pub"), format!("{line}\n"));
        let info = CertInfo::read(&path);
        (path, info)
    }

    /// Fails the test unless `out` exited with `code` and printed nothing on
    /// stdout (so no certificate left the CA); returns stderr.
    pub fn expect_refusal(&self, out: &Output, code: i32) -> String {
        assert!(
            out.status.code() == Some(code) && out.stdout.is_empty(),
            "expected exit {code} with empty stdout\n{}",
            describe(out)
        );
        super::stderr(out)
    }
}

/// Runs `ssh ... 127.0.0.1 COMMAND` against the daemon with KEY (the private
/// key file), as a requester does. Login name `requester` (ignored by jitca).
pub fn ssh_ca(daemon: &Daemon, key: &Path, command: &str) -> Output {
    ssh_ca_command(daemon, key, None, command)
}

/// Like [`ssh_ca`], with the client bound to SOURCE (e.g. `127.0.0.2`; all of
/// 127/8 is loopback on Linux).
pub fn ssh_ca_from(daemon: &Daemon, source: &str, key: &Path, command: &str) -> Output {
    ssh_ca_command(daemon, key, Some(source), command)
}

fn ssh_ca_command(daemon: &Daemon, key: &Path, source: Option<&str>, command: &str) -> Output {
    run(&mut ca_command(daemon, key, source, command), SSH_TIMEOUT)
}

/// The `ssh` command line behind [`ssh_ca`] and [`ssh_ca_from`], not yet
/// started (for a requester that waits in the background).
pub fn ca_command(daemon: &Daemon, key: &Path, source: Option<&str>, command: &str) -> Command {
    ca_command_with(daemon, key, source, &[], command)
}

/// [`ca_command`] with more `ssh` options, given before the others.
pub fn ca_command_with(
    daemon: &Daemon,
    key: &Path,
    source: Option<&str>,
    options: &[&str],
    command: &str,
) -> Command {
    let mut cmd = Command::new(SSH);
    cmd.args(options);
    cmd.arg("-i").arg(key);
    cmd.args(client_options());
    if let Some(source) = source {
        cmd.args(["-b", source]);
    }
    cmd.args([
        "-p",
        &daemon.port.to_string(),
        "-l",
        "requester",
        "127.0.0.1",
    ])
    .arg(command);
    cmd
}

/// The options every test `ssh` run uses: no user or system config, only
/// the given key, no prompts, no known-hosts state, errors only, bounded
/// connect.
pub fn client_options() -> [&'static str; 14] {
    [
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]
}
