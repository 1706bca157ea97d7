//! Checks on single keys and lists of a policy file, shared by the tables of
//! [`super::validate`]: durations, groups, principals, TTLs, profile names,
//! networks, `source_address` and `approval`. Each records its
//! problems in the [`Ctx`] and returns what it could validate.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::duration;
use super::principal::{MAX_PRINCIPALS, check_principal};
use super::raw::{Ctx, RawApproval, RawRole, RawSourceAddress, SpannedStr, StrList};
use super::{Approval, SourceAddress};
use crate::model::check_name;

/// The largest duration accepted for TTLs, report ages and timeouts:
/// certificates are meant to be short-lived, and this keeps `now + ttl` far
/// from overflowing.
pub const DURATION_LIMIT: Duration = Duration::from_secs(366 * 86_400);

/// A required, non-empty list of group names, without duplicates.
pub fn group_list(
    ctx: &mut Ctx<'_>,
    what: &str,
    key: &str,
    list: Option<&StrList>,
    head: &Range<usize>,
) -> Vec<String> {
    let Some(list) = list else {
        ctx.error(
            head.clone(),
            format!("{what}: {key} is required, e.g. {key} = [\"dba\"]"),
        );
        return Vec::new();
    };
    if list.get_ref().is_empty() {
        ctx.error(
            list.span(),
            format!("{what}: {key} is empty: name at least one group"),
        );
    }
    let mut groups = BTreeSet::new();
    for g in list.get_ref() {
        match check_name("group", g.get_ref()) {
            Ok(()) => {
                groups.insert(g.get_ref().clone());
            }
            Err(e) => ctx.error(g.span(), format!("{what} {key}: {e}")),
        }
    }
    groups.into_iter().collect()
}

