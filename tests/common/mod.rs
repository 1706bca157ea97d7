//! The integration-test harness: a throwaway jitca environment in a temporary
//! directory, the `jitca` binary run against it, keys made with the real
//! `ssh-keygen`, and (in the submodules) a running `jitca serve`, a real
//! `sshd` and a parser for `ssh-keygen -L`.
//!
//! Every external program runs with stdin closed and under a timeout, so a
//! hung child fails the test with its output instead of hanging CI.
//!
//! Each test binary declares `mod common;` and uses only part of this
//! harness, so the unused rest would warn in every one of them.
#![allow(dead_code)]

pub mod approvals;
pub mod cert;
pub mod daemon;
pub mod krl;
pub mod net;
pub mod revoking;
pub mod sshd;
pub mod waiting;

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where OpenSSH's programs are expected (Debian paths).
pub const SSHD: &str = "/usr/sbin/sshd";
pub const SSH: &str = "/usr/bin/ssh";
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// How long any one jitca command or `ssh-keygen` run may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A policy used by most tests. `@ME@` stands for the user running the tests
/// (the login name on the test `sshd`), replaced by [`Env::with_policy`].
///
/// - `shell`: group `ops`, posture `laptop`, two principals, two extensions;
/// - `net-only`: only from 127.0.0.2;
/// - `pinned`: the certificate is pinned to the requester's address.
pub const STANDARD_POLICY: &str = r#"
[ca]
backdate = "2m"
max_ttl = "8h"

[posture.laptop]
max_report_age = "24h"
require = [
  "device.disk_encrypted == true",
  "device.os_family in [\"macos\", \"linux\"]",
]

[role.shell]
groups = ["ops"]
principals = ["@ME@", "ops-extra"]
ttl = "15m"
max_ttl = "1h"
posture = "laptop"
extensions = ["permit-pty", "permit-agent-forwarding"]

[role.net-only]
groups = ["ops"]
principals = ["@ME@"]
ttl = "5m"
networks = ["127.0.0.2/32"]

[role.pinned]
groups = ["ops"]
principals = ["@ME@"]
ttl = "5m"
source_address = "peer"
"#;

/// Posture attributes that pass the `laptop` profile of [`STANDARD_POLICY`].
pub const GOOD_POSTURE: &[&str] = &["disk_encrypted=true", "os_family=linux"];

/// Fails the test, never skips it, when OpenSSH is not installed.
pub fn require_tools() {
    if !Path::new(SSHD).is_file() {
        panic!("{SSHD} is missing: install openssh-server (the tests need a real sshd)");
    }
    for tool in [SSH, SSH_KEYGEN] {
        if !Path::new(tool).is_file() {
            panic!("{tool} is missing: install openssh-client (the tests need real ssh tools)");
        }
    }
}

/// The name of the user running the tests, from `id -un`: the login name on
/// the test `sshd`, so test policies use it as a principal.
pub fn current_user() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        let out = run(Command::new("id").arg("-un"), COMMAND_TIMEOUT);
        assert_success(&out, "id -un");
        stdout(&out).trim().to_string()
    })
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One of the enrolment fixtures in `tests/data/keys/` (the cases every
/// build must get right, kept in the repository so a clone tests itself).
pub fn case_key(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keys")
        .join(name);
    assert!(path.is_file(), "fixture {} is missing", path.display());
    path
}

/// Runs a command with stdin closed, collecting its output; kills it and
/// fails the test if it runs longer than `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let out = Output {
                    status: std::process::ExitStatus::default(),
                    stdout: out_reader.join().unwrap_or_default(),
                    stderr: err_reader.join().unwrap_or_default(),
                };
                panic!(
                    "{shown} ran longer than {timeout:?}; killed\n{}",
                    describe(&out)
                );
            }
            Err(e) => panic!("cannot wait for {shown}: {e}"),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A child's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status, stdout and stderr, for a failure message.
pub fn describe(out: &Output) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "status: {}", out.status);
    let _ = writeln!(s, "--- stdout ---\n{}", stdout(out));
    let _ = writeln!(s, "--- stderr ---\n{}", stderr(out));
    s
}

/// Fails with the whole output unless the command exited 0.
pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed\n{}", describe(out));
}

/// Fails with the whole output unless the command exited with `code`.
pub fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\n{}",
        describe(out)
    );
}

/// The lines of a denial that report failed rules (`denied: ...`).
pub fn denied_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("denied:"))
        .collect()
}

