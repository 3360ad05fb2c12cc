//! Credentials and the Auth API.
//!
//! With a user and password in [`ClientOptions`](crate::ClientOptions), the client logs in
//! when it connects and sends its token with every call (gRPC metadata `token`, as etcd's
//! clients do). When the server says the token is no longer good (it expired, the user's
//! password changed, or — with JWT — auth changed since it was issued) the client logs in
//! again and retries the call once; watches and lease keep-alives reconnect with the new
//! token. The calls here manage users, roles and permissions, as etcdctl's `user`, `role`
//! and `auth` commands do.
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_client::Error> {
//! use cairn_client::{Client, ClientOptions, Permission};
//! let root = Client::connect(["127.0.0.1:2379"], ClientOptions::default()).await?;
//! root.user_add("root", "rootpw", false).await?;
//! root.user_grant_role("root", "root").await?;
//! root.role_add("app").await?;
//! root.role_grant_permission("app", Permission::readwrite_prefix("app/")).await?;
//! root.user_add("svc", "svcpw", false).await?;
//! root.user_grant_role("svc", "app").await?;
//! root.auth_enable().await?;
//!
//! let svc = Client::connect(
//!     ["127.0.0.1:2379"],
//!     ClientOptions::default().with_user("svc", "svcpw"),
//! )
//! .await?;
//! svc.put("app/config", "v1", None).await?;
//! assert!(svc.put("other", "x", None).await.is_err()); // permission denied
//! # Ok(()) }
//! ```

use std::sync::{Arc, RwLock};

use cairn_api::authpb::{permission::Type, Permission as PermissionPb, UserAddOptions};
use cairn_api::etcdserverpb::{
    auth_client::AuthClient, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
};
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::client::{request, Retry};
use crate::kv::prefix_end;
use crate::{Client, Error};

/// A channel whose calls carry the client's credentials.
pub(crate) type AuthChannel = InterceptedService<Channel, Stamp>;

/// What a client presents: a token (from its login, or given), and any other metadata.
#[derive(Default)]
pub(crate) struct Session {
    token: RwLock<Option<AsciiMetadataValue>>,
    /// User and password to log in (again) with.
    login: Option<(String, String)>,
    extra: Vec<(MetadataKey<tonic::metadata::Ascii>, AsciiMetadataValue)>,
    /// One re-login at a time; others wait for it and use its token.
    relogin: tokio::sync::Mutex<u64>,
    /// Bumped by each login, so a caller that waited knows one happened.
    logins: std::sync::atomic::AtomicU64,
}

impl Session {
    pub(crate) fn new(login: Option<(String, String)>) -> Session {
        Session {
            login,
            ..Default::default()
        }
    }

    fn set_token(&self, token: &str) -> Result<(), Error> {
        let value = AsciiMetadataValue::try_from(token)
            .map_err(|_| Error::Server(tonic::Status::internal("token is not ASCII")))?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
        self.logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether this session can log in again by itself.
    pub(crate) fn can_login(&self) -> bool {
        self.login.is_some()
    }
}

/// Adds the session's token and metadata to each call.
#[derive(Clone)]
pub(crate) struct Stamp(pub(crate) Arc<Session>);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        if let Some(t) = self
            .0
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            md.insert("token", t);
        }
        for (k, v) in &self.0.extra {
            md.insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

impl Error {
    /// Whether logging in again would help: the token expired or was invalidated, or auth
    /// changed since it was issued.
    pub fn needs_login(&self) -> bool {
        matches!(self, Error::Server(s) if matches!(
            s.message(),
            "etcdserver: invalid auth token"
                | "etcdserver: revision of auth store is old"
                | "etcdserver: user name is empty"
        ))
    }

    /// Whether the server refused the call for lack of permission.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Server(s) if s.code() == tonic::Code::PermissionDenied)
    }
}

/// One key permission, as a role is granted it.
///
/// ```
/// use cairn_client::Permission;
/// let p = Permission::read_prefix("config/");
/// assert_eq!(p.key, b"config/");
/// assert_eq!(p.range_end, b"config0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// READ, WRITE or READWRITE.
    pub kind: Type,
    /// The key, or the start of the range.
    pub key: Vec<u8>,
    /// Empty: the key alone; `"\0"`: every key from `key` on; otherwise the end (exclusive).
    pub range_end: Vec<u8>,
}

impl Permission {
    /// `kind` on one key.
    pub fn key(kind: Type, key: impl Into<Vec<u8>>) -> Permission {
        Permission {
            kind,
            key: key.into(),
            range_end: vec![],
        }
    }

