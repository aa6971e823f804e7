//! The snapshotter daemon's library: metadata store, filters, on-disk
//! layout, mounts and the containerd Snapshots service.

pub mod config;
pub mod filters;
pub mod layout;
pub mod mounts;
pub mod service;
pub mod snapshotter;
pub mod store;