/// True if TEXT names `audit record N` (and not, say, `audit record N0`).
pub fn names_audit_record(text: &str, seq: i64) -> bool {
    let needle = format!("audit record {seq}");
    text.match_indices(&needle).any(|(i, _)| {
        !text[i + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Key types the tests generate with `ssh-keygen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    EcdsaP384,
    EcdsaP521,
    Rsa3072,
}

impl KeyKind {
    fn keygen_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::Ed25519 => &["-t", "ed25519"],
            KeyKind::EcdsaP384 => &["-t", "ecdsa", "-b", "384"],
            KeyKind::EcdsaP521 => &["-t", "ecdsa", "-b", "521"],
            KeyKind::Rsa3072 => &["-t", "rsa", "-b", "3072"],
        }
    }

    /// The certificate type word jitca should emit for this kind of key.
    pub fn cert_type(self) -> &'static str {
        match self {
            KeyKind::Ed25519 => "ssh-ed25519-cert-v01@openssh.com",
            KeyKind::EcdsaP384 => "ecdsa-sha2-nistp384-cert-v01@openssh.com",
            KeyKind::EcdsaP521 => "ecdsa-sha2-nistp521-cert-v01@openssh.com",
            KeyKind::Rsa3072 => "ssh-rsa-cert-v01@openssh.com",
        }
    }
}

/// A key pair on disk, as written by `ssh-keygen`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// The `SHA256:...` fingerprint of the key, from `ssh-keygen -l`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }
}

/// The `SHA256:...` fingerprint of a public key file, from `ssh-keygen -l`.
pub fn fingerprint(public: &Path) -> String {
    let out = run(
        Command::new(SSH_KEYGEN).arg("-l").arg("-f").arg(public),
        COMMAND_TIMEOUT,
    );
    assert_success(&out, "ssh-keygen -l");
    let text = stdout(&out);
    text.split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in ssh-keygen -l output: {text}"))
        .to_string()
}

/// A jitca environment: a temporary directory holding the database, the CA
/// key directory and the policy file, all passed to `jitca` by environment.
pub struct Env {
    dir: tempfile::TempDir,
    pub db: PathBuf,
    pub ca_keys: PathBuf,
    pub policy: PathBuf,
}

impl Env {
    /// An empty environment; nothing is written yet, not even the policy.
    pub fn new() -> Env {
        require_tools();
        let dir = tempfile::Builder::new()
            .prefix("jitca-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let root = dir.path().to_path_buf();
        Env {
            db: root.join("jitca.db"),
            ca_keys: root.join("ca-keys"),
            policy: root.join("policy.toml"),
            dir,
        }
    }

    /// An environment whose policy file holds `text`, `@ME@` replaced by the
    /// current user.
    pub fn with_policy(text: &str) -> Env {
        let env = Env::new();
        env.write_policy(text);
        env
    }

    /// Rewrites the policy file (`@ME@` replaced by the current user).
    pub fn write_policy(&self, text: &str) {
        let text = text.replace("@ME@", current_user());
        std::fs::write(&self.policy, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.policy.display()));
    }

    /// Copies the repository's shipped `policy.toml` into the environment.
    pub fn copy_shipped_policy(&self) {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
        std::fs::copy(&shipped, &self.policy)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", shipped.display()));
    }

    /// The temporary directory itself.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a file inside the temporary directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// A `Command` for the jitca binary with this environment's paths set
    /// (and the working directory inside it, so defaults cannot leak out).
    pub fn jitca_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jitca"));
        cmd.current_dir(self.dir.path())
            .env("JITCA_DB", &self.db)
            .env("JITCA_CA_KEYS", &self.ca_keys)
            .env("JITCA_POLICY", &self.policy);
        cmd
    }

    /// Runs `jitca ARGS...` and returns its output, whatever the status.
    pub fn jitca(&self, args: &[&str]) -> Output {
        run(self.jitca_command().args(args), COMMAND_TIMEOUT)
    }

    /// Runs `jitca ARGS...`, fails the test unless it exits 0, returns stdout.
    pub fn jitca_ok(&self, args: &[&str]) -> String {
        let out = self.jitca(args);
        assert_success(&out, &format!("jitca {}", args.join(" ")));
        stdout(&out)
    }

    /// Runs `jitca ARGS...`, fails the test unless it exits with `code`.
    pub fn jitca_exit(&self, args: &[&str], code: i32) -> Output {
        let out = self.jitca(args);
        assert_exit(&out, code, &format!("jitca {}", args.join(" ")));
        out
    }

    /// Generates a key without passphrase at DIR/NAME with `ssh-keygen`.
    pub fn keygen(&self, name: &str, kind: KeyKind) -> KeyPair {
        let private = self.path(name);
        let out = run(
            Command::new(SSH_KEYGEN)
                .arg("-q")
                .args(kind.keygen_args())
                .args(["-N", "", "-C", name, "-f"])
                .arg(&private),
            COMMAND_TIMEOUT,
        );
        assert_success(&out, "ssh-keygen");
        let mut public = private.clone().into_os_string();
        public.push(".pub");
        KeyPair {
            private,
            public: PathBuf::from(public),
        }
    }

    /// `jitca init`.
    pub fn init(&self) {
        self.jitca_ok(&["init"]);
    }

    /// Adds USER (in GROUPS) and enrols KEY as its device DEVICE.
    pub fn enrol(&self, user: &str, groups: &[&str], device: &str, key: &KeyPair) {
        let mut args = vec!["user", "add", user];
        for g in groups {
            args.extend(["--group", g]);
        }
        self.jitca_ok(&args);
        self.add_device(user, device, key);
    }

    /// Enrols KEY as device DEVICE of an existing USER.
    pub fn add_device(&self, user: &str, device: &str, key: &KeyPair) {
        let public = key.public.to_string_lossy();
        self.jitca_ok(&["device", "add", user, &public, "--name", device]);
    }

    /// `jitca posture set DEVICE ATTR=VALUE...`.
    pub fn set_posture(&self, device: &str, attrs: &[&str]) {
        let mut args = vec!["posture", "set", device];
        args.extend_from_slice(attrs);
        self.jitca_ok(&args);
    }

    /// Writes `jitca ca trusted` to a file, for `sshd`'s `TrustedUserCAKeys`.
    pub fn trusted_ca_file(&self) -> PathBuf {
        let text = self.jitca_ok(&["ca", "trusted"]);
        assert!(
            text.lines().any(|l| l.starts_with("ssh-")),
            "jitca ca trusted printed no public key line:\n{text}"
        );
        self.write("trusted-user-ca-keys.pub", text)
    }

    /// The audit records from `jitca audit list --json`, accepting either a
    /// JSON array or one JSON object per line.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        self.audit_records_where(&[])
    }

    /// Like [`Env::audit_records`], with more arguments for `jitca audit
    /// list --json` (filters such as `--kind issued`).
    pub fn audit_records_where(&self, filters: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["audit", "list", "--json"];
        args.extend_from_slice(filters);
        let text = self.jitca_ok(&args);
        let trimmed = text.trim();
        if trimmed.starts_with('[') {
            match serde_json::from_str::<serde_json::Value>(trimmed) {
                Ok(serde_json::Value::Array(records)) => return records,
                other => panic!("audit list --json is not a JSON array ({other:?}):\n{text}"),
            }
        }
        trimmed
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit list --json line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Every row of every table of the database, as text, for comparing the
    /// database before and after an operation that must change nothing.
    pub fn db_snapshot(&self) -> Vec<String> {
        use rusqlite::{Connection, OpenFlags};
        let conn = Connection::open_with_flags(&self.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.db.display()));
        let mut stmt = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap_or_else(|e| panic!("cannot list tables: {e}"));
        let tables: Vec<(String, String)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(|rows| rows.collect())
            .unwrap_or_else(|e| panic!("cannot list tables: {e}"));

        let mut snapshot = Vec::new();
        for (name, sql) in tables {
            snapshot.push(format!("schema {sql}"));
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM \"{}\"", name.replace('"', "\"\"")))
                .unwrap_or_else(|e| panic!("cannot read table {name}: {e}"));
            let columns = stmt.column_count();
            let mut rows: Vec<String> = stmt
                .query_map([], |row| {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(format!("{:?}", row.get_ref(i)?));
                    }
                    Ok(format!("{name}: {}", values.join(" | ")))
                })
                .and_then(|rows| rows.collect())
                .unwrap_or_else(|e| panic!("cannot read table {name}: {e}"));
            rows.sort();
            snapshot.extend(rows);
        }
        snapshot
    }

    /// Runs one SQL statement on the database (for tampering tests).
    pub fn db_execute(&self, sql: &str, params: impl rusqlite::Params) -> usize {
        let conn = rusqlite::Connection::open(&self.db)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.db.display()));
        conn.execute(sql, params)
            .unwrap_or_else(|e| panic!("cannot run {sql}: {e}"))
    }

    /// Runs SQL with the real `sqlite3` command-line tool, as an intruder with
    /// write access to the database file would; returns its stdout.
    pub fn sqlite3(&self, sql: &str) -> String {
        let sqlite3 = "/usr/bin/sqlite3";
        assert!(
            Path::new(sqlite3).exists(),
            "{sqlite3} is missing: install the sqlite3 package (apt-get install -y sqlite3)"
        );
        let mut cmd = Command::new(sqlite3);
        cmd.arg(&self.db).arg(sql);
        let out = run(&mut cmd, Duration::from_secs(30));
        assert!(out.status.success(), "sqlite3 {sql}:\n{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads one integer with a query on the database.
    pub fn db_query_i64(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.db.display()));
        conn.query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("cannot run {sql}: {e}"))
    }
}

/// An environment with [`STANDARD_POLICY`], initialised, and user `alice` in
/// group `ops` with an Ed25519 device `alice-laptop` whose posture passes.
pub fn standard_env() -> (Env, KeyPair) {
    let env = Env::with_policy(STANDARD_POLICY);
    env.init();
    let key = env.keygen("alice_ed25519", KeyKind::Ed25519);
    env.enrol("alice", &["ops"], "alice-laptop", &key);
    env.set_posture("alice-laptop", GOOD_POSTURE);
    (env, key)
}
