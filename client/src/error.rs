//! The client's error type: etcd's error kinds, recognised from the gRPC status the server
//! sent (code and text, as etcd's `rpctypes`), plus transport and client-side failures.

use tonic::{Code, Status};

/// What a client call can fail with.
///
/// ```
/// use cairn_client::Error;
/// let e = Error::from(tonic::Status::out_of_range(
///     "etcdserver: mvcc: required revision has been compacted",
/// ));
/// assert!(matches!(e, Error::Compacted { .. }));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// An endpoint URL is not valid.
    #[error("invalid endpoint {0:?}")]
    InvalidEndpoint(String),
    /// No endpoint was given.
    #[error("no endpoints")]
    NoEndpoints,
    /// A backup file is damaged, incomplete or not a backup.
    #[error("{0}")]
    Corrupt(String),
    /// A certificate or key could not be read or used.
    #[error("tls: {0}")]
    Tls(String),
    /// The requested revision was compacted; `compact_revision` is the oldest readable one
    /// when the server said (watches), else 0.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted {
        /// The oldest revision still readable (0 when the server did not say).
        compact_revision: i64,
    },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    /// The requested revision is newer than the store's.
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    /// No such lease (it expired or was revoked).
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    /// A lease with the chosen id exists already.
    LeaseExists,
    #[error("etcdserver: key not found")]
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    KeyNotFound,
    #[error("etcdserver: key is not provided")]
    /// An empty key.
    EmptyKey,
    #[error("etcdserver: too many operations in txn request")]
    /// A txn with more operations than the server allows.
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    /// A txn that writes one key twice.
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    /// A request over the server's size limit.
    RequestTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    /// The storage quota is exhausted (the NOSPACE alarm): writes that add data are refused
    /// until space is freed (compact, defragment) and the alarm disarmed.
    NoSpace,
    #[error("etcdserver: no leader")]
    /// The member has no leader (an election, or it is cut off).
    NoLeader,
    #[error("etcdserver: not leader")]
    /// The call needs the leader and went to another member.
    NotLeader,
    #[error("etcdserver: leader changed")]
    /// The leader changed while the request was in flight: it may or may not have applied.
    LeaderChanged,
    #[error("etcdserver: request timed out")]
    /// The server gave up waiting for the request to apply.
    Timeout,
    #[error("etcdserver: member not found")]
    /// No member with that id.
    MemberNotFound,
    /// The lease a keeper kept alive expired or was revoked.
    #[error("lease {0:x} lost")]
    LeaseLost(i64),
    /// No endpoint could be reached (the last transport error is kept).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other error the server answered with, code and text kept.
    #[error("{}", .0.message())]
    Server(Status),
}

impl Error {
    /// Whether the request certainly did not reach a server: nothing was applied, so even a
    /// write may be retried elsewhere.
    pub fn not_sent(&self) -> bool {
        matches!(self, Error::Unavailable(msg) if is_connect_failure(msg))
    }

    /// Whether another endpoint might answer (the member is down, cut off, or shutting down).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::NoLeader | Error::LeaderChanged | Error::Timeout
        )
    }

    /// The gRPC code this error carries.
    pub fn code(&self) -> Code {
        match self {
            Error::Server(s) => s.code(),
            Error::Compacted { .. } | Error::FutureRevision => Code::OutOfRange,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExists | Error::NotLeader => Code::FailedPrecondition,
            Error::KeyNotFound
            | Error::EmptyKey
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::InvalidEndpoint(_)
            | Error::Tls(_)
            | Error::NoEndpoints => Code::InvalidArgument,
            Error::Corrupt(_) => Code::DataLoss,
            Error::NoSpace => Code::ResourceExhausted,
            Error::NoLeader
            | Error::LeaderChanged
            | Error::Timeout
            | Error::Unavailable(_)
            | Error::LeaseLost(_) => Code::Unavailable,
        }
    }
}

impl Error {
    /// The text etcd's Go client gives this error: a known etcd error by its message, any
    /// other status as gRPC-Go prints it (`rpc error: code = … desc = …`).
    pub fn go_text(&self) -> String {
        match self {
            Error::Server(s) if !s.message().starts_with("etcdserver: ") => {
                format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
            }
            other => other.to_string(),
        }
    }
}

fn is_connect_failure(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("connection refused")
        || m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("connect timed out")
        || m.contains("client error (connect)")
}

/// `first` and the texts of `source`'s chain, each once (tonic and hyper repeat their
/// sources' texts in their own), with a hint when the failure says the two ends disagree
/// on TLS.
fn chain(first: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = first;
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = s.source();
    }
    let lower = out.to_ascii_lowercase();
    // The member's GOAWAY says "this port serves TLS"; a TLS alert read as HTTP/2 garbles.
    if lower.contains("serves tls")
        || lower.contains("h2 protocol error")
        || lower.contains("http2 error")
    {
        out.push_str(" (does the member serve TLS? then use an https:// endpoint, or --cacert)");
    } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        out.push_str(" (does the member serve plain HTTP? then use an http:// endpoint)");
    }
    out
}

/// The whole chain of a status's sources, for telling connect failures apart.
fn describe(status: &Status) -> String {
    chain(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        match s.message() {
            "etcdserver: mvcc: required revision has been compacted" => Error::Compacted {
                compact_revision: 0,
            },
            "etcdserver: mvcc: required revision is a future revision" => Error::FutureRevision,
            "etcdserver: requested lease not found" => Error::LeaseNotFound,
            "etcdserver: lease already exists" => Error::LeaseExists,
            "etcdserver: key not found" => Error::KeyNotFound,
            "etcdserver: key is not provided" => Error::EmptyKey,
            "etcdserver: too many operations in txn request" => Error::TooManyOps,
            "etcdserver: duplicate key given in txn request" => Error::DuplicateKey,
            "etcdserver: request is too large" => Error::RequestTooLarge,
            "etcdserver: mvcc: database space exceeded" => Error::NoSpace,
            "etcdserver: no leader" => Error::NoLeader,
            "etcdserver: not leader" => Error::NotLeader,
            "etcdserver: leader changed" => Error::LeaderChanged,
            "etcdserver: request timed out" => Error::Timeout,
            "etcdserver: member not found" => Error::MemberNotFound,
            // The auth package's own errors (etcd sends some unmapped, as UNKNOWN).
            m if m.starts_with("auth: ") => Error::Server(s),
            // The connection itself failed (HTTP/2 to a TLS port, say): not an answer.
            m if m.starts_with("h2 protocol error") => Error::Unavailable(describe(&s)),
            _ if matches!(
                s.code(),
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
            ) && !s.message().starts_with("etcdserver:") =>
            {
                Error::Unavailable(describe(&s))
            }
            _ => Error::Server(s),
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Error {
        Error::Unavailable(chain(e.to_string(), std::error::Error::source(&e)))
    }
}
