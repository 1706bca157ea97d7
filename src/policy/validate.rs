//! Stage two of loading a policy: the raw structs of [`super::raw`] checked
//! value by value and turned into a [`Policy`]. Every problem is recorded,
//! none stops the others from being found; any problem at all means no
//! `Policy` is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::fields::{
    DURATION_LIMIT, approval, group_list, network, parse_duration, positive, principals,
    profile_ref, source_address, ttls,
};
use super::principal::{check_extension, check_force_command};
use super::raw::{Ctx, Named, RawDocument, RawProfile, RawRole, StrList};
use super::requirement::Requirement;
use super::{Policy, PolicyError, PostureProfile, Role};
use crate::model::check_name;

/// `[ca].backdate` when the file gives none.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(120);
/// `[ca].max_ttl` when the file gives none.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a new CA key is published before it signs, unless `[ca] publish_ahead` says.
pub const DEFAULT_PUBLISH_AHEAD: Duration = Duration::from_secs(24 * 3600);
/// How long a CA key signs before `jitca ca rotate` replaces it, unless `[ca] rotate_every` says.
pub const DEFAULT_ROTATE_EVERY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The largest backdate accepted: it only has to cover clock skew.
pub const BACKDATE_LIMIT: Duration = Duration::from_secs(3600);
/// The longest certificate a break-glass role may grant: it is used without
/// an approver, so what it hands out must be short.
pub const BREAK_GLASS_MAX_TTL: Duration = Duration::from_secs(3600);

/// Validates a raw document; `Err` holds every problem found in both stages.
pub fn build(mut ctx: Ctx<'_>, doc: RawDocument, sha256: String) -> Result<Policy, PolicyError> {
    let ca = ca(&mut ctx, &doc);
    let (backdate, max_ttl) = (ca.backdate, ca.max_ttl);

    // Names of every profile that was written, even a broken one, so a role
    // naming a broken profile is not also told the profile is missing.
    let profile_names: BTreeSet<String> = doc
        .profiles
        .iter()
        .map(|p| p.name.get_ref().clone())
        .collect();
    let mut profiles = BTreeMap::new();
    for named in &doc.profiles {
        if let Some(p) = profile(&mut ctx, named) {
            profiles.insert(p.name.clone(), p);
        }
    }

    let mut roles = BTreeMap::new();
    for named in &doc.roles {
        if let Some(r) = role(&mut ctx, named, max_ttl, &profile_names) {
            roles.insert(r.name.clone(), r);
        }
    }

    let notify = doc.notify.as_ref().and_then(|n| notify(&mut ctx, n));

    if !ctx.diagnostics.is_empty() {
        // Stage one's errors come first; show them all in file order.
        let mut diagnostics = ctx.diagnostics;
        diagnostics.sort_by_key(|d| d.line);
        return Err(PolicyError { diagnostics });
    }
    Ok(Policy {
        sha256,
        backdate,
        max_ttl,
        publish_ahead: ca.publish_ahead,
        rotate_every: ca.rotate_every,
        roles,
        profiles,
        notify,
        warnings: ctx.warnings,
    })
}

/// The `[ca]` table, with defaults for what it leaves out.
pub struct CaSettings {
    pub backdate: Duration,
    pub max_ttl: Duration,
    pub publish_ahead: Duration,
    pub rotate_every: Duration,
}

