//! `krill`: submit scripts to a Krill worker pool and get their results.

#![forbid(unsafe_code)]

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    broker::cli::main().await
}
