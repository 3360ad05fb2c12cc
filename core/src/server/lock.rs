//! The v3lock Lock service, and the client of itself it shares with the Election service
//! (`election.rs`). As in etcd, the member serves both as a client of itself: a
//! `cairn-client` connection to its own client URL running the same recipes
//! (`cairn-recipes`) an application would, on the lease the caller gives, so the keys and
//! their semantics are exactly those of the client-side recipes.

use std::sync::{Arc, OnceLock};

use cairn_api::etcdserverpb::ResponseHeader;
use cairn_api::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use cairn_client::{Client, ClientOptions};
use cairn_recipes::{Mutex, Session};
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The member's own client URL (set once it listens) and the client connected to it.
#[derive(Clone)]
pub struct SelfClient {
    url: Arc<OnceLock<String>>,
    tls: Option<cairn_client::TlsOptions>,
    client: Arc<OnceCell<Client>>,
    node: Arc<Node>,
    /// Waiting calls and observe streams end when the server stops (graceful shutdown
    /// waits for every open call).
    pub(super) shutdown: tokio::sync::watch::Receiver<bool>,
}

impl SelfClient {
    pub fn new(
        node: Arc<Node>,
        url: Arc<OnceLock<String>>,
        tls: Option<cairn_client::TlsOptions>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> SelfClient {
        SelfClient {
            url,
            tls,
            client: Arc::new(OnceCell::new()),
            node,
            shutdown,
        }
    }

    /// Runs `f` unless the server stops first.
    pub(super) async fn until_stopped<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            r = f => r,
            _ = super::stopped(&mut stop) => Err(Status::unavailable("etcdserver: server stopped")),
        }
    }

    pub(super) async fn get(&self) -> Result<&Client, Status> {
        self.client
            .get_or_try_init(|| async {
                let url = self
                    .url
                    .get()
                    .ok_or_else(|| Status::unavailable("member not serving yet"))?;
                let options = ClientOptions {
                    tls: self.tls.clone(),
                    ..ClientOptions::default()
                };
                // Marked as the gateway marks what it forwards: the member's own
                // certificate on this connection names nobody.
                Client::connect([url.as_str()], options)
                    .await
                    .map_err(status)?
                    .with_metadata(super::auth::FROM_GATEWAY, "cairn")
                    .map_err(status)
            })
            .await
    }

    pub(super) fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(0))
    }

    /// The client of itself acting as `req`'s caller, as etcd's services pass their
    /// caller's context on: the caller's own token when it sent one; for a caller a client
    /// certificate names (auth on), a token for that user made by this member, ended a
    /// while after the call; anonymous otherwise. Never the member's own certificate as an
    /// identity: every call carries the gateway's marker.
    pub(super) async fn as_caller<T: Sync>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let client = self.get().await?;
        let md = req.metadata();
        if let Some(token) = md
            .get(super::auth::TOKEN)
            .or_else(|| md.get(super::auth::AUTHORIZATION))
        {
            let token = token
                .to_str()
                .map_err(|_| unmapped(crate::error::Error::InvalidAuthToken))?;
            return Ok(Caller {
                client: client.with_token(token).map_err(status)?,
                token: None,
            });
        }
        let auth = self.node.store.auth();
        let who = super::auth::who(&self.node, req).await.map_err(unmapped)?;
        if !auth.is_enabled() || who.is_anonymous() {
            return Ok(Caller {
                client: client.clone(),
                token: None,
            });
        }
        let token = auth
            .tokens()
            .local(&who.username, who.revision)
            .map_err(unmapped)?;
        Ok(Caller {
            client: client.with_token(&token).map_err(status)?,
            token: Some(LocalToken {
                node: self.node.clone(),
                token,
            }),
        })
    }
}

/// A caller's identity through the member's client of itself.
pub(super) struct Caller {
    pub(super) client: Client,
    token: Option<LocalToken>,
}

impl Caller {
    /// The client, and what must live as long as its use (a stream's).
    pub(super) fn into_parts(self) -> (Client, Option<LocalToken>) {
        (self.client, self.token)
    }
}

/// A token made for one call; it ends with the call.
pub(super) struct LocalToken {
    node: Arc<Node>,
    token: String,
}

/// How long a token made for one call outlives it: a recipe's cleanup (removing a lock
/// key whose waiter went away) runs after the call and still needs it.
const LOCAL_TOKEN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for LocalToken {
    fn drop(&mut self) {
        let (node, token) = (self.node.clone(), std::mem::take(&mut self.token));
        tokio::spawn(async move {
            tokio::time::sleep(LOCAL_TOKEN_GRACE).await;
            node.store.auth().tokens().forget(&token);
        });
    }
}

/// As etcd's lock and election services, which return their client's errors as plain
/// errors: UNKNOWN, with the error's text.
fn unmapped(e: crate::error::Error) -> Status {
    Status::unknown(e.to_string())
}

pub(super) fn status(e: impl Into<RecipeError>) -> Status {
    match e.into() {
        // Auth refusals reach etcd's callers as UNKNOWN with the text (see `unmapped`).
        RecipeError(cairn_recipes::Error::Client(cairn_client::Error::Server(s)))
            if matches!(
                s.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) || s.message() == "etcdserver: user name is empty" =>
        {
            Status::unknown(s.message())
        }
        RecipeError(cairn_recipes::Error::Client(cairn_client::Error::Server(s))) => s,
        RecipeError(cairn_recipes::Error::Client(c)) => Status::new(c.code(), c.to_string()),
        // etcd's election server returns these as plain errors: code UNKNOWN.
        RecipeError(cairn_recipes::Error::NotLeader) => Status::unknown("election: not leader"),
        RecipeError(cairn_recipes::Error::NoLeader) => Status::unknown("election: no leader"),
        RecipeError(other) => Status::unavailable(other.to_string()),
    }
}

/// Either kind of error the services meet, for one conversion to a status.
pub(super) struct RecipeError(cairn_recipes::Error);

impl From<cairn_recipes::Error> for RecipeError {
    fn from(e: cairn_recipes::Error) -> Self {
        RecipeError(e)
    }
}

impl From<cairn_client::Error> for RecipeError {
    fn from(e: cairn_client::Error) -> Self {
        RecipeError(cairn_recipes::Error::Client(e))
    }
}

pub(super) fn name(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Status::invalid_argument("lock and election names must be UTF-8"))
}

#[tonic::async_trait]
impl Lock for SelfClient {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = self.as_caller(&req).await?;
        let r = req.into_inner();
        let session = Session::with_lease(&caller.client, r.lease);
        let mutex = Mutex::new(&session, &name(&r.name)?);
        // Dropping this future (the caller gave up, or the server stops) removes the
        // waiting key.
        let guard = self
            .until_stopped(async { mutex.lock().await.map_err(status) })
            .await?;
        Ok(Response::new(LockResponse {
            header: self.header(),
            key: guard.into_key().into_bytes(),
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = self.as_caller(&req).await?;
        let key = req.into_inner().key;
        caller.client.delete(key, None).await.map_err(status)?;
        Ok(Response::new(UnlockResponse {
            header: self.header(),
        }))
    }
}
