//! The gateway's JSON: request bodies decoded as etcd's gateway (Go's decoder) decodes
//! them, responses and errors in grpc-gateway's shapes and HTTP statuses.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

#[derive(Serialize)]
pub(super) struct Wrapped<'a, T> {
    pub(super) result: &'a T,
}

/// An error in the middle of a stream, as grpc-gateway reports it.
#[derive(Serialize)]
pub(super) struct StreamError {
    error: StreamErrorBody,
}

#[derive(Serialize)]
struct StreamErrorBody {
    grpc_code: i32,
    http_code: u16,
    message: String,
    http_status: String,
}

impl From<&Status> for StreamError {
    fn from(s: &Status) -> Self {
        let http = http_status(s.code());
        StreamError {
            error: StreamErrorBody {
                grpc_code: s.code() as i32,
                http_code: http.as_u16(),
                message: s.message().to_string(),
                http_status: http.canonical_reason().unwrap_or("").to_string(),
            },
        }
    }
}

/// A stream that failed before its first message: the error's status, the error line.
pub(super) fn stream_error(status: &Status) -> Response {
    // As grpc-gateway: an error chunk ends without a newline.
    let line = serde_json::to_vec(&StreamError::from(status)).unwrap_or_default();
    Response::builder()
        .status(http_status(status.code()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(line))
        .unwrap_or_else(|_| internal())
}

/// The error body etcd's gateway sends.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// The request in a unary call's body. As etcd's gateway (Go's JSON decoder): an empty body
/// or `null` is the default request, and whatever follows the first value is ignored.
pub(super) fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    match serde_json::Deserializer::from_slice(body)
        .into_iter::<Option<T>>()
        .next()
    {
        None => Ok(T::default()),
        Some(r) => r
            .map(Option::unwrap_or_default)
            .map_err(|e| Status::invalid_argument(decode_error(&e))),
    }
}

/// Every JSON object in the body (a stream's requests); none is one default request. As
/// etcd's gateway, a body that does not decode fails the call as UNKNOWN (HTTP 500), unlike
/// a unary call's.
pub(super) fn parse_all<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Vec<T>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![T::default()]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::unknown(decode_error(&e)))
}

/// etcd's enums by their names, as Go's protobuf JSON decoder names them in its errors.
const ENUMS: &[(&str, &str)] = &[
    (
        "`NONE`, `ASCEND`, `DESCEND`",
        "etcdserverpb.RangeRequest_SortOrder",
    ),
    (
        "`KEY`, `VERSION`, `CREATE`, `MOD`, `VALUE`",
        "etcdserverpb.RangeRequest_SortTarget",
    ),
    (
        "`EQUAL`, `GREATER`, `LESS`, `NOT_EQUAL`",
        "etcdserverpb.Compare_CompareResult",
    ),
    (
        "`VERSION`, `CREATE`, `MOD`, `VALUE`, `LEASE`",
        "etcdserverpb.Compare_CompareTarget",
    ),
    (
        "`NOPUT`, `NODELETE`",
        "etcdserverpb.WatchCreateRequest_FilterType",
    ),
    (
        "`GET`, `ACTIVATE`, `DEACTIVATE`",
        "etcdserverpb.AlarmRequest_AlarmAction",
    ),
    ("`NONE`, `NOSPACE`, `CORRUPT`", "etcdserverpb.AlarmType"),
    ("`READ`, `WRITE`, `READWRITE`", "authpb.Permission_Type"),
];

/// A JSON decoding error in the words etcd's gateway uses where they are the ones clients
/// show (an unknown enum name, a body cut short); otherwise serde's, without the position.
fn decode_error(e: &serde_json::Error) -> String {
    if e.classify() == serde_json::error::Category::Eof {
        return "unexpected EOF".into();
    }
    let text = e.to_string();
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(t, _)| t);
    if let Some(rest) = text.strip_prefix("unknown variant `") {
        if let Some((name, expected)) = rest.split_once("`, expected ") {
            // serde lists the names as "one of `A`, `B`, `C`", or "`A` or `B`".
            let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let variants = names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            if let Some((_, go)) = ENUMS.iter().find(|(v, _)| *v == variants) {
                return format!("unknown value \"{name}\" for enum {go}");
            }
        }
    }
    text.to_string()
}

/// A response that cannot be built (a header that does not parse) means a bug here.
pub(super) fn internal() -> Response {
    let mut r = Response::new(Body::from("internal error"));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

pub(in crate::server) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .unwrap_or_else(|_| internal()),
        Err(e) => error(&Status::internal(e.to_string())),
    }
}

/// grpc-gateway's HTTP status for each gRPC code.
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(super) fn error(status: &Status) -> Response {
    json(
        http_status(status.code()),
        &ErrorBody {
            error: status.message(),
            message: status.message(),
            code: status.code() as i32,
        },
    )
}
