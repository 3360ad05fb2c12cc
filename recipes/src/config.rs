//! Typed shared configuration. A [`Config<T>`] keeps a [`Cache`] of one key (a whole
//! document) or of a prefix (one key per top-level field, so fields can be changed and
//! watched apart), decodes it into `T` with serde (JSON or TOML) whenever it changes, and
//! publishes the value only when it decodes and passes the validator: a bad edit made with
//! `etcdctl put` is reported and ignored, and readers keep the last good value.
//!
//! Writes validate before they are sent, and a multi-key write is one transaction, so readers
//! never see half an update. [`Config::rollback`] writes back what was stored at an earlier
//! revision.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_client::{Client, Compare, GetOptions, KeyValue, Op, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::{Cache, Error};

/// How values are encoded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (serde_json).
    Json,
    /// TOML. Under a prefix, a field that is not a table is stored as a bare TOML value
    /// (`100`, `"text"`, `[1, 2]`).
    Toml,
}

/// A configuration value and the revision of the store it was read at.
#[derive(Debug)]
pub struct Versioned<T> {
    /// The value.
    pub value: Arc<T>,
    /// The store's revision it was read at: that of the last change to the keys (the
    /// cache's revision when the default was published).
    pub revision: i64,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Versioned {
            value: self.value.clone(),
            revision: self.revision,
        }
    }
}

/// A stored configuration that was not published, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The store's revision it was read at.
    pub revision: i64,
    /// Why it was refused (a decoding error or the validator's text).
    pub reason: String,
}

type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Layout {
    /// One key holds the whole document.
    Key(Vec<u8>),
    /// Each key `<prefix><field>` holds one top-level field.
    Prefix(Vec<u8>),
}

/// How to open a [`Config`]: where it lives, its format, a default and a validator.
pub struct ConfigBuilder<T> {
    layout: Layout,
    format: Format,
    default: Option<T>,
    validator: Option<Validator<T>>,
}

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::{Config, Format};
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Limits { requests_per_second: u32 }
/// let limits = Config::<Limits>::key("config/limits", Format::Json)
///     .with_default(Limits { requests_per_second: 100 })
///     .with_validator(|l| match l.requests_per_second {
///         0 => Err("requests_per_second must be positive".into()),
///         _ => Ok(()),
///     })
///     .open(&client)
///     .await?;
/// println!("{}", limits.get().requests_per_second);
/// let mut changes = limits.changes();
/// while changes.changed().await.is_ok() {
///     println!("now {}", changes.borrow().value.requests_per_second);
/// }
/// # Ok(()) }
/// ```
pub struct Config<T> {
    client: Client,
    cache: Arc<Cache>,
    layout: Layout,
    format: Format,
    validator: Option<Validator<T>>,
    current: watch::Receiver<Versioned<T>>,
    /// The cache revision the follower has decoded up to.
    seen: watch::Receiver<i64>,
    rejected: Arc<watch::Sender<Option<Rejected>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Config<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A configuration stored whole under `key`.
    pub fn key(key: impl Into<Vec<u8>>, format: Format) -> ConfigBuilder<T> {
        ConfigBuilder::new(Layout::Key(key.into()), format)
    }

    /// A configuration stored one top-level field per key under `prefix`
    /// (`<prefix><field name>`); `T` must serialize to a map or struct.
    pub fn prefix(prefix: impl Into<Vec<u8>>, format: Format) -> ConfigBuilder<T> {
        ConfigBuilder::new(Layout::Prefix(prefix.into()), format)
    }

    /// The current value: a local read.
    pub fn get(&self) -> Arc<T> {
        self.current.borrow().value.clone()
    }

    /// The current value with the revision it was published at (the last change to it).
    pub fn versioned(&self) -> Versioned<T> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every published value (`changed().await`, then `borrow()`).
    pub fn changes(&self) -> watch::Receiver<Versioned<T>> {
        self.current.clone()
    }

    /// The last stored configuration that was not published, while it is still the stored
    /// one.
    pub fn rejected(&self) -> Option<Rejected> {
        self.rejected.borrow().clone()
    }

    /// A receiver that sees each stored configuration that is refused (and `None` once a
    /// good one is published again).
    pub fn rejections(&self) -> watch::Receiver<Option<Rejected>> {
        self.rejected.subscribe()
    }

