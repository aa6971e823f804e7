//! Inflate a layer blob to nowhere with the same decoder the converter
//! uses: the floor that `convert` is measured against in
//! `bench/convert.sh`.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let path = std::env::args_os().nth(1);
    let result = (|| -> std::io::Result<u64> {
        let (_, mut r) = layer::compression::open_path(path.as_deref().map(std::path::Path::new))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    })();
    match result {
        Ok(n) => {
            println!("{n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inflate: {e}");
            ExitCode::FAILURE
        }
    }
}
