//! The certificate authority proper: subject keys, CA and host key files,
//! and the certificate builder (OpenSSH PROTOCOL.certkeys).
//!
//! - [`subject`]: enrolment key files, parsed and refused with one clear
//!   message each, by the rule in [`algorithm`];
//! - [`keys`]: CA keys, generated without ever overwriting and loaded only
//!   with safe permissions; [`host_key`]: the daemon's own host key;
//! - [`options`]: principals, critical options and extensions;
//! - [`cert`]: the builder that signs user certificates, with the
//!   [`signer`] prepared once per key;
//! - [`registry`]: the CA keys the database knows, and the one that signs.

pub mod algorithm;
pub mod cert;
mod files;
pub mod host_key;
pub mod keys;
pub mod krl;
pub mod options;
pub mod registry;
pub mod revocation;
pub mod signer;
pub mod subject;
#[cfg(test)]
mod testutil;
