//! The Auth service (etcd's v3rpc `AuthServer`) and who each request comes from.
//!
//! Identity, as etcd finds it: the gRPC metadata `token` (else `authorization`, which the
//! gateway fills from the HTTP header); without a token, with `--client-cert-auth`, the
//! Common Name of the client's certificate (not for requests the gateway forwards);
//! otherwise anonymous. A token that does not check out is refused even when auth is off.
//!
//! Changes go through raft; the reads (users, roles, status) are answered by this member
//! once it has applied everything committed before them (as linearizable as etcd's, which
//! sends them through raft). Passwords are hashed here, off the async workers, so only the
//! hash reaches the log; a login checks the password here and, for simple tokens, goes
//! through raft so that every member knows the token.

use std::sync::Arc;

use cairn_api::authpb::UserAddOptions;
use cairn_api::cairnpb::{
    auth_request::Request as AuthOp, internal_request::Request as Internal, AuthRequest,
    InternalAuthenticate, InternalChangePassword, InternalUserAdd,
};
use cairn_api::etcdserverpb::{
    auth_server::Auth, AuthDisableRequest, AuthDisableResponse, AuthEnableRequest,
    AuthEnableResponse, AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest,
    AuthRoleDeleteResponse, AuthRoleGetRequest, AuthRoleGetResponse,
    AuthRoleGrantPermissionRequest, AuthRoleGrantPermissionResponse, AuthRoleListRequest,
    AuthRoleListResponse, AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse,
    AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListRequest, AuthUserListResponse,
    AuthUserRevokeRoleRequest, AuthUserRevokeRoleResponse, AuthenticateRequest,
    AuthenticateResponse, ResponseHeader,
};
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::auth::{AuthApplied, AuthInfo};
use crate::error::Error;
use crate::node::Node;

/// The gRPC metadata keys a token may come in, in etcd's order.
pub(crate) const TOKEN: &str = "token";
pub(crate) const AUTHORIZATION: &str = "authorization";
/// Set by the gateway on what it forwards: the certificate on that connection is the
/// member's own, not the caller's, so it names nobody (etcd's rule).
pub(crate) const FROM_GATEWAY: &str = "grpcgateway-accept";

/// What a client connection's TLS handshake established: the Common Name of the
/// certificate it presented, if any. Set per connection, found in each request.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    pub common_name: Option<String>,
}

/// What a request carries that says who sent it: a token, or a certificate's name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    /// A token that is not ASCII is carried as one no member issued.
    token: Option<Result<String, ()>>,
    common_name: Option<String>,
}

impl Credentials {
    pub(crate) fn of<T>(node: &Node, req: &Request<T>) -> Credentials {
        let md = req.metadata();
        let token = md
            .get(TOKEN)
            .or_else(|| md.get(AUTHORIZATION))
            .map(|t| t.to_str().map(str::to_string).map_err(|_| ()));
        let common_name = if node.client_cert_auth() && md.get(FROM_GATEWAY).is_none() {
            req.extensions()
                .get::<PeerIdentity>()
                .and_then(|p| p.common_name.clone())
        } else {
            None
        };
        Credentials { token, common_name }
    }

    /// Who they name, now (a token is checked anew each time).
    pub(crate) async fn resolve(&self, node: &Node) -> Result<AuthInfo, Error> {
        match &self.token {
            Some(Ok(token)) => node.identify_token(token).await,
            Some(Err(())) => Err(Error::InvalidAuthToken),
            None => Ok(match &self.common_name {
                Some(cn) => AuthInfo {
                    username: cn.as_str().into(),
                    revision: node.store.auth().revision(),
                },
                None => AuthInfo::default(),
            }),
        }
    }
}

/// Who `req` comes from (see the module docs). The token is read in place: this runs for
/// every request.
pub(crate) async fn who<T: Sync>(node: &Node, req: &Request<T>) -> Result<AuthInfo, Error> {
    let md = req.metadata();
    match md.get(TOKEN).or_else(|| md.get(AUTHORIZATION)) {
        Some(token) => {
            let token = token.to_str().map_err(|_| Error::InvalidAuthToken)?;
            node.identify_token(token).await
        }
        None => Credentials::of(node, req).resolve(node).await,
    }
}

