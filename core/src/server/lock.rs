//! The v3lock Lock and v3election Election services. As in etcd, the member serves them as a
//! client of itself: a `cairn-client` connection to its own client URL running the same
//! recipes (`cairn-recipes`) an application would, on the lease the caller gives, so the
//! keys and their semantics are exactly those of the client-side recipes.

use std::sync::{Arc, OnceLock};

use cairn_api::etcdserverpb::ResponseHeader;
use cairn_api::v3electionpb::{
    election_server::Election as ElectionService, CampaignRequest, CampaignResponse, LeaderKey,
    LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use cairn_api::v3lockpb::{
    lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse,
};
use cairn_client::{Client, ClientOptions, Compare, Op, PutOptions, Txn};
use cairn_recipes::{Election, Mutex, Session};
use futures::{Stream, StreamExt};
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
    shutdown: tokio::sync::watch::Receiver<bool>,
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
    async fn until_stopped<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            r = f => r,
            _ = super::stopped(&mut stop) => Err(Status::unavailable("etcdserver: server stopped")),
        }
    }

    async fn get(&self) -> Result<&Client, Status> {
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
                Client::connect([url.as_str()], options)
                    .await
                    .map_err(status)
            })
            .await
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(self.node.header(0))
    }
}

fn status(e: impl Into<RecipeError>) -> Status {
    match e.into() {
        RecipeError(cairn_recipes::Error::Client(cairn_client::Error::Server(s))) => s,
        RecipeError(cairn_recipes::Error::Client(c)) => Status::new(c.code(), c.to_string()),
        // etcd's election server returns these as plain errors: code UNKNOWN.
        RecipeError(cairn_recipes::Error::NotLeader) => Status::unknown("election: not leader"),
        RecipeError(cairn_recipes::Error::NoLeader) => Status::unknown("election: no leader"),
        RecipeError(other) => Status::unavailable(other.to_string()),
    }
}

/// Either kind of error the services meet, for one conversion to a status.
struct RecipeError(cairn_recipes::Error);

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

fn name(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Status::invalid_argument("lock and election names must be UTF-8"))
}

#[tonic::async_trait]
impl Lock for SelfClient {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let r = req.into_inner();
        let client = self.get().await?;
        let session = Session::with_lease(client, r.lease);
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
        let key = req.into_inner().key;
        self.get().await?.delete(key, None).await.map_err(status)?;
        Ok(Response::new(UnlockResponse {
            header: self.header(),
        }))
    }
}

type ObserveStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ElectionService for SelfClient {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let r = req.into_inner();
        let client = self.get().await?;
        let session = Session::with_lease(client, r.lease);
        let election = Election::new(&session, &name(&r.name)?);
        let leadership = self
            .until_stopped(async { election.campaign(r.value).await.map_err(status) })
            .await?;
        Ok(Response::new(CampaignResponse {
            header: self.header(),
            leader: Some(LeaderKey {
                name: r.name,
                key: leadership.key().as_bytes().to_vec(),
                rev: leadership.revision(),
                lease: r.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let r = req.into_inner();
        let leader = r
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key"))?;
        let txn = Txn::new()
            .when([Compare::create_revision(leader.key.clone()).eq(leader.rev)])
            .and_then([Op::put(
                leader.key,
                r.value,
                Some(PutOptions::new().with_lease(leader.lease)),
            )]);
        let done = self.get().await?.txn(txn).await.map_err(status)?;
        if !done.succeeded {
            return Err(status(cairn_recipes::Error::NotLeader));
        }
        Ok(Response::new(ProclaimResponse {
            header: self.header(),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let r = req.into_inner();
        let client = self.get().await?;
        let session = Session::with_lease(client, 0);
        let kv = Election::new(&session, &name(&r.name)?)
            .leader()
            .await
            .map_err(status)?;
        Ok(Response::new(LeaderResponse {
            header: self.header(),
            kv: Some(kv),
        }))
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let r = req.into_inner();
        let client = self.get().await?;
        let session = Session::with_lease(client, 0);
        let changes = Election::new(&session, &name(&r.name)?).observe();
        let this = self.clone();
        let mut stop = self.shutdown.clone();
        let stopped = async move { super::stopped(&mut stop).await };
        let stream = changes.take_until(stopped).map(move |kv| match kv {
            Ok(kv) => Ok(LeaderResponse {
                header: this.header(),
                kv: Some(kv),
            }),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let leader = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key"))?;
        let txn = Txn::new()
            .when([Compare::create_revision(leader.key.clone()).eq(leader.rev)])
            .and_then([Op::delete(leader.key, None)]);
        self.get().await?.txn(txn).await.map_err(status)?;
        Ok(Response::new(ResignResponse {
            header: self.header(),
        }))
    }
}
