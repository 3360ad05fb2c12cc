//! Key-value calls with option builders: get, put, delete, compact.

use cairn_api::etcdserverpb::{
    kv_client::KvClient, range_request::SortOrder, range_request::SortTarget, CompactionRequest,
    CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse,
};

use crate::auth::AuthChannel;
use crate::client::{request, Retry};
use crate::{Client, Error};

/// The end of the range holding every key that starts with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented; `\0` — every key — if there is none).
///
/// ```
/// assert_eq!(cairn_client::prefix_end(b"app/"), b"app0".to_vec());
/// assert_eq!(cairn_client::prefix_end(b"a\xff"), b"b".to_vec());
/// assert_eq!(cairn_client::prefix_end(b""), vec![0]);
/// ```
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which keys an operation covers besides its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum KeyRange {
    #[default]
    Single,
    Prefix,
    FromKey,
    End(Vec<u8>),
}

impl KeyRange {
    /// The key a request sends: as etcd's clients, an empty key with a prefix or from-key
    /// range is `"\0"`, so the range is every key.
    pub(crate) fn key(&self, key: Vec<u8>) -> Vec<u8> {
        match self {
            KeyRange::Prefix | KeyRange::FromKey if key.is_empty() => vec![0],
            _ => key,
        }
    }

    pub(crate) fn end(&self, key: &[u8]) -> Vec<u8> {
        match self {
            KeyRange::Single => vec![],
            KeyRange::Prefix => prefix_end(key),
            KeyRange::FromKey => vec![0],
            KeyRange::End(e) => e.clone(),
        }
    }
}

/// The key-range builders shared by the options of get, delete and watch.
macro_rules! range_options {
    ($t:ty) => {
        impl $t {
            /// Every key starting with the key.
            pub fn with_prefix(mut self) -> Self {
                self.range = $crate::kv::KeyRange::Prefix;
                self
            }
            /// Every key from the key on.
            pub fn with_from_key(mut self) -> Self {
                self.range = $crate::kv::KeyRange::FromKey;
                self
            }
            /// Keys in `[key, end)`.
            pub fn with_range(mut self, end: impl Into<Vec<u8>>) -> Self {
                self.range = $crate::kv::KeyRange::End(end.into());
                self
            }
            /// The range as etcdctl's flags give it: an end key, overridden by `--prefix`,
            /// overridden by `--from-key`.
            #[cfg(feature = "cli")]
            pub(crate) fn with_range_flags(
                self,
                end: Option<impl Into<Vec<u8>>>,
                prefix: bool,
                from_key: bool,
            ) -> Self {
                match (end, prefix, from_key) {
                    (_, _, true) => self.with_from_key(),
                    (_, true, false) => self.with_prefix(),
                    (Some(end), false, false) => self.with_range(end),
                    (None, false, false) => self,
                }
            }
        }
    };
}
pub(crate) use range_options;

/// Options of [`Client::get`].
///
/// ```
/// use cairn_client::{GetOptions, SortOrder, SortTarget};
/// let opts = GetOptions::new().with_prefix().with_limit(10).with_sort(SortTarget::Mod, SortOrder::Descend);
/// let req = opts.into_request(b"app/".to_vec());
/// assert_eq!(req.range_end, b"app0");
/// assert_eq!(req.limit, 10);
/// ```
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    range: KeyRange,
    req: RangeRequest,
}

range_options!(GetOptions);

