//! The member's logs: one `tracing` subscriber on stderr, text (coloured only on a
//! terminal) or JSON lines; raft-rs's `slog` records come through `raft::logger`, and the
//! storage engine's `log` records through the bridge here, at warning and above unless the
//! level asks for more (their info lines narrate every memtable flush).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber for `--log-level` and `--log-format`.
pub fn init(level: &str, format: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let storage =
        if level.contains("storage=") || level.starts_with("debug") || level.starts_with("trace") {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Warn
        };
    // A second install (an embedded member after another) keeps the first bridge.
    if log::set_logger(&LogBridge).is_ok() {
        log::set_max_level(storage);
    }
    Ok(())
}

/// Forwards `log` records (fjall's, lsm-tree's) as `tracing` events of target `storage`,
/// with the module they came from, and without the source file paths of the machine that
/// built them.
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let module = r.target();
        let message = r.args();
        match r.level() {
            log::Level::Error => tracing::error!(target: "storage", module, "{message}"),
            log::Level::Warn => tracing::warn!(target: "storage", module, "{message}"),
            log::Level::Info => tracing::info!(target: "storage", module, "{message}"),
            log::Level::Debug => tracing::debug!(target: "storage", module, "{message}"),
            log::Level::Trace => tracing::trace!(target: "storage", module, "{message}"),
        }
    }

    fn flush(&self) {}
}
