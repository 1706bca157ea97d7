//! `jitca policy check`: the shipped policy passes, and each kind of bad
//! file fails with `FILE:LINE:` pointing at the offending line. Principals
//! are checked because PROTOCOL.certkeys gives an empty principals list the
//! meaning "any principal", and `sshd` splits on commas and matches patterns.

mod common;

use std::path::Path;

use common::{Env, STANDARD_POLICY, assert_exit, describe, stderr, stdout};

/// A valid policy up to the role's principals; `{principals}` and `{extra}`
/// are filled in by each test. Line numbers below count from line 1 here.
const TEMPLATE: &str = r#"[ca]
backdate = "2m"
max_ttl = "8h"

[role.shell]
groups = ["ops"]
principals = {principals}
ttl = "{ttl}"
{extra}
"#;

/// Line of `principals = ...` in [`TEMPLATE`].
const PRINCIPALS_LINE: usize = 7;
/// Line of `ttl = ...` in [`TEMPLATE`].
const TTL_LINE: usize = 8;
/// Line of `{extra}` in [`TEMPLATE`].
const EXTRA_LINE: usize = 9;

/// Stdout and stderr together: where a message goes is not under test here.
fn output(out: &std::process::Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

fn policy(principals: &str, ttl: &str, extra: &str) -> String {
    TEMPLATE
        .replace("{principals}", principals)
        .replace("{ttl}", ttl)
        .replace("{extra}", extra)
}

/// Checks TEXT as a file named `bad.toml`; fails unless the check exits 1
/// naming `bad.toml:LINE:` and, case-insensitively, each of MENTIONS.
fn assert_policy_error(text: &str, line: usize, mentions: &[&str]) {
    let env = Env::new();
    let file = env.write("bad.toml", text);
    let out = env.jitca(&["policy", "check", &file.to_string_lossy()]);
    assert_exit(&out, 1, "policy check of a bad file");
    let all = output(&out);
    let at = format!("bad.toml:{line}:");
    assert!(
        all.contains(&at),
        "output does not point at {at}\nfile:\n{text}\n{}",
        describe(&out)
    );
    let lower = all.to_lowercase();
    for mention in mentions {
        assert!(
            lower.contains(&mention.to_lowercase()),
            "output does not mention {mention:?}\n{}",
            describe(&out)
        );
    }
}

#[test]
fn template_policy_is_valid_as_written() {
    let env = Env::new();
    let file = env.write("good.toml", policy(r#"["ops"]"#, "15m", ""));
    let out = env.jitca_ok(&["policy", "check", &file.to_string_lossy()]);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn shipped_policy_passes_policy_check() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.toml");
    let env = Env::new();
    let out = env.jitca_ok(&["policy", "check", &shipped.to_string_lossy()]);
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn policy_check_without_a_file_checks_the_configured_policy() {
    let env = Env::with_policy(STANDARD_POLICY);
    let out = env.jitca_ok(&["policy", "check"]);
    assert!(out.contains("ok"), "{out}");

    env.write_policy(&policy("[]", "15m", ""));
    let out = env.jitca(&["policy", "check"]);
    assert_exit(&out, 1, "policy check of the configured bad policy");
    assert!(
        output(&out).contains(&format!("policy.toml:{PRINCIPALS_LINE}:")),
        "{}",
        describe(&out)
    );
}

#[test]
fn empty_principals_list_fails_naming_its_line() {
    assert_policy_error(&policy("[]", "15m", ""), PRINCIPALS_LINE, &["principal"]);
}

#[test]
fn principal_with_a_comma_fails_naming_its_line() {
    assert_policy_error(
        &policy(r#"["ops,root"]"#, "15m", ""),
        PRINCIPALS_LINE,
        &["ops,root"],
    );
}

#[test]
fn principal_with_a_wildcard_fails_naming_its_line() {
    assert_policy_error(&policy(r#"["*"]"#, "15m", ""), PRINCIPALS_LINE, &["*"]);
}

#[test]
fn unknown_key_fails_naming_it_and_its_line() {
    assert_policy_error(
        &policy(r#"["ops"]"#, "15m", r#"colour = "red""#),
        EXTRA_LINE,
        &["colour"],
    );
}

#[test]
fn bad_duration_fails_naming_its_line() {
    assert_policy_error(
        &policy(r#"["ops"]"#, "fifteen minutes", ""),
        TTL_LINE,
        &["fifteen minutes"],
    );
}

#[test]
fn daemon_refuses_to_start_on_an_invalid_policy() {
    let env = Env::with_policy(&policy("[]", "15m", ""));
    let port = common::net::free_port();
    let out = common::run(
        env.jitca_command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")]),
        std::time::Duration::from_secs(20),
    );
    assert_exit(&out, 1, "jitca serve with an invalid policy");
    assert!(
        output(&out).contains(&format!("policy.toml:{PRINCIPALS_LINE}:")),
        "{}",
        describe(&out)
    );
}

#[test]
fn policy_check_warns_when_the_enrolled_approvers_could_never_meet_the_count() {
    let env = common::Env::with_policy(
        r#"
[role.db]
groups = ["dba"]
principals = ["postgres"]
ttl = "10m"
approval = { count = 2, approvers = ["leads"], timeout = "30m" }
"#,
    );
    env.init();
    env.jitca_ok(&["user", "add", "bob", "--group", "leads"]);
    let out = env.jitca_ok(&["policy", "check"]);
    assert!(
        out.contains(
            "warning: role db: needs 2 approval(s) from [leads], which have 1 active member(s)"
        ),
        "{out}"
    );
    env.jitca_ok(&["user", "add", "carol", "--group", "leads"]);
    let out = env.jitca_ok(&["policy", "check"]);
    assert!(!out.contains("could never be approved"), "{out}");
}
