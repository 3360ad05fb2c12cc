//! Auto-compaction on the leader (`--auto-compaction-mode`, `--auto-compaction-retention`,
//! etcd 3.4's rules):
//! - `periodic`: the retention is a duration (`1h`, `30m`, or a bare number of hours). The
//!   revision is sampled every tenth of min(retention, 1 h); every min(retention, 1 h) the
//!   history is compacted at the revision sampled one retention ago, so about one retention
//!   of history is kept.
//! - `revision`: the retention is a number of revisions; every 5 minutes the history is
//!   compacted at the current revision minus the retention.
//!
//! Compaction goes through raft like a client's, so every member compacts at the same
//! revision; only the leader's compactor proposes, and it starts over when leadership moves.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::cairnpb::internal_request::Request as Internal;
use cairn_api::etcdserverpb::CompactionRequest;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::node::Node;

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// About this much time of history.
    Periodic(Duration),
    /// This many revisions.
    Revision(i64),
}

/// Reads the two flags; `None` when auto-compaction is off (a zero retention).
pub fn parse(mode: &str, retention: &str) -> Result<Option<Retention>, String> {
    match mode {
        "periodic" => {
            let period = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours * 3600),
                Err(_) => crate::config::parse_duration(retention).map_err(|e| {
                    format!("--auto-compaction-retention: {e} (or a number of hours)")
                })?,
            };
            Ok((!period.is_zero()).then_some(Retention::Periodic(period)))
        }
        "revision" => {
            let revs = retention.parse::<i64>().map_err(|_| {
                format!("--auto-compaction-retention {retention:?}: a number of revisions")
            })?;
            Ok((revs > 0).then_some(Retention::Revision(revs)))
        }
        other => Err(format!(
            "--auto-compaction-mode {other:?}: use periodic or revision"
        )),
    }
}

/// Proposes a compaction at `rev`; true if it was done (or an earlier one already covers it).
async fn compact(node: &Node, rev: i64) -> bool {
    let req = Internal::Compaction(CompactionRequest {
        revision: rev,
        physical: false,
    });
    match node.propose_and_wait(req).await {
        Ok(_) => {
            tracing::info!(rev, "auto-compacted");
            true
        }
        Err(Error::Compacted) => true,
        Err(e) => {
            tracing::warn!(rev, error = %e, "auto-compaction failed; will retry");
            false
        }
    }
}

/// Runs the compactor until shutdown. `revision_interval` is how often revision mode
/// compacts (etcd's fixed 5 minutes, shorter in tests).
pub async fn run(
    node: Arc<Node>,
    retention: Retention,
    revision_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (every, sample) = match retention {
        Retention::Periodic(period) => {
            let every = period.min(Duration::from_secs(3600));
            (every, every / 10)
        }
        Retention::Revision(_) => (revision_interval, revision_interval),
    };
    // Samples of the current revision, newest last, covering one retention.
    let keep = match retention {
        Retention::Periodic(period) => (period.as_nanos() / sample.as_nanos().max(1)) as usize + 1,
        Retention::Revision(_) => 1,
    };
    let mut revs: VecDeque<i64> = VecDeque::new();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(sample.max(Duration::from_millis(1)));
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
        let leader = node.is_leader();
        if leader && !was_leader {
            // A new leader starts its own history of samples and its own interval.
            revs.clear();
            last = Instant::now();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        revs.push_back(node.store.current_rev());
        if revs.len() > keep {
            revs.pop_front();
        }
        if last.elapsed() < every {
            continue;
        }
        let target = match retention {
            Retention::Periodic(_) => revs.front().copied().unwrap_or(0),
            Retention::Revision(n) => node.store.current_rev() - n,
        };
        if target <= node.store.compact_rev() || target <= 0 {
            last = Instant::now();
            continue;
        }
        if compact(&node, target).await {
            last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_flags_read_as_etcd_reads_them() {
        assert_eq!(
            parse("periodic", "1"),
            Ok(Some(Retention::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            parse("periodic", "30m"),
            Ok(Some(Retention::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(parse("periodic", "0"), Ok(None));
        assert_eq!(
            parse("revision", "1000"),
            Ok(Some(Retention::Revision(1000)))
        );
        assert_eq!(parse("revision", "0"), Ok(None));
        assert!(parse("revision", "1h").is_err());
        assert!(parse("hourly", "1").is_err());
    }
}
