// The dashboard: signs in when auth is on, mirrors what the user may read, and draws the
// view the address's fragment names (#cluster, #keys, …). Keys, locks, elections, services,
// queues and topics follow the mirror's watch; the member's status, its leases and its
// metrics, which no watch reports, are asked for every few seconds.

import * as model from './model.js';
import { h, clusterView, keysView, leasesView, locksView, servicesView, activityView } from './views.js';

const VIEWS = {
  cluster: ['Cluster', clusterView],
  keys: ['Keys', keysView],
  leases: ['Leases', leasesView],
  locks: ['Locks & elections', locksView],
  services: ['Services, queues & topics', servicesView],
  activity: ['Activity', activityView],
};

const CLUSTER_EVERY = 2000;
const METRICS_EVERY = 2000;
const LEASES_EVERY = 3000;
/** Leases whose keys and TTL the page asks about; beyond, only the count. */
const LEASE_DETAILS = 200;

const ui = {
  info: null,
  scope: model.Scope.nothing(),
  mirror: new model.Mirror(model.Scope.nothing()),
  cluster: null,
  clusterError: null,
  leases: new Map(),
  leasesError: null,
  leasesTruncated: false,
  activity: { samples: [], previous: null },
  activityError: null,
  prefix: '',
  selected: null,
  history: null,
  draft: null,
};

const $ = (sel) => document.querySelector(sel);
const view = () => (Object.hasOwn(VIEWS, location.hash.slice(1)) ? location.hash.slice(1) : 'cluster');

function flash(text, bad = true) {
  const el = $('#flash');
  el.textContent = text;
  el.className = bad ? 'bad' : 'ok';
  el.hidden = !text;
}

function render() {
  const name = view();
  for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.dataset.view === name);
  const main = $('#main');
  // Keep the put form's input while the page redraws around it.
  const focused = document.activeElement && main.contains(document.activeElement) && document.activeElement.name;
  if (focused) return;
  main.replaceChildren(VIEWS[name][1](ui, actions, Date.now()));
  const err = ui.mirror.error;
  $('#status').textContent = err ? `not live: ${err.message}` : `live at revision ${ui.mirror.rev}`;
  $('#status').className = err ? 'bad' : 'ok';
}

/** Asks before a write, in a dialog of the page's own. */
function confirmed(text) {
  const dlg = $('#confirm');
  $('#confirm-text').textContent = text;
  // Escape closes without a value: it must not repeat an earlier "yes".
  dlg.returnValue = '';
  dlg.showModal();
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'yes'), { once: true });
  });
}

async function write(what, doit) {
  if (!(await confirmed(what))) return;
  try {
    await doit();
    flash(`Done: ${what}`, false);
  } catch (e) {
    failed(e);
  }
}

function failed(e) {
  if (model.endsSession(e)) return sessionEnded();
  flash(e.message);
}

/** The token is no longer good (expired, a restart, an auth change): sign in again. */
function sessionEnded() {
  model.logout();
  start('Your session has ended: sign in again.');
}

const actions = {
  browse(prefix) {
    ui.prefix = prefix;
    ui.selected = null;
    render();
  },
  select(key) {
    ui.selected = key;
    ui.draft = null;
    render();
  },
  async history(key) {
    ui.history = { key };
    render();
    try {
      ui.history = { key, versions: await ui.mirror.history(key) };
    } catch (e) {
      ui.history = { key, error: e.message };
    }
    render();
  },
  edit(kv) {
    ui.draft = kv;
    render();
  },
  put(key, value) {
    // Editing a key on a lease (a lock's, a service's) keeps it on that lease.
    const old = ui.draft && ui.draft.key === key ? ui.mirror.kvs.get(key) : null;
    const keep = old && old.lease !== '0' ? { ignore_lease: true } : {};
    write(`put ${model.showKey(key)}`, async () => {
      await model.call('/v3/kv/put', { key: model.b64(key), value: model.b64(value), ...keep });
      ui.draft = null;
    });
  },
  remove(key) {
    write(`delete ${model.showKey(key)}`, () => model.call('/v3/kv/deleterange', { key: model.b64(key) }));
  },
  revoke(lease) {
    write(`revoke lease ${lease.hex} and delete its ${lease.keys.length} key(s)`, async () => {
      await model.call('/v3/lease/revoke', { ID: lease.id });
      refreshLeases();
    });
  },
  resign(election) {
    const l = election.leader;
    write(`make ${model.showKey(election.name)}'s leader resign`, () =>
      model.call('/v3/election/resign', {
        leader: { name: model.b64(election.name), key: model.b64(l.key), rev: l.create, lease: l.lease },
      }));
  },
};

// --- what no watch reports ---

