//! The `cairn` command: parse flags, set up logging, run a member until SIGINT/SIGTERM.

use clap::Parser;

use crate::apply::Halt;
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

/// The async runtime that serves clients and peers.
///
/// One worker per core less one: the raft thread (log appends and their fsync) and the
/// apply thread run beside the workers on every write, and a worker per core kept them
/// waiting for a core (`TOKIO_WORKER_THREADS` overrides, as in any tokio program).
///
/// Without tokio's LIFO slot, a task woken by another queues behind the tasks already
/// woken instead of running next. When an event wakes the HTTP/2 streams of a thousand
/// watchers, their connection then writes once after all of them rather than once after
/// each (docs/benchmarks.md). Turning it off takes `--cfg tokio_unstable`, which
/// `.cargo/config.toml` sets; a build without it keeps the slot and works the same.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    tracing::info!("built without --cfg tokio_unstable: the runtime keeps its LIFO slot");
    builder.enable_all().build()
}

/// Runs the `cairn` binary; returns the process exit code.
pub fn main() -> i32 {
    let cfg = Config::parse();
    if let Err(e) = crate::logging::init(&cfg.log_level, &cfg.log_format) {
        eprintln!("cairn: {e}");
        return 2;
    }
    let runtime = match runtime() {
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
        let mut halted = server.halted();
        let mut code = 0;
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            h = halted.wait_for(|h| h.is_some()) => match h.ok().and_then(|h| h.clone()) {
                Some(Halt::Removed) => {
                    tracing::warn!("this member was removed from the cluster; shutting down")
                }
                Some(Halt::ApplyFailed(why)) => {
                    tracing::error!(
                        "{why}; this member stops (its data is as of the last batch it applied; \
                         restart it once the cause is fixed, or replace it)"
                    );
                    code = 1;
                }
                None => {}
            },
        }
        server.stop().await;
        code
    })
}
