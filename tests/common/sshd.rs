//! A throwaway OpenSSH `sshd` that trusts a given user CA, set up as
//! shared/TESTING.md describes: absolute paths everywhere, its own host key,
//! certificates as the only way in.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::daemon::{SSH_TIMEOUT, client_options};
use super::net::{Server, free_port};
use super::{COMMAND_TIMEOUT, Env, SSH, SSH_KEYGEN, SSHD, assert_success, run};

static SERVERS: AtomicUsize = AtomicUsize::new(0);

/// A running `sshd -D -e`, killed on drop; its log is printed when the test
/// fails.
pub struct Sshd {
    server: Server,
    pub port: u16,
}

impl Sshd {
    /// Starts `sshd` on 127.0.0.1 and a free port, trusting the user CA keys
    /// in `trusted_ca`. `extra_config` lines are appended to the config;
    /// `{port}` in them is replaced by the chosen port (for example
    /// `ListenAddress 127.0.0.2:{port}`).
    pub fn start(env: &Env, trusted_ca: &Path, extra_config: &[&str]) -> Sshd {
        Sshd::start_with_args(env, trusted_ca, extra_config, &[])
    }

    /// Like [`Sshd::start`], with more command-line arguments for `sshd`
    /// (they override the config file: `-o LogLevel=DEBUG2`, say, to see
    /// why a CA is not trusted, which `sshd` reports only at that level).
    pub fn start_with_args(
        env: &Env,
        trusted_ca: &Path,
        extra_config: &[&str],
        args: &[&str],
    ) -> Sshd {
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let dir = env.path(&format!("sshd-{n}"));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let trusted_ca = std::path::absolute(trusted_ca)
            .unwrap_or_else(|e| panic!("cannot resolve {}: {e}", trusted_ca.display()));

        ensure_privsep_dir();
        let host_key = dir.join("host_ed25519");
        let out = run(
            Command::new(SSH_KEYGEN)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-sshd", "-f"])
                .arg(&host_key),
            COMMAND_TIMEOUT,
        );
        assert_success(&out, "ssh-keygen for the sshd host key");
        std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", host_key.display()));

        let port = free_port();
        let mut config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile none\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             LogLevel VERBOSE\n\
             TrustedUserCAKeys {trusted}\n",
            host_key = host_key.display(),
            pid = dir.join("sshd.pid").display(),
            trusted = trusted_ca.display(),
        );
        for line in extra_config {
            config.push_str(&line.replace("{port}", &port.to_string()));
            config.push('\n');
        }
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, &config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));

        let mut cmd = Command::new(SSHD);
        cmd.arg("-D").arg("-e").arg("-f").arg(&config_path);
        cmd.args(args);
        let context = format!("config:\n{config}");
        let server = Server::start("sshd", &mut cmd, port, dir.join("sshd.log"), &context);
        Sshd { server, port }
    }

    /// `sshd`'s log so far, raw.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// `sshd`'s log with a heading, for failure messages.
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }

    /// Logs in as USER with KEY and CERT and runs COMMAND.
    pub fn login(&self, key: &Path, cert: &Path, user: &str, command: &str) -> Output {
        self.login_command(None, key, cert, user, command)
    }

    /// Like [`Sshd::login`], with the client bound to SOURCE.
    pub fn login_from(
        &self,
        source: &str,
        key: &Path,
        cert: &Path,
        user: &str,
        command: &str,
    ) -> Output {
        self.login_command(Some(source), key, cert, user, command)
    }

    fn login_command(
        &self,
        source: Option<&str>,
        key: &Path,
        cert: &Path,
        user: &str,
        command: &str,
    ) -> Output {
        let mut cmd = Command::new(SSH);
        cmd.arg("-i").arg(key);
        cmd.arg("-o")
            .arg(format!("CertificateFile={}", cert.display()));
        cmd.args(client_options());
        // OpenSSH on both ends: the key exchange is not under test, and this
        // one costs about half of the post-quantum default.
        cmd.args(["-o", "KexAlgorithms=curve25519-sha256"]);
        if let Some(source) = source {
            cmd.args(["-b", source]);
        }
        cmd.args(["-p", &self.port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg(command);
        run(&mut cmd, SSH_TIMEOUT)
    }

    /// Fails the test (with the sshd log) unless the login ran and printed
    /// `expected` (trimmed) on stdout.
    pub fn expect_login(&self, out: &Output, expected: &str) {
        assert!(
            out.status.success() && super::stdout(out).trim() == expected,
            "expected a login printing {expected:?}\n{}",
            super::describe(out)
        );
    }

    /// Fails the test unless the login was refused (ssh exits 255, nothing
    /// ran) and the sshd log holds `log_says`, the reason sshd gives.
    pub fn expect_refused(&self, out: &Output, log_says: &str) {
        let log = self.log();
        assert!(
            out.status.code() == Some(255) && out.stdout.is_empty() && log.contains(log_says),
            "expected sshd to refuse the login with {log_says:?} in its log\n{}",
            super::describe(out)
        );
    }
}

/// `sshd` needs its privilege-separation directory.
fn ensure_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            panic!(
                "cannot create /run/sshd ({e}): run the tests as root, or create it (mode 0755)"
            );
        }
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
}
