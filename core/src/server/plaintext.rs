//! A client that speaks plain HTTP to a TLS port cannot read a TLS alert, so it would see
//! only a closed connection. It is answered in its own protocol instead: an HTTP/1 request
//! gets the 400 Go's servers (so etcd's) give, an HTTP/2 client a GOAWAY that says why.
//!
//! The GOAWAY waits for the client's first request (its first HEADERS frame): a GOAWAY that
//! reaches a client with no stream open closes the connection quietly, and the request the
//! client sends a moment later fails as "connection closed", with nothing to say why.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first byte of every TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE: u8 = 0x16;
/// How long the answer waits for the request's first bytes, and then for the client to
/// close: reading what it sent keeps the kernel from resetting the connection, which would
/// drop the answer unread.
const LINGER: Duration = Duration::from_secs(1);
/// The text an HTTP/2 client's error carries.
pub const HTTP2_REASON: &str = "this port serves TLS: use https://";

/// Whether `tcp` opens with something other than a TLS handshake.
pub async fn is_plaintext(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    Ok(n == 1 && first[0] != TLS_HANDSHAKE)
}

/// Answers a plain-text client (see the module's comment) and closes the connection.
pub async fn refuse(mut tcp: TcpStream) {
    let mut head = [0u8; 5];
    let mut got = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while got < head.len() {
            match tcp.read(&mut head[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    let whole = answer(&head[..got]);
    if whole.is_empty() {
        return;
    }
    let mut answer = whole.as_slice();
    if head[..got] == *b"PRI *" {
        // The server's preface first: some clients (gRPC-Go) send no request before it.
        let (settings, goaway) = answer.split_at(HTTP2_FRAME_HEADER);
        if tcp.write_all(settings).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(LINGER, first_request(&mut tcp)).await;
        answer = goaway;
    }
    if tcp.write_all(answer).await.is_ok() {
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The length of an HTTP/2 frame's header, so of an empty SETTINGS frame.
const HTTP2_FRAME_HEADER: usize = 9;
/// The client's connection preface, of which `refuse` has read the first 5 bytes.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame a client may send before it has seen the server's SETTINGS.
const HTTP2_MAX_FRAME: usize = 16_384;

/// Reads the rest of an HTTP/2 client's preface and its frames up to its first HEADERS
/// frame (the first request), or until the client stops or sends something else.
async fn first_request(tcp: &mut TcpStream) -> std::io::Result<()> {
    const HEADERS: u8 = 0x1;
    let mut rest = [0u8; HTTP2_PREFACE.len() - 5];
    tcp.read_exact(&mut rest).await?;
    if rest != HTTP2_PREFACE[5..] {
        return Ok(());
    }
    let mut header = [0u8; HTTP2_FRAME_HEADER];
    let mut payload = vec![0u8; HTTP2_MAX_FRAME];
    loop {
        tcp.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        if header[3] == HEADERS || len > HTTP2_MAX_FRAME {
            return Ok(());
        }
        tcp.read_exact(&mut payload[..len]).await?;
    }
}

/// What a request that starts with `head` is answered: nothing when it is neither HTTP/1
/// nor HTTP/2.
fn answer(head: &[u8]) -> Vec<u8> {
    // Go's test for a request line (net/http's tlsRecordHeaderLooksLikeHTTP).
    const HTTP1: [&[u8]; 5] = [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"];
    if head == b"PRI *" {
        http2_goaway()
    } else if HTTP1.contains(&head) {
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
            .to_vec()
    } else {
        Vec::new()
    }
}

/// A server's connection preface (an empty SETTINGS frame) and a GOAWAY with PROTOCOL_ERROR
/// that refuses every stream, with `HTTP2_REASON` as its debug data.
fn http2_goaway() -> Vec<u8> {
    let frame = |kind: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    const PROTOCOL_ERROR: u32 = 0x1;
    let mut goaway = 0u32.to_be_bytes().to_vec(); // last stream id: none was processed
    goaway.extend_from_slice(&PROTOCOL_ERROR.to_be_bytes());
    goaway.extend_from_slice(HTTP2_REASON.as_bytes());
    let mut out = frame(SETTINGS, &[]);
    out.extend(frame(GOAWAY, &goaway));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_protocol() {
        let h2 = answer(b"PRI *");
        assert_eq!(&h2[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &h2[9..];
        let len = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!((goaway[3], len), (7, goaway.len() - 9));
        assert!(goaway.ends_with(HTTP2_REASON.as_bytes()));
        assert!(answer(b"GET /").starts_with(b"HTTP/1.0 400 Bad Request\r\n"));
        assert!(answer(b"\x15\x03\x01\x00\x02").is_empty());
        assert!(answer(b"GE").is_empty());
    }
}
