// The recipes, recognised by their key layouts (the same as etcd's concurrency and recipes
// packages, and Cairn's recipes crate):
// - a lock or an election: `<name>/<lease id in hex>`, each key on that lease; contenders
//   queue by creation revision, the first holds (a lock's keys are empty, an election's
//   hold the proclaimed value); a read-write lock has `<name>/read/` and `<name>/write/`;
// - a service or group: `<root><service>/<instance>`, each instance on a lease;
// - a queue: `<name>/<32 hex digits>` without a lease (priority and delay queues one level
//   deeper); handed-over items wait as receipts under `<name>.taken/`;
// - a topic: messages `<name>/msgs/<32 hex>` (offset = creation revision), consumer groups
//   `<name>/groups/<group>` holding the last committed offset.

const HEX32 = /^[0-9a-f]{32}$/;

function parentOf(key) {
  const i = key.lastIndexOf('/', key.length - 2);
  return i < 0 ? null : [key.slice(0, i + 1), key.slice(i + 1)];
}

const byCreate = (a, b) => a.create - b.create;

export function structures(kvs) {
  const groups = new Map();
  for (const kv of kvs.values()) {
    const pc = parentOf(kv.key);
    if (!pc) continue;
    const [parent, name] = pc;
    if (!groups.has(parent)) groups.set(parent, []);
    groups.get(parent).push({ name, kv });
  }
  const out = { locks: [], elections: [], services: [], queues: new Map(), topics: new Map() };
  const rw = new Map();
  for (const [parent, entries] of groups) {
    const name = parent.slice(0, -1);
    const leased = entries.every((e) => e.kv.lease !== '0');
    const leaseNamed = leased && entries.every((e) => e.name === e.kv.leaseHex);
    const kvsInOrder = entries.map((e) => e.kv).sort(byCreate);
    if (leaseNamed) {
      const m = /^(.*)\/(read|write)$/.exec(name);
      if (m) {
        if (!rw.has(m[1])) rw.set(m[1], []);
        for (const kv of kvsInOrder) rw.get(m[1]).push({ kv, mode: m[2] });
      } else if (/\/waiters$/.test(name)) {
        continue; // a double barrier's participants
      } else if (kvsInOrder.every((kv) => kv.value === '')) {
        const [holder, ...waiters] = kvsInOrder;
        out.locks.push({ name, holders: [holder], waiters, fencing: holder.create });
      } else {
        const [leader, ...candidates] = kvsInOrder;
        out.elections.push({ name, leader, candidates });
      }
    } else if (leased) {
      out.services.push({ name, instances: entries.map((e) => ({ id: e.name, kv: e.kv })) });
    } else if (/\.taken$/.test(name)) {
      queueOf(out, name.slice(0, -'.taken'.length)).taken += entries.length;
    } else if (entries.every((e) => HEX32.test(e.name))) {
      const topic = /^(.*)\/msgs$/.exec(name);
      if (topic) {
        topicOf(out, topic[1]).messages = kvsInOrder;
      } else {
        // A priority (5 digits) or delay (32 hex) level belongs to the queue above it.
        const level = /^(.*)\/([0-9]{5}|[0-9a-f]{32})$/.exec(name);
        queueOf(out, level ? level[1] : name).depth += entries.length;
      }
    } else {
      const topic = /^(.*)\/groups$/.exec(name);
      if (topic && entries.every((e) => /^-?\d+$/.test(e.kv.value))) {
        topicOf(out, topic[1]).groups = entries.map((e) => ({ name: e.name, offset: Number(e.kv.value) }));
      }
    }
  }
  for (const [name, contenders] of rw) {
    contenders.sort((a, b) => byCreate(a.kv, b.kv));
    // Readers at the head share the lock; otherwise the first writer holds it alone.
    let n = 0;
    while (n < contenders.length && contenders[n].mode === 'read') n++;
    if (n === 0) n = 1;
    out.locks.push({
      name,
      rw: true,
      holders: contenders.slice(0, n).map((c) => ({ ...c.kv, mode: c.mode })),
      waiters: contenders.slice(n).map((c) => ({ ...c.kv, mode: c.mode })),
      fencing: contenders[0].kv.create,
    });
  }
  const byName = (a, b) => (a.name < b.name ? -1 : 1);
  out.locks.sort(byName);
  out.elections.sort(byName);
  out.services.sort(byName);
  out.queues = [...out.queues.values()].sort(byName);
  out.topics = [...out.topics.values()].filter((t) => t.messages.length || t.groups.length).sort(byName);
  for (const t of out.topics) {
    const last = t.messages.length ? t.messages[t.messages.length - 1].create : 0;
    t.last = last;
    for (const g of t.groups) g.lag = t.messages.filter((m) => m.create > g.offset).length;
  }
  return out;
}

function queueOf(out, name) {
  if (!out.queues.has(name)) out.queues.set(name, { name, depth: 0, taken: 0 });
  return out.queues.get(name);
}

function topicOf(out, name) {
  if (!out.topics.has(name)) out.topics.set(name, { name, messages: [], groups: [] });
  return out.topics.get(name);
}
