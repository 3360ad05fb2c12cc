//! Cairn's typed errors and the single table that maps them to etcd's gRPC codes and texts.
//!
//! Clients branch on these texts (etcd's `rpctypes`), so they must stay byte-for-byte equal to
//! etcd's. Deep code returns `Result<_, Error>`; the gRPC edge converts once, through
//! `From<Error> for tonic::Status`.

use tonic::{Code, Status};

/// Everything a request can fail with, named after etcd's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The NOSPACE alarm is raised: writes that add data are refused until it is disarmed.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The CORRUPT alarm is raised: writes are refused until it is disarmed.
    #[error("etcdserver: corrupt cluster")]
    CorruptCluster,
    #[error("etcdserver: no leader")]
    NoLeader,
    /// Too much is queued: applying lags committing by more than etcd's 5,000 entries, or
    /// more requests wait than `--experimental-max-pending-requests`.
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    /// This member was removed from the cluster; it serves nothing more.
    #[error("etcdserver: the member has been permanently removed from the cluster")]
    Removed,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd 3.5's answer to a grant without a permission (3.4 crashed on it).
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// A login with a password for a user that has none (certificate-only); etcd has no
    /// gRPC code for it, so it is UNKNOWN with the auth package's text.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// An error etcd has no gRPC code for: UNKNOWN, with its own text.
    #[error("{0}")]
    Unmapped(&'static str),
    /// The storage engine failed; the member stops applying rather than diverge.
    #[error("etcdserver: storage failure: {0}")]
    Storage(String),
    /// Data on disk does not decode: never serve it.
    #[error("etcdserver: corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::InvalidSortOption
            | Error::RequestTooLarge
            | Error::MemberBadUrls
            | Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision
            | Error::PermissionNotGiven => Code::InvalidArgument,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::NoPasswordUser | Error::Unmapped(_) => Code::Unknown,
            Error::Compacted | Error::FutureRev => Code::OutOfRange,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExists
            | Error::NotLeader
            | Error::PeerUrlExists
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::BadLeaderTransferee => Code::FailedPrecondition,
            Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::NoSpace | Error::TooManyRequests => Code::ResourceExhausted,
            Error::NoLeader
            | Error::Timeout
            | Error::Stopped
            | Error::LeaderChanged
            | Error::LeaderTransferTimeout
            | Error::Removed => Code::Unavailable,
            Error::Storage(_) => Code::Internal,
            Error::Corrupt(_) | Error::CorruptCluster => Code::DataLoss,
        }
    }
}

impl Error {
    /// The status etcd's Maintenance service answers an auth failure with: its admin
    /// check returns the auth package's own errors, unmapped, so they reach clients as
    /// UNKNOWN with `auth: ...` texts.
    pub fn raw_auth_status(self) -> Status {
        let text = match &self {
            Error::UserEmpty => "auth: user name is empty",
            Error::PermissionDenied => "auth: permission denied",
            Error::UserNotFound => "auth: user not found",
            Error::InvalidAuthToken => "auth: invalid auth token",
            _ => return self.into(),
        };
        Status::unknown(text)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<fjall::Error> for Error {
    fn from(e: fjall::Error) -> Error {
        Error::Storage(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Storage(e.to_string())
    }
}

impl From<cairn_bolt::Error> for Error {
    fn from(e: cairn_bolt::Error) -> Error {
        match e {
            cairn_bolt::Error::Io(e) => Error::Storage(e.to_string()),
            e => Error::Corrupt(e.to_string()),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Error {
        Error::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_codes_match_etcd() {
        let s = Status::from(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = Status::from(Error::EmptyKey);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: key is not provided");
        assert_eq!(Status::from(Error::LeaseNotFound).code(), Code::NotFound);
        assert_eq!(Status::from(Error::NoLeader).code(), Code::Unavailable);
    }
}
