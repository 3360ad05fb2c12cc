//! Leases (etcd's `lease` package): the lessor holds every lease with its TTL, the keys
//! attached to it and, on the leader, its expiry deadline.
//!
//! Grant, revoke and attachment changes are replicated (they happen in the apply loop, in
//! log order, so every member agrees). Deadlines are not: only the leader tracks them, and a
//! member that becomes leader restarts every deadline from the full TTL, so an election never
//! expires a healthy lease.

mod lessor;

pub use lessor::{LeaseInfo, Lessor, MAX_LEASE_TTL};
