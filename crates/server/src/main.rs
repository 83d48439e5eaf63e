//! `drawbridge-server`: a thin shell over the library.

fn main() -> std::process::ExitCode {
    // Arenas limited before the runtime's threads exist.
    drawbridge_tunnel::malloc::run_main(run())
}

async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match drawbridge_server::cli::main().await {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
