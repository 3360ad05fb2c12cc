//! Range answers sent as they are read. A Range answered the usual way is built whole (a
//! `KeyValue` per key) and then encoded: a reader of a million keys costs the member the
//! answer twice over until it is sent. Here a plain range (keys in key order, with values,
//! no filters) is written straight from the stored records, which are the encoded
//! `KeyValue`s, into chunks that HTTP/2 sends while the next ones are read. The client
//! sees the same unary message, byte for byte; only the member's memory differs.
//!
//! The gRPC frame begins with the message's length, so the range is planned first
//! (`mvcc::EncodedRange`: every record's size, mostly from the key index), and the message
//! is then framed from the plan. Any other Range, or a request this wrapper cannot read
//! plainly (compressed, too big, undecodable), goes to the generated KV service, which
//! answers it as before.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use cairn_api::etcdserverpb::{RangeRequest, ResponseHeader};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::kv;
use crate::mvcc::EncodedRange;
use crate::node::Node;

const PATH: &str = "/etcdserverpb.KV/Range";

/// What one chunk of an answer holds at least before it is handed to HTTP/2.
const CHUNK: usize = 128 * 1024;

/// Chunks made ahead of the client: the member holds at most this many per reader.
const AHEAD: usize = 4;

/// The generated KV service with plain Ranges answered here.
#[derive(Clone)]
pub struct RangeStream<S> {
    inner: S,
    node: Arc<Node>,
    /// The largest request message accepted (the service's decoding limit).
    limit: usize,
}

impl<S> RangeStream<S> {
    pub fn new(inner: S, node: Arc<Node>, limit: usize) -> Self {
        RangeStream { inner, node, limit }
    }
}

impl<S: NamedService> NamedService for RangeStream<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower_service::Service<http::Request<Body>> for RangeStream<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != PATH {
            return Box::pin(self.inner.call(req));
        }
        // The service made ready is the one that must be called; a clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (node, limit) = (self.node.clone(), self.limit);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let read = read_request(body, limit).await;
            if let Some(r) = read.range.filter(streams) {
                return Ok(serve(node, parts, r).await);
            }
            // What was read goes to the service again, then the rest of the body.
            let replay = Replay {
                head: Some(read.head).filter(|h| !h.is_empty()),
                rest: read.rest,
            };
            inner
                .call(http::Request::from_parts(parts, Body::new(replay)))
                .await
        })
    }
}

/// What [`read_request`] found: the request's bytes so far and the rest of its body, and
/// the Range if they were one plain message.
struct Read {
    head: Bytes,
    rest: Body,
    range: Option<RangeRequest>,
}

/// Reads the request's first message: uncompressed and within `limit`, it is decoded;
/// anything else is left for the generated service to answer as it always has.
async fn read_request(mut body: Body, limit: usize) -> Read {
    let mut buf = BytesMut::new();
    let mut want = None;
    loop {
        if want.is_none() && buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf[0] != 0 || len > limit {
                break;
            }
            want = Some(5 + len);
        }
        if let Some(w) = want.filter(|w| buf.len() >= *w) {
            let range = RangeRequest::decode(&buf[5..w]).ok();
            return Read {
                head: buf.freeze(),
                rest: body,
                range,
            };
        }
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                // Trailers from a client: the service sees the end of the message.
                Err(_) => break,
            },
            Some(Err(_)) | None => break,
        }
    }
    Read {
        head: buf.freeze(),
        rest: body,
        range: None,
    }
}

/// Whether a Range is answered from its records: every key of a range in key order,
/// values and all, at most `limit` of them. Sorting, filters, keys or counts only are
/// built the usual way (they are not the records as stored).
fn streams(r: &RangeRequest) -> bool {
    use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
    let in_key_order = matches!(
        SortOrder::try_from(r.sort_order),
        Ok(SortOrder::None | SortOrder::Ascend)
    ) && SortTarget::try_from(r.sort_target) == Ok(SortTarget::Key);
    !r.range_end.is_empty()
        && in_key_order
        && r.limit >= 0
        && !r.keys_only
        && !r.count_only
        && r.min_mod_revision == 0
        && r.max_mod_revision == 0
        && r.min_create_revision == 0
        && r.max_create_revision == 0
}