/// A required principals list: non-empty, at most [`MAX_PRINCIPALS`], each
/// passing [`check_principal`], no duplicates.
pub fn principals(
    ctx: &mut Ctx<'_>,
    what: &str,
    list: Option<&StrList>,
    head: &Range<usize>,
) -> Vec<String> {
    let Some(list) = list else {
        ctx.error(
            head.clone(),
            format!("{what}: principals is required, e.g. principals = [\"postgres\"]"),
        );
        return Vec::new();
    };
    // PROTOCOL.certkeys: an empty "valid principals" field means any principal.
    if list.get_ref().is_empty() {
        ctx.error(
            list.span(),
            format!("{what}: principals is empty: an empty list would let the certificate log in as anyone; name at least one login"),
        );
    }
    if list.get_ref().len() > MAX_PRINCIPALS {
        ctx.error(
            list.span(),
            format!(
                "{what}: {} principals: the limit is {MAX_PRINCIPALS}",
                list.get_ref().len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in list.get_ref() {
        if let Err(e) = check_principal(p.get_ref()) {
            ctx.error(p.span(), format!("{what}: {e}"));
        } else if !seen.insert(p.get_ref().as_str()) {
            ctx.error(
                p.span(),
                format!(
                    "{what}: principal {:?} is listed twice: remove one",
                    p.get_ref()
                ),
            );
        } else {
            out.push(p.get_ref().clone());
        }
    }
    out
}

/// The role's `ttl` and `max_ttl`, checked against each other and the cap.
pub fn ttls(
    ctx: &mut Ctx<'_>,
    what: &str,
    raw: &RawRole,
    head: &Range<usize>,
    global_max: Duration,
) -> (Option<Duration>, Option<Duration>) {
    let Some(ttl_raw) = &raw.ttl else {
        ctx.error(
            head.clone(),
            format!("{what}: ttl is required, e.g. ttl = \"15m\""),
        );
        return (None, None);
    };
    let ttl = parse_duration(ctx, &format!("{what} ttl"), ttl_raw, DURATION_LIMIT)
        .and_then(|d| positive(ctx, &format!("{what} ttl"), ttl_raw, d));
    let (max_ttl, max_raw) = match &raw.max_ttl {
        Some(m) => (
            parse_duration(ctx, &format!("{what} max_ttl"), m, DURATION_LIMIT),
            m,
        ),
        None => (ttl, ttl_raw),
    };
    let (Some(t), Some(m)) = (ttl, max_ttl) else {
        return (ttl, max_ttl);
    };
    if t > m {
        ctx.error(
            max_raw.span(),
            format!(
                "{what}: ttl {} is above max_ttl {}: raise max_ttl or lower ttl",
                duration::format(t),
                duration::format(m)
            ),
        );
    }
    if m > global_max {
        ctx.error(
            max_raw.span(),
            format!(
                "{what}: max_ttl {} is above [ca] max_ttl {}: lower it or raise [ca] max_ttl",
                duration::format(m),
                duration::format(global_max)
            ),
        );
    }
    (ttl, max_ttl)
}

/// A reference to a posture profile, which must be defined in the file.
pub fn profile_ref(
    ctx: &mut Ctx<'_>,
    what: &str,
    key: &str,
    value: Option<&SpannedStr>,
    profiles: &BTreeSet<String>,
) -> Option<String> {
    let value = value?;
    if !profiles.contains(value.get_ref()) {
        let known = if profiles.is_empty() {
            "no [posture.NAME] profiles are defined".to_string()
        } else {
            let names: Vec<&str> = profiles.iter().map(String::as_str).collect();
            format!("defined profiles are {}", names.join(", "))
        };
        ctx.error(
            value.span(),
            format!(
                "{what}: {key} {:?} names no [posture.{}] table: {known}",
                value.get_ref(),
                value.get_ref()
            ),
        );
        return None;
    }
    Some(value.get_ref().clone())
}

/// A CIDR, or a bare address taken as a single host; host bits must be zero.
pub fn network(ctx: &mut Ctx<'_>, what: &str, entry: &SpannedStr) -> Option<IpNet> {
    let text = entry.get_ref().trim();
    let net = match (text.parse::<IpNet>(), text.parse::<IpAddr>()) {
        (Ok(net), _) => net,
        (_, Ok(addr)) => IpNet::from(addr),
        _ => {
            ctx.error(
                entry.span(),
                format!(
                    "{what}: {:?} is not an address or CIDR: use e.g. \"10.20.0.0/16\" or \"192.0.2.7\"",
                    entry.get_ref()
                ),
            );
            return None;
        }
    };
    if net.trunc() != net {
        ctx.error(
            entry.span(),
            format!(
                "{what}: {:?} has host bits set: did you mean \"{}\"?",
                entry.get_ref(),
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

/// `source_address`: `"peer"` or a non-empty list of networks.
pub fn source_address(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: &Spanned<RawSourceAddress>,
) -> Option<SourceAddress> {
    match value.get_ref() {
        RawSourceAddress::Word(w) if w == "peer" => Some(SourceAddress::Peer),
        RawSourceAddress::Word(w) => {
            ctx.error(
                value.span(),
                format!("{what}: source_address {w:?} is not valid: use \"peer\" or a list such as [\"10.0.0.0/8\"]"),
            );
            None
        }
        RawSourceAddress::List(entries) => {
            if entries.is_empty() {
                ctx.error(
                    value.span(),
                    format!("{what}: source_address is an empty list: name at least one address, or use \"peer\""),
                );
            }
            let before = ctx.error_count();
            let nets: Vec<IpNet> = entries
                .iter()
                .filter_map(|e| network(ctx, &format!("{what} source_address"), e))
                .collect();
            (ctx.error_count() == before && !nets.is_empty()).then_some(SourceAddress::Fixed(nets))
        }
    }
}

/// `approval`: count at least 1 (default 1), approver groups, a timeout;
/// warns when every approver group is also a requester group.
pub fn approval(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: &Spanned<RawApproval>,
    requester_groups: &[String],
) -> Option<Approval> {
    let raw = value.get_ref();
    let before = ctx.error_count();
    let count = match &raw.count {
        None => 1,
        Some(c) => match u32::try_from(*c.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                ctx.error(
                    c.span(),
                    format!(
                        "{what}: approval count {} is not valid: use a whole number of at least 1",
                        c.get_ref()
                    ),
                );
                0
            }
        },
    };
    let approvers = group_list(
        ctx,
        &format!("{what} approval"),
        "approvers",
        raw.approvers.as_ref(),
        &value.span(),
    );
    let timeout = match &raw.timeout {
        Some(t) => parse_duration(ctx, &format!("{what} approval timeout"), t, DURATION_LIMIT)
            .and_then(|d| positive(ctx, &format!("{what} approval timeout"), t, d)),
        None => {
            ctx.error(
                value.span(),
                format!("{what}: approval needs a timeout, e.g. timeout = \"30m\""),
            );
            None
        }
    };
    if ctx.error_count() != before {
        return None;
    }
    if approvers.iter().all(|a| requester_groups.contains(a)) {
        ctx.warn(
            value.span(),
            format!(
                "{what}: every approver group is also a requester group: a second person to approve may be hard to find"
            ),
        );
    }
    Some(Approval {
        count,
        approvers,
        timeout: timeout.unwrap_or_default(),
    })
}

/// A duration of whole seconds up to `limit`; `what` names the key in messages.
pub fn parse_duration(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: &SpannedStr,
    limit: Duration,
) -> Option<Duration> {
    match duration::parse(value.get_ref(), limit) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.error(value.span(), format!("{what}: {e}"));
            None
        }
    }
}

/// Refuses a zero duration.
pub fn positive(
    ctx: &mut Ctx<'_>,
    what: &str,
    value: &SpannedStr,
    d: Duration,
) -> Option<Duration> {
    if d.is_zero() {
        ctx.error(
            value.span(),
            format!("{what}: must be above zero, e.g. \"15m\""),
        );
        return None;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::super::validate::expect_one_error;
    use super::*;

    /// A valid role; each test appends the line under test.
    const ROLE: &str = "[role.r]\ngroups = [\"g\"]\nttl = \"15m\"\n";

    fn with_principals(list: &str) -> String {
        format!("{ROLE}principals = {list} # <-\n")
    }

    fn role_error(extra: &str) -> String {
        expect_one_error(&format!("{ROLE}principals = [\"p\"]\n{extra}\n"))
    }

    fn contains(message: &str, needle: &str) {
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }

    fn role(extra: &str) -> super::super::Role {
        let text = format!("{ROLE}principals = [\"p\"]\n{extra}\n");
        match Policy::parse("p.toml", &text) {
            Ok(p) => p.role("r").cloned().unwrap(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn unsafe_principal_lists_are_refused() {
        contains(
            &expect_one_error(&with_principals("[]")),
            "principals is empty",
        );
        for bad in ["a,b", "*", "ro?t", "!x", "a b", "a\\tb", "a\\u0007", ""] {
            let msg = expect_one_error(&with_principals(&format!("[\"{bad}\"]")));
            contains(&msg, "principal");
        }
        let long = "x".repeat(257);
        contains(
            &expect_one_error(&with_principals(&format!("[\"{long}\"]"))),
            "257 bytes",
        );
        contains(
            &expect_one_error(&with_principals("[\"a\", \"b\", \"a\"]")),
            "listed twice",
        );
        let many: Vec<String> = (0..257).map(|i| format!("\"u{i}\"")).collect();
        let msg = expect_one_error(&with_principals(&format!("[{}]", many.join(", "))));
        contains(&msg, "257 principals: the limit is 256");
        let msg = expect_one_error("[role.r] # <-\ngroups = [\"g\"]\nttl = \"15m\"\n");
        contains(&msg, "principals is required");
    }

    #[test]
    fn a_principal_on_its_own_line_is_reported_there() {
        let text = format!("{ROLE}principals = [\n  \"ok\",\n  \"not ok\", # <-\n]\n");
        contains(&expect_one_error(&text), "\"not ok\"");
    }

    #[test]
    fn groups_must_be_a_non_empty_list_of_names() {
        let msg =
            expect_one_error("[role.r]\ngroups = [] # <-\nprincipals = [\"p\"]\nttl = \"1m\"\n");
        contains(&msg, "groups is empty");
        let msg = expect_one_error(
            "[role.r]\ngroups = [\"a b\"] # <-\nprincipals = [\"p\"]\nttl = \"1m\"\n",
        );
        contains(&msg, "group name \"a b\"");
        let msg = expect_one_error("[role.r] # <-\nprincipals = [\"p\"]\nttl = \"1m\"\n");
        contains(&msg, "groups is required");
    }

    #[test]
    fn durations_and_ttls_are_checked() {
        let base = "[role.r]\ngroups = [\"g\"]\nprincipals = [\"p\"]\n";
        let msg = expect_one_error(&format!("{base}ttl = \"fifteen\" # <-\n"));
        contains(
            &msg,
            "\"fifteen\" is not a duration: use a number and a unit, e.g. \"15m\"",
        );
        contains(
            &expect_one_error(&format!("{base}ttl = \"0s\" # <-\n")),
            "above zero",
        );
        contains(
            &expect_one_error(&format!("{base}ttl = \"0\" # <-\n")),
            "above zero",
        );
        let msg = expect_one_error(&format!("{base}ttl = \"2h\"\nmax_ttl = \"1h\" # <-\n"));
        contains(&msg, "ttl 2h is above max_ttl 1h");
        let msg = expect_one_error(&format!(
            "[ca]\nmax_ttl = \"1h\"\n{base}ttl = \"5m\"\nmax_ttl = \"2h\" # <-\n"
        ));
        contains(&msg, "max_ttl 2h is above [ca] max_ttl 1h");
        let msg = expect_one_error(&format!("{base}ttl = \"9h\" # <-\n"));
        contains(&msg, "max_ttl 9h is above [ca] max_ttl 8h");
        contains(
            &expect_one_error(&format!("{base}ttl = \"1500ms\" # <-\n")),
            "whole number of seconds",
        );
        contains(
            &expect_one_error("[ca]\nmax_ttl = \"400d\" # <-\n"),
            "too long",
        );
        contains(
            &expect_one_error("[ca]\nbackdate = \"2h\" # <-\n"),
            "the limit is 1h",
        );
        contains(
            &expect_one_error("[ca]\nmax_ttl = \"0s\" # <-\n"),
            "above zero",
        );
        contains(
            &expect_one_error("[role.r] # <-\ngroups = [\"g\"]\nprincipals = [\"p\"]\n"),
            "ttl is required",
        );
    }

    #[test]
    fn networks_must_parse_without_host_bits() {
        contains(
            &role_error("networks = [\"10.0.0.0/33\"] # <-"),
            "not an address or CIDR",
        );
        contains(
            &role_error("networks = [\"example\"] # <-"),
            "not an address or CIDR",
        );
        contains(
            &role_error("networks = [\"10.20.0.1/16\"] # <-"),
            "did you mean \"10.20.0.0/16\"",
        );
        let r = role("networks = [\"10.20.0.0/16\", \"192.0.2.7\", \"2001:db8::/32\"]");
        let shown: Vec<String> = r.networks.iter().map(IpNet::to_string).collect();
        assert_eq!(shown, ["10.20.0.0/16", "192.0.2.7/32", "2001:db8::/32"]);
    }

    #[test]
    fn source_address_is_peer_or_a_list_of_networks() {
        assert_eq!(
            role("source_address = \"peer\"").source_address,
            Some(SourceAddress::Peer)
        );
        let r = role("source_address = [\"10.0.0.0/8\", \"::1\"]");
        assert_eq!(
            r.source_address,
            Some(SourceAddress::Fixed(vec![
                "10.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap()
            ]))
        );
        contains(
            &role_error("source_address = \"any\" # <-"),
            "use \"peer\" or a list",
        );
        contains(&role_error("source_address = [] # <-"), "empty list");
        contains(
            &role_error("source_address = [\"10.0.0.0/8\", \"nope\"] # <-"),
            "\"nope\" is not an address",
        );
        contains(&role_error("source_address = 5 # <-"), "\"peer\" or a list");
    }

    #[test]
    fn approvals_are_checked() {
        let r = role("approval = { count = 2, approvers = [\"leads\"], timeout = \"30m\" }");
        let a = r.approval.unwrap();
        assert_eq!((a.count, a.timeout), (2, Duration::from_secs(1800)));
        assert_eq!(
            role("approval = { approvers = [\"leads\"], timeout = \"1m\" }")
                .approval
                .unwrap()
                .count,
            1
        );
        contains(
            &role_error("approval = { count = 0, approvers = [\"l\"], timeout = \"1m\" } # <-"),
            "count 0 is not valid",
        );
        contains(
            &role_error("approval = { count = -1, approvers = [\"l\"], timeout = \"1m\" } # <-"),
            "count -1",
        );
        contains(
            &role_error("approval = { approvers = [], timeout = \"1m\" } # <-"),
            "approvers is empty",
        );
        contains(
            &role_error("approval = { timeout = \"1m\" } # <-"),
            "approvers is required",
        );
        contains(
            &role_error("approval = { approvers = [\"l\"] } # <-"),
            "needs a timeout",
        );
        contains(
            &role_error("approval = { approvers = [\"l\"], timeout = \"0s\" } # <-"),
            "above zero",
        );
    }

    #[test]
    fn approvers_drawn_from_the_requesters_get_a_warning() {
        let text = format!(
            "{ROLE}principals = [\"p\"]\napproval = {{ approvers = [\"g\"], timeout = \"5m\" }}\n"
        );
        let policy = Policy::parse("p.toml", &text).unwrap();
        let about_groups: Vec<&String> = policy
            .warnings()
            .iter()
            .filter(|w| w.contains("every approver group"))
            .collect();
        assert_eq!(about_groups.len(), 1, "{:?}", policy.warnings());
        assert!(about_groups[0].starts_with("p.toml:5: [role.r]: every approver group"));
        let text = text.replace("[\"g\"], timeout", "[\"leads\"], timeout");
        let policy = Policy::parse("p.toml", &text).unwrap();
        assert!(
            !policy
                .warnings()
                .iter()
                .any(|w| w.contains("every approver group")),
            "{:?}",
            policy.warnings()
        );
    }
}
