//! The KRL encoder checked by the real OpenSSH: `ssh-keygen -Q` says what
//! each KRL revokes, `ssh-keygen -k` is the size to beat, and a throwaway
//! `sshd` with `RevokedKeys` refuses revoked certificates at login.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use russh::keys::PublicKey;

use super::super::testutil::ssh_keygen;
use super::serials::{MAX_BITMAP_BITS, revoked_mix};
use super::{KrlSpec, Writer, encode, write_atomically};

/// A temporary directory of keys, certificates and KRLs.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new Ed25519 key pair NAME / NAME.pub; returns the public half.
    fn keypair(&self, name: &str) -> PublicKey {
        let out = ssh_keygen()
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(self.path(name))
            .output()
            .expect("run ssh-keygen");
        assert!(out.status.success(), "ssh-keygen -t: {out:?}");
        let line = fs::read_to_string(self.path(&format!("{name}.pub"))).expect("read key");
        PublicKey::from_openssh(line.trim()).expect("parse key")
    }

    /// Certificates for KEY signed by CA, for the current user (so that
    /// [`Sshd::login`] can use them), with serials `first`, `first + 1`,
    /// ... (`ssh-keygen -z +N`), one per serial; returns their paths.
    fn sign(&self, ca: &str, key: &str, first: u64, count: u64) -> Vec<PathBuf> {
        let mut subjects = Vec::new();
        let mut certs = Vec::new();
        for serial in first..=first + (count - 1) {
            let subject = self.path(&format!("{key}-by-{ca}-{serial}.pub"));
            fs::copy(self.path(&format!("{key}.pub")), &subject).expect("copy key");
            subjects.push(subject);
            certs.push(self.path(&format!("{key}-by-{ca}-{serial}-cert.pub")));
        }
        let out = ssh_keygen()
            .arg("-q")
            .arg("-s")
            .arg(self.path(ca))
            .args(["-I", "krl-test", "-n", &current_user()])
            .args(["-z", &format!("+{first}")])
            .args(&subjects)
            .output()
            .expect("run ssh-keygen");
        assert!(out.status.success(), "ssh-keygen -s: {out:?}");
        certs
    }

    /// Encodes `spec` and writes it to NAME.
    fn krl(&self, name: &str, spec: &KrlSpec) -> PathBuf {
        let path = self.path(name);
        write_atomically(&path, &encode(spec).expect("encode")).expect("write KRL");
        path
    }
}

