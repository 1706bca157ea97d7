//! The servers under load, as child processes on loopback: `jitca serve`
//! (the release binary Cargo builds beside the benchmark) and OpenSSH's
//! `sshd` with a `ForceCommand` that prints one fixed line.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use russh::keys::PublicKey;

use crate::setup::Ca;

/// The line the `sshd` baseline's `ForceCommand` prints.
pub const SSHD_LINE: &str = "jitca-bench-ok";

/// A server child process, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    /// The host key the server must present.
    pub host_key: PublicKey,
    child: Child,
    log: PathBuf,
}

/// A command for `program`, run under the profiler named in
/// `JITCA_BENCH_WRAP` when that is set (for example
/// `valgrind --tool=massif --massif-out-file=/tmp/massif.%p`), split on
/// whitespace. Memory is then that of the profiler's process.
fn wrapped(program: &str) -> Command {
    let wrap = std::env::var("JITCA_BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut cmd = Command::new(first);
            cmd.args(words).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts `jitca serve` over `ca`, with the connection limits raised far
    /// above the load (the defaults, 256 per peer, would refuse it: every
    /// benchmark client comes from 127.0.0.1).
    pub fn jitca(ca: &Ca, dir: &Path, name: &'static str) -> anyhow::Result<Server> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = wrapped(env!("CARGO_BIN_EXE_jitca"));
        cmd.arg("--db")
            .arg(&ca.db)
            .arg("--ca-keys")
            .arg(&ca.ca_keys)
            .arg("--policy")
            .arg(&ca.policy)
            .args(["serve", "--listen", &addr.to_string()])
            .args(["--max-connections", "5000", "--max-per-peer", "5000"])
            .args(["--max-requests-per-minute", "0"])
            .args(["--idle-timeout", "10m", "--login-grace", "2m"]);
        let (host, _) = jitca::ca::host_key::load_or_create_host_key(&ca.ca_keys)?;
        let log = dir.join(format!("{name}.log"));
        Server::start(name, cmd, addr, host.public_key().clone(), log)
    }

    /// Starts `sshd` on loopback: root logs in with any of the requesters'
    /// keys (`AuthorizedKeysFile`), and every session runs `ForceCommand`,
    /// which prints [`SSHD_LINE`]. `MaxStartups` is raised so that 128
    /// clients in the handshake at once are not dropped at random.
    ///
    /// `SetEnv SHLVL=1`: sshd runs the `ForceCommand` with root's shell,
    /// and Debian's bash sources `~/.bashrc` when sshd starts it as a
    /// top-level shell; an inherited `SHLVL` makes it a nested one. Whatever
    /// root's rc files do on the benchmark machine (on the reference machine
    /// they start `pyenv init`, a dozen processes) is then not counted
    /// against sshd: the baseline costs one shell running `echo`.
    pub fn sshd(ca: &Ca, dir: &Path) -> anyhow::Result<Server> {
        let dir = dir.join("sshd");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all("/run/sshd")?;
        std::fs::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755))?;
        let host_key = dir.join("host_ed25519");
        let out = Command::new(crate::SSH_KEYGEN)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench-sshd", "-f"])
            .arg(&host_key)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ssh-keygen")?;
        if !out.status.success() {
            bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        let public = std::fs::read_to_string(dir.join("host_ed25519.pub"))?;
        let public = PublicKey::from_openssh(public.trim())?;
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, ca.authorized_keys()?)?;

        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "ListenAddress {addr}\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             KexAlgorithms curve25519-sha256\n\
             Ciphers chacha20-poly1305@openssh.com\n\
             HostKeyAlgorithms ssh-ed25519\n\
             PubkeyAcceptedAlgorithms ssh-ed25519\n\
             MaxStartups 2000\n\
             SetEnv SHLVL=1\n\
             ForceCommand echo {SSHD_LINE}\n",
            host_key = host_key.display(),
            pid = dir.join("sshd.pid").display(),
            authorized = authorized.display(),
        );
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(crate::SSHD);
        cmd.args(["-D", "-e", "-f"]).arg(&config_path);
        Server::start("sshd", cmd, addr, public, dir.join("sshd.log"))
    }

    fn start(
        name: &'static str,
        mut cmd: Command,
        addr: SocketAddr,
        host_key: PublicKey,
        log: PathBuf,
    ) -> anyhow::Result<Server> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let mut server = Server {
            addr,
            host_key,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status}):\n{}", server.log_text());
            }
            if banner(addr) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} sent no SSH banner on {addr}:\n{}",
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU time the server and the children it reaped have used so far.
    pub fn cpu(&self) -> Duration {
        crate::stats::cpu_of(&self.child.id().to_string(), true)
    }

    /// `VmRSS` and `VmHWM` of the server process, in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .with_context(|| format!("no {name} in /proc/PID/status"))?;
            Ok(line.trim().trim_end_matches("kB").trim().parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Server {
    /// Asks the server to stop (SIGTERM, so that a profiler it runs under
    /// writes its report), and kills it if it is still there 5 s later.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True if and only if `addr` accepts a connection and sends an SSH banner.
fn banner(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
}
