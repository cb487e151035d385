//! `krill-gateway`: thin over `gateway::serve`.

use clap::Parser;
use gateway::serve::{self, Cli, Cmd, TokensCmd};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,sqlx=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // One JSON object a line when asked (as the worker's KRILL_LOG_FORMAT).
    if std::env::var("KRILL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    match cli.cmd {
        Some(Cmd::Tokens(TokensCmd::Add {
            name,
            rights,
            expires,
        })) => {
            println!(
                "{}",
                serve::add_token(&cli.db, &name, &rights, expires).await?
            );
            Ok(())
        }
        Some(Cmd::Tokens(TokensCmd::List { json })) => {
            println!("{}", serve::list_tokens(&cli.db, json).await?);
            Ok(())
        }
        Some(Cmd::Tokens(TokensCmd::Remove { name })) => {
            if !serve::remove_token(&cli.db, &name).await? {
                anyhow::bail!("no token named `{name}`");
            }
            eprintln!("removed token `{name}`: its requests answer 401 from now on");
            Ok(())
        }
        None | Some(Cmd::Serve) => {
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                token.cancel();
            });
            serve::run(&cli.db, cli.serve, shutdown).await
        }
    }
}
