//! The permission checks of every request, as etcd's auth store makes them
//! (`isOpPermitted`, `IsAdminPermitted`, the applier's `checkTxnAuth`, `checkLeasePuts`).
//!
//! Order, as etcd's: auth off → allowed; no user (anonymous) → `user name is empty`;
//! credentials older than the last auth change → `revision of auth store is old`; unknown
//! user → `permission denied`; the root role → allowed; then the user's merged ranges.
//!
//! Where Cairn is stricter than etcd 3.4 (documented in docs/security.md): the ops of a
//! nested txn are checked like any other, a txn put with `prev_kv` needs read as a plain
//! put does, a txn put's lease is checked as a plain put's, and a watch on every key from
//! `key` on needs read on all of them (3.4 checked the key alone).

use cairn_api::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};

use super::store::{self, AuthStore, ROOT};
use super::AuthInfo;
use crate::error::Error;
use crate::lease::Lessor;

#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

impl AuthStore {
    /// Whether `who` may read or write every key of `(key, range_end)`.
    fn permitted(
        &self,
        who: &AuthInfo,
        key: &[u8],
        end: &[u8],
        access: Access,
    ) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        if who.revision == 0 {
            return Err(Error::UserEmpty);
        }
        if who.revision < self.revision() {
            return Err(Error::AuthOldRevision);
        }
        let ok = match self.access(&who.username).as_deref() {
            None => false,
            Some(store::Access::Root) => true,
            Some(store::Access::Keys(p)) => match access {
                Access::Read => p.can_read(key, end),
                Access::Write => p.can_write(key, end),
            },
        };
        if ok {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Whether `who` is an administrator (holds the root role).
    pub fn check_admin(&self, who: &AuthInfo) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        if who.username.is_empty() {
            return Err(Error::UserEmpty);
        }
        let st = self.read();
        let user = st.users.get(&*who.username).ok_or(Error::UserNotFound)?;
        if user.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Read on every key of a range.
    pub fn check_read(&self, who: &AuthInfo, key: &[u8], end: &[u8]) -> Result<(), Error> {
        self.permitted(who, key, end, Access::Read)
    }

    pub fn check_range(&self, who: &AuthInfo, r: &RangeRequest) -> Result<(), Error> {
        self.permitted(who, &r.key, &r.range_end, Access::Read)
    }

    /// Write on the key; with `prev_kv` read too; and write on every key already attached
    /// to the lease the put attaches.
    pub fn check_put(&self, who: &AuthInfo, p: &PutRequest, lessor: &Lessor) -> Result<(), Error> {
        self.permitted(who, &p.key, &[], Access::Write)?;
        if p.lease != 0 {
            self.check_lease_keys(who, p.lease, lessor)?;
        }
        if p.prev_kv {
            self.permitted(who, &p.key, &[], Access::Read)?;
        }
        Ok(())
    }

    pub fn check_delete(&self, who: &AuthInfo, d: &DeleteRangeRequest) -> Result<(), Error> {
        self.permitted(who, &d.key, &d.range_end, Access::Write)?;
        if d.prev_kv {
            self.permitted(who, &d.key, &d.range_end, Access::Read)?;
        }
        Ok(())
    }

    /// Read on every compare; every op of both branches, nested txns included.
    pub fn check_txn(&self, who: &AuthInfo, t: &TxnRequest, lessor: &Lessor) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        for c in &t.compare {
            self.permitted(who, &c.key, &c.range_end, Access::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Request::RequestRange(r)) => self.check_range(who, r)?,
                Some(Request::RequestPut(p)) => self.check_put(who, p, lessor)?,
                Some(Request::RequestDeleteRange(d)) => self.check_delete(who, d)?,
                Some(Request::RequestTxn(nested)) => self.check_txn(who, nested, lessor)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Revoking a lease deletes its keys: write on every one of them.
    pub fn check_lease_keys(
        &self,
        who: &AuthInfo,
        lease: i64,
        lessor: &Lessor,
    ) -> Result<(), Error> {
        if !self.is_enabled() {
            return Ok(());
        }
        for key in lessor.keys(lease).unwrap_or_default() {
            self.permitted(who, &key, &[], Access::Write)?;
        }
        Ok(())
    }

    /// etcd's UserGet rule: the administrator, or the user asking about itself.
    pub fn check_user_get(&self, who: &AuthInfo, name: &str) -> Result<(), Error> {
        if self.is_enabled() && !who.username.is_empty() && &*who.username == name {
            return Ok(());
        }
        self.check_admin(who)
    }

    /// etcd's RoleGet rule: the administrator, or a user who has the role.
    pub fn check_role_get(&self, who: &AuthInfo, role: &str) -> Result<(), Error> {
        if self.is_enabled() && self.has_role(&who.username, role) {
            return Ok(());
        }
        self.check_admin(who)
    }
}
