//! The EROFS on-disk format: a streaming image writer, a bounded reader and
//! a validator for untrusted images.
//!
//! This crate is pure: no daemons, no mounts, no async. Everything that
//! reads input treats it as hostile and returns errors instead of
//! panicking.

pub mod format;
pub mod fsck;
pub mod merge;
pub mod pagebuf;
pub mod reader;
pub mod tree;
pub mod vmdk;
pub mod writer;
