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
        // A session that ended on its own is no error of ours: its own exit code.
        Err(e @ drawbridge::Error::SessionEnded { .. }) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            let hint = e.hint();
            let code = e.exit_code();
            eprintln!("error: {:#}", anyhow::Error::from(e));
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            ExitCode::from(code)
        }
    }
}
