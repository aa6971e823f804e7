//! The daemon's TOML configuration. Keys are the ones containerd's
//! built-in erofs snapshotter uses, so a config moves between the two.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How lower layers reach the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// The daemon mounts each layer itself and returns plain overlay
    /// mounts: works with every client and containerd 2.0/2.1.
    #[default]
    SelfMount,
    /// Return `erofs` mounts plus templates for containerd ≥ 2.2's mount
    /// manager.
    MountManager,
}

/// Who runs the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// runc/crun on this host: overlay mounts over mounted layers.
    #[default]
    Host,
    /// A VM runtime (Kata, QEMU): raw image paths, no host mounts for
    /// containers; an ext4 image as each container's writable layer.
    Vm,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "host" => Ok(Mode::Host),
            "vm" => Ok(Mode::Vm),
            _ => Err(format!("mode {s:?}: expected \"host\" or \"vm\"")),
        }
    }
}

/// When a layer image the differ writes reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LayerSync {
    /// Answer Apply at once and fsync in the background; an image a crash
    /// tore is found at the next start and rebuilt from its blob.
    #[default]
    Deferred,
    /// fsync before answering Apply.
    Sync,
}

/// The writable layer of a VM-mode container when `default_size` is 0.
pub const VM_DEFAULT_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_root")]
    pub root_path: PathBuf,
    #[serde(default = "default_address")]
    pub address: PathBuf,
    #[serde(default)]
    pub mount_mode: MountMode,
    /// Appended to every overlay mount's options.
    #[serde(default)]
    pub ovl_mount_options: Vec<String>,
    /// FS_IMMUTABLE_FL on committed layer images.
    #[serde(default)]
    pub set_immutable: bool,
    /// fs-verity on committed layer images where supported.
    #[serde(default)]
    pub enable_fsverity: bool,
    /// Size in bytes of an ext4 upper per active snapshot (quota); 0 = a
    /// plain directory upper.
    #[serde(default)]
    pub default_size: u64,
    /// containerd's gRPC socket, where the differ reads layer blobs
    /// (content.v1) and writes the layers Compare produces.
    #[serde(default = "default_containerd_address")]
    pub containerd_address: PathBuf,
    /// containerd's content store root
    /// (`<containerd root>/io.containerd.content.v1.content`): when set,
    /// Apply reads blobs from there directly instead of over gRPC.
    #[serde(default)]
    pub content_dir: Option<PathBuf>,
    /// Apply writes tar-index layers (512-byte-block metadata followed by
    /// the tar itself) instead of converting the file data.
    #[serde(default)]
    pub enable_tar_index: bool,
    /// When the differ's images are fsynced: in the background after
    /// Apply answers (default), or before.
    #[serde(default)]
    pub layer_sync: LayerSync,
    /// Deferred fsyncs start after this long without snapshot activity
    /// (at most 30 s after Commit).
    #[serde(default = "default_layer_sync_idle_ms")]
    pub layer_sync_idle_ms: u64,
    /// `host:port` for a Prometheus text endpoint at `/metrics`; off when
    /// unset.
    #[serde(default)]
    pub metrics_address: Option<String>,
}

fn default_root() -> PathBuf {
    PathBuf::from("/var/lib/erofs-snapshotter")
}

fn default_layer_sync_idle_ms() -> u64 {
    1000
}

fn default_containerd_address() -> PathBuf {
    PathBuf::from("/run/containerd/containerd.sock")
}

fn default_address() -> PathBuf {
    PathBuf::from("/run/erofs-snapshotter/snapshotter.sock")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::default(),
            root_path: default_root(),
            address: default_address(),
            mount_mode: MountMode::default(),
            ovl_mount_options: Vec::new(),
            set_immutable: false,
            enable_fsverity: false,
            default_size: 0,
            containerd_address: default_containerd_address(),
            content_dir: None,
            enable_tar_index: false,
            layer_sync: LayerSync::Deferred,
            layer_sync_idle_ms: default_layer_sync_idle_ms(),
            metrics_address: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(cfg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_names() {
        let c: Config = toml::from_str(
            r#"
            root_path = "/r"
            ovl_mount_options = ["index=off"]
            set_immutable = true
            "#,
        )
        .unwrap();
        assert_eq!(c.root_path, PathBuf::from("/r"));
        assert_eq!(c.ovl_mount_options, ["index=off"]);
        assert!(c.set_immutable);
        assert_eq!(c.mount_mode, MountMode::SelfMount);
    }

    #[test]
    fn unknown_keys_are_refused_and_modes_parse() {
        assert!(toml::from_str::<Config>("nope = 1").is_err());
        let c: Config = toml::from_str(r#"mount_mode = "mount-manager""#).unwrap();
        assert_eq!(c.mount_mode, MountMode::MountManager);
        let c: Config = toml::from_str(r#"mode = "vm""#).unwrap();
        assert_eq!(c.mode, Mode::Vm);
        assert!(toml::from_str::<Config>(r#"mode = "guest""#).is_err());
        assert_eq!("vm".parse::<Mode>(), Ok(Mode::Vm));
        assert!("VM".parse::<Mode>().is_err());
        assert_eq!(Config::default().layer_sync, LayerSync::Deferred);
        let c: Config = toml::from_str(r#"layer_sync = "sync""#).unwrap();
        assert_eq!(c.layer_sync, LayerSync::Sync);
        assert!(toml::from_str::<Config>(r#"layer_sync = "never""#).is_err());
    }
}
