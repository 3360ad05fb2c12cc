// The member as the page sees it: calls through etcd's JSON gateway with the signed-in
// user's token, what that user may read and write, and a live mirror of the readable keys
// (listed at one revision, then watched from the next, listed again after a compaction).
//
// Keys and values are kept as "binary strings" (one char per byte, as atob gives them), so
// they compare in etcd's byte order and round-trip any bytes.

export const session = {
  token: sessionStorage.getItem('cairn.token'),
  user: sessionStorage.getItem('cairn.user'),
};

export class ApiError extends Error {
  constructor(status, body) {
    const inner = typeof body.error === 'object' && body.error ? body.error : {};
    super(body.message || inner.message || (typeof body.error === 'string' ? body.error : '') || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
  }
}

function headers() {
  const h = { 'Content-Type': 'application/json' };
  // The token goes in a header, never in a URL a proxy or a history could log.
  if (session.token) h.Authorization = session.token;
  return h;
}

async function answer(r) {
  const text = await r.text();
  let body;
  try {
    body = text ? JSON.parse(text) : {};
  } catch {
    body = { message: text.trim() };
  }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

/** One gateway call: `POST path` with a JSON body. */
export async function call(path, body = {}, signal = undefined) {
  return answer(await fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body), signal }));
}

/** A `GET` of one of the dashboard's own reads. */
export async function read(path) {
  return answer(await fetch(path, { headers: headers() }));
}

export async function login(user, password) {
  const r = await call('/v3/auth/authenticate', { name: user, password });
  session.token = r.token;
  session.user = user;
  sessionStorage.setItem('cairn.token', r.token);
  sessionStorage.setItem('cairn.user', user);
}

export function logout() {
  session.token = null;
  session.user = null;
  sessionStorage.removeItem('cairn.token');
  sessionStorage.removeItem('cairn.user');
}

// --- bytes ---

export const b64 = (bin) => btoa(bin);
export const unb64 = (s) => (s ? atob(s) : '');

export function fromText(text) {
  let out = '';
  for (const b of new TextEncoder().encode(text)) out += String.fromCharCode(b);
  return out;
}

/** The text of `bin` if it is UTF-8 without control characters, else null. */
export function toText(bin) {
  const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return /[\u0000-\u0008\u000e-\u001f\u007f]/.test(text) ? null : text;
  } catch {
    return null;
  }
}

export function hex(bin) {
  return Array.from(bin, (c) => c.charCodeAt(0).toString(16).padStart(2, '0')).join(' ');
}

/** A key for display: its text, or its bytes in hex. */
export function showKey(bin) {
  const t = toText(bin);
  return t === null ? `0x${hex(bin).replaceAll(' ', '')}` : t;
}

/** etcd's end of the range of keys starting with `bin` ("\0": every key after it). */
export function prefixEnd(bin) {
  let i = bin.length - 1;
  while (i >= 0 && bin.charCodeAt(i) === 0xff) i--;
  if (i < 0) return '\0';
  return bin.slice(0, i) + String.fromCharCode(bin.charCodeAt(i) + 1);
}

const num = (v) => Number(v || 0);

function decodeKv(kv) {
  const lease = kv.lease || '0';
  return {
    key: unb64(kv.key),
    value: unb64(kv.value),
    create: num(kv.create_revision),
    mod: num(kv.mod_revision),
    version: num(kv.version),
    lease,
    leaseHex: BigInt(lease).toString(16),
  };
}

// --- what the user may do ---

/** Intervals [start, end) with end null for "to the last key", merged and sorted. */
function merge(intervals) {
  const sorted = intervals.slice().sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const out = [];
  for (const iv of sorted) {
    const last = out[out.length - 1];
    if (last && (last.end === null || iv.start <= last.end)) {
      if (last.end !== null && (iv.end === null || iv.end > last.end)) last.end = iv.end;
    } else {
      out.push({ ...iv });
    }
  }
  return out;
}

/** etcd's permission range as an interval: one key, or [key, range_end). */
function interval(key, end) {
  if (end === '') return { start: key, end: key + '\0' };
  if (end === '\0') return { start: key, end: null };
  return end > key ? { start: key, end } : null;
}

export class Scope {
  constructor(read, write, root) {
    this.read = merge(read);
    this.write = merge(write);
    this.root = root;
  }

  static everything(writes) {
    const all = [{ start: '', end: null }];
    return new Scope(all, writes ? all : [], true);
  }

