//! Bad input, at random: bytes that are not gRPC on the client and peer ports, gRPC calls to
//! every method with random or mutated message bytes, and structured requests with
//! boundary values. Each must get an answer or an error (never an internal error from a
//! handler that gave up) and the member must keep serving: it is a real process, so a
//! panic that takes it down shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Buf, BufMut};
use cairn_api::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, Compare, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message as _;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::harness::{channel, free_port, kv, wait_ready, Process};

/// Sends and receives message bytes as they are, so a test can put anything on the wire
/// inside well-formed gRPC framing.
#[derive(Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Every method on the client port but those that change the membership or raise alarms
/// (a random valid MemberAdd legitimately stops a single member's quorum).
const CLIENT_METHODS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserGet",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
    "/v3electionpb.Election/Resign",
];

/// The peer port's methods, but the fault-injection switch.
const PEER_METHODS: &[&str] = &[
    "/cairnpb.Peer/Stream",
    "/cairnpb.Peer/Snapshot",
    "/cairnpb.Peer/Members",
    "/cairnpb.Peer/LeaseRenew",
    "/cairnpb.Peer/LeaseTimeToLive",
    "/cairnpb.Peer/LearnerReady",
];

/// A single-member Cairn process with both ports known.
fn member() -> (Process, SocketAddr) {
    let (client, peer) = (free_port(), free_port());
    let args = vec![
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        "--log-level=error".into(),
    ];
    let process = Process::member(
        PathBuf::from(env!("CARGO_BIN_EXE_cairn-member")),
        client,
        args,
    );
    (process, ([127, 0, 0, 1], peer).into())
}

/// The member still takes a write and reads it back, promptly.
async fn serves(addr: SocketAddr, what: &str) {
    let check = async {
        let mut kv = kv(&channel(addr).await);
        kv.put(PutRequest {
            key: b"alive".to_vec(),
            value: what.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
        let r = kv
            .range(RangeRequest {
                key: b"alive".to_vec(),
                ..Default::default()
            })
            .await?;
        Ok::<_, tonic::Status>(r.into_inner().kvs[0].value.clone())
    };
    let got = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .unwrap_or_else(|_| panic!("member stopped answering after {what}"))
        .unwrap_or_else(|e| panic!("member fails after {what}: {e}"));
    assert_eq!(got, what.as_bytes());
}

/// Valid requests' encodings, to mutate: mutations of real messages reach deeper into
/// the handlers than uniform noise, which rarely decodes.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            limit: 10,
            revision: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: true,
            ..Default::default()
        }
        .encode_to_vec(),
        TxnRequest {
            compare: vec![Compare {
                key: b"k".to_vec(),
                result: CompareResult::Greater as i32,
                target: CompareTarget::Mod as i32,
                target_union: Some(TargetUnion::ModRevision(1)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"w".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        }
        .encode_to_vec(),
        LeaseGrantRequest { ttl: 5, id: 0 }.encode_to_vec(),
    ]
}

fn random_message(rng: &mut impl Rng) -> Vec<u8> {
    if rng.gen_bool(0.5) {
        let len = rng.gen_range(0..64);
        (0..len).map(|_| rng.gen()).collect()
    } else {
        let seeds = seeds();
        let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..4) {
            if m.is_empty() {
                break;
            }
            let i = rng.gen_range(0..m.len());
            match rng.gen_range(0..3) {
                0 => m[i] = rng.gen(),
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, rng.gen()),
            }
        }
        m
    }
}

