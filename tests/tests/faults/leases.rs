//! Workload (4): clients grant short leases, attach a key, renew a few times and then stop
//! renewing; readers watch for the key to go. A lease ends its TTL after the last renewal
//! acknowledged; its key may outlive that by at most one more TTL and an election timeout
//! (a new leader restarts every lease's clock, extended by the election's length, as
//! etcd's does) after the last fault that could have moved leadership.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest, RangeRequest,
};
use rand::{Rng, SeedableRng};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{lazy_channel, nanos, now, timed};

/// One lease's life as the clients saw it (run clock).
#[derive(Debug)]
pub struct Life {
    pub key: String,
    /// The last acknowledged renewal (or the grant) plus the TTL.
    pub ends: u64,
    /// The invocation time of the last read that still found the key.
    pub last_seen: Option<u64>,
    /// Whether a read found the key gone.
    pub gone: bool,
}

/// Starts `clients` lease clients with leases of `ttl`, until `stop`.
pub fn spawn(
    addrs: &[SocketAddr],
    clients: usize,
    ttl: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Life>> {
    let channels: Vec<Channel> = addrs.iter().map(|a| lazy_channel(*a)).collect();
    let tasks: Vec<_> = (0..clients)
        .map(|c| tokio::spawn(client(c, channels.clone(), ttl, seed, stop.clone())))
        .collect();
    tokio::spawn(async move {
        let mut lives = Vec::new();
        for t in tasks {
            lives.extend(t.await.expect("lease client"));
        }
        lives
    })
}

async fn client(
    c: usize,
    channels: Vec<Channel>,
    ttl: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Life> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((c as u64 + 101) * 0x51_7cc1));
    let pick = |rng: &mut rand::rngs::StdRng| channels[rng.gen_range(0..channels.len())].clone();
    let mut lives = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let granted = LeaseClient::new(pick(&mut rng))
            .lease_grant(timed(LeaseGrantRequest {
                ttl: ttl.as_secs() as i64,
                id: 0,
            }))
            .await;
        let Ok(granted) = granted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut ends = now() + nanos(ttl);
        let lease = granted.into_inner().id;
        n += 1;
        let key = format!("lease/{c}/{n}");
        // Whether or not the put is acknowledged, a key it made must go with the lease.
        let _ = KvClient::new(pick(&mut rng))
            .put(timed(PutRequest {
                key: key.clone().into(),
                value: b"held".to_vec(),
                lease,
                ..Default::default()
            }))
            .await;
        for _ in 0..rng.gen_range(0..4) {
            tokio::time::sleep(ttl / 3).await;
            if renew(pick(&mut rng), lease).await {
                ends = now() + nanos(ttl);
            }
        }
        let mut life = Life {
            key: key.clone(),
            ends,
            last_seen: None,
            gone: false,
        };
        // Reads until the key is gone, long past any bound the check could allow.
        while now() < ends + nanos(Duration::from_secs(60)) {
            let call = now();
            let read = KvClient::new(pick(&mut rng))
                .range(timed(RangeRequest {
                    key: key.clone().into(),
                    ..Default::default()
                }))
                .await;
            match read {
                Ok(r) if r.get_ref().kvs.is_empty() => {
                    life.gone = true;
                    break;
                }
                Ok(_) => life.last_seen = Some(call),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lives.push(life);
    }
    lives
}

/// One keep-alive round trip; true if the lease was renewed.
async fn renew(channel: Channel, lease: i64) -> bool {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.send(LeaseKeepAliveRequest { id: lease }).await;
    let mut client = LeaseClient::new(channel);
    let answer = async {
        let call = client.lease_keep_alive(timed(tokio_stream::wrappers::ReceiverStream::new(rx)));
        let mut stream = call.await.ok()?.into_inner();
        stream.next().await?.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), answer).await,
        Ok(Some(r)) if r.ttl > 0
    )
}

/// The latest a key of a lease ending at `ends` may still be seen: one TTL and an election
/// timeout past the end, or past the last disturbance before that (a leader change
/// restarts lease clocks; electing takes up to two election timeouts).
pub fn allowed_until(ends: u64, ttl: Duration, election: Duration, disturbances: &[u64]) -> u64 {
    let (ttl, election) = (nanos(ttl), nanos(election));
    let mut limit = ends + ttl + election;
    for &d in disturbances {
        if d <= limit {
            limit = limit.max(d + 2 * election + ttl + election);
        }
    }
    limit
}

/// Checks every lease's key went in time.
pub fn check(
    lives: &[Life],
    ttl: Duration,
    election: Duration,
    disturbances: &[u64],
) -> Result<(), String> {
    for life in lives {
        let limit = allowed_until(life.ends, ttl, election, disturbances);
        if !life.gone {
            return Err(format!("{} never went: {life:?}", life.key));
        }
        if let Some(seen) = life.last_seen {
            if seen > limit {
                return Err(format!(
                    "{} outlived its lease by {:?} (allowed {:?}): {life:?}",
                    life.key,
                    Duration::from_nanos(seen - life.ends),
                    Duration::from_nanos(limit - life.ends)
                ));
            }
        }
    }
    Ok(())
}
