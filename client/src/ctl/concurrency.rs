//! `lock` and `elect`, through the v3lock and v3election services (which etcd serves too),
//! each on a lease kept alive for as long as the command holds.

use cairn_api::etcdserverpb::RangeResponse;
use cairn_api::v3electionpb::election_client::ElectionClient;
use cairn_api::v3electionpb::{CampaignRequest, LeaderRequest};
use cairn_api::v3lockpb::lock_client::LockClient;
use cairn_api::v3lockpb::LockRequest;
use futures::StreamExt;

use super::{bad_args, json, print_get, Fail};
use crate::{Client, Error, LeaseKeeper};

/// A lease for the command's session, kept alive until dropped.
async fn session(client: &Client, ttl: i64) -> Result<(i64, LeaseKeeper), Fail> {
    let granted = client.lease_grant(ttl, 0).await?;
    Ok((granted.id, client.keep_alive(granted.id, granted.ttl)))
}

/// Ends the session as etcdctl does: revoking its lease deletes the lock or candidate key
/// at once, so the next waiter need not wait for the lease to run out.
async fn release(client: &Client, lease: i64, keeper: LeaseKeeper) {
    drop(keeper);
    let _ = client.lease_revoke(lease).await;
}

/// Prints a key as `get` prints it.
async fn show(client: &Client, key: Vec<u8>, json_out: bool) -> Result<(), Fail> {
    let r = client.get(key, None).await?;
    print_range(&r, json_out);
    Ok(())
}

fn print_range(r: &RangeResponse, json_out: bool) {
    if json_out {
        println!("{}", json::range(r));
    } else {
        print_get(r, false);
    }
}

/// Holds until Ctrl-C, or until the session's lease is lost.
async fn hold(keeper: &LeaseKeeper) -> Result<(), Fail> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => Ok(r?),
        e = keeper.on_lost() => Err(e.into()),
    }
}

/// `lock NAME [COMMAND ...]`: with a command, runs it while holding the lock (with
/// `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` set, as etcdctl does) and releases it after;
/// without one, prints the lock's key and holds until interrupted.
pub(super) async fn lock(
    client: &Client,
    args: Vec<String>,
    ttl: i64,
    json_out: bool,
) -> Result<(), Fail> {
    let Some((name, mut command)) = args.split_first() else {
        return Err(bad_args(
            "lock takes a lock name argument and an optional command to execute",
        ));
    };
    // `lock NAME -- CMD ...`: the separator is not part of the command.
    if command.first().is_some_and(|c| c == "--") {
        command = &command[1..];
    }
    let (lease, keeper) = session(client, ttl).await?;
    let held = LockClient::new(client.current().1)
        .lock(LockRequest {
            name: name.clone().into_bytes(),
            lease,
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let outcome = if command.is_empty() {
        match show(client, held.key.clone(), json_out).await {
            Ok(()) => hold(&keeper).await,
            Err(e) => Err(e),
        }
    } else {
        let rev = held.header.as_ref().map_or(0, |h| h.revision);
        let key = String::from_utf8_lossy(&held.key).into_owned();
        let command = command.to_vec();
        tokio::task::spawn_blocking(move || {
            let status = std::process::Command::new(&command[0])
                .args(&command[1..])
                .env("ETCD_LOCK_KEY", key)
                .env("ETCD_LOCK_REV", rev.to_string())
                .status()?;
            match status.code() {
                Some(0) => Ok(()),
                Some(code) => Err(format!("exit status {code}").into()),
                None => Err("signal: killed".into()),
            }
        })
        .await?
    };
    release(client, lease, keeper).await;
    outcome
}

/// `elect NAME PROPOSAL` campaigns and, once elected, prints the leader's key and value and
/// holds until interrupted; `elect -l NAME` prints every leader as it is elected.
pub(super) async fn elect(
    client: &Client,
    args: Vec<String>,
    listen: bool,
    ttl: i64,
    json_out: bool,
) -> Result<(), Fail> {
    let mut elections = ElectionClient::new(client.current().1);
    match (args.as_slice(), listen) {
        ([name], true) => {
            let mut leaders = elections
                .observe(LeaderRequest {
                    name: name.clone().into_bytes(),
                })
                .await
                .map_err(Error::from)?
                .into_inner();
            loop {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => return Ok(r?),
                    next = leaders.next() => match next {
                        Some(Ok(l)) => print_range(
                            &RangeResponse {
                                header: l.header,
                                count: i64::from(l.kv.is_some()),
                                kvs: l.kv.into_iter().collect(),
                                ..Default::default()
                            },
                            json_out,
                        ),
                        Some(Err(s)) => return Err(Error::from(s).into()),
                        None => return Ok(()),
                    },
                }
            }
        }
        ([name, proposal], false) => {
            let (lease, keeper) = session(client, ttl).await?;
            let won = elections
                .campaign(CampaignRequest {
                    name: name.clone().into_bytes(),
                    lease,
                    value: proposal.clone().into_bytes(),
                })
                .await
                .map_err(Error::from)?
                .into_inner();
            let outcome = match won.leader.clone() {
                Some(leader) => match show(client, leader.key, json_out).await {
                    Ok(()) => hold(&keeper).await,
                    Err(e) => Err(e),
                },
                None => Err("campaign answered without a leader key".into()),
            };
            release(client, lease, keeper).await;
            outcome
        }
        ([_], false) => Err(bad_args("no proposal argument but -l not set")),
        _ => Err(bad_args(
            "elect takes one election name argument and an optional proposal argument",
        )),
    }
}