    /// Waits until every change up to `revision` was decoded (and published, or
    /// rejected): read-your-writes after [`set`](Self::set).
    pub async fn wait_for_revision(&self, revision: i64) -> Result<(), Error> {
        self.cache.wait_for_revision(revision).await?;
        let mut seen = self.seen.clone();
        seen.wait_for(|at| *at >= revision)
            .await
            .map_err(|_| Error::Timeout)?;
        Ok(())
    }

    /// Validates `value` and stores it in one transaction; returns the revision it was
    /// stored at.
    pub async fn set(&self, value: &T) -> Result<i64, Error> {
        self.check(value)?;
        let wanted = self.encode(value)?;
        let ops = to_ops(overwrite(&wanted, &self.stored()));
        let resp = crate::guarded_txn(&self.client, Txn::new().and_then(ops)).await?;
        Ok(revision_of(&resp))
    }

    /// Changes the configuration with `f`, from the current value, and stores the result
    /// if no key it writes was changed by anyone else meanwhile (otherwise waits for their
    /// change and calls `f` again). Under a prefix, fields `f` leaves alone are not written,
    /// so concurrent updates of different fields both survive. Returns the revision stored
    /// at.
    pub async fn update(&self, mut f: impl FnMut(&T) -> T) -> Result<i64, Error> {
        loop {
            // A base that is not what is stored (an invalid edit came after it) would be
            // refused for ever: repair with `set` or `rollback`.
            if let Some(r) = self.rejected() {
                return Err(Error::InvalidConfig(format!(
                    "the stored configuration (revision {}) is invalid: {}",
                    r.revision, r.reason
                )));
            }
            let base = self.versioned();
            let next = f(&base.value);
            self.check(&next)?;
            let wanted = self.encode(&next)?;
            let stored = self.stored();
            // Nothing stored means the default was in use: store all of it.
            let from = if stored.is_empty() {
                stored
            } else {
                self.encode(&base.value)?
            };
            let writes = diff(&wanted, &from);
            if writes.is_empty() {
                return Ok(base.revision);
            }
            let guard = writes
                .keys()
                .map(|k| Compare::mod_revision(k.clone()).lt(base.revision + 1));
            let txn = Txn::new().when(guard).and_then(to_ops(writes.clone()));
            let resp = crate::guarded_txn(&self.client, txn).await?;
            if resp.succeeded {
                return Ok(revision_of(&resp));
            }
            // Someone else changed it (or an attempt whose answer was lost applied): wait
            // until this view has the change; if it is ours, do not apply `f` again.
            self.wait_for_revision(revision_of(&resp)).await?;
            let now = self.stored();
            if writes.iter().all(|(k, v)| now.get(k) == v.as_ref()) {
                return Ok(self.versioned().revision);
            }
        }
    }

    /// Stores again what was stored at `revision` (validated like any update), in one
    /// transaction; returns the revision stored at. Fails with the client's `Compacted`
    /// error when that history is gone.
    pub async fn rollback(&self, revision: i64) -> Result<i64, Error> {
        let (key, options) = match &self.layout {
            Layout::Key(k) => (k.clone(), GetOptions::new()),
            Layout::Prefix(p) => (p.clone(), GetOptions::new().with_prefix()),
        };
        let then = self
            .client
            .get(key, Some(options.with_revision(revision)))
            .await?;
        let old: BTreeMap<Vec<u8>, Vec<u8>> =
            then.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        let value = self.decode(&old).map_err(Error::InvalidConfig)?;
        self.check(&value)?;
        let ops = to_ops(overwrite(&old, &self.stored()));
        let resp = crate::guarded_txn(&self.client, Txn::new().and_then(ops)).await?;
        Ok(revision_of(&resp))
    }

    fn check(&self, value: &T) -> Result<(), Error> {
        match &self.validator {
            Some(v) => v(value).map_err(Error::InvalidConfig),
            None => Ok(()),
        }
    }

    /// What the cache holds now, key → value.
    fn stored(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        stored_in(&self.cache.snapshot().kvs)
    }

    fn encode(&self, value: &T) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
        encode(&self.layout, self.format, value).map_err(Error::InvalidConfig)
    }

    fn decode(&self, stored: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<T, String> {
        decode(&self.layout, self.format, stored)
    }
}

