//! The auth store (etcd's `auth/store.go`): whether auth is on, the auth revision, users
//! and roles, kept in keyspace `auth` of the member's database and changed only by applied
//! raft entries, in the same atomic batch as the rest of the entry's effects, so every
//! member holds the same users and roles at the same log index.
//!
//! Keys: `enabled` (one byte), `revision` (big-endian u64), `u/<name>` (an encoded
//! `authpb.User`, the password as a bcrypt hash) and `r/<name>` (an encoded `authpb.Role`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use cairn_api::authpb::{Permission, Role, User, UserAddOptions};
use cairn_api::cairnpb::{auth_request::Request as AuthOp, AuthRequest};
use cairn_client::backup::etcd;
use fjall::{Database, Keyspace, OwnedWriteBatch};
use prost::Message;

use super::perms::UserPerms;
use super::token::TokenProvider;
use super::AuthInfo;
use crate::error::Error;

const ENABLED: &[u8] = b"enabled";
const REVISION: &[u8] = b"revision";
const USER: &[u8] = b"u/";
const ROLE: &[u8] = b"r/";

/// The names etcd gives the administrator and its role.
pub const ROOT: &str = "root";

fn user_key(name: &str) -> Vec<u8> {
    [USER, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE, name.as_bytes()].concat()
}

#[derive(Debug, Default, Clone)]
pub(super) struct State {
    pub(super) enabled: bool,
    pub(super) revision: u64,
    pub(super) users: BTreeMap<String, User>,
    pub(super) roles: BTreeMap<String, Role>,
    /// What each user may do, derived from the users and roles whenever they change, so a
    /// request's check is one lookup.
    pub(super) access: HashMap<String, Arc<Access>>,
}

/// One user's rights, merged across roles.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Access {
    /// The root role: everything.
    Root,
    Keys(UserPerms),
}

impl State {
    fn has_root_role(&self, user: &User) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// Rebuilds `access` from the users and roles.
    fn derive(&mut self) {
        self.access = self
            .users
            .iter()
            .map(|(name, u)| {
                let access = if self.has_root_role(u) {
                    Access::Root
                } else {
                    let perms = u
                        .roles
                        .iter()
                        .filter_map(|r| self.roles.get(r))
                        .flat_map(|r| r.key_permission.iter());
                    Access::Keys(UserPerms::build(perms))
                };
                (name.clone(), Arc::new(access))
            })
            .collect();
    }
}

/// What an applied auth change produced, for the waiting request's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthApplied {
    /// The change took effect (or was etcd's no-op, like enabling auth twice).
    Done,
    /// A login: the token for the user.
    Token(String),
}

/// See the module docs.
pub struct AuthStore {
    ks: Keyspace,
    state: RwLock<State>,
    /// Copies of the state's switch and revision, read on every request without the lock.
    enabled: AtomicBool,
    revision: AtomicU64,
    /// Set once when the member starts (`--auth-token`); simple tokens of 300 s until then.
    tokens: OnceLock<TokenProvider>,
}

impl AuthStore {
    /// Opens (or creates) the auth keyspace and loads it.
    pub fn open(db: &Database) -> Result<AuthStore, Error> {
        let ks = db.keyspace("auth", crate::mvcc::keyspace_options)?;
        let state = load(&ks)?;
        let store = AuthStore {
            enabled: AtomicBool::new(state.enabled),
            revision: AtomicU64::new(state.revision),
            ks,
            state: RwLock::new(state),
            tokens: OnceLock::new(),
        };
        Ok(store)
    }

    /// The keyspace, for snapshots and backups.
    pub fn keyspace(&self) -> &Keyspace {
        &self.ks
    }