fn ca(ctx: &mut Ctx<'_>, doc: &RawDocument) -> CaSettings {
    let defaults = CaSettings {
        backdate: DEFAULT_BACKDATE,
        max_ttl: DEFAULT_MAX_TTL,
        publish_ahead: DEFAULT_PUBLISH_AHEAD,
        rotate_every: DEFAULT_ROTATE_EVERY,
    };
    let Some(raw) = &doc.ca else {
        return defaults;
    };
    let backdate = match &raw.backdate {
        Some(v) => parse_duration(ctx, "[ca] backdate", v, BACKDATE_LIMIT),
        None => Some(DEFAULT_BACKDATE),
    };
    let mut positive_or = |key: &str, v: &Option<super::raw::SpannedStr>, default: Duration| match v
    {
        Some(v) => parse_duration(ctx, &format!("[ca] {key}"), v, DURATION_LIMIT)
            .and_then(|d| positive(ctx, &format!("[ca] {key}"), v, d)),
        None => Some(default),
    };
    let max_ttl = positive_or("max_ttl", &raw.max_ttl, DEFAULT_MAX_TTL);
    let publish_ahead = positive_or("publish_ahead", &raw.publish_ahead, DEFAULT_PUBLISH_AHEAD);
    let rotate_every = positive_or("rotate_every", &raw.rotate_every, DEFAULT_ROTATE_EVERY);
    if let (Some(ahead), Some(every)) = (publish_ahead, rotate_every) {
        if ahead >= every {
            let span = raw
                .publish_ahead
                .as_ref()
                .or(raw.rotate_every.as_ref())
                .map(|v| v.span());
            if let Some(span) = span {
                ctx.error(
                    span,
                    format!(
                        "[ca] publish_ahead {} must be shorter than rotate_every {}: a new key is published that long before it starts signing",
                        super::duration::format(ahead),
                        super::duration::format(every)
                    ),
                );
            }
        }
    }
    // On error the defaults stand in, only so the roles can still be checked.
    CaSettings {
        backdate: backdate.unwrap_or(defaults.backdate),
        max_ttl: max_ttl.unwrap_or(defaults.max_ttl),
        publish_ahead: publish_ahead.unwrap_or(defaults.publish_ahead),
        rotate_every: rotate_every.unwrap_or(defaults.rotate_every),
    }
}

fn profile(ctx: &mut Ctx<'_>, named: &Named<RawProfile>) -> Option<PostureProfile> {
    let raw = named.raw.as_ref()?;
    let name = named.name.get_ref();
    let what = format!("[posture.{name}]");
    let before = ctx.error_count();

    if let Err(e) = check_name("posture profile", name) {
        ctx.error(named.name.span(), e.to_string());
    }
    let max_report_age = match &raw.max_report_age {
        Some(v) => parse_duration(ctx, &format!("{what} max_report_age"), v, DURATION_LIMIT)
            .and_then(|d| positive(ctx, &format!("{what} max_report_age"), v, d)),
        None => {
            ctx.error(
                named.name.span(),
                format!("{what}: max_report_age is required, e.g. max_report_age = \"24h\""),
            );
            None
        }
    };
    let mut require = Vec::new();
    match &raw.require {
        Some(list) => {
            for entry in list.get_ref() {
                match Requirement::parse(entry.get_ref()) {
                    Ok(r) => require.push(r),
                    Err(e) => ctx.error(
                        entry.span(),
                        format!(
                            "{what}: requirement {:?} does not parse {e}",
                            entry.get_ref()
                        ),
                    ),
                }
            }
            if list.get_ref().is_empty() {
                ctx.warn(
                    list.span(),
                    format!("{what} has no requirements: only the presence of a report is checked"),
                );
            }
        }
        None => ctx.error(
            named.name.span(),
            format!(
                "{what}: require is required, e.g. require = [\"device.disk_encrypted == true\"]"
            ),
        ),
    }

    (ctx.error_count() == before)
        .then(|| PostureProfile::new(name.clone(), max_report_age.unwrap_or_default(), require))
}

