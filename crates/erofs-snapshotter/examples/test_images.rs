//! Build the pull tests' images (`tests/common/images.rs`) as OCI layout
//! directories for `bench/pull.sh`, printing one `NAME LAYOUT LAYERS`
//! line per image.
//!
//! ```text
//! cargo run --release --example test_images -- --work DIR \
//!     --corpus .cache/corpus --bench .cache/bench small many large
//! ```
//!
//! `small` and `large` are cached in `.cache/images`; `many` is built in
//! `--work` (it takes a second).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

#[allow(dead_code)]
#[path = "../tests/common/images.rs"]
mod images;
#[allow(dead_code)]
#[path = "../tests/common/oci.rs"]
mod oci;

#[derive(Parser)]
struct Args {
    /// Where generated images are built.
    #[arg(long)]
    work: PathBuf,
    /// scripts/corpus.sh's directory (for `small`).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// scripts/bench-layer.sh's directory (for `large`).
    #[arg(long)]
    bench: Option<PathBuf>,
    /// Images: small, many, whiteouts, large.
    #[arg(required = true)]
    names: Vec<String>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    for name in &a.names {
        let image = match name.as_str() {
            "small" => {
                let corpus = a.corpus.as_ref().context("small needs --corpus")?;
                images::small(&corpus.join("minbase"))
            }
            "many" => images::many(&a.work.join("many")),
            "whiteouts" => images::whiteouts(oci::Compression::Gzip, &a.work.join("whiteouts")),
            "large" => images::large(a.bench.as_ref().context("large needs --bench")?),
            other => bail!("unknown image {other}"),
        }
        .with_context(|| format!("building {name}"))?;
        println!(
            "{} {} {}",
            image.name,
            image.layout.display(),
            image.built.chain_ids.len()
        );
    }
    Ok(())
}