/// A body that gives back bytes already read from a request, then the rest of it.
struct Replay {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

/// The answer to a plain Range: the checks of `KvService::range`, then the records.
async fn serve(
    node: Arc<Node>,
    parts: http::request::Parts,
    r: RangeRequest,
) -> http::Response<Body> {
    match start(node, parts, r).await {
        Ok(response) => response,
        Err(status) => status.into_http(),
    }
}

async fn start(
    node: Arc<Node>,
    parts: http::request::Parts,
    r: RangeRequest,
) -> Result<http::Response<Body>, Status> {
    let req = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        r,
    );
    let who = kv::admit_range(&node, &req).await?;
    let r = req.into_inner();
    let (tx, mut rx) = mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        let sent = produce(&node, &r, &who, &tx);
        // A reader gone away has nothing to be told.
        let _ = tx.blocking_send(Piece::End(sent));
    });
    // Errors found before the first bytes are answered as the service answers them.
    let first = match rx.recv().await {
        Some(Piece::Data(first)) => first,
        Some(Piece::End(Err(status))) => return Err(status),
        Some(Piece::End(Ok(()))) | None => return Err(Status::internal("the range ended unread")),
    };
    let mut response = http::Response::new(Body::new(Answer {
        first: Some(first),
        rx,
        done: false,
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

enum Piece {
    Data(Bytes),
    /// The answer is complete, or failed (after what was sent).
    End(Result<(), Status>),
}

/// Plans the range and sends it in chunks, on a blocking thread; stops when the reader is
/// gone.
fn produce(
    node: &Node,
    r: &RangeRequest,
    who: &crate::auth::AuthInfo,
    tx: &mpsc::Sender<Piece>,
) -> Result<(), Status> {
    let plan = node
        .store
        .read()?
        .encoded_range(&r.key, &r.range_end, r.revision, r.limit)?;
    kv::stale_auth(node.store.auth(), who)?;
    let header = node.header(plan.rev);
    let gone = || Status::cancelled("the reader is gone");
    encode(&plan, &header, |chunk| {
        tx.blocking_send(Piece::Data(chunk)).map_err(|_| gone())
    })
}

/// Writes the gRPC message of `plan`'s RangeResponse (the 5-byte prefix, then the fields
/// in prost's order: header, kvs, more, count) to `send`, a chunk at a time.
fn encode(
    plan: &EncodedRange<'_>,
    header: &ResponseHeader,
    mut send: impl FnMut(Bytes) -> Result<(), Status>,
) -> Result<(), Status> {
    const HEADER: u8 = 1 << 3 | 2;
    const KV: u8 = 2 << 3 | 2;
    const MORE: u8 = 3 << 3;
    const COUNT: u8 = 4 << 3;
    let field = |len: u64| 1 + encoded_len_varint(len) as u64 + len;
    let header_len = header.encoded_len() as u64;
    let mut len = field(header_len);
    len += plan.sizes().map(|s| field(s.into())).sum::<u64>();
    if plan.more {
        len += 2;
    }
    if plan.count != 0 {
        len += 1 + encoded_len_varint(plan.count as u64) as u64;
    }
    // A gRPC message's length is 32 bits; no client takes more than that in one answer.
    let len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "the range's answer is {len} bytes, more than a gRPC message holds: ask with a limit"
        ))
    })?;
    let mut buf = BytesMut::with_capacity(CHUNK + CHUNK / 4);
    buf.put_u8(0);
    buf.put_u32(len);
    buf.put_u8(HEADER);
    encode_varint(header_len, &mut buf);
    header
        .encode(&mut buf)
        .map_err(|e| Status::internal(e.to_string()))?;
    for record in plan.records() {
        let record = record?;
        buf.put_u8(KV);
        encode_varint(record.len() as u64, &mut buf);
        buf.put_slice(&record);
        if buf.len() >= CHUNK {
            send(buf.split().freeze())?;
        }
    }
    if plan.more {
        buf.put_u8(MORE);
        buf.put_u8(1);
    }
    if plan.count != 0 {
        buf.put_u8(COUNT);
        encode_varint(plan.count as u64, &mut buf);
    }
    send(buf.freeze())
}

