//! Workload (1): clients read, write and compare-and-set a few registers through different
//! members, recording every operation's invocation, answer and timing for the
//! linearizability checker. Values are unique per write, so every read names the write it
//! saw. Registers rotate every few seconds, which keeps each history short enough to check
//! exhaustively.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    kv_client::KvClient,
    request_op, Compare, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::linearizability::{Op, Operation, Outcome};
use crate::{lazy_channel, now, timed};

/// How long one set of registers is in use.
const EPOCH: Duration = Duration::from_secs(3);
/// Registers in use at a time.
const REGISTERS: u64 = 4;

/// Every operation, by register key.
pub type Histories = BTreeMap<String, Vec<Operation>>;

/// Starts `clients` clients, client `c` talking to member `c % members`, until `stop`.
pub fn spawn(
    addrs: &[SocketAddr],
    clients: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Histories> {
    let histories: Arc<Mutex<Histories>> = Arc::default();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let kv = KvClient::new(lazy_channel(addrs[c % addrs.len()]));
            tokio::spawn(client(c, kv, seed, stop.clone(), histories.clone()))
        })
        .collect();
    tokio::spawn(async move {
        for t in tasks {
            t.await.expect("register client");
        }
        std::mem::take(&mut *histories.lock().expect("lock"))
    })
}

/// The revision and member an answer's header names.
fn header(h: Option<&ResponseHeader>) -> (i64, u64) {
    h.map_or((0, 0), |h| (h.revision, h.member_id))
}

fn decode(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("register values are numbers")
}

async fn client(
    c: usize,
    mut kv: KvClient<Channel>,
    seed: u64,
    stop: Arc<AtomicBool>,
    histories: Arc<Mutex<Histories>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((c as u64 + 1) * 0x9e37_79b9));
    // The last value this client saw per register: the likeliest to make a CAS succeed.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let epoch = now() / crate::nanos(EPOCH);
        let key = format!("reg/{epoch}/{}", rng.gen_range(0..REGISTERS));
        let unique = (c as u64 + 1) * 1_000_000_000 + written;
        let op = match rng.gen_range(0..4) {
            0 | 1 => Op::Read,
            2 => {
                written += 1;
                Op::Write(unique)
            }
            _ => {
                written += 1;
                let expect = last
                    .get(&key)
                    .copied()
                    .unwrap_or_else(|| rng.gen_range(0..3));
                Op::Cas {
                    expect,
                    new: unique,
                }
            }
        };
        let call = now();
        let mut seen = (0, 0);
        let outcome = match &op {
            Op::Read => {
                let r = kv
                    .range(timed(RangeRequest {
                        key: key.clone().into(),
                        ..Default::default()
                    }))
                    .await;
                match r {
                    Ok(r) => {
                        let r = r.into_inner();
                        seen = header(r.header.as_ref());
                        let v = r.kvs.first().map(|kv| decode(&kv.value));
                        if let Some(v) = v {
                            last.insert(key.clone(), v);
                        }
                        Outcome::Read(v)
                    }
                    Err(_) => Outcome::Unknown,
                }
            }
            Op::Write(v) => {
                let r = kv
                    .put(timed(PutRequest {
                        key: key.clone().into(),
                        value: v.to_string().into(),
                        ..Default::default()
                    }))
                    .await;
                match r {
                    Ok(r) => {
                        seen = header(r.get_ref().header.as_ref());
                        last.insert(key.clone(), *v);
                        Outcome::Written
                    }
                    Err(_) => Outcome::Unknown,
                }
            }
            Op::Cas { expect, new } => {
                let r = kv
                    .txn(timed(TxnRequest {
                        compare: vec![Compare {
                            key: key.clone().into(),
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Value as i32,
                            target_union: Some(TargetUnion::Value(expect.to_string().into())),
                            ..Default::default()
                        }],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: key.clone().into(),
                                value: new.to_string().into(),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    }))
                    .await;
                match r {
                    Ok(r) => {
                        let r = r.into_inner();
                        seen = header(r.header.as_ref());
                        let ok = r.succeeded;
                        if ok {
                            last.insert(key.clone(), *new);
                        }
                        Outcome::Cas(ok)
                    }
                    Err(_) => Outcome::Unknown,
                }
            }
        };
        let ret = if outcome == Outcome::Unknown {
            u64::MAX
        } else {
            now()
        };
        let failed = outcome == Outcome::Unknown;
        // A read without an answer did nothing anyone could see: it constrains no order.
        if !(failed && op == Op::Read) {
            histories
                .lock()
                .expect("lock")
                .entry(key)
                .or_default()
                .push(Operation {
                    client: c,
                    op,
                    outcome,
                    call,
                    ret,
                    rev: seen.0,
                    member: seen.1,
                });
        }
        if failed {
            // The member is down or cut off; do not spin on it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..10))).await;
        }
    }
}