/// A random generator from `CAIRN_FUZZ_SEED`, or a fresh seed; the seed is printed, so a
/// failure (whose output the test harness shows) can be replayed.
fn seeded_rng() -> rand::rngs::StdRng {
    let seed = std::env::var("CAIRN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("CAIRN_FUZZ_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Methods whose answer may rightly wait (a lock or leadership someone else holds).
const MAY_BLOCK: &[&str] = &["/v3lockpb.Lock/Lock", "/v3electionpb.Election/Campaign"];

/// How long any other method may take to answer; far above what any takes.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// One gRPC call with `messages` as the request stream. Every method but those that may
/// block must answer (a response or a status), however slowly, and no answer may be an
/// internal error; a stream's messages are then read for a moment (watches and observes
/// stay open), and an error among them is checked the same way.
async fn call(ch: Channel, path: &'static str, messages: Vec<Vec<u8>>) {
    let mut grpc = tonic::client::Grpc::new(ch);
    if grpc.ready().await.is_err() {
        return;
    }
    let request = tonic::Request::new(tokio_stream::iter(messages));
    let answer = grpc.streaming(request, PathAndQuery::from_static(path), Raw);
    let answer = if MAY_BLOCK.contains(&path) {
        match tokio::time::timeout(Duration::from_millis(300), answer).await {
            Ok(a) => a,
            Err(_) => return,
        }
    } else {
        tokio::time::timeout(ANSWER_WITHIN, answer)
            .await
            .unwrap_or_else(|_| panic!("{path} gave no answer within {ANSWER_WITHIN:?}"))
    };
    let not_internal = |status: &tonic::Status| {
        // A message that does not decode is INTERNAL, as grpc-go (so etcd) answers it;
        // any other internal error is a handler that failed.
        assert!(
            status.code() != tonic::Code::Internal || status.message().contains("failed to decode"),
            "{path}: {status:?}"
        );
    };
    match answer {
        Ok(r) => {
            let mut stream = r.into_inner();
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => return,
                        Err(status) => return not_internal(&status),
                    }
                }
            })
            .await;
        }
        Err(status) => not_internal(&status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_to_every_method_get_an_answer_or_an_error() {
    let (process, peer) = member();
    wait_ready(process.addr).await;
    let client_ch = channel(process.addr).await;
    let peer_ch = channel(peer).await;
    let mut rng = seeded_rng();
    for round in 0..20 {
        for path in CLIENT_METHODS {
            let messages = (0..rng.gen_range(1..3))
                .map(|_| random_message(&mut rng))
                .collect();
            call(client_ch.clone(), path, messages).await;
        }
        for path in PEER_METHODS {
            let messages = (0..rng.gen_range(1..3))
                .map(|_| random_message(&mut rng))
                .collect();
            call(peer_ch.clone(), path, messages).await;
        }
        serves(process.addr, &format!("round {round} of random messages")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_the_client_and_peer_ports_do_not_hurt_the_member() {
    let (process, peer) = member();
    wait_ready(process.addr).await;
    let mut rng = seeded_rng();
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for round in 0..40 {
        for addr in [process.addr, peer] {
            let mut bytes: Vec<u8> = match round % 4 {
                // An HTTP/2 connection that goes wrong after the preface.
                0 => PREFACE.to_vec(),
                // A settings frame header with a wild length.
                1 => [PREFACE, &[0xff, 0xff, 0xff, 0x04, 0, 0, 0, 0, 0]].concat(),
                2 => b"POST /v3/kv/range HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
                _ => vec![],
            };
            bytes.extend((0..rng.gen_range(0..4096)).map(|_| rng.gen::<u8>()));
            let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = conn.write_all(&bytes).await;
            // The member answers or closes; either way it must not hold the connection
            // forever waiting for more, nor fall over.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut sink)).await;
        }
    }
    serves(process.addr, "random bytes").await;
}

/// A key or range end: empty, ordinary, binary, invalid UTF-8, `\0` (all keys), or long.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![0]),
        Just(vec![0xff, 0xfe, 0xfd]),
        proptest::collection::vec(any::<u8>(), 1..16),
        "[a-c]{1,3}".prop_map(|s| s.into_bytes()),
        Just(vec![b'k'; 5000]),
    ]
}

fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(-1),
        Just(1),
        Just(i64::MAX),
        Just(i64::MIN),
        -5i64..1000,
    ]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        key(),
        edge_i64(),
        edge_i64(),
        -2i32..4,
        -2i32..6,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        // Mostly unfiltered: a limit only reaches storage without filters, and an
        // unfiltered range with limit i64::MAX once overflowed inside a txn.
        prop_oneof![
            3 => Just((0, 0, 0, 0)),
            1 => (edge_i64(), edge_i64(), edge_i64(), edge_i64()),
        ],
    )
        .prop_map(
            |(key, range_end, limit, revision, order, target, ser, keys, count, m)| RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order: order,
                sort_target: target,
                serializable: ser,
                keys_only: keys,
                count_only: count,
                min_mod_revision: m.0,
                max_mod_revision: m.1,
                min_create_revision: m.2,
                max_create_revision: m.3,
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        proptest::collection::vec(any::<u8>(), 0..64),
        edge_i64(),
        any::<[bool; 3]>(),
    )
        .prop_map(|(key, value, lease, [prev_kv, iv, il])| PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ignore_value: iv,
            ignore_lease: il,
        })
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    let compare = (key(), key(), -1i32..5, -1i32..6, edge_i64()).prop_map(
        |(key, range_end, result, target, n)| Compare {
            key,
            range_end,
            result,
            target,
            target_union: Some(match target {
                0 => TargetUnion::Version(n),
                1 => TargetUnion::CreateRevision(n),
                2 => TargetUnion::ModRevision(n),
                3 => TargetUnion::Value(n.to_string().into_bytes()),
                _ => TargetUnion::Lease(n),
            }),
        },
    );
    let op = prop_oneof![
        range_request().prop_map(|r| RequestOp {
            request: Some(request_op::Request::RequestRange(r))
        }),
        put_request().prop_map(|r| RequestOp {
            request: Some(request_op::Request::RequestPut(r))
        }),
        Just(RequestOp { request: None }),
    ];
    (
        proptest::collection::vec(compare, 0..4),
        proptest::collection::vec(op.clone(), 0..4),
        proptest::collection::vec(op, 0..200),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

/// What a range answer must satisfy whatever was asked.
fn check_range(r: &RangeRequest, resp: &cairn_api::etcdserverpb::RangeResponse) {
    if r.limit > 0 {
        assert!(resp.kvs.len() as i64 <= r.limit, "limit exceeded");
    }
    if !r.count_only {
        assert!(resp.count >= resp.kvs.len() as i64, "count below kvs");
    } else {
        assert!(resp.kvs.is_empty(), "count_only returned kvs");
    }
    for kv in &resp.kvs {
        let in_range = if r.range_end.is_empty() {
            kv.key == r.key
        } else if r.range_end == [0] {
            kv.key >= r.key
        } else {
            kv.key >= r.key && kv.key < r.range_end
        };
        assert!(in_range, "{:?} outside the range asked", kv.key);
        assert!(
            !r.keys_only || kv.value.is_empty(),
            "keys_only returned a value"
        );
    }
}

/// Errors a well-formed but unreasonable request may get: etcd's argument and state errors,
/// never an internal one.
fn expected_error(status: &tonic::Status) {
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{status:?}"
    );
}

