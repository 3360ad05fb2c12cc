//! A shared counter in one key, changed by compare-and-swap on the key's modification
//! revision, so concurrent increments never lose one another.

use cairn_client::{Client, Compare, Op, Txn};

use crate::Error;

/// See the module docs. The value is stored as decimal text, readable with `etcdctl get`.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// let visits = cairn_recipes::Counter::new(client, "counters/visits");
/// let now = visits.add(1).await?;
/// assert!(now >= 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Counter {
    client: Client,
    key: String,
}

impl Counter {
    /// The counter at `key` (absent counts as 0).
    pub fn new(client: Client, key: &str) -> Counter {
        Counter {
            client,
            key: key.to_string(),
        }
    }

    /// The current value.
    pub async fn get(&self) -> Result<i64, Error> {
        Ok(self.read().await?.0)
    }

    /// Adds `delta` (which may be negative) and returns the new value. Contention is retried
    /// here; an error whose request may have applied (leader changed, timeout) is returned,
    /// as only the caller can tell whether adding again is right.
    pub async fn add(&self, delta: i64) -> Result<i64, Error> {
        let key = self.key.as_str();
        loop {
            let (value, mod_rev) = self.read().await?;
            let next = value.checked_add(delta).ok_or(Error::Overflow)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key).eq(mod_rev)])
                .and_then([Op::put(key, next.to_string(), None)]);
            if self.client.txn(txn).await?.succeeded {
                return Ok(next);
            }
            // Someone else changed it in between: read again.
        }
    }

    /// Value and modification revision (0 when absent).
    async fn read(&self) -> Result<(i64, i64), Error> {
        let r = self.client.get(self.key.as_str(), None).await?;
        match r.kvs.first() {
            None => Ok((0, 0)),
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let value = text
                    .trim()
                    .parse()
                    .map_err(|_| Error::NotACounter(text.into_owned()))?;
                Ok((value, kv.mod_revision))
            }
        }
    }
}
