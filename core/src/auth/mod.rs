//! Authentication and authorization, as etcd's `auth/` package: users with bcrypt
//! passwords, roles with read/write permissions over keys, ranges, prefixes and from-key
//! ranges, the root user and role, the auth switch and revision (`store`), each user's
//! merged permissions (`perms`), the checks every request passes (`check`), tokens
//! (`token`) and certificate identities (`cert`).
//!
//! Auth state changes only through raft (`cairnpb.AuthRequest`), so it is identical on
//! every member, durable, and in snapshots and backups. Reads are checked by the member
//! that serves them; writes are checked when they are applied, against the auth state at
//! their place in the log, from the requester recorded in the entry
//! (`cairnpb.RequestHeader`). Passwords reach the log only as hashes, made by the member
//! that took the request, and are never logged or returned.

mod cert;
mod check;
mod perms;
mod store;
mod token;

pub use cert::common_name;
pub use store::{etcd_location, from_etcd, AuthApplied, AuthStore, ROOT};
pub use token::{random_prefix, TokenInfo, TokenProvider, DEFAULT_TTL};

use std::sync::Arc;

use cairn_api::cairnpb::RequestHeader;

/// etcd's bcrypt cost (`--bcrypt-cost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// Who a request comes from: a user and the auth revision their credentials were checked
/// at. The default (no name, revision 0) is anonymous.
/// (The name is shared, not copied, between the token table and each request.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: Arc<str>,
    pub revision: u64,
}

impl AuthInfo {
    pub fn header(&self) -> RequestHeader {
        RequestHeader {
            username: self.username.to_string(),
            auth_revision: self.revision,
        }
    }

    pub fn from_header(h: &RequestHeader) -> AuthInfo {
        AuthInfo {
            username: h.username.as_str().into(),
            revision: h.auth_revision,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty() && self.revision == 0
    }
}