let clusterBusy = false;
async function refreshCluster() {
  if (clusterBusy) return;
  clusterBusy = true;
  const gen = generation;
  try {
    if (await authChanged()) return;
    const cluster = await model.read('/ui/api/cluster');
    if (gen !== generation) return;
    ui.cluster = cluster;
    ui.clusterError = null;
  } catch (e) {
    if (gen === generation) ui.clusterError = e.message;
  } finally {
    clusterBusy = false;
  }
  if (view() === 'cluster') render();
}

/** Auth turned on or off since the page started (what it may show has changed): starts again. */
async function authChanged() {
  const info = await model.read('/ui/api/info');
  if (ui.info && info.authEnabled !== ui.info.authEnabled) {
    start();
    return true;
  }
  return false;
}

let leasesBusy = false;
/** TimeToLive calls in flight at once (each is a linearizable read on the leader). */
const LEASE_CALLS = 8;
async function refreshLeases() {
  if (leasesBusy || view() !== 'leases') return;
  leasesBusy = true;
  const gen = generation;
  try {
    const r = await model.call('/v3/lease/leases', {});
    const ids = (r.leases || []).map((l) => l.ID);
    ui.leasesTruncated = ids.length > LEASE_DETAILS;
    const now = Date.now();
    const next = new Map();
    const queue = ids.slice(0, LEASE_DETAILS);
    const one = async (id) => {
      const t = await model.call('/v3/lease/timetolive', { ID: id, keys: true }).catch(() => null);
      if (!t || Number(t.TTL) < 0) return;
      const old = ui.leases.get(id);
      const ttl = Number(t.TTL || 0);
      // Remaining time that grew since the last look: someone renewed the lease. TTLs are
      // whole seconds, rounded down, so less than that is rounding.
      const predicted = old ? old.ttl - (now - old.fetchedAt) / 1000 : null;
      const renewed = predicted !== null && ttl > predicted + 1.5;
      next.set(id, {
        id,
        hex: BigInt(id).toString(16),
        ttl,
        granted: Number(t.grantedTTL || 0),
        // TimeToLive names every key of the lease; show only those the user may read.
        keys: (t.keys || []).map(model.unb64).filter((k) => ui.scope.canRead(k)),
        fetchedAt: now,
        seenAt: old ? old.seenAt : now,
        renewedAt: renewed ? now : old ? old.renewedAt : null,
      });
    };
    const workers = Array.from({ length: LEASE_CALLS }, async () => {
      while (queue.length) await one(queue.shift());
    });
    await Promise.all(workers);
    if (gen !== generation) return;
    ui.leases = next;
    ui.leasesError = null;
  } catch (e) {
    if (gen === generation) ui.leasesError = e.message;
  } finally {
    leasesBusy = false;
  }
  if (view() === 'leases') render();
}

/** Parses the Prometheus text into {name: [{labels, value}]}. */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    (out[m[1]] ||= []).push({ labels, value: Number(m[3]) });
  }
  return out;
}

const sum = (rows, pred = () => true) => (rows || []).filter((r) => pred(r.labels)).reduce((a, r) => a + r.value, 0);

/** Cumulative bucket counts by upper bound, summed over label sets. */
function buckets(rows, pred = () => true) {
  const by = new Map();
  for (const r of rows || []) if (pred(r.labels)) by.set(r.labels.le, (by.get(r.labels.le) || 0) + r.value);
  return [...by.entries()].map(([le, n]) => [le === '+Inf' ? Infinity : Number(le), n]).sort((a, b) => a[0] - b[0]);
}

/** The 99th percentile's bucket bound over what happened between two samples. */
function p99(now, before) {
  if (!before) return null;
  const delta = now.map(([le, n], i) => [le, n - (before[i] ? before[i][1] : 0)]);
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (total <= 0) return null;
  const hit = delta.find(([, n]) => n >= total * 0.99);
  return hit && Number.isFinite(hit[0]) ? hit[0] : null;
}

async function refreshActivity() {
  try {
    const r = await fetch('/metrics');
    const m = parseMetrics(await r.text());
    const at = Date.now();
    const writes = sum(m.grpc_server_handled_total, (l) => ['Put', 'DeleteRange', 'Txn'].includes(l.grpc_method));
    const reads = sum(m.grpc_server_handled_total, (l) => l.grpc_method === 'Range');
    const req = buckets(m.grpc_server_handling_seconds_bucket, (l) => l.grpc_service === 'etcdserverpb.KV');
    const fsync = buckets(m.etcd_disk_wal_fsync_duration_seconds_bucket);
    const prev = ui.activity.previous;
    const secs = prev ? (at - prev.at) / 1000 : 1;
    const sample = {
      writes: prev ? Math.max(0, writes - prev.writes) / secs : 0,
      reads: prev ? Math.max(0, reads - prev.reads) / secs : 0,
      p99: p99(req, prev && prev.req),
      fsyncP99: p99(fsync, prev && prev.fsync),
      watchers: sum(m.etcd_debugging_mvcc_watcher_total),
      leases: sum(m.cairn_lease_active),
      revision: sum(m.etcd_debugging_mvcc_current_revision),
      dbSize: sum(m.etcd_mvcc_db_total_size_in_bytes),
    };
    ui.activity.previous = { at, writes, reads, req, fsync };
    if (prev) {
      ui.activity.samples.push(sample);
      if (ui.activity.samples.length > 60) ui.activity.samples.shift();
    }
    ui.activityError = null;
  } catch (e) {
    ui.activityError = e.message;
  }
  if (view() === 'activity') render();
}