  static nothing() {
    return new Scope([], [], false);
  }

  static covers(list, key) {
    return list.some((iv) => key >= iv.start && (iv.end === null || key < iv.end));
  }

  canRead(key) {
    return Scope.covers(this.read, key);
  }

  canWrite(key) {
    return Scope.covers(this.write, key);
  }

  get writes() {
    return this.write.length > 0;
  }
}

/**
 * What the signed-in user may read and write: the permissions of its roles, which etcd lets
 * a user read about itself (UserGet of its own name, RoleGet of its own roles).
 */
export async function loadScope(info) {
  if (!info.authEnabled) return Scope.everything(info.openWrites);
  if (!session.token) return Scope.nothing();
  const user = await call('/v3/auth/user/get', { name: session.user });
  const roles = user.roles || [];
  if (roles.includes('root')) return Scope.everything(true);
  const read = [];
  const write = [];
  for (const role of roles) {
    const r = await call('/v3/auth/role/get', { role });
    for (const p of r.perm || []) {
      const iv = interval(unb64(p.key), unb64(p.range_end));
      if (!iv) continue;
      const type = p.permType || 'READ';
      if (type !== 'WRITE') read.push(iv);
      if (type !== 'READ') write.push({ ...iv });
    }
  }
  return new Scope(read, write, false);
}

// --- the mirror ---

/** Keys listed per request, and the most the page keeps. */
const PAGE = 1000;
export const MIRROR_LIMIT = 50000;
/** Bytes of keys and values the page keeps at most (a big store stays on the member). */
const MIRROR_BYTES = 64 << 20;
const RECENT = 300;

/** An error that means the page must sign in again, or read its permissions again. */
export function endsSession(e) {
  return e instanceof ApiError && (e.status === 401 || /invalid auth token|revision of auth store is old|user name is empty/.test(e.message));
}
export function refused(e) {
  return e instanceof ApiError && (e.status === 403 || /permission denied/.test(e.message));
}

/** A watch answered that its history is compacted: list that range again. */
class Relist extends Error {}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Mirror extends EventTarget {
  constructor(scope) {
    super();
    this.scope = scope;
    this.kvs = new Map();
    this.recent = [];
    this.rev = 0;
    this.bytes = 0;
    this.truncated = false;
    this.error = null;
    this.stopped = false;
    this.abort = new AbortController();
    this.pending = null;
    /** Per readable range: the revision its watch resumes from (null: list it first). */
    this.next = scope.read.map(() => null);
  }

  start() {
    if (this.scope.read.length) this.run();
  }

  /** Ends every request of this mirror, the watch stream included. */
  stop() {
    this.stopped = true;
    this.abort.abort();
  }

