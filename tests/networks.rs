//! Where a request comes from: a role's `networks` decides who may ask, and
//! `source_address = "peer"` pins the certificate to the asking address
//! (the `source-address` critical option of PROTOCOL.certkeys), which the
//! target `sshd` then enforces. All of 127/8 is loopback on Linux, so
//! 127.0.0.2 stands for a second machine.

mod common;

use common::daemon::{Daemon, ssh_ca, ssh_ca_from};
use common::sshd::Sshd;
use common::{current_user, denied_lines, standard_env};

#[test]
fn role_networks_deny_a_request_from_outside_them() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let out = ssh_ca(&daemon, &key.private, "request net-only");
    let err = daemon.expect_refusal(&out, 3);
    assert!(
        denied_lines(&err)
            .iter()
            .any(|l| l.contains("127.0.0.1") && l.contains("127.0.0.2/32")),
        "no `denied:` line naming the peer 127.0.0.1 and the network:\n{err}"
    );
}

#[test]
fn role_networks_allow_a_request_from_inside_them() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);

    let out = ssh_ca_from(&daemon, "127.0.0.2", &key.private, "request net-only");
    daemon.expect_cert(&out);
}

#[test]
fn peer_source_address_pins_the_cert_to_the_requesting_address() {
    let (env, key) = standard_env();
    let daemon = Daemon::start(&env);
    let sshd = Sshd::start(&env, &env.trusted_ca_file(), &[]);

    let out = ssh_ca_from(&daemon, "127.0.0.2", &key.private, "request pinned");
    let line = daemon.expect_cert(&out);
    let cert_path = env.write("pinned-cert.pub", format!("{line}\n"));
    let cert = common::cert::CertInfo::read(&cert_path);
    let pinned = cert.critical_option("source-address");
    assert!(
        matches!(pinned, Some("127.0.0.2/32" | "127.0.0.2")),
        "source-address is {pinned:?}, not the requester's 127.0.0.2: {cert:?}"
    );

    let out = sshd.login_from(
        "127.0.0.2",
        &key.private,
        &cert_path,
        current_user(),
        "id -un",
    );
    sshd.expect_login(&out, current_user());
    let out = sshd.login(&key.private, &cert_path, current_user(), "id -un");
    sshd.expect_refused(&out, "not from a permitted source address (127.0.0.1)");
}
