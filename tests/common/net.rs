//! Loopback plumbing shared by the daemon and `sshd` harnesses: free ports
//! waiting for a server's SSH banner, and the server process itself.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
        .port()
}

/// Waits until `addr` accepts a TCP connection and sends an SSH banner,
/// failing early if `exited()` reports the server gone. Returns the banner.
pub fn wait_for_ssh_banner(
    addr: SocketAddr,
    timeout: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::from("not tried");
    while Instant::now() < deadline {
        if let Some(status) = exited() {
            return Err(format!("server exited before accepting: {status}"));
        }
        match try_banner(addr) {
            Ok(banner) => return Ok(banner),
            Err(e) => last_error = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "no SSH banner on {addr} within {timeout:?} (last: {last_error})"
    ))
}

fn try_banner(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("set timeout: {e}"))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 255 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => buf.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let banner = String::from_utf8_lossy(&buf).trim_end().to_string();
    if banner.starts_with("SSH-2.0-") {
        Ok(banner)
    } else {
        Err(format!("unexpected banner {banner:?}"))
    }
}

/// How long a server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A server child process on 127.0.0.1:PORT with its stderr in a log file;
/// killed on drop, and its log printed then if the test is failing.
pub struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Spawns CMD with stderr to LOG and waits until PORT sends an SSH
    /// banner; fails the test (printing the log) if it does not. `context`
    /// is added to the failure message.
    pub fn start(
        name: &'static str,
        cmd: &mut Command,
        port: u16,
        log: PathBuf,
        context: &str,
    ) -> Server {
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Server { name, child, log };

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = &mut server.child;
        let waited = wait_for_ssh_banner(addr, START_TIMEOUT, || {
            child.try_wait().ok().flatten().map(|s| s.to_string())
        });
        if let Err(e) = waited {
            // Dropping `server` while panicking prints its log.
            panic!("{name} did not come up: {e}\n{context}");
        }
        server
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log with a heading naming the server and the file.
    pub fn log_text(&self) -> String {
        format!(
            "--- {} log {} ---\n{}",
            self.name,
            self.log.display(),
            self.log()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.log_text());
        }
    }
}
