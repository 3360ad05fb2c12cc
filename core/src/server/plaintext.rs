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
    let mut head = [0u8; HEAD];
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
    let answer = match protocol(&head[..got]) {
        Protocol::Unknown => return,
        Protocol::Http1 => HTTP1_REFUSAL.to_vec(),
        Protocol::Http2 => {
            // The server's preface first: some clients (gRPC-Go) send no request before it.
            if tcp.write_all(&http2_settings()).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(LINGER, first_request(&mut tcp)).await;
            http2_goaway()
        }
    };
    if tcp.write_all(&answer).await.is_ok() {
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// The length of an HTTP/2 frame's header.
const HTTP2_FRAME_HEADER: usize = 9;
/// The client's connection preface, of which `refuse` has read the first `HEAD` bytes.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame a client may send before it has seen the server's SETTINGS.
const HTTP2_MAX_FRAME: usize = 16_384;

/// Reads the rest of an HTTP/2 client's preface and its frames up to its first HEADERS
/// frame (the first request), or until the client stops or sends something else.
async fn first_request(tcp: &mut TcpStream) -> std::io::Result<()> {
    const HEADERS: u8 = 0x1;
    let mut rest = [0u8; HTTP2_PREFACE.len() - HEAD];
    tcp.read_exact(&mut rest).await?;
    if rest != HTTP2_PREFACE[HEAD..] {
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

/// How many bytes of a request tell its protocol (Go's test for a request line reads 5).
const HEAD: usize = 5;
/// What Go's servers, so etcd's, answer an HTTP/1 request on a TLS port.
const HTTP1_REFUSAL: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The protocol a plain-text request is in, by its first bytes.
#[derive(Debug, PartialEq)]
enum Protocol {
    Http1,
    Http2,
    /// Neither: it is not answered.
    Unknown,
}

fn protocol(head: &[u8]) -> Protocol {
    // Go's test for a request line (net/http's tlsRecordHeaderLooksLikeHTTP).
    const HTTP1: [&[u8]; 5] = [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"];
    if head == &HTTP2_PREFACE[..HEAD] {
        Protocol::Http2
    } else if HTTP1.contains(&head) {
        Protocol::Http1
    } else {
        Protocol::Unknown
    }
}

/// An HTTP/2 frame of `kind` with no flags, on stream 0.
fn http2_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// A server's connection preface: an empty SETTINGS frame.
fn http2_settings() -> Vec<u8> {
    const SETTINGS: u8 = 0x4;
    http2_frame(SETTINGS, &[])
}

/// A GOAWAY with PROTOCOL_ERROR that refuses every stream, with `HTTP2_REASON` as its
/// debug data.
fn http2_goaway() -> Vec<u8> {
    const GOAWAY: u8 = 0x7;
    const PROTOCOL_ERROR: u32 = 0x1;
    let mut goaway = 0u32.to_be_bytes().to_vec(); // last stream id: none was processed
    goaway.extend_from_slice(&PROTOCOL_ERROR.to_be_bytes());
    goaway.extend_from_slice(HTTP2_REASON.as_bytes());
    http2_frame(GOAWAY, &goaway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_protocol() {
        assert_eq!(protocol(b"PRI *"), Protocol::Http2);
        assert_eq!(http2_settings(), [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = http2_goaway();
        let len = u32::from_be_bytes([0, goaway[0], goaway[1], goaway[2]]) as usize;
        assert_eq!((goaway[3], len), (7, goaway.len() - HTTP2_FRAME_HEADER));
        assert!(goaway.ends_with(HTTP2_REASON.as_bytes()));
        assert_eq!(protocol(b"GET /"), Protocol::Http1);
        assert!(HTTP1_REFUSAL.starts_with(b"HTTP/1.0 400 Bad Request\r\n"));
        assert_eq!(protocol(b"\x15\x03\x01\x00\x02"), Protocol::Unknown);
        assert_eq!(protocol(b"GE"), Protocol::Unknown);
    }
}
