//! The wire API Cairn speaks: etcd's v3 gRPC services and messages, generated from our own
//! .proto files with the same package, service, method, message and field names and numbers
//! as etcd, so stock etcd clients interoperate. `cairnpb` holds Cairn's own raft entry and
//! peer messages.
//!
//! ```
//! use cairn_api::etcdserverpb::PutRequest;
//! let put = PutRequest { key: b"foo".to_vec(), value: b"bar".to_vec(), ..Default::default() };
//! assert_eq!(put.key, b"foo");
//! ```

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Multi-version key-value records and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// Leases as etcd stores them in its database (for backups in etcd's format).
pub mod leasepb {
    tonic::include_proto!("leasepb");
}

/// The etcd v3 services: KV, Watch, Lease, Cluster, Maintenance, Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The server-side lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The server-side election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// Cairn's raft entry payload and peer protocol.
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