/// The cancel reason etcd gives a watch the caller may not make: the gRPC status as Go
/// prints it.
pub(crate) fn watch_refusal(e: &Error) -> String {
    let (code, e) = match e {
        Error::InvalidAuthToken => ("Unauthenticated", e),
        Error::AuthOldRevision | Error::UserEmpty => ("InvalidArgument", e),
        _ => ("PermissionDenied", &Error::PermissionDenied),
    };
    format!("rpc error: code = {code} desc = {e}")
}

impl Node {
    /// The user a token names, with the auth revision it vouches for.
    pub(crate) async fn identify_token(&self, token: &str) -> Result<AuthInfo, Error> {
        let auth = self.store.auth();
        let tokens = auth.tokens();
        // A simple token is known once its login is applied here (etcd waits the same way).
        if let Some(index) = tokens.simple_index(token) {
            if index > self.applied_index() {
                self.wait_applied(index).await?;
            }
        }
        let info = tokens.check(token)?;
        Ok(AuthInfo {
            username: info.user,
            revision: info.revision.unwrap_or_else(|| auth.revision()),
        })
    }
}

/// Drops expired simple tokens every second (etcd's resolution), until shutdown.
pub(super) async fn sweep_tokens(
    node: Arc<Node>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => node.store.auth().tokens().sweep(),
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

pub struct AuthService {
    node: Arc<Node>,
    bcrypt_cost: u32,
}

impl AuthService {
    pub fn new(node: Arc<Node>, bcrypt_cost: u32) -> Self {
        AuthService { node, bcrypt_cost }
    }

    /// Proposes an auth change as `req`'s caller; answers with a fresh header.
    async fn change<T: Sync>(
        &self,
        req: &Request<T>,
        op: AuthOp,
    ) -> Result<ResponseHeader, Status> {
        let who = who(&self.node, req).await?;
        let internal = Internal::Auth(AuthRequest { request: Some(op) });
        match self.node.propose_as(&who, internal).await? {
            Applied::Auth(_) => Ok(self.node.header(0)),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// A bcrypt hash of `password` (the CPU work of a hash: off the async workers).
    async fn hash(&self, password: String) -> Result<Vec<u8>, Status> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(String::into_bytes)
            .map_err(|e| Status::internal(format!("hashing a password: {e}")))
    }

    /// The hash to store: etcd 3.5's pre-hashed password, or a hash of the password.
    async fn stored_hash(&self, password: String, hashed: String) -> Result<Vec<u8>, Status> {
        if !hashed.is_empty() {
            return Ok(hashed.into_bytes());
        }
        self.hash(password).await
    }

    /// The caller, after this member has applied everything committed before the call.
    async fn reader<T: Sync>(&self, req: &Request<T>) -> Result<AuthInfo, Status> {
        let who = who(&self.node, req).await?;
        self.node.wait_linearizable().await?;
        Ok(who)
    }
}

/// Checks a login's password against the stored hash (bcrypt's CPU work off the workers);
/// returns the auth revision the check was made at.
async fn check_password(node: &Node, name: &str, password: &str) -> Result<u64, Error> {
    let auth = node.store.auth();
    if !auth.is_enabled() {
        return Err(Error::AuthNotEnabled);
    }
    let Some((hash, no_password, revision)) = auth.credentials(name) else {
        return Err(Error::AuthFailed);
    };
    if no_password {
        return Err(Error::NoPasswordUser);
    }
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || {
        let hash = String::from_utf8(hash).unwrap_or_default();
        bcrypt::verify(password, &hash).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    if ok {
        Ok(revision)
    } else {
        Err(Error::AuthFailed)
    }
}

/// Logins tried again when auth changed between the password check and the token.
const LOGIN_ATTEMPTS: usize = 3;

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let op = AuthOp::Enable(AuthEnableRequest {});
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthEnableResponse {
            header: Some(header),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let op = AuthOp::Disable(AuthDisableRequest {});
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthDisableResponse {
            header: Some(header),
        }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.reader(&req).await?;
        let auth = self.node.store.auth();
        Ok(Response::new(AuthStatusResponse {
            header: Some(self.node.header(0)),
            enabled: auth.is_enabled(),
            auth_revision: auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        // A token that does not check out fails the login too (etcd proposes it as the
        // caller), but only after the password.
        let caller = who(&self.node, &req).await;
        let r = req.into_inner();
        // The password is checked against every change acknowledged before the login.
        self.node.wait_linearizable().await?;
        let auth = self.node.store.auth();
        let mut attempt = 0;
        let token = loop {
            attempt += 1;
            let revision = check_password(&self.node, &r.name, &r.password).await?;
            let caller = caller.clone()?;
            if !auth.tokens().is_simple() {
                // A JWT vouches for the revision the password was checked at.
                if auth.revision() == revision {
                    break auth.tokens().sign(&r.name, revision)?;
                }
            } else {
                let login = AuthOp::Authenticate(InternalAuthenticate {
                    name: r.name.clone(),
                    simple_token: crate::auth::random_prefix(),
                    auth_revision: revision,
                });
                let internal = Internal::Auth(AuthRequest {
                    request: Some(login),
                });
                match self.node.propose_as(&caller, internal).await {
                    Ok(Applied::Auth(AuthApplied::Token(t))) => break t,
                    Ok(other) => {
                        return Err(Status::internal(format!(
                            "unexpected apply result {other:?}"
                        )))
                    }
                    Err(Error::AuthOldRevision) if attempt < LOGIN_ATTEMPTS => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if attempt >= LOGIN_ATTEMPTS {
                return Err(Error::AuthOldRevision.into());
            }
        };
        tracing::debug!(user = r.name, "authenticated");
        Ok(Response::new(AuthenticateResponse {
            header: Some(self.node.header(0)),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        // Before the hash's CPU: a caller who may not add users is refused cheaply (the apply
        // step checks again, authoritatively).
        self.node
            .store
            .auth()
            .check_admin(&who(&self.node, &req).await?)?;
        let r = req.get_ref().clone();
        let no_password = r
            .options
            .as_ref()
            .is_some_and(|o: &UserAddOptions| o.no_password);
        let hashed_password = if no_password || r.name.is_empty() {
            vec![]
        } else {
            self.stored_hash(r.password, r.hashed_password).await?
        };
        let op = AuthOp::UserAdd(InternalUserAdd {
            name: r.name,
            hashed_password,
            no_password,
        });
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: Some(header),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let who = self.reader(&req).await?;
        let name = &req.get_ref().name;
        let auth = self.node.store.auth();
        auth.check_user_get(&who, name)?;
        Ok(Response::new(AuthUserGetResponse {
            header: Some(self.node.header(0)),
            roles: auth.user_roles(name)?,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let who = self.reader(&req).await?;
        let auth = self.node.store.auth();
        auth.check_admin(&who)?;
        Ok(Response::new(AuthUserListResponse {
            header: Some(self.node.header(0)),
            users: auth.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let op = AuthOp::UserDelete(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: Some(header),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.node
            .store
            .auth()
            .check_admin(&who(&self.node, &req).await?)?;
        let r = req.get_ref().clone();
        let hashed_password = self.stored_hash(r.password, r.hashed_password).await?;
        let op = AuthOp::UserChangePassword(InternalChangePassword {
            name: r.name,
            hashed_password,
        });
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: Some(header),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let op = AuthOp::UserGrantRole(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: Some(header),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let op = AuthOp::UserRevokeRole(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: Some(header),
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let op = AuthOp::RoleAdd(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: Some(header),
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let who = self.reader(&req).await?;
        let role = &req.get_ref().role;
        let auth = self.node.store.auth();
        auth.check_role_get(&who, role)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: Some(self.node.header(0)),
            perm: auth.role_perms(role)?,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let who = self.reader(&req).await?;
        let auth = self.node.store.auth();
        auth.check_admin(&who)?;
        Ok(Response::new(AuthRoleListResponse {
            header: Some(self.node.header(0)),
            roles: auth.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let op = AuthOp::RoleDelete(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: Some(header),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let op = AuthOp::RoleGrantPermission(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: Some(header),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let op = AuthOp::RoleRevokePermission(req.get_ref().clone());
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: Some(header),
        }))
    }
}
