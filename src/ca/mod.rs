//! ca
