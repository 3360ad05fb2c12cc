// One function per view: each builds its part of the page from the state `ui` holds (the
// mirror, the polled member reads) with DOM calls only, so no key or value is ever parsed
// as HTML.

import { showKey, toText, hex, fromText, prefixEnd } from './model.js';
import { structures } from './recipes.js';

/** `h('div.cls', {attr}, ...children)`: an element; strings become text nodes. */
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(' ');
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const bytes = (n) => {
  n = Number(n || 0);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
};

const idHex = (dec) => BigInt(dec || 0).toString(16);
const plural = (n, what) => `${n} ${what}${n === 1 ? '' : 's'}`;
/** A permission interval as etcdctl would name it. */
const rangeText = (iv) => {
  if (iv.end === null) return `${showKey(iv.start)}… (to the end)`;
  if (iv.end === iv.start + '\0') return showKey(iv.start);
  return iv.end === prefixEnd(iv.start) ? `${showKey(iv.start)}*` : `[${showKey(iv.start)}, ${showKey(iv.end)})`;
};
const ago = (ms) => (ms < 1500 ? 'just now' : `${Math.round(ms / 1000)} s ago`);
const short = (bin, n = 60) => {
  const t = toText(bin);
  const s = t === null ? `0x${hex(bin).replaceAll(' ', '')}` : t;
  return s.length > n ? `${s.slice(0, n)}…` : s;
};

/** A value as it reads best: pretty JSON, text, or hex for bytes. */
export function valueView(bin) {
  const text = toText(bin);
  if (text === null) return h('pre.value.binary', { title: 'binary: shown as hex' }, hex(bin));
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed === 'object' && parsed !== null) {
      return h('pre.value.json', {}, JSON.stringify(parsed, null, 2));
    }
  } catch {
    /* not JSON */
  }
  return h('pre.value', {}, text === '' ? '(empty)' : text);
}

function empty(text) {
  return h('p.empty', {}, text);
}

// --- cluster ---

export function clusterView(ui) {
  const c = ui.cluster;
  if (!c) return h('section', {}, empty(ui.clusterError || 'Asking the members…'));
  const leaderId = c.members.map((m) => m.status && idHex(m.status.leader)).find((l) => l && l !== '0');
  const alarms = c.members.flatMap((m) => (m.status && m.status.errors) || []);
  const cards = c.members.map((m) => {
    const s = m.status;
    const leader = leaderId === m.id;
    return h(
      'div.card.member',
      { dataset: { member: m.name || m.id } },
      h('h3', {}, m.name || '(not started)', leader ? h('span.badge.leader', {}, 'leader') : null,
        m.isLearner ? h('span.badge', {}, 'learner') : null, m.id === c.local ? h('span.badge.self', {}, 'this member') : null),
      h('p', {}, s ? h('span.ok', {}, '● healthy') : h('span.bad', {}, `● unreachable: ${m.error || 'no answer'}`)),
      h('dl', {},
        h('dt', {}, 'ID'), h('dd', {}, m.id),
        h('dt', {}, 'Raft term'), h('dd.term', {}, s ? s.raftTerm || '0' : '–'),
        h('dt', {}, 'Raft index'), h('dd', {}, s ? `${s.raftIndex || 0} (applied ${s.raftAppliedIndex || 0})` : '–'),
        h('dt', {}, 'DB size'), h('dd', {}, s ? `${bytes(s.dbSize)} (${bytes(s.dbSizeInUse)} in use)` : '–'),
        h('dt', {}, 'Version'), h('dd', {}, s ? s.version : '–'),
        h('dt', {}, 'Client URLs'), h('dd', {}, (m.clientUrls || []).join(', ') || '–'),
        h('dt', {}, 'Peer URLs'), h('dd', {}, (m.peerUrls || []).join(', '))),
    );
  });
  return h(
    'section',
    {},
    h('div.summary', {},
      h('span', {}, plural(c.members.length, 'member')),
      h('span', {}, leaderId ? `leader ${leaderId}` : h('span.bad', {}, 'no leader')),
      alarms.length ? h('span.bad.alarms', {}, `alarms: ${[...new Set(alarms)].join(', ')}`) : h('span.ok', {}, 'no alarms')),
    h('div.cards', {}, cards),
  );
}

// --- keys ---

/** The children of `prefix`: folders (the next segment up to `/`) and keys. */
function children(kvs, prefix) {
  const folders = new Map();
  const keys = [];
  for (const kv of kvs.values()) {
    if (!kv.key.startsWith(prefix)) continue;
    const rest = kv.key.slice(prefix.length);
    const slash = rest.indexOf('/');
    if (slash >= 0 && slash < rest.length - 1) {
      const f = prefix + rest.slice(0, slash + 1);
      folders.set(f, (folders.get(f) || 0) + 1);
    } else {
      keys.push(kv);
    }
  }
  const order = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  return {
    folders: [...folders.entries()].sort((a, b) => order(a[0], b[0])),
    keys: keys.sort((a, b) => order(a.key, b.key)),
  };
}

