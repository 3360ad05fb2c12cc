//! Tolerates the malformed HTTP/2 `:authority` some etcd clients send.
//!
//! etcd 3.4's `etcdctl endpoint status|health --cluster` dials every member's client URL
//! through gRPC-Go's passthrough resolver, which sends the whole URL
//! (`http://127.0.0.1:2379`) as `:authority`. gRPC-Go servers ignore it; hyper's HTTP/2
//! server rejects the stream with PROTOCOL_ERROR. This wrapper sits between the client's TCP
//! stream and the HTTP/2 server and rewrites such an authority, in HEADERS frames only, into
//! a valid one of the same length (so both sides' HPACK dynamic tables stay the same size):
//! `http://127.0.0.1:2379` becomes `http---127.0.0.1:2379`. Nothing reads the authority
//! afterwards; every other byte passes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection starts with; anything else (HTTP/1.1 for the JSON gateway)
/// passes through untouched.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload the HTTP/2 server accepts (it advertises HTTP/2's default).
/// A HEADERS frame declaring more is passed through unread, so hyper refuses it with
/// FRAME_SIZE_ERROR at once instead of this layer buffering up to the 16 MiB a 24-bit
/// length allows.
const MAX_FRAME_PAYLOAD: usize = 16 * 1024;
/// HPACK static table index of `:authority`.
const AUTHORITY_INDEX: usize = 1;

/// A client connection whose HTTP/2 HEADERS frames get their `:authority` repaired.
pub struct AuthorityFix<S> {
    inner: S,
    /// Bytes of the connection preface still to pass through.
    preface_left: usize,
    /// Payload bytes of a non-HEADERS frame still to pass through as they come.
    passthrough_left: usize,
    /// Bytes read but not yet processed (an incomplete frame header or HEADERS frame).
    pending: Vec<u8>,
    /// Processed bytes not yet handed to the reader.
    out: Vec<u8>,
    out_pos: usize,
    /// Not HTTP/2: every byte passes through.
    plain: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            preface_left: PREFACE_LEN,
            passthrough_left: 0,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            plain: false,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `pending` to `out`.
    fn process(&mut self) {
        loop {
            if !self.plain && self.preface_left > 0 {
                let at = PREFACE_LEN - self.preface_left;
                let n = self.preface_left.min(self.pending.len());
                self.plain = self.pending[..n] != PREFACE[at..at + n];
            }
            if self.plain {
                self.out.append(&mut self.pending);
                return;
            }
            if self.preface_left > 0 || self.passthrough_left > 0 {
                let left = if self.preface_left > 0 {
                    &mut self.preface_left
                } else {
                    &mut self.passthrough_left
                };
                let n = (*left).min(self.pending.len());
                if n == 0 {
                    return;
                }
                self.out.extend(self.pending.drain(..n));
                *left -= n;
                continue;
            }
            if self.pending.len() < FRAME_HEADER {
                return;
            }
            let len =
                u32::from_be_bytes([0, self.pending[0], self.pending[1], self.pending[2]]) as usize;
            if self.pending[3] != TYPE_HEADERS || len > MAX_FRAME_PAYLOAD {
                self.out.extend(self.pending.drain(..FRAME_HEADER));
                self.passthrough_left = len;
                continue;
            }
            if self.pending.len() < FRAME_HEADER + len {
                return;
            }
            let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER + len).collect();
            match rewrite_headers(&frame) {
                Some(fixed) => self.out.extend(fixed),
                None => self.out.extend(frame),
            }
        }
    }
}

/// A HEADERS frame with a repaired authority, or `None` to pass it through as it is.
fn rewrite_headers(frame: &[u8]) -> Option<Vec<u8>> {
    let flags = frame[4];
    if flags & FLAG_END_HEADERS == 0 {
        // The block continues in CONTINUATION frames; too rare to be worth handling.
        return None;
    }
    let mut payload = &frame[FRAME_HEADER..];
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = *payload.first()? as usize;
        payload = &payload[1..];
    }
    let priority = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
    if payload.len() < priority + pad {
        return None;
    }
    let (prio, block) = payload[..payload.len() - pad].split_at(priority);
    let fixed_block = rewrite_block(block)?;
    let mut out = Vec::with_capacity(FRAME_HEADER + priority + fixed_block.len());
    let len = (priority + fixed_block.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(TYPE_HEADERS);
    out.push(flags & !FLAG_PADDED);
    out.extend_from_slice(&frame[5..9]);
    out.extend_from_slice(prio);
    out.extend_from_slice(&fixed_block);
    Some(out)
}

