//! Cluster membership: members, their deterministic ids and the cluster id.
//!
//! Ids are derived as etcd derives them (SHA-1 of the sorted peer URLs and the cluster
//! token for a member; of the sorted member ids for the cluster), so a restart with the same
//! flags keeps them. The member list itself is replicated state: it changes only when a raft
//! entry (a configuration change, or a member announcing its attributes) is applied, and it
//! is stored with the MVCC state, so every member holds the same list at the same index.

use std::sync::RwLock;

use cairn_api::cairnpb::ClusterState;
use cairn_api::etcdserverpb::Member;

use crate::config::Config;
use crate::error::Error;

/// Why a configuration cannot form a cluster.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("--initial-cluster entry {0:?} is not name=url")]
    BadEntry(String),
    #[error("--initial-cluster has no member named {0:?} with this member's --initial-advertise-peer-urls")]
    NotListed(String),
    #[error("cannot join the cluster: {0}")]
    Join(String),
}

fn first_u64(digest: [u8; 20]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// A member's id from its peer URLs and the cluster token (plus, for a member added at
/// run time, the time it was added, as etcd does, so a re-added URL gets a new id).
pub fn member_id(peer_urls: &[String], token: &str, added_at: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if let Some(t) = added_at {
        h.update(&t.to_be_bytes());
    }
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

/// `name=url,name=url` → (name, urls) in order of first appearance.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Vec<String>)>, MembershipError> {
    let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
    for entry in s.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| MembershipError::BadEntry(entry.into()))?;
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => by_name.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(by_name)
}

fn sorted(urls: &[String]) -> Vec<String> {
    let mut u = urls.to_vec();
    u.sort();
    u
}

/// The membership a new cluster starts with, from `--initial-cluster`. Client URLs are
/// empty until each member announces them through raft.
pub fn initial_state(cfg: &Config) -> Result<(ClusterState, u64), MembershipError> {
    let by_name = parse_initial_cluster(&cfg.initial_cluster())?;
    let advertised = sorted(&cfg.initial_advertise_peer_urls);
    if !by_name
        .iter()
        .any(|(n, urls)| *n == cfg.name && sorted(urls) == advertised)
    {
        return Err(MembershipError::NotListed(cfg.name.clone()));
    }
    let members: Vec<Member> = by_name
        .into_iter()
        .map(|(name, peer_urls)| Member {
            id: member_id(&peer_urls, &cfg.initial_cluster_token, None),
            name,
            peer_ur_ls: peer_urls,
            client_ur_ls: vec![],
            is_learner: false,
        })
        .collect();
    let mut members = members;
    // etcd lists members by id.
    members.sort_by_key(|m| m.id);
    let local_id = member_id(
        &cfg.initial_advertise_peer_urls,
        &cfg.initial_cluster_token,
        None,
    );
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    Ok((
        ClusterState {
            cluster_id: cluster_id(&ids),
            members,
            removed: vec![],
        },
        local_id,
    ))
}

/// Finds this member in a cluster it is joining, by its advertised peer URLs.
pub fn find_self(state: &ClusterState, cfg: &Config) -> Result<u64, MembershipError> {
    let advertised = sorted(&cfg.initial_advertise_peer_urls);
    state
        .members
        .iter()
        .find(|m| sorted(&m.peer_ur_ls) == advertised)
        .map(|m| m.id)
        .ok_or_else(|| {
            MembershipError::Join(format!(
                "no member with peer URLs {advertised:?}; add it first (member add)"
            ))
        })
}

/// The members of the cluster as this member knows them (see the module docs).
#[derive(Debug)]
pub struct Membership {
    pub cluster_id: u64,
    pub local_id: u64,
    state: RwLock<ClusterState>,
}

