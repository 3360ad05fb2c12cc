// Drives the dashboard of the member at $CAIRN_URL in a real headless Chromium, one view at
// a time, while the Rust test (tests/tests/it/dashboard.rs) makes the changes the page must
// show: this script prints `step <name>` and waits for `ok [json]` on stdin once the change
// is made. Screenshots of each view go to $SCREENSHOTS. Exit 0 only when every check held.

import { chromium } from 'playwright-core';
import readline from 'node:readline';
import { mkdirSync } from 'node:fs';

const url = process.env.CAIRN_URL;
const shots = process.env.SCREENSHOTS;
mkdirSync(shots, { recursive: true });

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

/** Asks the harness to make a change and waits until it has. */
async function step(name) {
  log(`step ${name}`);
  process.stdout.write(`step ${name}\n`);
  const { value, done } = await lines.next();
  if (done) throw new Error(`step ${name}: the harness went away`);
  const [word, ...rest] = value.split(' ');
  if (word !== 'ok') throw new Error(`step ${name}: ${value}`);
  const reply = rest.join(' ').trim();
  return reply ? JSON.parse(reply) : {};
}

const log = (text) => process.stderr.write(`dashboard: ${text}\n`);

/** Waits until `f()` (which reads the page) returns something truthy, or fails with `what`. */
async function until(what, f, timeout = 5000) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const text = (page, sel) => page.locator(sel).first().textContent({ timeout: 200 });
const count = (page, sel) => page.locator(sel).count();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let failure = null;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  page.on('response', (r) => r.status() >= 400 && log(`${r.status()} from ${r.url()}`));
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  // Cluster: the member, as leader, with its raft term.
  await page.goto(`${url}/ui/`);
  await until('the member shown as leader', async () => (await count(page, '.member .badge.leader')) === 1);
  await until('a raft term', async () => Number(await text(page, '.member .term')) >= 1);
  await until('the page is live', async () => /live at revision/.test(await text(page, '#status')));
  await shot('cluster');

  // Auth off and no --ui-writes: the page is read-only.
  await page.goto(`${url}/ui/#keys`);
  await until('read-only mode', async () => (await text(page, '#mode')) === 'read-only');
  if ((await count(page, 'form.put')) !== 0) throw new Error('a put form without --ui-writes');

  // Keys: a put from a client appears within a second, without a reload.
  await step('put');
  const putSeen = Date.now();
  await until('app/ within a second of the put', async () => (await count(page, '[data-folder="app/"]')) === 1, 1000);
  log(`put shown after ${Date.now() - putSeen} ms`);
  await page.click('[data-folder="app/"]');
  await page.click('[data-key="app/config"]');
  await until('the value pretty-printed', async () => /"rate": 10/.test(await text(page, '.detail pre.value')));
  await step('update');
  await until('the new value', async () => /"rate": 25/.test(await text(page, '.detail pre.value')), 1000);
  await page.click('.detail button:has-text("History")');
  await until('two versions in the history', async () => (await count(page, '.history li.version')) === 2);
  await until('the diff shows the change', async () => /\+ {3}"rate": 25/.test(await text(page, '.history li.version .added')));
  await until('a live change listed', async () => (await count(page, '.changes tr[data-event="PUT"]')) >= 2);
  await shot('keys');

  // Locks: the holder and the waiter of a recipe's mutex, with its fencing token.
  const lock = await step('lock');
  await page.goto(`${url}/ui/#locks`);
  const card = '[data-lock="locks/report"]';
  await until('the lock holder', async () => (await text(page, `${card} .holder`)).includes(lock.holder));
  await until('the waiter', async () => (await text(page, `${card} .waiters`)).includes(lock.waiter));
  await until('the fencing token', async () => Number(await text(page, `${card} .fencing`)) === lock.token);

  // Elections: the leader changes when its session ends.
  await step('election');
  const el = '[data-election="elections/scheduler"]';
  await until('the first leader', async () => (await text(page, `${el} .leader`)) === 'node-c');
  await until('the candidate', async () => (await text(page, `${el} .candidates`)).includes('node-d'));
  await shot('locks');
  await step('end-session');
  await until('the next leader', async () => (await text(page, `${el} .leader`)) === 'node-d');
  await shot('elections');

  // Leases: the TTL counts down, and the key goes when the lease expires.
  const lease = await step('lease');
  await page.goto(`${url}/ui/#leases`);
  const row = `[data-lease="${lease.id}"]`;
  const first = await until('the lease listed', async () => parseInt(await text(page, `${row} .ttl`), 10) || false);
  await until('its key listed', async () => (await text(page, row)).includes('ephemeral/job-1'));
  await until('the TTL counting down', async () => parseInt(await text(page, `${row} .ttl`), 10) < first, 3000);
  await shot('leases');
  await until('the lease gone', async () => (await count(page, row)) === 0, 15000);
  await page.goto(`${url}/ui/#keys`);
  await page.click('.breadcrumb a.crumb >> nth=0');
  await until('the keys view at the top', async () => (await count(page, '[data-folder="app/"]')) === 1);
  if ((await count(page, '[data-folder="ephemeral/"]')) !== 0) throw new Error('the expired key is still shown');

  // Services, queues and topics.
  const topic = await step('services');
  await page.goto(`${url}/ui/#services`);
  await until('the registered instance', async () => (await text(page, '[data-service="services/api"]')).includes('api-1'));
  await until('the queue depth', async () => (await text(page, '[data-queue="jobs"] .depth')) === '3');
  await until('the consumer group lag', async () => (await text(page, `[data-topic="events"] [data-group="billing"] .lag`)) === String(topic.lag));
  await shot('services');

  // Activity, from the member's metrics.
  await page.goto(`${url}/ui/#activity`);
  await until('writes/s sampled', async () => (await count(page, '[data-metric="writes/s"]')) === 1, 8000);
  await until('request p99 measured', async () => /ms$/.test(await text(page, '[data-metric="request p99"] .big')), 8000);
  await shot('activity');

  // Auth on: sign in; a user sees only what it may read, and may not write.
  await step('auth');
  await page.goto(`${url}/ui/#keys`);
  await until('the sign-in dialog', async () => page.locator('#login').isVisible());
  await shot('login');
  await page.fill('#login input[name=user]', 'alice');
  await page.fill('#login input[name=password]', 'alice-pw');
  await page.click('#login button[type=submit]');
  await until('alice signed in', async () => (await text(page, '#who')) === 'signed in as alice');
  await until('public/ shown', async () => (await count(page, '[data-folder="public/"]')) === 1);
  for (const hidden of ['secret/', 'app/', 'locks/']) {
    if ((await count(page, `[data-folder="${hidden}"]`)) !== 0) throw new Error(`alice sees ${hidden}`);
  }
  if ((await text(page, '#mode')) !== 'read-only') throw new Error('alice may not write, yet the page offers it');
  if (page.url().includes('token') || (await page.evaluate(() => document.cookie)) !== '') throw new Error('a token in the URL or a cookie');
  await page.goto(`${url}/ui/#locks`);
  await until('no locks for alice', async () => (await text(page, 'main')).includes('No locks held.'));
  // TimeToLive names every key of a lease: the page shows alice none she may not read.
  await page.goto(`${url}/ui/#leases`);
  await until('the leases listed for alice', async () => (await count(page, '[data-lease]')) >= 1);
  if (/locks\/|services\/|elections\//.test(await text(page, 'main'))) throw new Error('alice sees the keys of others\' leases');
  await page.goto(`${url}/ui/#keys`);
  await shot('keys-alice');

  // root may write: a put from the page, after its confirmation, reaches the member.
  await page.click('#logout');
  await until('the sign-in dialog again', async () => page.locator('#login').isVisible());
  await page.fill('#login input[name=user]', 'root');
  await page.fill('#login input[name=password]', 'root-pw');
  await page.click('#login button[type=submit]');
  await until('root may write', async () => (await text(page, '#mode')) === 'writes allowed');
  await page.fill('form.put input[name=key]', 'public/from-ui');
  await page.fill('form.put textarea[name=value]', 'written by the page');
  await page.click('form.put button[type=submit]');
  await until('the confirmation', async () => page.locator('#confirm').isVisible());
  await page.click('#confirm button[value=yes]');
  const put = await step('check-ui-put');
  if (put.value !== 'written by the page') throw new Error(`the member holds ${JSON.stringify(put.value)}`);
  await until('the written key shown', async () => (await count(page, '[data-folder="public/"]')) === 1);

  // A delete asks first; Escape (after an earlier "yes") must not confirm it.
  await page.click('[data-folder="public/"]');
  await page.click('[data-key="public/from-ui"]');
  await page.click('.detail button:has-text("Delete")');
  await until('the delete confirmation', async () => page.locator('#confirm').isVisible());
  await page.keyboard.press('Escape');
  await until('the confirmation closed', async () => !(await page.locator('#confirm').isVisible()));
  await step('check-ui-put');
  await page.click('.detail button:has-text("Delete")');
  await until('the delete confirmation again', async () => page.locator('#confirm').isVisible());
  await page.click('#confirm button[value=yes]');
  await until('the deleted key gone', async () => (await count(page, '[data-key="public/from-ui"]')) === 0);

  if (errors.length) throw new Error(`errors in the page: ${errors.join('; ')}`);
} catch (e) {
  failure = e;
}
// The verdict first: a browser slow to close must not hide it.
process.stdout.write(failure ? `fail ${failure.message.replaceAll('\n', ' ')}\n` : 'pass\n');
await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10000))]);
process.exit(failure ? 1 : 0);
