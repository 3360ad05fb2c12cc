//! The fault suite: clusters of real member processes under SIGKILL, SIGSTOP and network
//! partitions while clients work, with the histories checked afterwards (linearizable
//! registers, gap-free watches, fenced locks, expiring leases, no lost writes, equal
//! hashes). It is a test binary of its own: cargo runs test binaries one after another, so
//! the timing bounds here are measured without the rest of the suite on the two cores.
//!
//! `CAIRN_FAULTS_SECS` sets how long faults are injected per cluster (the short form, in
//! CI, runs 30 s per cluster size; `scripts/faults-long.sh` runs the long form) and
//! `CAIRN_FAULTS_SEED` replays a fault schedule.

#![allow(dead_code)]

#[path = "../it/harness.rs"]
mod harness;

#[path = "../it/cluster_harness.rs"]
mod cluster_harness;

#[path = "../../src/clock.rs"]
mod clock;

mod failover;
mod lazyfs;
mod leases;
mod linearizability;
mod locks;
mod nemesis;
mod netns;
mod power;
mod register;
mod soak;
mod suite;
mod watchers;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the run began: the one clock every history is recorded on.
pub fn now() -> u64 {
    START.elapsed().as_nanos() as u64
}

pub fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// A request without an answer by then counts as indeterminate (or failed, for reads).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// `msg` with the workloads' request deadline.
pub fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(REQUEST_TIMEOUT);
    req
}

/// A channel that connects when first used and again after the member restarts.
pub fn lazy_channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}