function breadcrumb(ui, act) {
  const parts = [h('a.crumb', { href: '#', onclick: (e) => { e.preventDefault(); act.browse(''); } }, '(all keys)')];
  let at = 0;
  while (at < ui.prefix.length) {
    const next = ui.prefix.indexOf('/', at);
    const end = next < 0 ? ui.prefix.length : next + 1;
    const p = ui.prefix.slice(0, end);
    parts.push(' ', h('a.crumb', { href: '#', onclick: (e) => { e.preventDefault(); act.browse(p); } }, showKey(ui.prefix.slice(at, end))));
    at = end;
  }
  return h('nav.breadcrumb', {}, parts);
}

/** A line diff of two texts (longest common subsequence; small values only). */
function diff(before, after) {
  const a = before.split('\n');
  const b = after.split('\n');
  if (a.length * b.length > 40000) return [h('div.changed', {}, 'changed (too large to compare line by line)')];
  const lcs = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push(h('div.same', {}, `  ${a[i]}`));
      i++;
      j++;
    } else if (j < b.length && (i >= a.length || lcs[i][j + 1] >= lcs[i + 1][j])) {
      out.push(h('div.added', {}, `+ ${b[j++]}`));
    } else {
      out.push(h('div.removed', {}, `- ${a[i++]}`));
    }
  }
  return out;
}

const pretty = (bin) => {
  const t = toText(bin);
  if (t === null) return hex(bin);
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch {
    return t;
  }
};

function historyView(ui) {
  const hist = ui.history;
  if (!hist || hist.key !== ui.selected) return null;
  if (hist.error) return h('p.bad', {}, hist.error);
  if (!hist.versions) return empty('Reading the history…');
  const rows = hist.versions.map((v, i) => {
    if (v.compacted) return h('li.compacted', {}, 'older revisions are compacted');
    const older = hist.versions[i + 1];
    const body = older && !older.compacted ? diff(pretty(older.value), pretty(v.value)) : [h('div.added', {}, pretty(v.value))];
    return h('li.version', { dataset: { rev: v.mod } },
      h('div.meta', {}, `revision ${v.mod} · version ${v.version}${v.lease !== '0' ? ` · lease ${v.leaseHex}` : ''}${v.version === 1 ? ' · created' : ''}`),
      h('div.diff', {}, body));
  });
  return h('div.history', {}, h('h4', {}, 'History'), h('ol', {}, rows));
}

function keyDetail(ui, act) {
  const kv = ui.mirror.kvs.get(ui.selected);
  if (ui.selected === null) return h('div.detail', {}, empty('Pick a key to see its value and history.'));
  if (!kv) return h('div.detail', {}, empty(`${showKey(ui.selected)} is gone (deleted or expired).`));
  const writable = ui.scope.canWrite(kv.key);
  return h(
    'div.detail',
    { dataset: { selected: showKey(kv.key) } },
    h('h3.key', {}, showKey(kv.key)),
    h('div.meta', {}, `created at ${kv.create} · modified at ${kv.mod} · version ${kv.version}`,
      kv.lease !== '0' ? ` · lease ${kv.leaseHex}` : ''),
    valueView(kv.value),
    h('div.actions', {},
      h('button', { onclick: () => act.history(kv.key) }, 'History'),
      // Binary values are shown as hex, which an edit box would write back as text.
      writable && toText(kv.value) !== null ? h('button', { onclick: () => act.edit(kv) }, 'Edit') : null,
      writable ? h('button.danger', { onclick: () => act.remove(kv.key) }, 'Delete') : null),
    historyView(ui),
  );
}

function putForm(ui, act) {
  if (!ui.scope.writes) return null;
  // The boxes hold text: a key that is not text can be deleted here, not written.
  const key = h('input', { name: 'key', placeholder: 'key', value: toText(ui.draft ? ui.draft.key : ui.prefix) ?? '' });
  const value = h('textarea', { name: 'value', placeholder: 'value', rows: 3 });
  if (ui.draft) value.value = toText(ui.draft.value) ?? '';
  return h('form.put', { onsubmit: (e) => { e.preventDefault(); act.put(fromText(key.value), fromText(value.value)); } },
    h('h4', {}, 'Put'), key, value, h('button', { type: 'submit' }, 'Put'));
}

