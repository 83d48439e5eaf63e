//! `drawbridge-edge`: a thin shell over the library.

fn main() -> std::process::ExitCode {
    // Arenas limited before the runtime's (and the sessions') threads exist.
    drawbridge_tunnel::malloc::run_main(run())
}

async fn run() -> std::process::ExitCode {
    // A build with DRAWBRIDGE_EDGE_VERSION set reports that version (a second
    // build for update tests recompiles only this file).
    drawbridge_edge::set_version(
        option_env!("DRAWBRIDGE_EDGE_VERSION").unwrap_or(env!("CARGO_PKG_VERSION")),
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match drawbridge_edge::cli::main().await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