/// The response body: the chunks as the blocking thread makes them, then the trailers
/// with the answer's status.
struct Answer {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Piece>,
    done: bool,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let end = match ready!(self.rx.poll_recv(cx)) {
            Some(Piece::Data(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Some(Piece::End(end)) => end,
            None => Err(Status::internal("the range's reader stopped")),
        };
        self.done = true;
        let mut trailers = HeaderMap::new();
        match end {
            Ok(()) => {
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Err(status) => {
                if status.add_header(&mut trailers).is_err() {
                    trailers.insert("grpc-status", HeaderValue::from_static("13"));
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::etcdserverpb::RangeResponse;

    use super::*;
    use crate::apply;
    use crate::mvcc::Store;

    fn answer(store: &Store, r: &RangeRequest, header: &ResponseHeader) -> Vec<u8> {
        let plan = store
            .read()
            .expect("view")
            .encoded_range(&r.key, &r.range_end, r.revision, r.limit)
            .expect("plan");
        let mut out = Vec::new();
        encode(&plan, header, |chunk| {
            out.extend_from_slice(&chunk);
            Ok(())
        })
        .expect("encode");
        out
    }

    #[test]
    fn the_streamed_answer_is_the_built_one_byte_for_byte() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::mvcc::open_for_test(dir.path());
        let mut wb = store.write_batch().expect("batch");
        // Big enough values that the answer spans several chunks.
        for k in 0..400u32 {
            let mut t = wb.txn();
            t.put(
                format!("key/{k:04}").as_bytes(),
                vec![b'v'; 1500],
                k as i64 % 2,
            );
            t.end();
        }
        wb.commit(2, 1).expect("commit");
        let header = ResponseHeader {
            cluster_id: 7,
            member_id: 9,
            revision: store.current_rev(),
            raft_term: 3,
        };
        let requests = [
            RangeRequest {
                key: b"key/".to_vec(),
                range_end: b"key0".to_vec(),
                ..Default::default()
            },
            RangeRequest {
                key: b"key/0100".to_vec(),
                range_end: vec![0],
                limit: 17,
                ..Default::default()
            },
            RangeRequest {
                key: b"key/".to_vec(),
                range_end: b"key0".to_vec(),
                revision: 50,
                limit: 400,
                ..Default::default()
            },
            RangeRequest {
                key: b"nothing".to_vec(),
                range_end: b"nothinh".to_vec(),
                ..Default::default()
            },
        ];
        for r in requests {
            assert!(streams(&r));
            let mut built: RangeResponse =
                apply::kv::range(&store.read().expect("view"), &r).expect("range");
            built.header = Some(header);
            let framed = answer(&store, &r, &header);
            assert_eq!(framed[0], 0);
            let len = u32::from_be_bytes(framed[1..5].try_into().expect("prefix")) as usize;
            assert_eq!(len, framed.len() - 5);
            assert_eq!(framed[5..], built.encode_to_vec()[..], "{r:?}");
        }
    }

    #[test]
    fn only_plain_ranges_stream() {
        let plain = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        };
        assert!(streams(&plain));
        let not = [
            RangeRequest {
                range_end: vec![],
                ..plain.clone()
            },
            RangeRequest {
                keys_only: true,
                ..plain.clone()
            },
            RangeRequest {
                count_only: true,
                ..plain.clone()
            },
            RangeRequest {
                sort_order: 2,
                ..plain.clone()
            },
            RangeRequest {
                sort_target: 1,
                ..plain.clone()
            },
            RangeRequest {
                min_mod_revision: 3,
                ..plain.clone()
            },
            RangeRequest {
                limit: -1,
                ..plain.clone()
            },
        ];
        for r in not {
            assert!(!streams(&r), "{r:?}");
        }
    }
}
