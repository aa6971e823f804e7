//! `erofs-snapshotter`: the daemon and its command-line tools.

mod convert;
mod inspect;
mod merge;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "containerd snapshotter and differ keeping each layer as one EROFS image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a layer (tar, tar.gz, tar.zst, `-` for stdin, or a
    /// directory) into an EROFS image.
    Convert(convert::Args),
    /// Show an image's superblock, list its entries or print a file.
    Inspect(inspect::InspectArgs),
    /// Validate an untrusted image against every structural rule.
    Fsck(inspect::FsckArgs),
    /// Merge layer images (oldest first) into one metadata-only image for
    /// VM mode, optionally with a VMDK descriptor of fsmeta plus layers.
    Merge(merge::Args),
    /// Serve containerd's Snapshots API on a unix socket (a proxy plugin).
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Fsck(a) => inspect::fsck(a),
        Command::Merge(a) => merge::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
