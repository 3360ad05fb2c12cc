//! Routes raft-rs's `slog` records into `tracing`, so all logs share one subscriber.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments) -> slog::Result {
        // Member ids in hex, as everywhere else in the member's logs.
        let is_id = matches!(key, "raft_id" | "from" | "to" | "id" | "leader_id" | "lead");
        let text = val.to_string();
        // Writing to a String cannot fail.
        let _ = match text.parse::<u64>() {
            Ok(id) if is_id && id != 0 => write!(self.0, " {key}={id:x}"),
            _ => write!(self.0, " {key}={text}"),
        };
        Ok(())
    }
}

/// raft-rs's info lines that dump whole configurations: detail for debugging.
fn is_dump(msg: &str) -> bool {
    msg.starts_with("switched to configuration")
        || msg.starts_with("newRaft")
        || msg.starts_with("RawNode created")
}

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let (msg, fields) = (record.msg(), fields.0);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{fields}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{fields}"),
            slog::Level::Info if is_dump(&msg.to_string()) => {
                tracing::debug!(target: "raft", "{msg}{fields}")
            }
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{fields}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{fields}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{fields}"),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that forwards to `tracing`.
pub fn logger(member_id: u64) -> slog::Logger {
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("member" => format!("{member_id:x}")),
    )
}
