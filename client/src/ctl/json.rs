//! `-w json`: the responses as etcdctl prints them — Go's `encoding/json` of etcd's
//! generated structs: proto field names as keys, in declaration order, zero values left out
//! (`omitempty`), bytes in base64, 64-bit numbers as JSON numbers, enums as numbers, a oneof
//! as `{"Response":{"ResponsePut":{...}}}`.

use base64::Engine;
use cairn_api::etcdserverpb::{
    response_op::Response, DeleteRangeResponse, Member, PutResponse, RangeResponse, ResponseHeader,
    StatusResponse, TxnResponse,
};
use cairn_api::mvccpb::{Event, KeyValue};

/// One JSON object under construction.
#[derive(Default)]
pub struct Obj(Vec<String>);

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Go escapes these for HTML safety.
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Obj {
    pub fn new() -> Obj {
        Obj::default()
    }
    /// A field that is always written.
    pub fn raw(mut self, name: &str, json: String) -> Obj {
        self.0.push(format!("{}:{json}", quote(name)));
        self
    }
    pub fn num(self, name: &str, v: impl Into<i128>) -> Obj {
        let v = v.into();
        if v == 0 {
            return self;
        }
        self.raw(name, v.to_string())
    }
    pub fn boolean(self, name: &str, v: bool) -> Obj {
        if !v {
            return self;
        }
        self.raw(name, "true".into())
    }
    pub fn string(self, name: &str, v: &str) -> Obj {
        if v.is_empty() {
            return self;
        }
        self.raw(name, quote(v))
    }
    pub fn bytes(self, name: &str, v: &[u8]) -> Obj {
        if v.is_empty() {
            return self;
        }
        self.raw(
            name,
            quote(&base64::engine::general_purpose::STANDARD.encode(v)),
        )
    }
    pub fn strings(self, name: &str, v: &[String]) -> Obj {
        if v.is_empty() {
            return self;
        }
        let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
        self.raw(name, format!("[{}]", items.join(",")))
    }
    pub fn list(self, name: &str, items: Vec<String>) -> Obj {
        if items.is_empty() {
            return self;
        }
        self.raw(name, format!("[{}]", items.join(",")))
    }
    pub fn obj(self, name: &str, v: Option<String>) -> Obj {
        match v {
            Some(j) => self.raw(name, j),
            None => self,
        }
    }
    pub fn done(self) -> String {
        format!("{{{}}}", self.0.join(","))
    }
}

pub fn header(h: &ResponseHeader) -> String {
    header_fields(Obj::new(), h).done()
}

/// The header's fields, also used flattened into an enclosing object (clientv3 structs
/// that embed the header).
pub fn header_fields(o: Obj, h: &ResponseHeader) -> Obj {
    o.num("cluster_id", h.cluster_id)
        .num("member_id", h.member_id)
        .num("revision", h.revision)
        .num("raft_term", h.raft_term)
}

pub fn kv(kv: &KeyValue) -> String {
    Obj::new()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
        .done()
}

pub fn range(r: &RangeResponse) -> String {
    Obj::new()
        .obj("header", r.header.as_ref().map(header))
        .list("kvs", r.kvs.iter().map(kv).collect())
        .boolean("more", r.more)
        .num("count", r.count)
        .done()
}

pub fn put(r: &PutResponse) -> String {
    Obj::new()
        .obj("header", r.header.as_ref().map(header))
        .obj("prev_kv", r.prev_kv.as_ref().map(kv))
        .done()
}

pub fn delete(r: &DeleteRangeResponse) -> String {
    Obj::new()
        .obj("header", r.header.as_ref().map(header))
        .num("deleted", r.deleted)
        .list("prev_kvs", r.prev_kvs.iter().map(kv).collect())
        .done()
}

pub fn txn(r: &TxnResponse) -> String {
    let responses = r
        .responses
        .iter()
        .map(|op| {
            let inner = match &op.response {
                Some(Response::ResponseRange(x)) => Some(("ResponseRange", range(x))),
                Some(Response::ResponsePut(x)) => Some(("ResponsePut", put(x))),
                Some(Response::ResponseDeleteRange(x)) => Some(("ResponseDeleteRange", delete(x))),
                Some(Response::ResponseTxn(x)) => Some(("ResponseTxn", txn(x))),
                None => None,
            };
            let response = inner.map(|(name, j)| Obj::new().raw(name, j).done());
            Obj::new().obj("Response", response).done()
        })
        .collect();
    Obj::new()
        .obj("header", r.header.as_ref().map(header))
        .boolean("succeeded", r.succeeded)
        .list("responses", responses)
        .done()
}

pub fn event(e: &Event) -> String {
    Obj::new()
        .num("type", e.r#type)
        .obj("kv", e.kv.as_ref().map(kv))
        .obj("prev_kv", e.prev_kv.as_ref().map(kv))
        .done()
}

pub fn member(m: &Member) -> String {
    Obj::new()
        .num("ID", m.id)
        .string("name", &m.name)
        .strings("peerURLs", &m.peer_ur_ls)
        .strings("clientURLs", &m.client_ur_ls)
        .boolean("isLearner", m.is_learner)
        .done()
}

pub fn members(header_: Option<&ResponseHeader>, ms: &[Member]) -> String {
    Obj::new()
        .obj("header", header_.map(header))
        .list("members", ms.iter().map(member).collect())
        .done()
}

pub fn status(s: &StatusResponse) -> String {
    Obj::new()
        .obj("header", s.header.as_ref().map(header))
        .string("version", &s.version)
        .num("dbSize", s.db_size)
        .num("leader", s.leader)
        .num("raftIndex", s.raft_index)
        .num("raftTerm", s.raft_term)
        .num("raftAppliedIndex", s.raft_applied_index)
        .strings("errors", &s.errors)
        .num("dbSizeInUse", s.db_size_in_use)
        .boolean("isLearner", s.is_learner)
        .done()
}
