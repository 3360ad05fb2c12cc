//! A view of the key space under a prefix: keys go in without it and come back without it,
//! so a component can own `app/` without knowing it.

use cairn_api::etcdserverpb::{DeleteRangeResponse, PutResponse, RangeResponse};
use cairn_api::mvccpb::KeyValue;
use futures::StreamExt;

use crate::kv::{prefix_end, KeyRange};
use crate::{Client, DeleteOptions, Error, GetOptions, PutOptions, Watch, WatchOptions};

/// See the module docs.
///
/// ```no_run
/// # async fn run(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
/// let app = client.namespace("app/");
/// app.put("config", "v1", None).await?; // writes app/config
/// let resp = app.get("config", None).await?;
/// assert_eq!(resp.kvs[0].key, b"config");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Namespace {
    client: Client,
    prefix: Vec<u8>,
}

impl Client {
    /// The key space under `prefix`.
    pub fn namespace(&self, prefix: impl Into<Vec<u8>>) -> Namespace {
        Namespace {
            client: self.clone(),
            prefix: prefix.into(),
        }
    }
}

impl Namespace {
    fn key(&self, key: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend(key.into());
        k
    }

    /// Range ends: `\0` (from key) means the end of the namespace.
    fn end(&self, end: Vec<u8>) -> Vec<u8> {
        match end.as_slice() {
            [] => vec![],
            [0] => prefix_end(&self.prefix),
            _ => self.key(end),
        }
    }

    fn strip(&self, kv: &mut KeyValue) {
        if kv.key.starts_with(&self.prefix) {
            kv.key.drain(..self.prefix.len());
        }
    }

    /// [`Client::get`] inside the namespace.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<RangeResponse, Error> {
        let key = key.into();
        let mut req = options.unwrap_or_default().into_request(key);
        req.range_end = self.end(std::mem::take(&mut req.range_end));
        req.key = self.key(std::mem::take(&mut req.key));
        let mut resp = self.client.range(req).await?;
        resp.kvs.iter_mut().for_each(|kv| self.strip(kv));
        Ok(resp)
    }

    /// [`Client::put`] inside the namespace.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, Error> {
        let mut resp = self.client.put(self.key(key), value, options).await?;
        if let Some(kv) = resp.prev_kv.as_mut() {
            self.strip(kv);
        }
        Ok(resp)
    }

    /// [`Client::delete`] inside the namespace.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse, Error> {
        let mut req = options.unwrap_or_default().into_request(key.into());
        req.range_end = self.end(std::mem::take(&mut req.range_end));
        req.key = self.key(std::mem::take(&mut req.key));
        let mut resp = self.client.delete_range(req).await?;
        resp.prev_kvs.iter_mut().for_each(|kv| self.strip(kv));
        Ok(resp)
    }

    /// Watches keys of the namespace; events carry keys without the prefix.
    pub fn watch(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<WatchOptions>,
    ) -> impl futures::Stream<Item = Result<crate::WatchBatch, Error>> {
        let mut options = options.unwrap_or_default();
        options.range = match options.range {
            KeyRange::FromKey => KeyRange::End(prefix_end(&self.prefix)),
            KeyRange::End(e) => KeyRange::End(self.key(e)),
            r => r,
        };
        let watch: Watch = self.client.watch(self.key(key), Some(options));
        let ns = self.clone();
        watch.map(move |batch| {
            batch.map(|mut b| {
                for e in &mut b.events {
                    if let Some(kv) = e.kv.as_mut() {
                        ns.strip(kv);
                    }
                    if let Some(kv) = e.prev_kv.as_mut() {
                        ns.strip(kv);
                    }
                }
                b
            })
        })
    }
}
