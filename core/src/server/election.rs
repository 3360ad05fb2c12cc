//! The v3election Election service, served like Lock through the member's client of
//! itself (see `lock.rs`) running the client-side `Election` recipe.

use cairn_api::v3electionpb::{
    election_server::Election as ElectionService, CampaignRequest, CampaignResponse, LeaderKey,
    LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use cairn_client::{Compare, Op, PutOptions, Txn};
use cairn_recipes::{Election, Session};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::lock::{name, status, SelfClient};

type ObserveStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ElectionService for SelfClient {
    type ObserveStream = ObserveStream;

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = self.as_caller(&req).await?;
        let r = req.into_inner();
        let session = Session::with_lease(&caller.client, r.lease);
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
        let caller = self.as_caller(&req).await?;
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
        let done = caller.client.txn(txn).await.map_err(status)?;
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
        let caller = self.as_caller(&req).await?;
        let r = req.into_inner();
        let session = Session::with_lease(&caller.client, 0);
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
        let (client, token) = self.as_caller(&req).await?.into_parts();
        let r = req.into_inner();
        let session = Session::with_lease(&client, 0);
        let changes = Election::new(&session, &name(&r.name)?).observe();
        let this = self.clone();
        let mut stop = self.shutdown.clone();
        let stopped = async move { super::stopped(&mut stop).await };
        let stream = changes.take_until(stopped).map(move |kv| {
            // The caller's token lives as long as the stream.
            let _ = &token;
            match kv {
                Ok(kv) => Ok(LeaderResponse {
                    header: this.header(),
                    kv: Some(kv),
                }),
                Err(e) => Err(status(e)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = self.as_caller(&req).await?;
        let leader = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key"))?;
        let txn = Txn::new()
            .when([Compare::create_revision(leader.key.clone()).eq(leader.rev)])
            .and_then([Op::delete(leader.key, None)]);
        caller.client.txn(txn).await.map_err(status)?;
        Ok(Response::new(ResignResponse {
            header: self.header(),
        }))
    }
}