// --- start ---

function every(ms, f) {
  f();
  return setInterval(f, ms);
}

let timers = [];
/** Bumped by every start: answers to an earlier start's requests are dropped. */
let generation = 0;
let lastRescope = 0;

function showLogin(message) {
  const dlg = $('#login');
  $('#login-error').textContent = message || '';
  if (!dlg.open) dlg.showModal();
  // Auth may be turned off while the page waits here.
  timers.push(setInterval(() => authChanged().catch(() => {}), CLUSTER_EVERY));
}

async function start(loginMessage) {
  const gen = ++generation;
  for (const t of timers) clearInterval(t);
  timers = [];
  ui.mirror.stop();
  ui.mirror = new model.Mirror(model.Scope.nothing());
  // Nothing of the previous user's stays on the page.
  Object.assign(ui, { leases: new Map(), cluster: null, prefix: '', selected: null, history: null, draft: null });
  let info;
  try {
    info = await model.read('/ui/api/info');
  } catch (e) {
    flash(`cannot reach the member: ${e.message}`);
    return;
  }
  if (gen !== generation) return;
  ui.info = info;
  $('#member').textContent = `${ui.info.name || 'member'} · ${ui.info.id} · Cairn ${ui.info.version}`;
  $('#who').textContent = ui.info.authEnabled ? (model.session.user ? `signed in as ${model.session.user}` : '') : 'auth off';
  $('#logout').hidden = !(ui.info.authEnabled && model.session.token);
  if (!ui.info.authEnabled && $('#login').open) $('#login').close();
  if (ui.info.authEnabled && !model.session.token) {
    ui.scope = model.Scope.nothing();
    render();
    return showLogin(loginMessage);
  }
  let scope;
  try {
    scope = await model.loadScope(ui.info);
  } catch (e) {
    if (gen !== generation) return;
    if (model.endsSession(e)) {
      model.logout();
      return showLogin('Your session has ended: sign in again.');
    }
    scope = model.Scope.nothing();
    flash(e.message);
  }
  if (gen !== generation) return;
  ui.scope = scope;
  if ($('#login').open) $('#login').close();
  $('#mode').textContent = ui.scope.writes ? 'writes allowed' : 'read-only';
  $('#mode').className = ui.scope.writes ? 'writes' : '';
  ui.mirror = new model.Mirror(ui.scope);
  let newest = null;
  ui.mirror.addEventListener('change', () => {
    if (view() !== 'cluster' && view() !== 'activity') render();
    // A leased key changed: a lease may have come or gone.
    const first = ui.mirror.recent[0];
    if (first && first !== newest && first.kv.lease !== '0') refreshLeases();
    newest = first;
  });
  ui.mirror.addEventListener('auth', (e) => {
    if (model.endsSession(e.error)) return sessionEnded();
    // Permissions changed under the page: read them again, at most every 5 s.
    const wait = Math.max(0, lastRescope + 5000 - Date.now());
    setTimeout(() => {
      if (gen !== generation) return;
      lastRescope = Date.now();
      start();
    }, wait);
  });
  ui.mirror.start();
  timers.push(every(CLUSTER_EVERY, refreshCluster));
  timers.push(every(METRICS_EVERY, refreshActivity));
  timers.push(every(LEASES_EVERY, refreshLeases));
  // The countdowns tick between two looks at the leases.
  timers.push(setInterval(() => view() === 'leases' && render(), 1000));
  render();
}

function init() {
  $('#tabs').replaceChildren(...Object.entries(VIEWS).map(([id, [title]]) => h('a', { href: `#${id}`, dataset: { view: id } }, title)));
  window.addEventListener('hashchange', () => {
    render();
    if (view() === 'leases') refreshLeases();
  });
  $('#login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = e.target;
    try {
      await model.login(form.user.value, form.password.value);
      form.password.value = '';
      $('#login').close();
      start();
    } catch (err) {
      $('#login-error').textContent = err.message;
    }
  });
  $('#logout').addEventListener('click', () => {
    model.logout();
    start();
  });
  start();
}

init();