/// The name of the user running the tests.
fn current_user() -> String {
    let out = Command::new("/usr/bin/id")
        .arg("-un")
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ssh-keygen -Q -f KRL FILES...`: for each file, whether the KRL revokes it.
fn revoked(krl: &Path, files: &[PathBuf]) -> Vec<bool> {
    let out = ssh_keygen()
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .args(files)
        .output()
        .expect("run ssh-keygen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "ssh-keygen -Q could not read the KRL: {out:?}"
    );
    let verdicts: Vec<bool> = stdout
        .lines()
        .map(|line| {
            if line.ends_with(": REVOKED") {
                true
            } else if line.ends_with(": ok") {
                false
            } else {
                panic!("unexpected ssh-keygen -Q line {line:?}")
            }
        })
        .collect();
    assert_eq!(verdicts.len(), files.len(), "{stdout}");
    assert_eq!(out.status.code() == Some(1), verdicts.contains(&true));
    verdicts
}

#[test]
fn ssh_keygen_revokes_exactly_the_listed_serials() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let mix = revoked_mix();
    let spec = KrlSpec {
        version: 1,
        generated_date: 1_700_000_000,
        comment: "jitca test".into(),
        ca_serials: vec![(ca, mix.clone())],
        ..KrlSpec::default()
    };
    let krl = lab.krl("mix.krl", &spec);

    let batches = [
        (1, 12),
        (99, 103),
        (999, 103),
        (49_999, 3),
        (77_776, 3),
        (1 << 63, 1),
        (u64::MAX - 1, 2),
    ];
    let mut certs = Vec::new();
    let mut expected = Vec::new();
    for (first, count) in batches {
        certs.extend(lab.sign("ca", "user", first, count));
        expected.extend((first..=first + (count - 1)).map(|s| mix.contains(&s)));
    }
    assert_eq!(revoked(&krl, &certs), expected);

    // The listing names every revoked run, merged as OpenSSH merges them.
    let out = ssh_keygen()
        .arg("-Q")
        .arg("-l")
        .arg("-f")
        .arg(&krl)
        .output()
        .expect("run ssh-keygen");
    let listing = String::from_utf8_lossy(&out.stdout);
    let serial_lines: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("serial: "))
        .collect();
    assert_eq!(serial_lines.len(), 2 + 15 + 3, "{listing}");
    assert!(serial_lines.contains(&"serial: 100-200"), "{listing}");
    assert!(listing.contains("jitca test"), "{listing}");
}

#[test]
fn encoding_is_no_larger_than_ssh_keygen_own_for_the_same_serials() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    // The mix, and pseudo-random sets (xorshift64) kept within 10,000 so
    // that ssh-keygen's own bitmaps stay narrow enough for it to read.
    let mut sets = vec![revoked_mix()];
    let mut state: u64 = 0x6b726c;
    for count in [20, 200, 2_000, 6_000] {
        let set: Vec<u64> = (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                1 + state % 10_000
            })
            .collect();
        sets.push(set);
    }

    for (n, serials) in sets.into_iter().enumerate() {
        let spec_text: String = serials.iter().map(|s| format!("serial: {s}\n")).collect();
        let spec_path = lab.path(&format!("spec-{n}"));
        let reference_path = lab.path(&format!("reference-{n}.krl"));
        fs::write(&spec_path, spec_text).expect("write spec");
        let out = ssh_keygen()
            .arg("-q")
            .arg("-k")
            .arg("-f")
            .arg(&reference_path)
            .arg("-s")
            .arg(lab.path("ca.pub"))
            .arg(&spec_path)
            .output()
            .expect("run ssh-keygen");
        assert!(out.status.success(), "ssh-keygen -k: {out:?}");
        let reference = fs::read(&reference_path).expect("read reference");

        let ours = encode(&KrlSpec {
            ca_serials: vec![(ca.clone(), serials)],
            ..KrlSpec::default()
        })
        .expect("encode");
        assert!(
            ours.len() <= reference.len(),
            "set {n}: ours {} bytes, ssh-keygen {} bytes",
            ours.len(),
            reference.len()
        );
    }
}

#[test]
fn ssh_keygen_revokes_listed_keys_and_their_certificates() {
    let lab = Lab::new();
    lab.keypair("ca");
    let gone = lab.keypair("gone");
    lab.keypair("kept");
    let spec = KrlSpec {
        keys: vec![gone],
        ..KrlSpec::default()
    };
    let krl = lab.krl("keys.krl", &spec);
    let mut files = vec![lab.path("gone.pub"), lab.path("kept.pub")];
    files.extend(lab.sign("ca", "gone", 1, 1));
    files.extend(lab.sign("ca", "kept", 2, 1));
    assert_eq!(revoked(&krl, &files), vec![true, false, true, false]);
}

#[test]
fn ssh_keygen_revokes_every_certificate_of_a_revoked_ca_only() {
    let lab = Lab::new();
    let bad = lab.keypair("bad-ca");
    let good = lab.keypair("good-ca");
    lab.keypair("user");
    let spec = KrlSpec {
        revoked_cas: vec![bad],
        ca_serials: vec![(good, vec![2])],
        ..KrlSpec::default()
    };
    let krl = lab.krl("ca.krl", &spec);
    let mut certs = lab.sign("bad-ca", "user", 1, 3);
    certs.extend(lab.sign("bad-ca", "user", u64::MAX, 1));
    certs.extend(lab.sign("good-ca", "user", 1, 3));
    assert_eq!(
        revoked(&krl, &certs),
        vec![true, true, true, true, false, true, false]
    );
}

#[test]
fn ssh_keygen_accepts_an_empty_krl_and_revokes_nothing() {
    let lab = Lab::new();
    lab.keypair("ca");
    lab.keypair("user");
    let krl = lab.krl("empty.krl", &KrlSpec::default());
    let mut files = vec![lab.path("user.pub"), lab.path("ca.pub")];
    files.extend(lab.sign("ca", "user", 1, 1));
    assert_eq!(revoked(&krl, &files), vec![false, false, false]);
}

#[test]
fn bitmap_width_limit_is_where_ssh_keygen_stops_reading() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let certs = lab.sign("ca", "user", MAX_BITMAP_BITS, 2);

    // A certificate section with one bitmap from serial 1, `width` bits
    // wide, its first and last bits set.
    let krl_with_bitmap = |width: u64| {
        let len = (width / 8 + 1) as usize;
        let mut bits = vec![0u8; len];
        bits[len - 1] |= 1;
        let top = (width - 1) as usize;
        bits[len - 1 - top / 8] |= 1 << (top % 8);
        let mut bitmap = Writer::default();
        bitmap.u64(1);
        bitmap.string(&bits).expect("bits");
        let mut section = Writer::default();
        section.string(&ca.to_bytes().expect("blob")).expect("ca");
        section.string(&[]).expect("reserved");
        section.u8(0x22);
        section.string(&bitmap.0).expect("bitmap");
        let mut krl = Writer(encode(&KrlSpec::default()).expect("header"));
        krl.u8(1);
        krl.string(&section.0).expect("section");
        let path = lab.path(&format!("bitmap-{width}.krl"));
        fs::write(&path, &krl.0).expect("write");
        path
    };

    let widest = krl_with_bitmap(MAX_BITMAP_BITS);
    assert_eq!(revoked(&widest, &certs), vec![true, false]);

    let too_wide = krl_with_bitmap(MAX_BITMAP_BITS + 1);
    let out = ssh_keygen()
        .arg("-Q")
        .arg("-f")
        .arg(&too_wide)
        .args(&certs)
        .output()
        .expect("run ssh-keygen");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
}

#[test]
fn serial_zero_is_left_out_because_ssh_keygen_refuses_a_krl_listing_it() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let certs = lab.sign("ca", "user", 1, 1);

    // By hand: a list subsection holding 0 and 1.
    let mut list = Writer::default();
    list.u64(0);
    list.u64(1);
    let mut section = Writer::default();
    section.string(&ca.to_bytes().expect("blob")).expect("ca");
    section.string(&[]).expect("reserved");
    section.u8(0x20);
    section.string(&list.0).expect("list");
    let mut raw = Writer(encode(&KrlSpec::default()).expect("header"));
    raw.u8(1);
    raw.string(&section.0).expect("section");
    fs::write(lab.path("zero.krl"), &raw.0).expect("write");
    let out = ssh_keygen()
        .arg("-Q")
        .arg("-f")
        .arg(lab.path("zero.krl"))
        .args(&certs)
        .output()
        .expect("run ssh-keygen");
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    let krl = lab.krl(
        "encoded.krl",
        &KrlSpec {
            ca_serials: vec![(ca, vec![0, 1])],
            ..KrlSpec::default()
        },
    );
    assert_eq!(revoked(&krl, &certs), vec![true]);
}

#[test]
fn widely_spread_dense_serials_still_make_a_readable_krl() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let serials: Vec<u64> = (1..100_000).step_by(2).collect();
    let krl = lab.krl(
        "dense.krl",
        &KrlSpec {
            ca_serials: vec![(ca, serials)],
            ..KrlSpec::default()
        },
    );
    let mut certs = lab.sign("ca", "user", 16_383, 4);
    certs.extend(lab.sign("ca", "user", 99_998, 3));
    assert_eq!(
        revoked(&krl, &certs),
        vec![true, false, true, false, false, true, false]
    );
}

#[test]
fn readers_never_see_a_partial_krl_while_it_is_replaced() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let cert = lab.sign("ca", "user", 2, 1);
    // Two large KRLs of different sizes, both revoking serial 2; isolated
    // serials make them lists, so each is hundreds of kilobytes.
    let big = |count: u64| {
        encode(&KrlSpec {
            ca_serials: vec![(ca.clone(), (0..count).map(|i| 2 + i * 1000).collect())],
            ..KrlSpec::default()
        })
        .expect("encode")
    };
    let (one, two) = (big(40_000), big(25_000));
    let path = lab.path("live.krl");
    write_atomically(&path, &one).expect("first write");

    let done = AtomicBool::new(false);
    let (reads, queries) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for round in 0..100 {
                let bytes = if round % 2 == 0 { &two } else { &one };
                write_atomically(&path, bytes).expect("replace");
            }
            done.store(true, Ordering::SeqCst);
        });
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                let seen = fs::read(&path).expect("read");
                assert!(
                    seen == one || seen == two,
                    "a partial KRL of {} bytes",
                    seen.len()
                );
                reads += 1;
            }
            reads
        });
        let querier = scope.spawn(|| {
            let mut queries = 0;
            while !done.load(Ordering::SeqCst) {
                assert_eq!(revoked(&path, &cert), vec![true]);
                queries += 1;
            }
            queries
        });
        writer.join().expect("writer");
        (
            reader.join().expect("reader"),
            querier.join().expect("querier"),
        )
    });
    assert!(reads > 0 && queries > 0, "{reads} reads, {queries} queries");
    let leftovers: Vec<_> = fs::read_dir(lab.dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A throwaway `sshd -D -e` on 127.0.0.1 that trusts one user CA and reads
/// a KRL; killed on drop. Set up as shared/TESTING.md describes.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sshd {
    fn start(lab: &Lab, trusted_ca: &Path, krl: &Path) -> Sshd {
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (run the tests as root)");
        lab.keypair("host");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {host}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile none\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             LogLevel VERBOSE\n\
             TrustedUserCAKeys {ca}\n\
             RevokedKeys {krl}\n",
            host = lab.path("host").display(),
            pid = lab.path("sshd.pid").display(),
            ca = trusted_ca.display(),
            krl = krl.display(),
        );
        let config_path = lab.path("sshd_config");
        fs::write(&config_path, config).expect("write sshd_config");
        let log = lab.path("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create log"))
            .spawn()
            .expect("start /usr/sbin/sshd (install openssh-server)");
        let mut sshd = Sshd { child, port, log };

        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited with {status}:\n{}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd not listening:\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Logs in as the current user with KEY and CERT and runs `echo`.
    fn login(&self, key: &Path, cert: &Path) -> Output {
        Command::new("/usr/bin/ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "KexAlgorithms=curve25519-sha256"])
            .args(["-o", "ConnectTimeout=10"])
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", current_user()))
            .args(["echo", "logged-in"])
            .output()
            .expect("run ssh")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sshd_refuses_revoked_certificates_and_certificates_of_a_revoked_ca() {
    let lab = Lab::new();
    let ca = lab.keypair("ca");
    lab.keypair("user");
    let certs = lab.sign("ca", "user", 41, 2);
    let krl = lab.krl(
        "sshd.krl",
        &KrlSpec {
            ca_serials: vec![(ca.clone(), vec![42])],
            ..KrlSpec::default()
        },
    );
    let sshd = Sshd::start(&lab, &lab.path("ca.pub"), &krl);
    let key = lab.path("user");

    let kept = sshd.login(&key, &certs[0]);
    assert_eq!(
        String::from_utf8_lossy(&kept.stdout).trim(),
        "logged-in",
        "{kept:?}\n{}",
        sshd.log()
    );

    let refused = sshd.login(&key, &certs[1]);
    assert_eq!(
        refused.status.code(),
        Some(255),
        "{refused:?}\n{}",
        sshd.log()
    );
    assert!(refused.stdout.is_empty());

    // sshd rereads RevokedKeys at each authentication: revoking the CA
    // now refuses the certificate that just logged in.
    lab.krl(
        "sshd.krl",
        &KrlSpec {
            revoked_cas: vec![ca],
            ..KrlSpec::default()
        },
    );
    let refused_ca = sshd.login(&key, &certs[0]);
    assert_eq!(
        refused_ca.status.code(),
        Some(255),
        "{refused_ca:?}\n{}",
        sshd.log()
    );
    let log = sshd.log();
    let revoked_by_file = log
        .lines()
        .filter(|l| l.contains("revoked by file"))
        .count();
    let failed = |serial: &str| {
        log.lines()
            .any(|l| l.starts_with("Failed publickey") && l.contains(serial))
    };
    assert!(
        revoked_by_file == 2 && failed("(serial 42)") && failed("(serial 41)"),
        "sshd log:\n{log}"
    );
}