fn role(
    ctx: &mut Ctx<'_>,
    named: &Named<RawRole>,
    global_max: Duration,
    profiles: &BTreeSet<String>,
) -> Option<Role> {
    let raw = named.raw.as_ref()?;
    let name = named.name.get_ref();
    let head = named.name.span();
    let what = format!("[role.{name}]");
    let before = ctx.error_count();

    if let Err(e) = check_name("role", name) {
        ctx.error(head.clone(), e.to_string());
    }
    let groups = group_list(ctx, &what, "groups", raw.groups.as_ref(), &head);
    let principals = principals(ctx, &what, raw.principals.as_ref(), &head);
    let (ttl, max_ttl) = ttls(ctx, &what, raw, &head, global_max);
    let posture = profile_ref(ctx, &what, "posture", raw.posture.as_ref(), profiles);
    let approver_posture = profile_ref(
        ctx,
        &what,
        "approver_posture",
        raw.approver_posture.as_ref(),
        profiles,
    );

    let mut networks = Vec::new();
    for entry in raw.networks.iter().flat_map(|l| l.get_ref()) {
        if let Some(net) = network(ctx, &format!("{what} networks"), entry) {
            networks.push(net);
        }
    }
    let source_address = raw
        .source_address
        .as_ref()
        .and_then(|s| source_address(ctx, &what, s));

    if let Some(cmd) = &raw.force_command {
        if let Err(e) = check_force_command(cmd.get_ref()) {
            ctx.error(cmd.span(), format!("{what}: {e}"));
        }
    }
    let mut extensions = BTreeSet::new();
    for entry in raw.extensions.iter().flat_map(|l| l.get_ref()) {
        match check_extension(entry.get_ref()) {
            Ok(()) => {
                extensions.insert(entry.get_ref().clone());
            }
            Err(e) => ctx.error(entry.span(), format!("{what}: {e}")),
        }
    }

    let approval = raw
        .approval
        .as_ref()
        .and_then(|a| approval(ctx, &what, a, &groups));
    let break_glass = raw.break_glass.as_ref().is_some_and(|b| *b.get_ref());
    if let (true, Some(max)) = (break_glass, max_ttl) {
        if max > BREAK_GLASS_MAX_TTL {
            let span = raw.max_ttl.as_ref().or(raw.ttl.as_ref()).map(|v| v.span());
            ctx.error(
                span.unwrap_or_else(|| head.clone()),
                format!(
                    "{what}: a break_glass role may grant at most {}, but its max_ttl is {}: lower max_ttl",
                    super::duration::format(BREAK_GLASS_MAX_TTL),
                    super::duration::format(max)
                ),
            );
        }
    }
    if let (true, Some(a)) = (break_glass, &raw.approval) {
        ctx.error(
            a.span(),
            format!("{what}: break_glass and approval exclude each other: a break-glass role must not wait for approvers; remove one"),
        );
    }
    if let (Some(a), None) = (&raw.approval, &raw.approver_posture) {
        ctx.warn(
            a.span(),
            format!("{what}: approval without approver_posture: approvers' own devices are not checked; set approver_posture"),
        );
    }
    if let (Some(p), None) = (&raw.approver_posture, &raw.approval) {
        ctx.warn(
            p.span(),
            format!("{what}: approver_posture has no effect without approval"),
        );
    }

    (ctx.error_count() == before).then(|| Role {
        name: name.clone(),
        description: raw.description.clone(),
        groups,
        principals,
        ttl: ttl.unwrap_or_default(),
        max_ttl: max_ttl.unwrap_or_default(),
        posture,
        networks,
        source_address,
        force_command: raw.force_command.as_ref().map(|c| c.get_ref().clone()),
        verify_required: raw.verify_required.unwrap_or(false),
        extensions: extensions.into_iter().collect(),
        approval,
        approver_posture,
        require_reason: raw.require_reason.unwrap_or(false),
        break_glass,
    })
}

/// `notify`: an absolute program path and its arguments, run without a shell.
fn notify(ctx: &mut Ctx<'_>, list: &StrList) -> Option<Vec<String>> {
    let before = ctx.error_count();
    match list.get_ref().first() {
        None => ctx.error(
            list.span(),
            "notify is empty: give a program and its arguments, e.g. notify = [\"/usr/local/bin/notify\", \"--jitca\"]",
        ),
        Some(program) if !program.get_ref().starts_with('/') => ctx.error(
            program.span(),
            format!(
                "notify program {:?} is not an absolute path: no shell or PATH lookup is used, so give the full path",
                program.get_ref()
            ),
        ),
        Some(_) => {}
    }
    for arg in list.get_ref() {
        if arg.get_ref().contains('\0') {
            ctx.error(arg.span(), "notify arguments cannot contain NUL characters");
        }
    }
    (ctx.error_count() == before)
        .then(|| list.get_ref().iter().map(|a| a.get_ref().clone()).collect())
}