    /// `kind` on every key that starts with `prefix` (the empty prefix: every key).
    pub fn prefix(kind: Type, prefix: impl Into<Vec<u8>>) -> Permission {
        let prefix: Vec<u8> = prefix.into();
        if prefix.is_empty() {
            // As etcdctl: the whole key space.
            return Permission {
                kind,
                key: vec![0],
                range_end: vec![0],
            };
        }
        Permission {
            kind,
            range_end: prefix_end(&prefix),
            key: prefix,
        }
    }

    /// `kind` on `[key, range_end)`.
    pub fn range(kind: Type, key: impl Into<Vec<u8>>, range_end: impl Into<Vec<u8>>) -> Permission {
        Permission {
            kind,
            key: key.into(),
            range_end: range_end.into(),
        }
    }

    /// `kind` on every key from `key` on.
    pub fn from_key(kind: Type, key: impl Into<Vec<u8>>) -> Permission {
        Permission::range(kind, key, vec![0])
    }

    /// Read on a prefix.
    pub fn read_prefix(prefix: impl Into<Vec<u8>>) -> Permission {
        Permission::prefix(Type::Read, prefix)
    }

    /// Read and write on a prefix (what a recipe needs on its keys).
    pub fn readwrite_prefix(prefix: impl Into<Vec<u8>>) -> Permission {
        Permission::prefix(Type::Readwrite, prefix)
    }
}

impl From<Permission> for PermissionPb {
    fn from(p: Permission) -> PermissionPb {
        PermissionPb {
            perm_type: p.kind as i32,
            key: p.key,
            range_end: p.range_end,
        }
    }
}

macro_rules! admin_call {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $resp:ty, $method:ident, $req:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, $($arg: $ty),*) -> Result<$resp, Error> {
            let req = $req;
            // A change applied twice would fail the second time (`already exists`): retry
            // only what cannot have been applied.
            self.call(Retry::IfNotApplied, |ch, t| {
                let req = req.clone();
                async move { Ok(AuthClient::new(ch).$method(request(req, t)).await?.into_inner()) }
            })
            .await
        }
    };
}

macro_rules! read_call {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $resp:ty, $method:ident, $req:expr) => {
        $(#[$doc])*
        pub async fn $name(&self, $($arg: $ty),*) -> Result<$resp, Error> {
            let req = $req;
            self.call(Retry::Always, |ch, t| {
                let req = req.clone();
                async move { Ok(AuthClient::new(ch).$method(request(req, t)).await?.into_inner()) }
            })
            .await
        }
    };
}

impl Client {
    /// Logs in as the options' user (both a name and a password given, as etcd's clients
    /// require) and keeps the token for every call.
    pub(crate) async fn login(&self) -> Result<(), Error> {
        let Some((name, password)) = self.session.login.clone() else {
            return Ok(());
        };
        let req = AuthenticateRequest { name, password };
        // The login itself goes without the old token: one the server no longer knows would
        // fail it.
        let token = match self
            .call_plain(Retry::Always, |ch, t| {
                let req = req.clone();
                async move {
                    Ok(AuthClient::new(ch)
                        .authenticate(request(req, t))
                        .await?
                        .into_inner()
                        .token)
                }
            })
            .await
        {
            Ok(token) => token,
            // As etcd's clients: with auth off there is nothing to log in to; go on
            // without a token.
            Err(Error::Server(s)) if s.message() == "etcdserver: authentication is not enabled" => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        self.session.set_token(&token)
    }

    /// Logs in again after the server refused the token, unless another call already did
    /// since `seen` (the login count when that call was sent).
    pub(crate) async fn relogin(&self, seen: u64) -> Result<(), Error> {
        let _one = self.session.relogin.lock().await;
        if self.logins() != seen {
            return Ok(());
        }
        // Boxed: a login is a call, and a call may log in again.
        Box::pin(self.login()).await
    }

    /// The token this client presents, if any.
    #[cfg(feature = "cli")]
    pub(crate) fn session_token(&self) -> Option<String> {
        self.session
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|t| t.to_str().ok().map(str::to_string))
    }

