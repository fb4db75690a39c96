//! The mailbox ring, compiled alone for its loom model (see Cargo.toml).
#![cfg(chatbus_loom)]

#[path = "../../src/mailbox.rs"]
pub mod mailbox;
