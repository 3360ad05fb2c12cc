//! Auto-compaction on the leader (`--auto-compaction-mode`, `--auto-compaction-retention`,
//! etcd 3.4's rules):
//! - `periodic`: the retention is a duration (`1h`, `30m`, or a bare number of hours). The
//!   revision is sampled every tenth of min(retention, 1 h); every min(retention, 1 h) the
//!   history is compacted at the newest revision sampled at least one retention ago, so at
//!   least one retention of history is kept (and at most about one more interval).
//! - `revision`: the retention is a number of revisions; every 5 minutes the history is
//!   compacted at the current revision minus the retention.
//!
//! Compaction goes through raft like a client's, so every member compacts at the same
//! revision; only the leader's compactor proposes.

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

/// The revision to compact at in periodic mode: the newest sample at least `period` old, so
/// at least one retention of history stays readable.
fn periodic_target(
    samples: &VecDeque<(Instant, i64)>,
    now: Instant,
    period: Duration,
) -> Option<i64> {
    samples
        .iter()
        .rev()
        .find(|(at, _)| now.saturating_duration_since(*at) >= period)
        .map(|(_, rev)| *rev)
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
    // (when, revision) samples, oldest first, a little over one retention's worth. Every
    // member samples, leader or not, so a new leader already knows the revisions of the
    // past retention and compacts no more than a leader that had led all along.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(sample.max(Duration::from_millis(1)));
    // A stalled runtime must not fire a burst of late samples.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = super::stopped(&mut shutdown) => return,
        }
        let now = Instant::now();
        samples.push_back((now, node.store.current_rev()));
        if let Retention::Periodic(period) = retention {
            // Keep the newest sample older than the period; drop those before it.
            while samples
                .get(1)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= period)
            {
                samples.pop_front();
            }
        }
        if !node.is_leader() || now.saturating_duration_since(last) < every {
            continue;
        }
        let target = match retention {
            Retention::Periodic(period) => periodic_target(&samples, now, period),
            Retention::Revision(n) => Some(node.store.current_rev() - n),
        };
        let Some(target) = target.filter(|t| *t > 0 && *t > node.store.compact_rev()) else {
            last = now;
            continue;
        };
        if compact(&node, target).await {
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_mode_compacts_at_the_newest_revision_a_retention_old() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let samples: VecDeque<(Instant, i64)> = [(at(0), 10), (at(100), 20), (at(200), 30)]
            .into_iter()
            .collect();
        let period = Duration::from_millis(150);
        assert_eq!(periodic_target(&samples, at(260), period), Some(20));
        assert_eq!(periodic_target(&samples, at(120), period), None);
        assert_eq!(periodic_target(&samples, at(400), period), Some(30));
    }

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
