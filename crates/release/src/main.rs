//! `drawbridge-release`: a thin shell over the library's `cli` module.

fn main() -> std::process::ExitCode {
    match drawbridge_release::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