    /// How many logins this session made (to tell whether a re-login happened since).
    pub(crate) fn logins(&self) -> u64 {
        self.session
            .logins
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A client on the same connections that presents `token` instead of its own
    /// credentials (a service passing its caller's identity on); metadata added with
    /// [`Client::with_metadata`] stays.
    pub fn with_token(&self, token: &str) -> Result<Client, Error> {
        let session = Session {
            extra: self.session.extra.clone(),
            ..Default::default()
        };
        session.set_token(token)?;
        Ok(self.with_session(session))
    }

    /// A client on the same connections whose calls also carry metadata `key: value`.
    pub fn with_metadata(&self, key: &'static str, value: &str) -> Result<Client, Error> {
        let value = AsciiMetadataValue::try_from(value)
            .map_err(|_| Error::Server(tonic::Status::invalid_argument("metadata is not ASCII")))?;
        let mut extra = self.session.extra.clone();
        extra.push((MetadataKey::from_static(key), value));
        let session = Session {
            token: RwLock::new(
                self.session
                    .token
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
            login: self.session.login.clone(),
            extra,
            ..Default::default()
        };
        Ok(self.with_session(session))
    }

    admin_call!(
        /// Turns auth on (a `root` user with the `root` role must exist).
        auth_enable() -> AuthEnableResponse, auth_enable, AuthEnableRequest {});
    admin_call!(
        /// Turns auth off; every token ends.
        auth_disable() -> AuthDisableResponse, auth_disable, AuthDisableRequest {});
    read_call!(
        /// Whether auth is on, and the auth revision (etcd 3.5's AuthStatus).
        auth_status() -> AuthStatusResponse, auth_status, AuthStatusRequest {});

    /// Adds a user; `no_password` makes one that only a client certificate can log in as.
    pub async fn user_add(
        &self,
        name: &str,
        password: &str,
        no_password: bool,
    ) -> Result<AuthUserAddResponse, Error> {
        let req = AuthUserAddRequest {
            name: name.to_string(),
            password: password.to_string(),
            options: Some(UserAddOptions { no_password }),
            hashed_password: String::new(),
        };
        self.call(Retry::IfNotApplied, |ch, t| {
            let req = req.clone();
            async move {
                Ok(AuthClient::new(ch)
                    .user_add(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    read_call!(
        /// A user's roles.
        user_get(name: &str) -> AuthUserGetResponse, user_get,
        AuthUserGetRequest { name: name.to_string() });
    read_call!(
        /// Every user name.
        user_list() -> AuthUserListResponse, user_list, AuthUserListRequest {});
    admin_call!(
        /// Deletes a user; its tokens end.
        user_delete(name: &str) -> AuthUserDeleteResponse, user_delete,
        AuthUserDeleteRequest { name: name.to_string() });
    admin_call!(
    /// Changes a user's password; its tokens end.
    user_change_password(name: &str, password: &str) -> AuthUserChangePasswordResponse,
    user_change_password,
    AuthUserChangePasswordRequest {
        name: name.to_string(),
        password: password.to_string(),
        hashed_password: String::new(),
    });
    admin_call!(
        /// Grants a role to a user.
        user_grant_role(user: &str, role: &str) -> AuthUserGrantRoleResponse, user_grant_role,
        AuthUserGrantRoleRequest { user: user.to_string(), role: role.to_string() });
    admin_call!(
        /// Takes a role from a user.
        user_revoke_role(name: &str, role: &str) -> AuthUserRevokeRoleResponse, user_revoke_role,
        AuthUserRevokeRoleRequest { name: name.to_string(), role: role.to_string() });
    admin_call!(
        /// Adds a role.
        role_add(name: &str) -> AuthRoleAddResponse, role_add,
        AuthRoleAddRequest { name: name.to_string() });
    read_call!(
        /// A role's permissions.
        role_get(role: &str) -> AuthRoleGetResponse, role_get,
        AuthRoleGetRequest { role: role.to_string() });
    read_call!(
        /// Every role name.
        role_list() -> AuthRoleListResponse, role_list, AuthRoleListRequest {});
    admin_call!(
        /// Deletes a role (every user loses it).
        role_delete(role: &str) -> AuthRoleDeleteResponse, role_delete,
        AuthRoleDeleteRequest { role: role.to_string() });
    admin_call!(
        /// Grants a role a permission (the same key and range again replaces its kind).
        role_grant_permission(role: &str, perm: Permission) -> AuthRoleGrantPermissionResponse,
        role_grant_permission,
        AuthRoleGrantPermissionRequest { name: role.to_string(), perm: Some(perm.into()) });
    admin_call!(
    /// Takes from a role the permission on exactly this key and range.
    role_revoke_permission(role: &str, key: &[u8], range_end: &[u8])
        -> AuthRoleRevokePermissionResponse,
    role_revoke_permission,
    AuthRoleRevokePermissionRequest {
        role: role.to_string(),
        key: key.to_vec(),
        range_end: range_end.to_vec(),
    });
}
