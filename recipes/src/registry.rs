//! Service registration: an instance is a key `<service>/<instance id>` holding its address
//! or metadata, attached to its session's lease, so it disappears when the instance stops
//! heart-beating. Discovery lists the keys; a watch turns their changes into
//! added/updated/removed instance events.

use cairn_client::{EventType, GetOptions, PutOptions, WatchOptions};
use futures::{Stream, StreamExt};

use crate::{Error, Session};

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance id (the key below the service prefix).
    pub id: String,
    /// What the instance registered (an address, JSON metadata …).
    pub value: Vec<u8>,
}

/// A change in a service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// A new instance registered.
    Added(Instance),
    /// An instance changed what it registered.
    Updated(Instance),
    /// An instance deregistered, or its lease ran out.
    Removed(String),
}

/// The instances of services under a key prefix.
///
/// ```no_run
/// # async fn run(session: cairn_recipes::Session) -> Result<(), cairn_recipes::Error> {
/// use cairn_recipes::ServiceRegistry;
/// let registry = ServiceRegistry::new(session.client().clone(), "services/");
/// registry.register(&session, "api", "api-1", "10.0.0.7:8080").await?;
/// let instances = registry.discover("api").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServiceRegistry {
    client: cairn_client::Client,
    root: String,
}

impl ServiceRegistry {
    /// A registry keeping services under `root` (e.g. `services/`).
    pub fn new(client: cairn_client::Client, root: &str) -> ServiceRegistry {
        ServiceRegistry {
            client,
            root: root.to_string(),
        }
    }

    fn prefix(&self, service: &str) -> String {
        format!("{}{service}/", self.root)
    }

    /// Registers (or updates) `instance` of `service` for as long as `session` lives.
    pub async fn register(
        &self,
        session: &Session,
        service: &str,
        instance: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), Error> {
        let key = format!("{}{instance}", self.prefix(service));
        self.client
            .put(
                key,
                value,
                Some(PutOptions::new().with_lease(session.lease())),
            )
            .await?;
        Ok(())
    }

    /// Removes an instance now (rather than at its lease's expiry).
    pub async fn deregister(&self, service: &str, instance: &str) -> Result<(), Error> {
        let key = format!("{}{instance}", self.prefix(service));
        crate::idempotent(&self.client, [cairn_client::Op::delete(key, None)]).await
    }

    /// A tonic channel balanced over `service`'s instances, following them as they come
    /// and go (see [`Discovery`](crate::Discovery)).
    pub fn discovery(&self, service: &str) -> crate::Discovery {
        crate::Discovery::new(&self.client, &self.prefix(service))
    }

    /// The registered instances of `service`, by id.
    pub async fn discover(&self, service: &str) -> Result<Vec<Instance>, Error> {
        Ok(self.discover_at(service).await?.0)
    }

    async fn discover_at(&self, service: &str) -> Result<(Vec<Instance>, i64), Error> {
        let prefix = self.prefix(service);
        let r = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = r.header.map_or(0, |h| h.revision);
        let instances = r
            .kvs
            .into_iter()
            .map(|kv| Instance {
                id: String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned(),
                value: kv.value,
            })
            .collect();
        Ok((instances, rev))
    }

    /// The current instances as `Added` events, then every change, in order and without
    /// gaps (the watch starts right after the listing's revision).
    pub async fn watch(
        &self,
        service: &str,
    ) -> Result<impl Stream<Item = Result<InstanceEvent, Error>> + Send + 'static, Error> {
        let prefix = self.prefix(service);
        let (current, rev) = self.discover_at(service).await?;
        let initial = futures::stream::iter(
            current
                .into_iter()
                .map(|i| Ok(InstanceEvent::Added(i)))
                .collect::<Vec<_>>(),
        );
        let watch = self.client.watch(
            prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        );
        let changes = watch.flat_map(move |batch| {
            let events: Vec<Result<InstanceEvent, Error>> = match batch {
                Err(e) => vec![Err(e.into())],
                Ok(b) => b
                    .events
                    .into_iter()
                    .filter_map(|e| {
                        let kv = e.kv?;
                        let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                        Some(Ok(if e.r#type == EventType::Delete as i32 {
                            InstanceEvent::Removed(id)
                        } else if kv.version == 1 {
                            InstanceEvent::Added(Instance {
                                id,
                                value: kv.value,
                            })
                        } else {
                            InstanceEvent::Updated(Instance {
                                id,
                                value: kv.value,
                            })
                        }))
                    })
                    .collect(),
            };
            futures::stream::iter(events)
        });
        Ok(initial.chain(changes))
    }
}
