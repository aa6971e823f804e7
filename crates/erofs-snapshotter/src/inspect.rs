//! `inspect` and `fsck`.

use std::path::PathBuf;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct InspectArgs {
    image: PathBuf,
}

#[derive(clap::Args)]
pub struct FsckArgs {
    image: PathBuf,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    bail!("inspect {}: not yet", a.image.display())
}

pub fn fsck(a: FsckArgs) -> Result<()> {
    bail!("fsck {}: not yet", a.image.display())
}