    /// Reloads everything from the keyspace (after a snapshot replaced it). Tokens issued
    /// before are dropped: they vouched for users of another state.
    pub fn reload(&self) -> Result<(), Error> {
        let state = load(&self.ks)?;
        let (enabled, revision) = (state.enabled, state.revision);
        *self.write() = state;
        self.enabled.store(enabled, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        self.tokens().clear();
        Ok(())
    }

    /// Sets how tokens are issued and checked (`--auth-token`), before any is; false if
    /// tokens were already in use.
    pub fn set_tokens(&self, tokens: TokenProvider) -> bool {
        self.tokens.set(tokens).is_ok()
    }

    pub fn tokens(&self) -> &TokenProvider {
        self.tokens.get_or_init(TokenProvider::default)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The auth revision: bumped by every change that can affect a permission.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every change is made on a copy and swapped in whole: a panic leaves no half state.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// What `user` may do, if the user exists.
    pub(super) fn access(&self, user: &str) -> Option<Arc<Access>> {
        self.read().access.get(user).cloned()
    }

    /// The stored bcrypt hash of `name`, whether it has no password, and the auth revision
    /// they are as of (read together), for a login's password check.
    pub fn credentials(&self, name: &str) -> Option<(Vec<u8>, bool, u64)> {
        let st = self.read();
        let u = st.users.get(name)?;
        let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
        Some((u.password.clone(), no_password, st.revision))
    }

    /// The roles of `name`, sorted.
    pub fn user_roles(&self, name: &str) -> Result<Vec<String>, Error> {
        let st = self.read();
        let u = st.users.get(name).ok_or(Error::UserNotFound)?;
        Ok(u.roles.clone())
    }

    /// Every user name, in byte order.
    pub fn user_names(&self) -> Vec<String> {
        self.read().users.keys().cloned().collect()
    }

    /// The permissions of `role`, ordered by key.
    pub fn role_perms(&self, role: &str) -> Result<Vec<Permission>, Error> {
        let st = self.read();
        let r = st.roles.get(role).ok_or(Error::RoleNotFound)?;
        Ok(r.key_permission.clone())
    }

    /// Every role name, in byte order.
    pub fn role_names(&self) -> Vec<String> {
        self.read().roles.keys().cloned().collect()
    }

    /// Whether `user` has `role`.
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.read()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// Applies one auth change at raft index `index`, writing it into `batch`. `who` is
    /// the requester (None: the member itself); every change but a login is the
    /// administrator's.
    pub fn apply(
        &self,
        req: AuthRequest,
        who: Option<&AuthInfo>,
        index: u64,
        batch: &mut OwnedWriteBatch,
    ) -> Result<AuthApplied, Error> {
        let Some(op) = req.request else {
            return Ok(AuthApplied::Done);
        };
        if let AuthOp::Authenticate(a) = op {
            let st = self.read();
            if !st.enabled {
                return Err(Error::AuthNotEnabled);
            }
            if !st.users.contains_key(&a.name) {
                return Err(Error::AuthFailed);
            }
            // The password was checked against an older state (changed since?): refused,
            // and the member that took the login checks again.
            if a.auth_revision != 0 && a.auth_revision != st.revision {
                return Err(Error::AuthOldRevision);
            }
            drop(st);
            // Every member registers the same simple token: `<prefix>.<index>`.
            let token = self.tokens().assign_simple(&a.simple_token, index, &a.name);
            return Ok(AuthApplied::Token(token));
        }
        if let Some(who) = who {
            self.check_admin(who)?;
        }
        let before = self.read().clone();
        let mut next = before.clone();
        let Some(effect) = apply_op(&mut next, op)? else {
            return Ok(AuthApplied::Done);
        };
        next.derive();
        persist(&self.ks, &before, &next, batch);
        // The state before the revision: a request that sees the new revision finds the
        // new rights.
        let (enabled, revision) = (next.enabled, next.revision);
        *self.write() = next;
        self.enabled.store(enabled, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        let tokens = self.tokens();
        match effect {
            TokenEffect::None => {}
            TokenEffect::DropUser(name) => tokens.invalidate_user(&name),
            TokenEffect::DropAll => tokens.clear(),
        }
        Ok(AuthApplied::Done)
    }
}

/// What tokens an applied change invalidates.
enum TokenEffect {
    None,
    DropUser(String),
    DropAll,
}

/// The state changed: bump the revision if asked; `Some` tells the caller to write it.
fn changed(
    state: &mut State,
    bump: bool,
    tokens: TokenEffect,
) -> Result<Option<TokenEffect>, Error> {
    if bump {
        state.revision += 1;
    }
    Ok(Some(tokens))
}

/// etcd's rules for each change, on a copy of the state; `None` when it is etcd's no-op
/// (enabling auth twice, granting a role the user has).
fn apply_op(s: &mut State, op: AuthOp) -> Result<Option<TokenEffect>, Error> {
    match op {
        AuthOp::Enable(_) => {
            if s.enabled {
                return Ok(None);
            }
            let root = s.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
            if !s.has_root_role(root) {
                return Err(Error::RootRoleNotExist);
            }
            s.enabled = true;
            tracing::info!("authentication enabled");
            changed(s, false, TokenEffect::None)
        }
        AuthOp::Disable(_) => {
            if !s.enabled {
                return Ok(None);
            }
            s.enabled = false;
            tracing::info!("authentication disabled");
            changed(s, true, TokenEffect::DropAll)
        }
        // Handled by the caller: a login changes no state.
        AuthOp::Authenticate(_) => Ok(None),
        AuthOp::UserAdd(u) => {
            if u.name.is_empty() {
                return Err(Error::UserEmpty);
            }
            if s.users.contains_key(&u.name) {
                return Err(Error::UserAlreadyExist);
            }
            let user = User {
                name: u.name.clone().into_bytes(),
                password: if u.no_password {
                    vec![]
                } else {
                    u.hashed_password
                },
                roles: vec![],
                options: Some(UserAddOptions {
                    no_password: u.no_password,
                }),
            };
            s.users.insert(u.name, user);
            changed(s, true, TokenEffect::None)
        }
        AuthOp::UserDelete(d) => {
            if s.enabled && d.name == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            s.users.remove(&d.name).ok_or(Error::UserNotFound)?;
            changed(s, true, TokenEffect::DropUser(d.name))
        }
        AuthOp::UserChangePassword(c) => {
            let user = s.users.get_mut(&c.name).ok_or(Error::UserNotFound)?;
            user.password = c.hashed_password;
            changed(s, true, TokenEffect::DropUser(c.name))
        }
        AuthOp::UserGrantRole(g) => {
            if g.role != ROOT && !s.roles.contains_key(&g.role) {
                if !s.users.contains_key(&g.user) {
                    return Err(Error::UserNotFound);
                }
                return Err(Error::RoleNotFound);
            }
            let user = s.users.get_mut(&g.user).ok_or(Error::UserNotFound)?;
            match user.roles.binary_search(&g.role) {
                Ok(_) => Ok(None),
                Err(at) => {
                    user.roles.insert(at, g.role);
                    changed(s, true, TokenEffect::None)
                }
            }
        }
        AuthOp::UserRevokeRole(r) => {
            if s.enabled && r.name == ROOT && r.role == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            let user = s.users.get_mut(&r.name).ok_or(Error::UserNotFound)?;
            let at = user
                .roles
                .iter()
                .position(|x| *x == r.role)
                .ok_or(Error::RoleNotGranted)?;
            user.roles.remove(at);
            changed(s, true, TokenEffect::None)
        }
        AuthOp::RoleAdd(r) => {
            if r.name.is_empty() {
                return Err(Error::RoleEmpty);
            }
            if s.roles.contains_key(&r.name) {
                return Err(Error::RoleAlreadyExist);
            }
            let role = Role {
                name: r.name.clone().into_bytes(),
                key_permission: vec![],
            };
            s.roles.insert(r.name, role);
            changed(s, true, TokenEffect::None)
        }
        AuthOp::RoleDelete(d) => {
            if s.enabled && d.role == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            s.roles.remove(&d.role).ok_or(Error::RoleNotFound)?;
            // As etcd: every user loses the role.
            for u in s.users.values_mut() {
                u.roles.retain(|r| *r != d.role);
            }
            changed(s, true, TokenEffect::None)
        }
        AuthOp::RoleGrantPermission(g) => {
            let perm = g.perm.ok_or(Error::PermissionNotGiven)?;
            let role = s.roles.get_mut(&g.name).ok_or(Error::RoleNotFound)?;
            let same = role
                .key_permission
                .iter_mut()
                .find(|p| p.key == perm.key && p.range_end == perm.range_end);
            match same {
                // The same key and range: the new type replaces the old, as in etcd.
                Some(p) => p.perm_type = perm.perm_type,
                None => {
                    let at = role.key_permission.partition_point(|p| p.key <= perm.key);
                    role.key_permission.insert(at, perm);
                }
            }
            changed(s, true, TokenEffect::None)
        }
        AuthOp::RoleRevokePermission(r) => {
            let role = s.roles.get_mut(&r.role).ok_or(Error::RoleNotFound)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
            if role.key_permission.len() == before {
                return Err(Error::PermissionNotGranted);
            }
            changed(s, true, TokenEffect::None)
        }
    }
}

/// Writes what changed from `before` to `s` into `batch`. A key is either removed or
/// written in one batch, never both: fjall gives a batch's records one sequence number.
fn persist(ks: &Keyspace, before: &State, s: &State, batch: &mut OwnedWriteBatch) {
    for name in before.users.keys().filter(|n| !s.users.contains_key(*n)) {
        batch.remove(ks, user_key(name));
    }
    for name in before.roles.keys().filter(|n| !s.roles.contains_key(*n)) {
        batch.remove(ks, role_key(name));
    }
    batch.insert(ks, ENABLED, vec![u8::from(s.enabled)]);
    batch.insert(ks, REVISION, s.revision.to_be_bytes().to_vec());
    for (name, u) in s
        .users
        .iter()
        .filter(|(n, u)| before.users.get(*n) != Some(u))
    {
        batch.insert(ks, user_key(name), u.encode_to_vec());
    }
    for (name, r) in s
        .roles
        .iter()
        .filter(|(n, r)| before.roles.get(*n) != Some(r))
    {
        batch.insert(ks, role_key(name), r.encode_to_vec());
    }
}

/// Where etcd's backend keeps an auth record (for backups in its format): the bucket and
/// the key there. The values are the same on both sides.
pub fn etcd_location(key: &[u8]) -> Option<(&'static [u8], &[u8])> {
    if key == ENABLED {
        Some((etcd::AUTH, etcd::AUTH_ENABLED))
    } else if key == REVISION {
        Some((etcd::AUTH, etcd::AUTH_REVISION))
    } else if let Some(name) = key.strip_prefix(USER) {
        Some((etcd::AUTH_USERS, name))
    } else {
        key.strip_prefix(ROLE).map(|name| (etcd::AUTH_ROLES, name))
    }
}

/// The key of the auth record an entry of etcd's backend is (the inverse of
/// [`etcd_location`]); `None` for what Cairn does not keep.
pub fn from_etcd(bucket: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    match bucket {
        b if b == etcd::AUTH && key == etcd::AUTH_ENABLED => Some(ENABLED.to_vec()),
        b if b == etcd::AUTH && key == etcd::AUTH_REVISION => Some(REVISION.to_vec()),
        b if b == etcd::AUTH_USERS => Some([USER, key].concat()),
        b if b == etcd::AUTH_ROLES => Some([ROLE, key].concat()),
        _ => None,
    }
}

fn load(ks: &Keyspace) -> Result<State, Error> {
    // A new store starts at auth revision 1, as etcd's.
    let mut s = State {
        revision: 1,
        ..Default::default()
    };
    for item in ks.iter() {
        let (k, v) = item.into_inner()?;
        let corrupt = || Error::Corrupt(format!("auth record {:?}", String::from_utf8_lossy(&k)));
        if &*k == ENABLED {
            s.enabled = v.first() == Some(&1);
        } else if &*k == REVISION {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt())?;
            s.revision = u64::from_be_bytes(b);
        } else if let Some(name) = k.strip_prefix(USER) {
            let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
            s.users.insert(name, User::decode(v.as_ref())?);
        } else if let Some(name) = k.strip_prefix(ROLE) {
            let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
            s.roles.insert(name, Role::decode(v.as_ref())?);
        } else {
            return Err(corrupt());
        }
    }
    s.derive();
    Ok(s)
}
