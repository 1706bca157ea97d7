//! `jitca user`, `group`, `device` and `posture`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::{Paths, open_db};
use crate::ca::subject::read_subject_key;
use crate::inventory as inv;
use crate::model::{Status, now_unix};
use crate::store;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user
    Add {
        /// The user's name (letters, digits, '.', '_', '-')
        name: String,
        /// A group the user belongs to (repeatable)
        #[arg(long = "group")]
        groups: Vec<String>,
    },
    /// List users
    List,
    /// Show one user
    Show {
        /// The user's name
        name: String,
    },
    /// Suspend a user: their keys are refused and their live certificates revoked
    Suspend {
        /// The user's name
        name: String,
    },
    /// Resume a suspended user
    Resume {
        /// The user's name
        name: String,
    },
    /// Set user attributes (ATTR=VALUE; true/false, integers, else text)
    Set {
        /// The user's name
        name: String,
        /// ATTR=VALUE pairs, e.g. clearance=2 team=payments
        #[arg(required = true)]
        attributes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Add USER to GROUP
    Add {
        /// The group
        group: String,
        /// The user's name
        user: String,
    },
    /// Remove USER from GROUP
    Remove {
        /// The group
        group: String,
        /// The user's name
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Enrol the public key in KEYFILE as a device of USER
    Add {
        /// The user the device belongs to
        user: String,
        /// The device's public key file (e.g. id_ed25519.pub), one key line
        keyfile: PathBuf,
        /// The device's name (e.g. alice-laptop)
        #[arg(long)]
        name: String,
    },
    /// List devices
    List,
    /// Disable a device for good: its key is refused and listed in the KRL, its certificates revoked
    Disable {
        /// The device's name
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PostureCommand {
    /// Set posture attributes of a device, reported now (ATTR=VALUE...)
    Set {
        /// The device's name
        device: String,
        /// ATTR=VALUE pairs, e.g. disk_encrypted=true os_version=14.6
        #[arg(required = true)]
        attributes: Vec<String>,
    },
    /// Import posture reports: JSON lines of {"device", "reported_at", "attributes"}; all or nothing
    Import {
        /// The JSON-lines file (e.g. an MDM export)
        file: PathBuf,
    },
    /// Show a device's posture
    Show {
        /// The device's name
        device: String,
    },
}

pub fn user(paths: &Paths, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let mut conn = open_db(paths)?;
    let now = now_unix();
    match cmd {
        UserCommand::Add { name, groups } => {
            store::write(&mut conn, |c| inv::add_user(c, &name, &groups, now))?;
            println!("added user {name}");
        }
        UserCommand::List => {
            for u in inv::list_users(&conn)? {
                println!(
                    "{:<24} {:<9} groups: {:<30} devices: {}",
                    u.name,
                    u.status.as_str(),
                    join(&u.groups),
                    join(&u.devices)
                );
            }
        }
        UserCommand::Show { name } => {
            let u = inv::show_user(&conn, &name)?;
            println!("user:    {}", u.name);
            println!("status:  {}", u.status.as_str());
            println!("groups:  {}", join(&u.groups));
            println!("devices: {}", join(&u.devices));
            for (k, v) in &u.attributes {
                println!("  user.{k} = {v}");
            }
        }
        UserCommand::Suspend { name } => {
            let changed = store::write(&mut conn, |c| {
                inv::set_user_status(c, &name, Status::Inactive, now)
            })?;
            match changed {
                Some(serials) => println!("suspended user {name}{}", revoked_note(&serials)),
                None => println!("user {name} was already suspended"),
            }
        }
        UserCommand::Resume { name } => {
            let changed = store::write(&mut conn, |c| {
                inv::set_user_status(c, &name, Status::Active, now)
            })?;
            match changed {
                Some(_) => println!("resumed user {name}"),
                None => println!("user {name} was already active"),
            }
        }
        UserCommand::Set { name, attributes } => {
            let attrs = inv::parse_assignments(&attributes)?;
            store::write(&mut conn, |c| {
                inv::set_user_attributes(c, &name, &attrs, now)
            })?;
            println!("set {} attribute(s) of user {name}", attrs.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn group(paths: &Paths, cmd: GroupCommand) -> anyhow::Result<ExitCode> {
    let mut conn = open_db(paths)?;
    let now = now_unix();
    let (group, user, member) = match cmd {
        GroupCommand::Add { group, user } => (group, user, true),
        GroupCommand::Remove { group, user } => (group, user, false),
    };
    let changed = store::write(&mut conn, |c| {
        inv::set_membership(c, &group, &user, member, now)
    })?;
    let what = match (member, changed) {
        (true, true) => format!("added {user} to group {group}"),
        (true, false) => format!("{user} was already in group {group}"),
        (false, true) => format!("removed {user} from group {group}"),
        (false, false) => format!("{user} was not in group {group}"),
    };
    println!("{what}");
    Ok(ExitCode::SUCCESS)
}

pub fn device(paths: &Paths, cmd: DeviceCommand) -> anyhow::Result<ExitCode> {
    let now = now_unix();
    match cmd {
        DeviceCommand::Add {
            user,
            keyfile,
            name,
        } => {
            // The key is checked before the database is even opened.
            let key = read_subject_key(&keyfile)?;
            let fingerprint = key.fingerprint();
            let key_type = key.algorithm();
            let public_key = key.openssh();
            let new = inv::NewDevice {
                fingerprint: &fingerprint,
                key_type: &key_type,
                public_key: &public_key,
                label: &key.comment,
            };
            let mut conn = open_db(paths)?;
            store::write(&mut conn, |c| inv::add_device(c, &user, &name, &new, now))?;
            println!("enrolled {key_type} key {fingerprint} as device {name} of user {user}");
        }
        DeviceCommand::List => {
            let conn = open_db(paths)?;
            for d in inv::list_devices(&conn)? {
                println!(
                    "{:<24} {:<16} {:<9} {:<34} {} {}",
                    d.name,
                    d.user,
                    d.status.as_str(),
                    d.key_type,
                    d.fingerprint,
                    d.label
                );
            }
        }
        DeviceCommand::Disable { name } => {
            let mut conn = open_db(paths)?;
            let changed = store::write(&mut conn, |c| inv::disable_device(c, &name, now))?;
            match changed {
                Some(serials) => println!(
                    "disabled device {name}; its key goes into the KRL{}",
                    revoked_note(&serials)
                ),
                None => println!("device {name} was already disabled"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn posture(paths: &Paths, cmd: PostureCommand) -> anyhow::Result<ExitCode> {
    let now = now_unix();
    let mut conn = open_db(paths)?;
    match cmd {
        PostureCommand::Set { device, attributes } => {
            let attrs = inv::parse_assignments(&attributes)?;
            store::write(&mut conn, |c| inv::set_posture(c, &device, &attrs, now))?;
            println!(
                "set {} posture attribute(s) of device {device}",
                attrs.len()
            );
        }
        PostureCommand::Import { file } => {
            let reports = inv::read_import(&file, now)?;
            let shown = file.display().to_string();
            let done = store::write(&mut conn, |c| inv::import_posture(c, &shown, &reports, now))
                .with_context(|| format!("posture import of {shown} refused"))?;
            println!("imported {} posture report(s) from {shown}", done.reports);
            if done.kept_newer > 0 {
                println!(
                    "note: {} attribute(s) kept the newer value already stored (the newest report wins)",
                    done.kept_newer
                );
            }
        }
        PostureCommand::Show { device } => {
            let (id, status) = inv::device_id(&conn, &device)?;
            println!("device: {device} ({})", status.as_str());
            let p = inv::posture(&conn, id)?;
            if p.is_empty() {
                println!("no posture reported");
            }
            for (k, a) in p {
                println!(
                    "  device.{k} = {} (reported {})",
                    a.value,
                    crate::server::commands::ago(now, a.reported_at)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "; revoked N live certificate(s): serial ..." or nothing.
fn revoked_note(serials: &[u64]) -> String {
    if serials.is_empty() {
        return String::new();
    }
    let list: Vec<String> = serials.iter().map(u64::to_string).collect();
    format!(
        "; revoked {} live certificate(s): serial {}",
        serials.len(),
        list.join(", ")
    )
}

fn join(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}
