//! `drawbridge`: a thin shell over the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = drawbridge::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drawbridge::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = e.hint();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