impl<T> ConfigBuilder<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn new(layout: Layout, format: Format) -> Self {
        ConfigBuilder {
            layout,
            format,
            default: None,
            validator: None,
        }
    }

    /// The value published while nothing (valid) is stored. Without one, opening fails
    /// when nothing valid is stored.
    pub fn with_default(mut self, value: T) -> Self {
        self.default = Some(value);
        self
    }

    /// A check every value must pass before it is stored or published.
    pub fn with_validator(
        mut self,
        check: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validator = Some(Arc::new(check));
        self
    }

    /// Reads the configuration and follows it.
    pub async fn open(self, client: &Client) -> Result<Config<T>, Error> {
        let cache = Arc::new(match &self.layout {
            // Exactly the key: `config/limits.bak` is not part of `config/limits`.
            Layout::Key(k) => Cache::key(client, k.clone()).await?,
            Layout::Prefix(p) => Cache::new(client, p.clone()).await?,
        });
        let follower = Follower {
            cache: cache.clone(),
            layout: self.layout.clone(),
            format: self.format,
            validator: self.validator.clone(),
            default: self.default.map(Arc::new),
            rejected: Arc::new(watch::Sender::new(None)),
        };
        // Subscribed before the first read, so a change between the two is not missed.
        let revisions = cache.revisions();
        let snapshot = cache.snapshot();
        let first = match follower.read(&snapshot) {
            Ok(v) => v,
            Err(why) => match &follower.default {
                Some(d) => {
                    follower.reject(cache.revision(), why);
                    Versioned {
                        value: d.clone(),
                        revision: 0,
                    }
                }
                None => return Err(Error::InvalidConfig(why)),
            },
        };
        let (tx, current) = watch::channel(first);
        let (seen_tx, seen) = watch::channel(snapshot.revision);
        let rejected = follower.rejected.clone();
        let task = tokio::spawn(follower.run(revisions, tx, seen_tx, stamp(&snapshot.kvs)));
        Ok(Config {
            client: client.clone(),
            cache,
            layout: self.layout,
            format: self.format,
            validator: self.validator,
            current,
            seen,
            rejected,
            task,
        })
    }
}

impl<T> Drop for Config<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decodes the cache whenever it moves and publishes what passes.
struct Follower<T> {
    cache: Arc<Cache>,
    layout: Layout,
    format: Format,
    validator: Option<Validator<T>>,
    default: Option<Arc<T>>,
    rejected: Arc<watch::Sender<Option<Rejected>>>,
}

impl<T> Follower<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// The cache's contents decoded and checked; the reason when they do not pass.
    fn read(&self, snapshot: &crate::CacheSnapshot) -> Result<Versioned<T>, String> {
        if snapshot.kvs.is_empty() {
            return match &self.default {
                Some(d) => Ok(Versioned {
                    value: d.clone(),
                    revision: snapshot.revision,
                }),
                None => Err("nothing is stored".into()),
            };
        }
        let value = decode(&self.layout, self.format, &stored_in(&snapshot.kvs))?;
        if let Some(v) = &self.validator {
            v(&value)?;
        }
        Ok(Versioned {
            value: Arc::new(value),
            revision: snapshot.revision,
        })
    }

    fn reject(&self, revision: i64, reason: String) {
        self.rejected
            .send_replace(Some(Rejected { revision, reason }));
    }

    async fn run(
        self,
        mut revisions: watch::Receiver<i64>,
        current: watch::Sender<Versioned<T>>,
        seen: watch::Sender<i64>,
        mut last: (usize, i64),
    ) {
        while revisions.changed().await.is_ok() {
            let snapshot = self.cache.snapshot();
            // A progress answer moves the revision alone: nothing to publish.
            let now = stamp(&snapshot.kvs);
            if now != last {
                last = now;
                match self.read(&snapshot) {
                    Ok(v) => {
                        self.rejected.send_if_modified(|r| r.take().is_some());
                        current.send_replace(v);
                    }
                    Err(reason) => self.reject(snapshot.revision, reason),
                }
            }
            seen.send_replace(snapshot.revision);
        }
    }
}

/// What changes whenever the contents do: a put raises the highest mod revision, a delete
/// lowers the count.
fn stamp(kvs: &[KeyValue]) -> (usize, i64) {
    (
        kvs.len(),
        kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0),
    )
}