/// HPACK integer with an `n`-bit prefix at `buf[*pos]`.
fn read_int(buf: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let mask = (1usize << n) - 1;
    let mut v = (*buf.get(*pos)? as usize) & mask;
    *pos += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v = v.checked_add(((b & 0x7f) as usize).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

fn write_int(out: &mut Vec<u8>, first_bits: u8, n: u32, mut v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        out.push(first_bits | v as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    v -= mask;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Skips an HPACK string; returns its (possibly Huffman-coded) bytes and the Huffman flag.
fn read_string<'a>(buf: &'a [u8], pos: &mut usize) -> Option<(&'a [u8], bool)> {
    let huffman = buf.get(*pos)? & 0x80 != 0;
    let len = read_int(buf, pos, 7)?;
    let s = buf.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some((s, huffman))
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// The same-length valid stand-in for a malformed authority.
fn repaired(v: &[u8]) -> Vec<u8> {
    let last_colon = v.iter().rposition(|b| *b == b':');
    let fixed: Vec<u8> = v
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(b) || Some(i) == last_colon {
                *b
            } else {
                b'-'
            }
        })
        .collect();
    if valid_authority(&fixed) {
        fixed
    } else {
        vec![b'x'; v.len()]
    }
}

/// The header block with any malformed `:authority` repaired; `None` if nothing changed
/// (or the block does not parse, which the HTTP/2 server will report itself).
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut pos = 0;
    let mut changed = false;
    while pos < block.len() {
        let start = pos;
        let b = block[pos];
        // Indexed fields and table size updates are copied; literals have a name index
        // with a 6-bit (incremental indexing) or 4-bit (without/never indexing) prefix.
        let prefix_bits = if b & 0x80 != 0 {
            read_int(block, &mut pos, 7)?;
            out.extend_from_slice(&block[start..pos]);
            continue;
        } else if b & 0xc0 == 0x40 {
            6
        } else if b & 0xe0 == 0x20 {
            read_int(block, &mut pos, 5)?;
            out.extend_from_slice(&block[start..pos]);
            continue;
        } else {
            4
        };
        let name_index = read_int(block, &mut pos, prefix_bits)?;
        if name_index == 0 {
            read_string(block, &mut pos)?;
        }
        let value_start = pos;
        let (raw, huffman) = read_string(block, &mut pos)?;
        if name_index == AUTHORITY_INDEX {
            let value = if huffman {
                hpack::huffman::HuffmanDecoder::new().decode(raw).ok()?
            } else {
                raw.to_vec()
            };
            if !valid_authority(&value) {
                let fixed = repaired(&value);
                out.extend_from_slice(&block[start..value_start]);
                write_int(&mut out, 0, 7, fixed.len());
                out.extend_from_slice(&fixed);
                changed = true;
                continue;
            }
        }
        out.extend_from_slice(&block[start..pos]);
    }
    changed.then_some(out)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // End of stream: hand over whatever is left as it is.
                        if this.pending.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.out.append(&mut this.pending);
                        continue;
                    }
                    this.pending.extend_from_slice(rb.filled());
                    this.process();
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal_authority(value: &[u8]) -> Vec<u8> {
        // Literal with incremental indexing, name = static :authority, raw value.
        let mut b = vec![0x40 | AUTHORITY_INDEX as u8];
        write_int(&mut b, 0, 7, value.len());
        b.extend_from_slice(value);
        b
    }

    #[test]
    fn a_url_as_authority_becomes_a_valid_one_of_the_same_length() {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(literal_authority(b"http://127.0.0.1:2379"));
        block.push(0x84); // :path /
        let fixed = rewrite_block(&block).expect("rewritten");
        let mut expected = vec![0x83, 0x86];
        expected.extend(literal_authority(b"http---127.0.0.1:2379"));
        expected.push(0x84);
        assert_eq!(fixed, expected);
        assert!(valid_authority(b"http---127.0.0.1:2379"));
    }

    #[test]
    fn valid_authorities_and_other_frames_pass_untouched() {
        let mut block = vec![0x82];
        block.extend(literal_authority(b"127.0.0.1:2379"));
        assert_eq!(rewrite_block(&block), None);
        let mut conn = AuthorityFix::new(());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend([0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, 7, 7]); // DATA frame
        let mut frame = vec![0, 0, 0, TYPE_HEADERS, FLAG_END_HEADERS, 0, 0, 0, 3];
        let block = literal_authority(b"http://h:1");
        frame[2] = block.len() as u8;
        frame.extend(&block);
        bytes.extend(&frame);
        conn.pending = bytes.clone();
        conn.process();
        let out = conn.out.clone();
        assert_eq!(out.len(), bytes.len());
        assert_eq!(
            &out[..bytes.len() - block.len()],
            &bytes[..bytes.len() - block.len()]
        );
        assert!(out.ends_with(b"http---h:1"));
    }

    #[test]
    fn an_oversized_headers_frame_is_passed_on_without_being_buffered() {
        let mut conn = AuthorityFix::new(());
        let mut bytes = PREFACE.to_vec();
        // A HEADERS frame declaring 16 MiB - 1 of payload, of which 64 KiB arrive.
        bytes.extend([0xff, 0xff, 0xff, TYPE_HEADERS, FLAG_END_HEADERS, 0, 0, 0, 1]);
        conn.pending = bytes.clone();
        conn.process();
        for _ in 0..4 {
            conn.pending.extend_from_slice(&[0u8; 16 * 1024]);
            conn.process();
            assert!(
                conn.pending.is_empty(),
                "{} bytes held back",
                conn.pending.len()
            );
        }
        assert_eq!(conn.out.len(), bytes.len() + 64 * 1024);
        assert_eq!(&conn.out[..bytes.len()], &bytes[..]);
    }

    #[test]
    fn http1_connections_pass_through_byte_for_byte() {
        let mut conn = AuthorityFix::new(());
        let request = b"POST /v3/kv/range HTTP/1.1\r\nHost: x\r\n\r\n{\"key\":\"Zm9v\"}".to_vec();
        conn.pending = request[..10].to_vec();
        conn.process();
        conn.pending.extend_from_slice(&request[10..]);
        conn.process();
        assert_eq!(conn.out, request);
    }
}