export function changesView(ui, prefix) {
  const events = ui.mirror.recent.filter((e) => e.key.startsWith(prefix)).slice(0, 50);
  return h('div.changes', {}, h('h4', {}, `Live changes${prefix ? ` under ${showKey(prefix)}` : ''}`),
    events.length === 0 ? empty('Nothing has changed since the page opened.') :
      h('table', {}, h('tr', {}, h('th', {}, 'revision'), h('th', {}, 'event'), h('th', {}, 'key'), h('th', {}, 'value'), h('th', {}, 'before')),
        events.map((e) => h('tr', { dataset: { event: e.type } },
          h('td', {}, e.rev), h('td', {}, e.type), h('td', {}, showKey(e.key)),
          h('td', {}, e.type === 'DELETE' ? '' : short(e.kv.value)), h('td', {}, e.prev ? short(e.prev.value) : '(new)')))));
}

export function keysView(ui, act) {
  const { folders, keys } = children(ui.mirror.kvs, ui.prefix);
  const list = h('ul.tree', {},
    folders.map(([f, n]) => h('li.folder', { dataset: { folder: showKey(f) }, onclick: () => act.browse(f) },
      `▸ ${showKey(f.slice(ui.prefix.length))}`, h('span.count', {}, plural(n, 'key')))),
    keys.map((kv) => h(`li.key${kv.key === ui.selected ? '.selected' : ''}`, { dataset: { key: showKey(kv.key) }, onclick: () => act.select(kv.key) },
      showKey(kv.key.slice(ui.prefix.length)) || showKey(kv.key), h('span.preview', {}, short(kv.value, 40)))));
  return h('section', {},
    h('div.summary', {}, breadcrumb(ui, act), h('span', {}, `${plural(ui.mirror.kvs.size, 'key')} · revision ${ui.mirror.rev}`),
      ui.scope.root ? null : h('span.note', {}, `you may read: ${ui.scope.read.map(rangeText).join(', ') || 'nothing'}`),
      ui.mirror.truncated ? h('span.bad', {}, 'more keys than the page keeps: showing the first ones') : null),
    h('div.split', {},
      h('div.pane', {}, folders.length + keys.length ? list : empty(ui.scope.read.length ? 'No keys here.' : 'You may not read any key.'), putForm(ui, act)),
      keyDetail(ui, act)),
    changesView(ui, ui.prefix));
}

// --- leases ---

