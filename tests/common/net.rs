//! Loopback plumbing shared by the daemon and `sshd` harnesses: free ports
//! and waiting for a server's SSH banner.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
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
