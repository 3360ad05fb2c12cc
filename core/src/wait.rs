//! Request ids and the registry of requests waiting for their raft entry to be applied.
//!
//! The member that proposes an entry registers a waiter under the entry's request id; the
//! apply loop answers it after the entry's effects are committed to the store. Other members
//! apply the same entry and find no waiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::apply::Applied;
use crate::error::Error;

pub type ApplyResult = Result<Applied, Error>;

/// Waiting requests by id.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, oneshot::Sender<ApplyResult>>>,
}

impl Waiters {
    /// Requests waiting for their entry to apply.
    pub fn pending(&self) -> usize {
        self.map().len()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ApplyResult>>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a waiter for `id`; it is withdrawn when the registration is dropped, so a
    /// request whose client went away (its future dropped) leaves nothing behind.
    pub fn register(&self, id: u64) -> Registration<'_> {
        let (tx, rx) = oneshot::channel();
        self.map().insert(id, tx);
        Registration {
            waiters: self,
            id,
            rx,
        }
    }

    /// Answers the waiter of `id`, if this member holds one.
    pub fn trigger(&self, id: u64, result: ApplyResult) {
        if let Some(tx) = self.map().remove(&id) {
            // The requester may have given up (timeout, disconnect); nothing to do then.
            let _ = tx.send(result);
        }
    }

    /// Answers every waiting request with `err` (their proposals may be lost).
    pub fn fail_all(&self, err: Error) {
        for (_, tx) in self.map().drain() {
            let _ = tx.send(Err(err.clone()));
        }
    }

    pub fn cancel(&self, id: u64) {
        self.map().remove(&id);
    }
}

/// A registered waiter; see [`Waiters::register`].
pub struct Registration<'a> {
    waiters: &'a Waiters,
    id: u64,
    rx: oneshot::Receiver<ApplyResult>,
}

impl Registration<'_> {
    /// The answer, once the entry is applied (an error if the waiter was dropped).
    pub async fn answer(&mut self) -> Result<ApplyResult, oneshot::error::RecvError> {
        (&mut self.rx).await
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.waiters.cancel(self.id);
    }
}

/// Unique request ids, as etcd's idutil: the member id's low 16 bits, then a 48-bit counter
/// seeded from the clock, so ids stay unique across members and restarts.
pub struct IdGenerator {
    prefix: u64,
    counter: AtomicU64,
}

const SUFFIX_BITS: u32 = 48;
const SUFFIX_MASK: u64 = (1 << SUFFIX_BITS) - 1;

impl IdGenerator {
    pub fn new(member_id: u64) -> IdGenerator {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGenerator {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            counter: AtomicU64::new(millis << 8),
        }
    }

    pub fn next(&self) -> u64 {
        self.prefix | (self.counter.fetch_add(1, Ordering::Relaxed) & SUFFIX_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_carry_the_member() {
        let g = IdGenerator::new(0xabcd_1234);
        let (a, b) = (g.next(), g.next());
        assert_ne!(a, b);
        assert_eq!(a >> SUFFIX_BITS, 0x1234);
    }

    #[test]
    fn only_registered_waiters_are_answered() {
        let w = Waiters::default();
        let mut reg = w.register(1);
        w.trigger(2, Err(Error::Timeout));
        assert!(reg.rx.try_recv().is_err());
        w.trigger(1, Err(Error::Timeout));
        assert_eq!(reg.rx.try_recv().unwrap().err(), Some(Error::Timeout));
    }

    #[test]
    fn a_dropped_registration_leaves_no_waiter_behind() {
        let w = Waiters::default();
        let reg = w.register(7);
        assert_eq!(w.pending(), 1);
        drop(reg);
        assert_eq!(w.pending(), 0);
        // As when a cancelled request's proposal is applied later: nobody to answer.
        w.trigger(7, Err(Error::Timeout));
        assert_eq!(w.pending(), 0);
    }
}
