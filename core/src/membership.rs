//! Cluster membership: members, their deterministic ids and the cluster id.
//!
//! Ids are derived as etcd derives them (SHA-1 of the sorted peer URLs and the cluster
//! token for a member; of the sorted member ids for the cluster), so a restart with the same
//! flags keeps them and the same flags give the same ids as etcd.

use cairn_api::etcdserverpb::Member;

use crate::config::Config;

/// Why a configuration cannot form a cluster.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("--initial-cluster entry {0:?} is not name=url")]
    BadEntry(String),
    #[error("--initial-cluster has no member named {0:?} with this member's --initial-advertise-peer-urls")]
    NotListed(String),
    #[error("--initial-cluster names {0} members; this version runs a single member (multi-member clusters are not available yet)")]
    MultiMember(usize),
    #[error("--initial-cluster-state existing is not supported yet (joining needs a multi-member cluster)")]
    Existing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The members of the cluster as this member knows them.
#[derive(Debug, Clone)]
pub struct Membership {
    pub cluster_id: u64,
    pub local_id: u64,
    pub members: Vec<MemberInfo>,
}

fn first_u64(digest: [u8; 20]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// A member's id from its peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    first_u64(h.digest().bytes())
}

/// The cluster id from its members' ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    first_u64(h.digest().bytes())
}

impl Membership {
    pub fn from_config(cfg: &Config) -> Result<Membership, MembershipError> {
        if cfg.initial_cluster_state == "existing" {
            return Err(MembershipError::Existing);
        }
        let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
        for entry in cfg.initial_cluster().split(',').filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| MembershipError::BadEntry(entry.into()))?;
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => by_name.push((name.to_string(), vec![url.to_string()])),
            }
        }
        let mut advertised = cfg.initial_advertise_peer_urls.clone();
        advertised.sort();
        let listed = by_name.iter().any(|(n, urls)| {
            let mut u = urls.clone();
            u.sort();
            *n == cfg.name && u == advertised
        });
        if !listed {
            return Err(MembershipError::NotListed(cfg.name.clone()));
        }
        if by_name.len() > 1 {
            return Err(MembershipError::MultiMember(by_name.len()));
        }
        let members: Vec<MemberInfo> = by_name
            .into_iter()
            .map(|(name, peer_urls)| MemberInfo {
                id: member_id(&peer_urls, &cfg.initial_cluster_token),
                client_urls: if name == cfg.name {
                    cfg.advertise_client_urls()
                } else {
                    vec![]
                },
                name,
                peer_urls,
            })
            .collect();
        let local_id = member_id(&cfg.initial_advertise_peer_urls, &cfg.initial_cluster_token);
        let cluster_id = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
        Ok(Membership {
            cluster_id,
            local_id,
            members,
        })
    }

    pub fn voters(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn to_proto(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|m| Member {
                id: m.id,
                name: m.name.clone(),
                peer_ur_ls: m.peer_urls.clone(),
                client_ur_ls: m.client_urls.clone(),
                is_learner: false,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_depend_on_urls_and_token() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(
            a,
            member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster")
        );
        assert_ne!(
            a,
            member_id(&["http://127.0.0.1:2381".into()], "etcd-cluster")
        );
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other"));
        assert_ne!(cluster_id(&[a]), 0);
    }

    #[test]
    fn default_config_is_one_member() {
        let m = Membership::from_config(&Config::new()).unwrap();
        assert_eq!(m.members.len(), 1);
        assert_eq!(m.voters(), vec![m.local_id]);
    }
}
