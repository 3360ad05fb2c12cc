//! Several locks taken together (Curator's InterProcessMultiLock). The locks are taken one
//! by one in the order of their names, whatever order the caller gave: two callers taking
//! overlapping sets then always meet on the same first contended lock, so neither can hold
//! one the other waits for while waiting for one the other holds.

use std::time::Duration;

use crate::{Error, Mutex, MutexGuard, Session};

/// See the module docs.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::MultiLock;
/// let both = MultiLock::new(&session, ["locks/accounts/alice", "locks/accounts/bob"]);
/// let guard = both.lock().await?;
/// // … move money between the two …
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
pub struct MultiLock<'s> {
    session: &'s Session,
    names: Vec<String>,
}

/// Proof of holding every lock of a [`MultiLock`]; releases them when dropped.
pub struct MultiGuard<'s> {
    guards: Vec<(String, MutexGuard<'s>)>,
}

impl<'s> MultiLock<'s> {
    /// The locks `names` (each a [`Mutex`] name), for `session`.
    pub fn new<N: AsRef<str>>(
        session: &'s Session,
        names: impl IntoIterator<Item = N>,
    ) -> MultiLock<'s> {
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().trim_end_matches('/').to_string())
            .collect();
        names.sort();
        names.dedup();
        MultiLock { session, names }
    }

    /// Waits until this session holds every lock. Dropped half-way (a timeout, a cancelled
    /// task), the locks taken so far are released and the waiting key removed.
    pub async fn lock(&self) -> Result<MultiGuard<'s>, Error> {
        let mut guards = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let guard = Mutex::new(self.session, name).lock().await?;
            guards.push((name.clone(), guard));
        }
        Ok(MultiGuard { guards })
    }

    /// Like [`MultiLock::lock`], giving up after `limit` (holding none of the locks).
    pub async fn lock_timeout(&self, limit: Duration) -> Result<MultiGuard<'s>, Error> {
        tokio::time::timeout(limit, self.lock())
            .await
            .map_err(|_| Error::Timeout)?
    }
}

impl MultiGuard<'_> {
    /// Each lock's name with its fencing token, in name order.
    pub fn fencing_tokens(&self) -> Vec<(&str, i64)> {
        self.guards
            .iter()
            .map(|(n, g)| (n.as_str(), g.fencing_token()))
            .collect()
    }

    /// Releases every lock.
    pub async fn unlock(self) -> Result<(), Error> {
        for (_, g) in self.guards {
            g.unlock().await?;
        }
        Ok(())
    }

    /// Resolves when any of the locks is no longer held.
    pub async fn lost(&self) {
        if self.guards.is_empty() {
            // Holding nothing, nothing can be lost.
            return std::future::pending().await;
        }
        let all = self.guards.iter().map(|(_, g)| Box::pin(g.lost()));
        futures::future::select_all(all).await;
    }
}
