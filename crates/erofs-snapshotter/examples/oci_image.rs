//! Pack layer directories into an OCI archive that `ctr images import`
//! accepts (used by `scripts/demo.sh`; the containerd integration test
//! uses the same builder, `tests/common/oci.rs`).
//!
//! ```text
//! cargo run --example oci_image -- --name localhost/demo:1 --out image.tar \
//!     --cmd /bin/sh LAYER1_DIR LAYER2_DIR
//! ```
//!
//! Whiteouts are plain files named `.wh.<name>` in a layer directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[allow(dead_code)]
#[path = "../tests/common/oci.rs"]
mod oci;

#[derive(Parser)]
struct Args {
    /// Image reference, e.g. `localhost/erofs-demo:1`.
    #[arg(long)]
    name: String,
    /// Where to write the OCI archive.
    #[arg(long)]
    out: PathBuf,
    /// The image's default command (repeat for arguments).
    #[arg(long, default_value = "/bin/sh")]
    cmd: Vec<String>,
    /// Layer directories, bottom first.
    #[arg(required = true)]
    layers: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let spec = oci::ImageSpec {
        cmd: a.cmd.clone(),
        ..oci::ImageSpec::new(&a.name, &[])
    };
    let layers: Vec<&std::path::Path> = a.layers.iter().map(|p| p.as_path()).collect();
    let built = oci::build_archive(&spec, &layers, &a.out)
        .with_context(|| format!("building {}", a.out.display()))?;
    println!("image:    {}", a.name);
    println!("manifest: {}", built.manifest);
    println!("config:   {}", built.config);
    for (i, (d, c)) in built.diff_ids.iter().zip(&built.chain_ids).enumerate() {
        println!("layer {}:  diff_id {d}  chain_id {c}", i + 1);
    }
    Ok(())
}
