//! Apply one layer blob file into a directory the way the differ does
//! (fetch+hash | inflate | convert, fsync), and print the stage timings:
//! the differ without containerd around it, for profiling.
//!
//!     cargo run --release -p snapshotter --example apply -- BLOB MEDIA_TYPE DIR

use std::fs::File;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, blob, media_type, dir] = args.as_slice() else {
        return Err("usage: apply BLOB MEDIA_TYPE DIR".into());
    };
    let bytes = std::fs::metadata(blob)?.len();
    let digest = {
        let mut r = layer::DigestReader::new(File::open(blob)?);
        std::io::copy(&mut r, &mut std::io::sink())?;
        r.digest().to_string()
    };
    let b = snapshotter::differ::Blob {
        namespace: String::new(),
        media_type: media_type.clone(),
        digest,
        size: bytes,
    };
    let applied = snapshotter::differ::apply(
        std::path::Path::new(dir),
        &b,
        Box::new(File::open(blob)?),
        &snapshotter::differ::ApplyOptions::default(),
    )?;
    for (k, v) in snapshotter::metrics::apply_fields(&applied.timings) {
        println!("{k}={v}");
    }
    Ok(())
}