impl GetOptions {
    /// No options: a single key, linearizable.
    pub fn new() -> Self {
        Self::default()
    }
    /// At most `limit` keys (`more` tells whether there were others).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.req.limit = limit;
        self
    }
    /// Read as of `revision` (history).
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.req.revision = revision;
        self
    }
    /// Sort the result by `target` in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.sort_target = target as i32;
        self.req.sort_order = order as i32;
        self
    }
    /// Read the local member's store without a linearizable read barrier.
    pub fn with_serializable(mut self) -> Self {
        self.req.serializable = true;
        self
    }
    /// Return keys without values.
    pub fn with_keys_only(mut self) -> Self {
        self.req.keys_only = true;
        self
    }
    /// Return only the count.
    pub fn with_count_only(mut self) -> Self {
        self.req.count_only = true;
        self
    }
    /// Only keys last modified at or after `rev`.
    pub fn with_min_mod_revision(mut self, rev: i64) -> Self {
        self.req.min_mod_revision = rev;
        self
    }
    /// Only keys last modified at or before `rev`.
    pub fn with_max_mod_revision(mut self, rev: i64) -> Self {
        self.req.max_mod_revision = rev;
        self
    }
    /// Only keys created at or after `rev`.
    pub fn with_min_create_revision(mut self, rev: i64) -> Self {
        self.req.min_create_revision = rev;
        self
    }
    /// Only keys created at or before `rev`.
    pub fn with_max_create_revision(mut self, rev: i64) -> Self {
        self.req.max_create_revision = rev;
        self
    }
    /// The request these options make for `key`.
    pub fn into_request(self, key: Vec<u8>) -> RangeRequest {
        RangeRequest {
            range_end: self.range.end(&key),
            key: self.range.key(key),
            ..self.req
        }
    }
}

/// Options of [`Client::put`].
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    req: PutRequest,
}

impl PutOptions {
    /// No options: a plain put.
    pub fn new() -> Self {
        Self::default()
    }
    /// Attach the key to a lease: it is deleted when the lease ends.
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.req.lease = lease;
        self
    }
    /// Return the previous key-value pair.
    pub fn with_prev_kv(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Keep the current value (the key must exist).
    pub fn with_ignore_value(mut self) -> Self {
        self.req.ignore_value = true;
        self
    }
    /// Keep the current lease (the key must exist).
    pub fn with_ignore_lease(mut self) -> Self {
        self.req.ignore_lease = true;
        self
    }
    /// The request these options make for `key` and `value`.
    pub fn into_request(self, key: Vec<u8>, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key,
            value,
            ..self.req
        }
    }
}

/// Options of [`Client::delete`].
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    range: KeyRange,
    prev_kv: bool,
}

range_options!(DeleteOptions);

impl DeleteOptions {
    /// No options: a single key.
    pub fn new() -> Self {
        Self::default()
    }
    /// Return the deleted key-value pairs.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    /// The request these options make for `key`.
    pub fn into_request(self, key: Vec<u8>) -> DeleteRangeRequest {
        DeleteRangeRequest {
            range_end: self.range.end(&key),
            key: self.range.key(key),
            prev_kv: self.prev_kv,
        }
    }
}

impl Client {
    fn kv(channel: AuthChannel) -> KvClient<AuthChannel> {
        KvClient::new(channel).max_decoding_message_size(usize::MAX)
    }

    /// Reads `key` (or a range, with options). Linearizable unless
    /// [`GetOptions::with_serializable`].
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse, Error> {
        self.range(options.unwrap_or_default().into_request(key.into()))
            .await
    }

    /// Sends a prepared range request (reads retry on any unavailability).
    pub(crate) async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Error> {
        self.call(Retry::Always, |ch, t| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).range(request(req, t)).await?.into_inner()) }
        })
        .await
    }

    /// Writes `key`. Retried on another member only if it cannot have been applied.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, Error> {
        let req = options
            .unwrap_or_default()
            .into_request(key.into(), value.into());
        self.call(Retry::IfNotApplied, |ch, t| {
            let req = req.clone();
            async move { Ok(Self::kv(ch).put(request(req, t)).await?.into_inner()) }
        })
        .await
    }

    /// Deletes `key` (or a range, with options).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse, Error> {
        self.delete_range(options.unwrap_or_default().into_request(key.into()))
            .await
    }

    /// Sends a prepared delete request (retried only when it cannot have been applied).
    pub(crate) async fn delete_range(
        &self,
        req: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Error> {
        self.call(Retry::IfNotApplied, |ch, t| {
            let req = req.clone();
            async move {
                Ok(Self::kv(ch)
                    .delete_range(request(req, t))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Compacts the history below `revision`; `physical` waits until the space is reclaimed.
    pub async fn compact(
        &self,
        revision: i64,
        physical: bool,
    ) -> Result<CompactionResponse, Error> {
        let req = CompactionRequest { revision, physical };
        // A replay after success would fail with `compacted`: retry only when not applied.
        self.call(Retry::IfNotApplied, |ch, t| async move {
            Ok(Self::kv(ch).compact(request(req, t)).await?.into_inner())
        })
        .await
    }
}