impl Membership {
    pub fn new(local_id: u64, state: ClusterState) -> Membership {
        Membership {
            cluster_id: state.cluster_id,
            local_id,
            state: RwLock::new(state),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ClusterState> {
        // Writers replace the whole state; a poisoned lock still holds a consistent list.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ClusterState {
        self.read().clone()
    }

    pub fn replace(&self, state: ClusterState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn members(&self) -> Vec<Member> {
        self.state().members
    }

    pub fn member(&self, id: u64) -> Option<Member> {
        self.read().members.iter().find(|m| m.id == id).cloned()
    }

    /// Whether `id` is a current member (voter or learner).
    pub fn is_member(&self, id: u64) -> bool {
        self.read().members.iter().any(|m| m.id == id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.read().removed.contains(&id)
    }

    /// Checks a MemberAdd before it is proposed, as etcd does.
    pub fn check_add(&self, peer_urls: &[String], is_learner: bool) -> Result<(), Error> {
        if peer_urls.is_empty()
            || peer_urls
                .iter()
                .any(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(Error::MemberBadUrls);
        }
        let state = self.state();
        if state
            .members
            .iter()
            .flat_map(|m| &m.peer_ur_ls)
            .any(|u| peer_urls.contains(u))
        {
            return Err(Error::PeerUrlExists);
        }
        if is_learner && state.members.iter().filter(|m| m.is_learner).count() >= 1 {
            return Err(Error::TooManyLearners);
        }
        Ok(())
    }

    /// Checks a MemberUpdate before it is proposed.
    pub fn check_update(&self, id: u64, peer_urls: &[String]) -> Result<(), Error> {
        if self.member(id).is_none() {
            return Err(Error::MemberNotFound);
        }
        if self
            .state()
            .members
            .iter()
            .filter(|m| m.id != id)
            .flat_map(|m| &m.peer_ur_ls)
            .any(|u| peer_urls.contains(u))
        {
            return Err(Error::PeerUrlExists);
        }
        Ok(())
    }
}

/// Deterministic changes to the stored membership, made by the apply loop.
pub mod apply {
    use super::*;

    pub fn add(state: &mut ClusterState, member: Member) {
        state.members.retain(|m| m.id != member.id);
        state.members.push(member);
        state.members.sort_by_key(|m| m.id);
    }

    pub fn remove(state: &mut ClusterState, id: u64) {
        state.members.retain(|m| m.id != id);
        if !state.removed.contains(&id) {
            state.removed.push(id);
        }
    }

    pub fn promote(state: &mut ClusterState, id: u64) {
        if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
            m.is_learner = false;
        }
    }

    pub fn set_attributes(state: &mut ClusterState, id: u64, name: &str, client_urls: &[String]) {
        if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
            m.name = name.to_string();
            m.client_ur_ls = client_urls.to_vec();
        }
    }

    pub fn set_peer_urls(state: &mut ClusterState, id: u64, peer_urls: &[String]) {
        if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
            m.peer_ur_ls = peer_urls.to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_depend_on_urls_and_token() {
        let url = |s: &str| vec![s.to_string()];
        let a = member_id(&url("http://127.0.0.1:2380"), "etcd-cluster", None);
        assert_eq!(
            a,
            member_id(&url("http://127.0.0.1:2380"), "etcd-cluster", None)
        );
        assert_ne!(
            a,
            member_id(&url("http://127.0.0.1:2381"), "etcd-cluster", None)
        );
        assert_ne!(a, member_id(&url("http://127.0.0.1:2380"), "other", None));
        assert_ne!(
            a,
            member_id(&url("http://127.0.0.1:2380"), "etcd-cluster", Some(1))
        );
        assert_ne!(cluster_id(&[a]), 0);
    }

    #[test]
    fn default_config_is_one_member() {
        let (state, local) = initial_state(&Config::new()).unwrap();
        assert_eq!(state.members.len(), 1);
        assert_eq!(state.members[0].id, local);
    }

    #[test]
    fn three_members_agree_on_ids() {
        let mut cfg = Config::new();
        cfg.initial_cluster =
            Some("a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3".to_string());
        cfg.name = "b".into();
        cfg.initial_advertise_peer_urls = vec!["http://127.0.0.1:2".into()];
        let (state, local) = initial_state(&cfg).unwrap();
        assert_eq!(state.members.len(), 3);
        assert!(state.members.iter().any(|m| m.id == local && m.name == "b"));
        assert_eq!(find_self(&state, &cfg).unwrap(), local);
        cfg.name = "d".into();
        assert!(initial_state(&cfg).is_err());
    }

    #[test]
    fn add_checks_urls_and_learners() {
        let (mut state, local) = initial_state(&Config::new()).unwrap();
        let m = Membership::new(local, state.clone());
        assert_eq!(
            m.check_add(&["http://127.0.0.1:2380".into()], false),
            Err(Error::PeerUrlExists)
        );
        assert_eq!(
            m.check_add(&["nope".into()], false),
            Err(Error::MemberBadUrls)
        );
        apply::add(
            &mut state,
            Member {
                id: 9,
                peer_ur_ls: vec!["http://127.0.0.1:9".into()],
                is_learner: true,
                ..Default::default()
            },
        );
        m.replace(state);
        assert_eq!(
            m.check_add(&["http://127.0.0.1:10".into()], true),
            Err(Error::TooManyLearners)
        );
    }
}
