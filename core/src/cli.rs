//! The `cairn` command: parse flags, set up logging, run a member until SIGINT/SIGTERM.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::server::Server;

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the `cairn` binary; returns the process exit code.
pub fn main() -> i32 {
    let cfg = Config::parse();
    let filter = match EnvFilter::try_new(&cfg.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("cairn: --log-level {:?}: {e}", cfg.log_level);
            return 2;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let server = match Server::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return 1;
            }
        };
        let mut removed = server.removed();
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            _ = removed.wait_for(|r| *r) => {
                tracing::warn!("this member was removed from the cluster; shutting down")
            }
        }
        server.stop().await;
        0
    })
}