#[test]
fn random_structured_requests_get_valid_answers_or_etcd_errors() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (process, _) = member();
    let ch = rt.block_on(async { wait_ready(process.addr).await });
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let kv_client = kv(&ch);
    let strategy = (range_request(), put_request(), txn_request());
    runner
        .run(&strategy, |(range, put, txn)| {
            rt.block_on(async {
                let mut kv = kv_client.clone();
                match kv.put(put).await {
                    Ok(_) => {}
                    Err(e) => expected_error(&e),
                }
                match kv.range(range.clone()).await {
                    Ok(resp) => check_range(&range, resp.get_ref()),
                    Err(e) => expected_error(&e),
                }
                match kv.txn(txn.clone()).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let taken = if resp.succeeded {
                            &txn.success
                        } else {
                            &txn.failure
                        };
                        assert_eq!(resp.responses.len(), taken.len(), "one answer per op");
                    }
                    Err(e) => expected_error(&e),
                }
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(serves(process.addr, "random structured requests"));
}

/// Raft messages that decode but come from no member, or make claims no member could
/// (a commit index far past the log, a huge term, a local-only message type), sent to the
/// peer port. A member must not act on them: raft-rs aborts on a commit index beyond its
/// log, and a stranger's term would depose a healthy leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_from_strangers_are_refused() {
    use cairn_api::cairnpb::{peer_client::PeerClient, RaftEnvelope};
    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};

    let (process, peer) = member();
    let ch = wait_ready(process.addr).await;
    let status = |ch: Channel| async move {
        cairn_api::etcdserverpb::maintenance_client::MaintenanceClient::new(ch)
            .status(cairn_api::etcdserverpb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    };
    let before = status(ch.clone()).await;
    let me = before.header.as_ref().expect("header").member_id;
    let mut messages = Vec::new();
    for (t, from, to) in [
        (MessageType::MsgHeartbeat, 0xdead, me),
        (MessageType::MsgAppend, 0xdead, me),
        (MessageType::MsgRequestVote, 0xdead, me),
        (MessageType::MsgHup, 0, me),
        (MessageType::MsgHeartbeat, me, me),
        (MessageType::MsgHeartbeat, 0xdead, 0xbeef),
        (MessageType::MsgTimeoutNow, 0xdead, me),
    ] {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = to;
        m.term = 1_000_000;
        m.commit = 1_000_000;
        m.index = 999_999;
        m.log_term = 999_999;
        messages.push(RaftEnvelope {
            message: m.write_to_bytes().expect("encode"),
        });
    }
    let mut peer_client = PeerClient::new(channel(peer).await);
    for m in messages {
        // Each on its own stream: a refusal ends the stream it came on.
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            peer_client.stream(tokio_stream::iter([m])),
        )
        .await
        .expect("the peer port answers")
        .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    serves(process.addr, "raft messages from strangers").await;
    let after = status(ch).await;
    assert_eq!(
        after.raft_term, before.raft_term,
        "a stranger moved the term"
    );
    assert_eq!(after.leader, me, "a stranger deposed the leader");
}
