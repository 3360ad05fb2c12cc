//! Big ranges: `--concurrency` clients each read every key at once, either in one Range
//! (as `etcdctl get "" --from-key`) or paged as Kubernetes lists (`--page` keys a call,
//! each page starting after the last key of the one before). What it reports: the wall
//! time for all of them, and with `--rss-pid` the member's peak resident memory while
//! they ran (sampled every 20 ms) and the CPU time it and this client spent. With `--raw`
//! a full range's answer is counted, not decoded: a million `KeyValue`s cost a client two
//! million allocations, which on a shared machine is time taken from the server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::RangeRequest;
use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::workload::Ch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Full {
    pub concurrency: usize,
    /// Keys per call; 0 reads every key in one call.
    pub page: i64,
    pub rss_pid: Option<u32>,
    /// Count the answer's key-values instead of decoding them (full ranges only).
    pub raw: bool,
}

pub async fn run(full: Full, channels: &[Ch]) -> Result<(), BoxError> {
    if full.raw && full.page != 0 {
        return Err("--raw counts one full range; it cannot page".into());
    }
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = full.rss_pid.map(|pid| {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(crate::watchers::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let cpu = |pid: Option<u32>| pid.map_or(0, crate::watchers::cpu_ms);
    let (server_cpu, client_cpu) = (cpu(full.rss_pid), cpu(Some(std::process::id())));
    let started = Instant::now();
    let mut readers = Vec::new();
    for c in 0..full.concurrency.max(1) {
        let ch = channels[c % channels.len()].clone();
        readers.push(if full.raw {
            tokio::spawn(count_all(ch))
        } else {
            // A response of every key is far past tonic's 4 MiB default.
            let kv = KvClient::new(ch).max_decoding_message_size(usize::MAX);
            tokio::spawn(read_all(kv, full.page))
        });
    }
    let mut keys = Vec::new();
    for r in readers {
        keys.push(r.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let server_cpu = cpu(full.rss_pid).saturating_sub(server_cpu);
    let client_cpu = cpu(Some(std::process::id())).saturating_sub(client_cpu);
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        s.await?;
    }
    if keys.windows(2).any(|w| w[0] != w[1]) {
        return Err(format!("the readers saw different numbers of keys: {keys:?}").into());
    }
    let mut json = format!(
        "{{\"workload\":\"range-full\",\"concurrency\":{},\"page\":{},\"raw\":{},\"keys\":{},\"seconds\":{secs:.3},\"client_cpu_ms\":{client_cpu}",
        full.concurrency,
        full.page,
        full.raw,
        keys.first().copied().unwrap_or(0)
    );
    if full.rss_pid.is_some() {
        json += &format!(
            ",\"peak_rss_kib\":{},\"server_cpu_ms\":{server_cpu}",
            peak.load(Ordering::Relaxed)
        );
    }
    json += "}";
    println!("{json}");
    Ok(())
}

/// Every key, at the revision of the first call; how many there were.
async fn read_all(mut kv: KvClient<Ch>, page: i64) -> Result<usize, BoxError> {
    let mut from = vec![0u8];
    let (mut seen, mut rev) = (0usize, 0i64);
    loop {
        let resp = kv
            .range(RangeRequest {
                key: from.clone(),
                range_end: vec![0],
                limit: page,
                revision: rev,
                ..Default::default()
            })
            .await?
            .into_inner();
        if rev == 0 {
            rev = resp.header.map_or(0, |h| h.revision);
        }
        seen += resp.kvs.len();
        match resp.kvs.last() {
            Some(last) if resp.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(seen),
        }
    }
}

/// Every key in one Range, its answer counted as it arrives: how many key-values it held.
async fn count_all(ch: Ch) -> Result<usize, BoxError> {
    let mut grpc = tonic::client::Grpc::new(ch).max_decoding_message_size(usize::MAX);
    grpc.ready().await?;
    let req = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range");
    let resp = grpc.unary(tonic::Request::new(req), path, Counting).await?;
    Ok(resp.into_inner())
}

/// Sends a `RangeRequest` and answers a `RangeResponse` with its number of `kvs` (field 2),
/// walking the message's top-level fields without building any of them.
#[derive(Clone, Copy)]
struct Counting;

impl Codec for Counting {
    type Encode = RangeRequest;
    type Decode = usize;
    type Encoder = Counting;
    type Decoder = Counting;
    fn encoder(&mut self) -> Counting {
        Counting
    }
    fn decoder(&mut self) -> Counting {
        Counting
    }
}

impl Encoder for Counting {
    type Item = RangeRequest;
    type Error = Status;
    fn encode(&mut self, req: RangeRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        req.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for Counting {
    type Item = usize;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        count_kvs(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("a RangeResponse that does not parse: {e}")))
    }
}

fn count_kvs(buf: &mut impl Buf) -> Result<usize, String> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut kvs = 0;
    while buf.has_remaining() {
        let (field, wire) = decode_key(buf).map_err(|e| e.to_string())?;
        match wire {
            WireType::Varint => {
                decode_varint(buf).map_err(|e| e.to_string())?;
            }
            WireType::LengthDelimited => {
                let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
                if len > buf.remaining() {
                    return Err("a field past the message's end".into());
                }
                buf.advance(len);
                kvs += usize::from(field == 2);
            }
            other => return Err(format!("wire type {other:?}, which RangeResponse has not")),
        }
    }
    Ok(kvs)
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::{RangeResponse, ResponseHeader};
    use cairn_api::mvccpb::KeyValue;
    use prost::Message;

    #[test]
    fn counts_the_key_values_of_an_encoded_answer() {
        let resp = RangeResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: (0..3)
                .map(|i| KeyValue {
                    key: vec![i],
                    value: vec![i; 300],
                    ..Default::default()
                })
                .collect(),
            more: true,
            count: 3,
        };
        let bytes = resp.encode_to_vec();
        assert_eq!(super::count_kvs(&mut bytes.as_slice()).unwrap(), 3);
        assert!(super::count_kvs(&mut &bytes[..bytes.len() - 1]).is_err());
    }
}
