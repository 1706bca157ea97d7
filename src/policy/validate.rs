//! Stage two of loading a policy: the raw structs of [`super::raw`] checked
//! value by value and turned into a [`Policy`]. Every problem is recorded,
//! none stops the others from being found; any problem at all means no
//! `Policy` is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::fields::{
    DURATION_LIMIT, approval, group_list, network, notify, parse_duration, positive, principals,
    profile_ref, source_address, ttls,
};
use super::principal::{check_extension, check_force_command};
use super::raw::{Ctx, Named, RawDocument, RawProfile, RawRole};
use super::requirement::Requirement;
use super::{Policy, PolicyError, PostureProfile, Role};
use crate::model::check_name;

/// `[ca].backdate` when the file gives none.
pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(120);
/// `[ca].max_ttl` when the file gives none.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(8 * 3600);
/// The largest backdate accepted: it only has to cover clock skew.
pub const BACKDATE_LIMIT: Duration = Duration::from_secs(3600);

/// Validates a raw document; `Err` holds every problem found in both stages.
pub fn build(mut ctx: Ctx<'_>, doc: RawDocument, sha256: String) -> Result<Policy, PolicyError> {
    let (backdate, max_ttl) = ca(&mut ctx, &doc);

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
        return Err(PolicyError {
            diagnostics: ctx.diagnostics,
        });
    }
    Ok(Policy {
        sha256,
        backdate,
        max_ttl,
        roles,
        profiles,
        notify,
        warnings: ctx.warnings,
    })
}

fn ca(ctx: &mut Ctx<'_>, doc: &RawDocument) -> (Duration, Duration) {
    let Some(raw) = &doc.ca else {
        return (DEFAULT_BACKDATE, DEFAULT_MAX_TTL);
    };
    let backdate = match &raw.backdate {
        Some(v) => parse_duration(ctx, "[ca] backdate", v, BACKDATE_LIMIT),
        None => Some(DEFAULT_BACKDATE),
    };
    let max_ttl = match &raw.max_ttl {
        Some(v) => parse_duration(ctx, "[ca] max_ttl", v, DURATION_LIMIT)
            .and_then(|d| positive(ctx, "[ca] max_ttl", v, d)),
        None => Some(DEFAULT_MAX_TTL),
    };
    // On error the defaults stand in, only so the roles can still be checked.
    (
        backdate.unwrap_or(DEFAULT_BACKDATE),
        max_ttl.unwrap_or(DEFAULT_MAX_TTL),
    )
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

    (ctx.error_count() == before).then(|| PostureProfile {
        name: name.clone(),
        max_report_age: max_report_age.unwrap_or_default(),
        require,
    })
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
    if let (true, Some(a)) = (break_glass, &raw.approval) {
        ctx.error(
            a.span(),
            format!("{what}: break_glass and approval exclude each other: a break-glass role must not wait for approvers; remove one"),
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

#[cfg(test)]
mod tests {}
