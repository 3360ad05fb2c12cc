//! A readers-writer lock: readers create `<name>/read/<lease hex>`, writers
//! `<name>/write/<lease hex>`, all under their sessions' leases. A reader holds once no
//! writer key was created before its own; a writer once no key at all was. Like the
//! [`Mutex`](crate::Mutex), each waiter watches only the newest key it waits for.

use std::time::Duration;

use crate::mutex::acquire;
use crate::{Error, MutexGuard, Session};

/// See the module docs.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// let config = cairn_recipes::RwMutex::new(&session, "locks/config");
/// let reading = config.read().await?; // shared with other readers
/// reading.unlock().await?;
/// let writing = config.write().await?; // alone
/// writing.unlock().await?;
/// # Ok(()) }
/// ```
pub struct RwMutex<'s> {
    session: &'s Session,
    prefix: String,
}

impl<'s> RwMutex<'s> {
    /// The lock `name` (a key prefix), contended for by `session`.
    pub fn new(session: &'s Session, name: &str) -> RwMutex<'s> {
        RwMutex {
            session,
            prefix: format!("{}/", name.trim_end_matches('/')),
        }
    }

    /// Waits until no writer that came before holds or waits, then holds shared.
    pub async fn read(&self) -> Result<MutexGuard<'s>, Error> {
        let (key, writers) = self.read_key();
        acquire(self.session, &key, &writers, true).await
    }

    /// Waits until every earlier reader and writer is gone, then holds alone.
    pub async fn write(&self) -> Result<MutexGuard<'s>, Error> {
        acquire(self.session, &self.write_key(), &self.prefix, true).await
    }

    /// Like [`RwMutex::read`], giving up after `limit` (leaving no trace).
    pub async fn read_timeout(&self, limit: Duration) -> Result<MutexGuard<'s>, Error> {
        tokio::time::timeout(limit, self.read())
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Like [`RwMutex::write`], giving up after `limit` (leaving no trace).
    pub async fn write_timeout(&self, limit: Duration) -> Result<MutexGuard<'s>, Error> {
        tokio::time::timeout(limit, self.write())
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Holds shared only if no writer holds or waits ([`Error::Locked`] otherwise).
    pub async fn try_read(&self) -> Result<MutexGuard<'s>, Error> {
        let (key, writers) = self.read_key();
        acquire(self.session, &key, &writers, false).await
    }

    /// Holds alone only if nobody else holds or waits ([`Error::Locked`] otherwise).
    pub async fn try_write(&self) -> Result<MutexGuard<'s>, Error> {
        acquire(self.session, &self.write_key(), &self.prefix, false).await
    }

    fn read_key(&self) -> (String, String) {
        (
            format!("{}read/{:x}", self.prefix, self.session.lease()),
            format!("{}write/", self.prefix),
        )
    }

    fn write_key(&self) -> String {
        format!("{}write/{:x}", self.prefix, self.session.lease())
    }
}
