//! The snapshotter daemon's library: metadata store, filters, on-disk
//! layout, mounts and the containerd Snapshots service.

pub mod config;
pub mod content;
pub mod diff_service;
pub mod differ;
pub mod durability;
pub mod filters;
pub mod layout;
pub mod metrics;
pub mod mounts;
pub mod service;
pub mod snapshotter;
pub mod store;
