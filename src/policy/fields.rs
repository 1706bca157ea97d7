//! Checks on single keys and lists of a policy file, shared by the tables of
//! [`super::validate`]: durations, groups, principals, TTLs, profile names,
//! networks, `source_address`, `approval` and `notify`. Each records its
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

pub fn notify(ctx: &mut Ctx<'_>, list: &StrList) -> Option<Vec<String>> {
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
mod tests {}