export function leasesView(ui, act, now) {
  const leases = [...ui.leases.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
  if (ui.leasesError && leases.length === 0) return h('section', {}, h('p.bad', {}, ui.leasesError));
  if (leases.length === 0) return h('section', {}, empty('No leases.'));
  const rows = leases.map((l) => {
    const remaining = Math.max(0, Math.ceil(l.ttl - (now - l.fetchedAt) / 1000));
    const status = l.renewedAt ? `renewed ${ago(now - l.renewedAt)}` : `not renewed for ${Math.round((now - l.seenAt) / 1000)} s`;
    return h('tr', { dataset: { lease: l.hex } },
      h('td', {}, l.hex), h('td', {}, `${l.granted} s`), h('td.ttl', {}, `${remaining} s`),
      h('td', {}, h('progress', { max: l.granted || 1, value: remaining })),
      h('td', {}, status),
      h('td', {}, l.keys.length ? l.keys.map((k) => h('div', {}, showKey(k))) : '(none)'),
      h('td', {}, ui.scope.writes ? h('button.danger', { onclick: () => act.revoke(l) }, 'Revoke') : null));
  });
  return h('section', {}, h('div.summary', {}, plural(leases.length, 'lease'),
    ui.leasesTruncated ? h('span.bad', {}, ' (details for the first ones only)') : null),
  h('table.leases', {}, h('tr', {}, ['ID', 'granted TTL', 'remaining', '', 'keep-alive', 'keys', ''].map((t) => h('th', {}, t))), rows));
}

// --- locks and elections ---

export function locksView(ui, act) {
  const s = structures(ui.mirror.kvs);
  const locks = s.locks.map((l) => h('div.card.lock', { dataset: { lock: showKey(l.name) } },
    h('h3', {}, showKey(l.name), l.rw ? h('span.badge', {}, 'read-write') : null),
    h('dl', {},
      h('dt', {}, l.holders.length > 1 ? 'Holders' : 'Holder'),
      h('dd.holder', {}, l.holders.map((k) => h('div', {}, `lease ${k.leaseHex}${k.mode ? ` (${k.mode})` : ''}`))),
      h('dt', {}, 'Fencing token'), h('dd.fencing', {}, l.fencing),
      h('dt', {}, 'Waiters'),
      h('dd.waiters', {}, l.waiters.length ? h('ol', {}, l.waiters.map((k) => h('li', {}, `lease ${k.leaseHex}${k.mode ? ` (${k.mode})` : ''} · since revision ${k.create}`))) : 'none'))));
  const elections = s.elections.map((e) => h('div.card.election', { dataset: { election: showKey(e.name) } },
    h('h3', {}, showKey(e.name)),
    h('dl', {},
      h('dt', {}, 'Leader'), h('dd.leader', {}, short(e.leader.value, 80)),
      h('dt', {}, 'Leader lease'), h('dd', {}, e.leader.leaseHex),
      h('dt', {}, 'Candidates'),
      h('dd.candidates', {}, e.candidates.length ? h('ol', {}, e.candidates.map((c) => h('li', {}, `${short(c.value, 40)} (lease ${c.leaseHex})`))) : 'none')),
    ui.scope.canWrite(e.leader.key) ? h('button.danger', { onclick: () => act.resign(e) }, 'Make the leader resign') : null));
  return h('section', {},
    h('h2', {}, 'Locks'), locks.length ? h('div.cards', {}, locks) : empty('No locks held.'),
    h('h2', {}, 'Elections'), elections.length ? h('div.cards', {}, elections) : empty('No elections.'));
}

// --- services, queues, topics ---

export function servicesView(ui) {
  const s = structures(ui.mirror.kvs);
  const services = s.services.map((svc) => h('div.card.service', { dataset: { service: showKey(svc.name) } },
    h('h3', {}, showKey(svc.name), h('span.count', {}, `${svc.instances.length} live`)),
    h('table', {}, svc.instances.map((i) => h('tr', {}, h('td', {}, showKey(i.id)), h('td', {}, short(i.kv.value, 60)), h('td', {}, `lease ${i.kv.leaseHex}`))))));
  const queues = s.queues.map((q) => h('tr', { dataset: { queue: showKey(q.name) } }, h('td', {}, showKey(q.name)), h('td.depth', {}, q.depth), h('td', {}, q.taken)));
  const topics = s.topics.map((t) => h('div.card.topic', { dataset: { topic: showKey(t.name) } },
    h('h3', {}, showKey(t.name), h('span.count', {}, `${t.messages.length} messages`)),
    h('p', {}, t.last ? `last offset ${t.last}` : 'no retained messages'),
    t.groups.length ? h('table', {}, h('tr', {}, h('th', {}, 'consumer group'), h('th', {}, 'committed offset'), h('th', {}, 'lag')),
      t.groups.map((g) => h('tr', { dataset: { group: g.name } }, h('td', {}, g.name), h('td', {}, g.offset), h('td.lag', {}, g.lag)))) : empty('No consumer groups.')));
  return h('section', {},
    h('h2', {}, 'Services and groups'), services.length ? h('div.cards', {}, services) : empty('No registered instances.'),
    h('h2', {}, 'Queues'), queues.length ? h('table.queues', {}, h('tr', {}, h('th', {}, 'queue'), h('th', {}, 'waiting items'), h('th', {}, 'being handed over')), queues) : empty('No queues.'),
    h('h2', {}, 'Topics'), topics.length ? h('div.cards', {}, topics) : empty('No topics.'));
}

// --- activity ---

function sparkline(values) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 120 30');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => `${(i * 120) / Math.max(1, values.length - 1)},${30 - (v / max) * 28}`).join(' ');
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', pts);
  svg.append(line);
  return svg;
}

export function activityView(ui) {
  const a = ui.activity;
  if (!a.samples.length) return h('section', {}, empty(ui.activityError || 'Sampling the member…'));
  const last = a.samples[a.samples.length - 1];
  const series = (f) => a.samples.map(f);
  const tile = (name, value, values) => h('div.card.tile', { dataset: { metric: name } }, h('h3', {}, name), h('p.big', {}, value), values ? sparkline(values) : null);
  // A histogram gives the bucket the 99th percentile fell in: an upper bound.
  const ms = (s) => (s === null ? '–' : `≤ ${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`);
  return h('section', {}, h('p.note', {}, 'Sampled from this member\'s /metrics every 2 s.'),
    h('div.cards', {},
      tile('writes/s', last.writes.toFixed(1), series((s) => s.writes)),
      tile('reads/s', last.reads.toFixed(1), series((s) => s.reads)),
      tile('request p99', ms(last.p99), series((s) => s.p99 || 0)),
      tile('fsync p99', ms(last.fsyncP99), series((s) => s.fsyncP99 || 0)),
      tile('watchers', last.watchers, series((s) => s.watchers)),
      tile('leases', last.leases, series((s) => s.leases)),
      tile('revision', last.revision, null),
      tile('DB size', bytes(last.dbSize), null)));
}