/// Parses `text`, expecting exactly one error on the line marked `# <-`;
/// returns its message. Shared by the tests of this module and `fields`.
#[cfg(test)]
pub fn expect_one_error(text: &str) -> String {
    let marked = text.lines().position(|l| l.contains("# <-")).map(|i| i + 1);
    let err = match Policy::parse("p.toml", text) {
        Ok(_) => panic!("parsed without errors:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(err.diagnostics.len(), 1, "{err}\n---\n{text}");
    let d = &err.diagnostics[0];
    assert_eq!(d.line, marked, "{err}\n---\n{text}");
    assert_eq!(d.file, "p.toml");
    d.message.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
[ca]
backdate = "2m"
max_ttl = "8h"

[posture.managed-laptop]
max_report_age = "24h"
require = [
  "device.disk_encrypted == true",
  "device.os_family in [\"macos\", \"linux\"]",
  "device.os_version >= 14.5",
]

[role.prod-db]
groups = ["dba"]
principals = ["postgres"]
ttl = "15m"
max_ttl = "1h"
posture = "managed-laptop"
networks = ["10.20.0.0/16"]
source_address = "peer"
extensions = ["permit-pty"]
approval = { count = 1, approvers = ["dba-leads"], timeout = "30m" }
"#;

    fn contains(message: &str, needle: &str) {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }

    #[test]
    fn the_design_example_parses() {
        let policy = match Policy::parse("p.toml", DESIGN_EXAMPLE) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(policy.backdate(), Duration::from_secs(120));
        assert_eq!(policy.max_ttl(), Duration::from_secs(8 * 3600));
        let role = policy.role("prod-db").unwrap();
        assert_eq!(role.groups, ["dba"]);
        assert_eq!(role.principals, ["postgres"]);
        assert_eq!(role.ttl, Duration::from_secs(900));
        assert_eq!(role.max_ttl, Duration::from_secs(3600));
        assert_eq!(
            role.networks,
            ["10.20.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
        assert_eq!(role.source_address, Some(super::super::SourceAddress::Peer));
        assert_eq!(role.extensions, ["permit-pty"]);
        let approval = role.approval.as_ref().unwrap();
        assert_eq!(
            (approval.count, approval.approvers.as_slice()),
            (1, &["dba-leads".to_string()][..])
        );
        assert_eq!(approval.timeout, Duration::from_secs(1800));
        let profile = policy.profile("managed-laptop").unwrap();
        assert_eq!(profile.require.len(), 3);
        assert_eq!(profile.max_report_age, Duration::from_secs(86_400));
        // DESIGN.md's example leaves approver_posture out, which is worth a warning.
        let warnings = policy.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("approval without approver_posture"),
            "{warnings:?}"
        );
        assert!(policy.notify().is_none());
    }

    #[test]
    fn defaults_apply_without_a_ca_table_or_max_ttl() {
        let policy = Policy::parse(
            "p.toml",
            "[role.r]\ngroups = [\"g\"]\nprincipals = [\"p\"]\nttl = \"5m\"\n",
        )
        .unwrap();
        assert_eq!(policy.backdate(), DEFAULT_BACKDATE);
        assert_eq!(policy.max_ttl(), DEFAULT_MAX_TTL);
        let role = policy.role("r").unwrap();
        assert_eq!(role.max_ttl, role.ttl);
        assert!(!role.verify_required && !role.require_reason && !role.break_glass);
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let cases = [
            ("[ca]\nmax_tl = \"1h\" # <-\n", "`max_tl`"),
            (
                "[posture.p]\nmax_report_age = \"1h\"\nrequire = []\nrequires = [] # <-\n",
                "`requires`",
            ),
            (
                "[role.r]\ngroups = [\"g\"]\nprincipal = [\"p\"] # <-\n",
                "`principal`",
            ),
            (
                "[role.r]\napproval = { count = 1, timout = \"1m\" } # <-\n",
                "`timout`",
            ),
            ("\nnotfiy = [\"/bin/x\"] # <-\n", "\"notfiy\""),
        ];
        for (text, key) in cases {
            contains(&expect_one_error(text), key);
        }
    }

    #[test]
    fn a_toml_syntax_error_names_its_line() {
        let msg = expect_one_error("[role.r]\ngroups = [\"g\"\nttl = \"5m\" # <-\n");
        contains(&msg, "TOML syntax error");
    }

    #[test]
    fn bad_role_and_profile_names_are_refused() {
        let msg = expect_one_error(
            "[role.\"bad name\"] # <-\ngroups = [\"g\"]\nprincipals = [\"p\"]\nttl = \"5m\"\n",
        );
        contains(&msg, "role name \"bad name\"");
        let msg = expect_one_error("[posture._p] # <-\nmax_report_age = \"1h\"\nrequire = []\n");
        contains(&msg, "posture profile name \"_p\"");
    }

    #[test]
    fn profiles_need_an_age_and_parsable_requirements() {
        let msg = expect_one_error("[posture.p] # <-\nrequire = []\n");
        contains(&msg, "max_report_age is required");
        let msg = expect_one_error("[posture.p]\nmax_report_age = \"0s\" # <-\nrequire = []\n");
        contains(&msg, "above zero");
        let msg = expect_one_error(
            "[posture.p]\nmax_report_age = \"1h\"\nrequire = [\n  \"device.a == true\",\n  \"device.b >> 2\", # <-\n]\n",
        );
        contains(&msg, "\"device.b >> 2\" does not parse at column 11");
    }

    #[test]
    fn posture_references_must_name_a_profile() {
        let base = "[posture.p]\nmax_report_age = \"1h\"\nrequire = []\n[role.r]\ngroups = [\"g\"]\nprincipals = [\"x\"]\nttl = \"5m\"\n";
        let msg = expect_one_error(&format!("{base}posture = \"q\" # <-\n"));
        contains(
            &msg,
            "posture \"q\" names no [posture.q] table: defined profiles are p",
        );
        let msg = expect_one_error(&format!(
            "{base}approval = {{ approvers = [\"a\"], timeout = \"5m\" }}\napprover_posture = \"q\" # <-\n"
        ));
        contains(&msg, "approver_posture \"q\"");
    }

    #[test]
    fn a_role_naming_a_broken_profile_gets_no_second_error() {
        let text = "[posture.p]\nmax_report_age = \"soon\" # <-\nrequire = []\n[role.r]\ngroups = [\"g\"]\nprincipals = [\"x\"]\nttl = \"5m\"\nposture = \"p\"\n";
        contains(&expect_one_error(text), "\"soon\" is not a duration");
    }

    #[test]
    fn extensions_and_force_commands_are_checked() {
        let base = "[role.r]\ngroups = [\"g\"]\nprincipals = [\"x\"]\nttl = \"5m\"\n";
        let msg = expect_one_error(&format!(
            "{base}extensions = [\"permit-pty\", \"permit-tty\"] # <-\n"
        ));
        contains(&msg, "unknown extension \"permit-tty\"");
        let msg = expect_one_error(&format!("{base}force_command = \"/bin/a\\n/bin/b\" # <-\n"));
        contains(&msg, "control character");
        let msg = expect_one_error(&format!("{base}force_command = \"\" # <-\n"));
        contains(&msg, "force_command is empty");

        let text = format!(
            "{base}extensions = [\"permit-X11-forwarding\", \"permit-pty\", \"x@example.com\", \"permit-agent-forwarding\", \"permit-pty\"]\n"
        );
        let policy = Policy::parse("p.toml", &text).unwrap();
        assert_eq!(
            policy.role("r").unwrap().extensions,
            [
                "permit-X11-forwarding",
                "permit-agent-forwarding",
                "permit-pty",
                "x@example.com"
            ]
        );
    }

    #[test]
    fn break_glass_max_ttl_is_capped() {
        let text = "[role.r]\ngroups = [\"g\"]\nprincipals = [\"x\"]\nttl = \"5m\"\nmax_ttl = \"2h\" # <-\nbreak_glass = true\n";
        contains(
            &expect_one_error(text),
            "a break_glass role may grant at most 1h",
        );
    }

    #[test]
    fn break_glass_cannot_have_approval() {
        let text = "[role.r]\ngroups = [\"g\"]\nprincipals = [\"x\"]\nttl = \"5m\"\nbreak_glass = true\napproval = { approvers = [\"a\"], timeout = \"5m\" } # <-\n";
        contains(
            &expect_one_error(text),
            "break_glass and approval exclude each other",
        );
    }

    #[test]
    fn every_error_in_a_file_is_reported() {
        let text = r#"
[ca]
max_ttl = "1x"

[posture.p]
max_report_age = "1h"
require = ["device.x ==", "user.y in []"]

[role.a]
groups = []
principals = ["ok", "no,comma", "ok"]
ttl = "0s"
bogus = 1
colour = 2

[role.b]
groups = ["g"]
principals = ["x"]
ttl = "2h"
max_ttl = "1h"
posture = "nope"
networks = ["10.0.0.0/8", "300.1.1.1"]
extensions = ["permit-everything"]
"#;
        let err = Policy::parse("p.toml", text).unwrap_err();
        let lines: Vec<usize> = err.diagnostics.iter().filter_map(|d| d.line).collect();
        assert_eq!(lines, [3, 7, 7, 13, 14, 20, 21, 22, 23], "{err}");
        let text = text.replace("bogus = 1\ncolour = 2\n", "");
        let err = Policy::parse("p.toml", &text).unwrap_err();
        let lines: Vec<usize> = err.diagnostics.iter().filter_map(|d| d.line).collect();
        assert_eq!(lines, [3, 7, 7, 10, 11, 11, 12, 18, 19, 20, 21], "{err}");
        for line in err.to_string().lines() {
            assert!(line.starts_with("p.toml:"), "{line}");
        }
    }

    #[test]
    fn garbage_never_panics_the_loader() {
        let seed = include_str!("../../policy.toml");
        let bytes = seed.as_bytes();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            "\"", "[", "]", "=", "\n", "{", "}", ",", "0", "\"\"", "[role.x]", "ttl", "\u{0}", "é",
        ];
        for _ in 0..300 {
            let mut text = String::from_utf8_lossy(bytes).into_owned();
            for _ in 0..1 + next() % 6 {
                if text.is_empty() {
                    break;
                }
                let mut at = (next() % text.len() as u64) as usize;
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match next() % 3 {
                    0 => text.insert_str(at, pieces[(next() % pieces.len() as u64) as usize]),
                    1 => {
                        let mut end = (at + (next() % 20) as usize).min(text.len());
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    _ => text.truncate(at),
                }
            }
            if let Err(e) = Policy::parse("fuzz.toml", &text) {
                assert!(!e.diagnostics.is_empty());
                for d in &e.diagnostics {
                    assert!(
                        d.line
                            .is_some_and(|l| l >= 1 && l <= text.lines().count() + 1),
                        "{d}"
                    );
                }
            }
        }
        for len in [0, 1, 7, 64, 500] {
            let junk: String = (0..len)
                .map(|_| char::from(b' ' + (next() % 95) as u8))
                .collect();
            let _ = Policy::parse("junk.toml", &junk);
        }
    }

    #[test]
    fn notify_needs_an_absolute_program() {
        let ok = Policy::parse(
            "p.toml",
            "notify = [\"/usr/bin/logger\", \"-t\", \"jitca\"]\n",
        )
        .unwrap();
        assert_eq!(
            ok.notify(),
            Some(&["/usr/bin/logger".to_string(), "-t".into(), "jitca".into()][..])
        );
        contains(&expect_one_error("notify = [] # <-\n"), "notify is empty");
        contains(
            &expect_one_error("notify = [\"logger\"] # <-\n"),
            "not an absolute path",
        );
        contains(
            &expect_one_error("notify = [\"/bin/x\", \"a\\u0000\"] # <-\n"),
            "NUL",
        );
        contains(&expect_one_error("notify = \"/bin/x\" # <-\n"), "notify");
    }
}