/// Every key of `wanted` written, whatever this view holds (it may be behind another
/// writer's change), and the keys of `now` that `wanted` lacks deleted.
fn overwrite(
    wanted: &BTreeMap<Vec<u8>, Vec<u8>>,
    now: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut writes = diff(wanted, now);
    writes.extend(wanted.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
    writes
}

/// The writes (`None`: a delete) that take the keys from `now` to `wanted`.
fn diff(
    wanted: &BTreeMap<Vec<u8>, Vec<u8>>,
    now: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let puts = wanted
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let deletes = now
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .map(|k| (k.clone(), None));
    puts.chain(deletes).collect()
}

fn to_ops(writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Vec<Op> {
    writes
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => Op::put(k, v, None),
            None => Op::delete(k, None),
        })
        .collect()
}

fn stored_in(kvs: &[KeyValue]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

fn revision_of(resp: &cairn_client::TxnResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

/// `value` as the keys and values to store.
fn encode<T: Serialize>(
    layout: &Layout,
    format: Format,
    value: &T,
) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    match layout {
        Layout::Key(key) => {
            let bytes = match format {
                Format::Json => serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?,
                Format::Toml => toml::to_string(value)
                    .map_err(|e| e.to_string())?
                    .into_bytes(),
            };
            Ok(BTreeMap::from([(key.clone(), bytes)]))
        }
        Layout::Prefix(prefix) => {
            let fields = match serde_json::to_value(value).map_err(|e| e.to_string())? {
                serde_json::Value::Object(fields) => fields,
                _ => return Err("a configuration under a prefix must be a map or struct".into()),
            };
            let mut out = BTreeMap::new();
            for (name, field) in fields {
                // An absent optional field is an absent key.
                if field.is_null() {
                    continue;
                }
                let bytes = match format {
                    Format::Json => serde_json::to_vec(&field).map_err(|e| e.to_string())?,
                    Format::Toml => toml_field(&field)?.into_bytes(),
                };
                let mut key = prefix.clone();
                key.extend_from_slice(name.as_bytes());
                out.insert(key, bytes);
            }
            Ok(out)
        }
    }
}

/// A field as a TOML document when it is a table, as a bare value otherwise.
fn toml_field(field: &serde_json::Value) -> Result<String, String> {
    let value = toml::Value::try_from(field).map_err(|e| e.to_string())?;
    match value {
        toml::Value::Table(t) => toml::to_string(&t).map_err(|e| e.to_string()),
        other => Ok(other.to_string()),
    }
}

/// A field stored as TOML: a bare value first (`["a"]` is also a table header), else a
/// document.
fn toml_value(text: &str) -> Result<toml::Value, toml::de::Error> {
    let bare = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    match bare {
        Some(v) => Ok(v),
        None => toml::from_str::<toml::Table>(text).map(toml::Value::Table),
    }
}

/// What is stored, as a `T`.
fn decode<T: DeserializeOwned>(
    layout: &Layout,
    format: Format,
    stored: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<T, String> {
    let text = |key: &[u8], bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("{}: not UTF-8", String::from_utf8_lossy(key)))
    };
    match layout {
        Layout::Key(key) => {
            let bytes = stored.get(key).ok_or("nothing is stored")?;
            match format {
                Format::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
                Format::Toml => toml::from_str(&text(key, bytes)?).map_err(|e| e.to_string()),
            }
        }
        Layout::Prefix(prefix) => {
            let mut fields = serde_json::Map::new();
            for (key, bytes) in stored {
                let Some(name) = key.strip_prefix(prefix.as_slice()) else {
                    continue;
                };
                let name = String::from_utf8_lossy(name).into_owned();
                let field: serde_json::Value = match format {
                    Format::Json => {
                        serde_json::from_slice(bytes).map_err(|e| format!("{name}: {e}"))?
                    }
                    Format::Toml => {
                        let text = text(key, bytes)?;
                        let value = toml_value(&text).map_err(|e| format!("{name}: {e}"))?;
                        serde_json::to_value(value).map_err(|e| format!("{name}: {e}"))?
                    }
                };
                fields.insert(name, field);
            }
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())
        }
    }
}