  changed() {
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.dispatchEvent(new Event('change'));
    }, 30);
  }

  set(kv) {
    const old = this.kvs.get(kv.key);
    if (!old && this.kvs.size >= MIRROR_LIMIT) {
      this.truncated = true;
      return;
    }
    this.bytes += kv.key.length + kv.value.length - (old ? old.key.length + old.value.length : 0);
    this.kvs.set(kv.key, kv);
  }

  del(key) {
    const old = this.kvs.get(key);
    if (!old) return;
    this.bytes -= old.key.length + old.value.length;
    this.kvs.delete(key);
  }

  range(iv) {
    return { key: b64(iv.start === '' ? '\0' : iv.start), range_end: b64(iv.end === null ? '\0' : iv.end) };
  }

  inside(iv, key) {
    return key >= iv.start && (iv.end === null || key < iv.end);
  }

  /** Lists what needs listing, then follows every range on one watch stream, for ever. */
  async run() {
    let pause = 250;
    while (!this.stopped) {
      try {
        if (this.next.every((n) => n === null)) this.truncated = false;
        for (const [i, iv] of this.scope.read.entries()) {
          if (this.next[i] === null) this.next[i] = (await this.list(iv)) + 1;
        }
        this.error = null;
        this.changed();
        const delivered = await this.watch();
        pause = delivered ? 250 : Math.min(pause * 2, 5000);
      } catch (e) {
        if (this.stopped) return;
        if (!(e instanceof Relist)) {
          this.error = e;
          this.changed();
          if (endsSession(e) || refused(e)) {
            this.dispatchEvent(Object.assign(new Event('auth'), { error: e }));
            return;
          }
          pause = Math.min(pause * 2, 5000);
        }
      }
      if (!this.stopped) await sleep(pause);
    }
  }

  /** Lists `iv` page by page at one revision; returns that revision. */
  async list(iv) {
    const base = this.range(iv);
    let key = base.key;
    let rev = 0;
    const seen = new Set();
    let complete = false;
    for (;;) {
      const r = await call('/v3/kv/range', { ...base, key, limit: PAGE, revision: rev }, this.abort.signal);
      rev = num(r.header.revision);
      const kvs = (r.kvs || []).map(decodeKv);
      for (const kv of kvs) {
        seen.add(kv.key);
        this.set(kv);
      }
      if (!r.more || kvs.length === 0) {
        complete = true;
        break;
      }
      if (this.kvs.size >= MIRROR_LIMIT || this.bytes >= MIRROR_BYTES) {
        this.truncated = true;
        break;
      }
      key = b64(kvs[kvs.length - 1].key + '\0');
    }
    // Keys the range held before a re-list and holds no more were deleted meanwhile.
    if (complete) {
      for (const k of [...this.kvs.keys()]) if (this.inside(iv, k) && !seen.has(k)) this.del(k);
    }
    this.rev = Math.max(this.rev, rev);
    return rev;
  }

  /**
   * One watch stream for every range (a browser keeps few connections per origin): one
   * create request per range, each answered in order. Returns whether anything arrived
   * before the stream ended; throws Relist after a compaction.
   */
  async watch() {
    const body = this.scope.read
      .map((iv, i) => JSON.stringify({ create_request: { ...this.range(iv), start_revision: this.next[i], prev_kv: true, progress_notify: true } }))
      .join('\n');
    const r = await fetch('/v3/watch', { method: 'POST', headers: headers(), body, signal: this.abort.signal });
    if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => ({})));
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    const ranges = new Map();
    let delivered = false;
    const handle = (line) => {
      const msg = JSON.parse(line);
      if (msg.error) throw new ApiError(msg.error.http_code || 500, msg.error);
      const res = msg.result || {};
      const id = res.watch_id || '0';
      if (res.created) ranges.set(id, ranges.size);
      const i = ranges.get(id);
      if (i === undefined) return;
      if (res.compact_revision && res.compact_revision !== '0') {
        this.next[i] = null;
        throw new Relist();
      }
      if (res.canceled) throw new ApiError(403, { message: res.cancel_reason || 'watch canceled' });
      if (this.apply(res, i)) delivered = true;
    };
    let buf = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          // The member's last line (an error) may end without a newline.
          if (buf.trim()) handle(buf.trim());
          return delivered;
        }
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) handle(line);
        }
      }
    } finally {
      // Closes the connection: the member keeps a watch's request side open otherwise.
      reader.cancel().catch(() => {});
    }
  }

  /** Applies a watch response for range `i`; returns whether it carried events. */
  apply(res, i) {
    const rev = num(res.header && res.header.revision);
    const events = res.events || [];
    for (const ev of events) {
      const kv = decodeKv(ev.kv);
      const prev = ev.prev_kv ? decodeKv(ev.prev_kv) : null;
      const type = ev.type === 'DELETE' ? 'DELETE' : 'PUT';
      if (type === 'DELETE') this.del(kv.key);
      else this.set(kv);
      this.recent.unshift({ type, key: kv.key, kv, prev, rev: kv.mod, at: Date.now() });
      this.next[i] = Math.max(this.next[i], kv.mod + 1);
    }
    if (this.recent.length > RECENT) this.recent.length = RECENT;
    // A progress notification (no events, not the creation) says every event up to its
    // revision was delivered.
    if (!events.length && !res.created && rev) this.next[i] = Math.max(this.next[i], rev + 1);
    if (rev) this.rev = Math.max(this.rev, rev);
    this.changed();
    return events.length > 0;
  }

  /** The key's values at earlier revisions, newest first, back to its creation. */
  async history(key, limit = 20) {
    const out = [];
    let at = 0;
    for (let i = 0; i < limit; i++) {
      let r;
      try {
        r = await call('/v3/kv/range', { key: b64(key), revision: at });
      } catch (e) {
        if (e instanceof ApiError && /compacted/.test(e.message)) {
          out.push({ compacted: true });
          break;
        }
        throw e;
      }
      const kv = (r.kvs || []).map(decodeKv)[0];
      if (!kv) break;
      out.push(kv);
      if (kv.version <= 1) break;
      at = kv.mod - 1;
    }
    return out;
  }
}
