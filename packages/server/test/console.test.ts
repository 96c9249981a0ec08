/**
 * The web console (packages/console, built by `npm run build` into packages/console/dist):
 * how the server serves it, and a person's path through it in Debian's Chromium (driven by
 * playwright-core): log in, create a device and read its credentials, connect SDK devices
 * (both protocol versions) and watch them turn online, run resources through generated
 * forms, stream one into the live chart, edit a property the device watches, read a bucket,
 * create a scoped token, and be sent back to the login page when the session is invalid.
 *
 * Needs /usr/bin/chromium (`apt-get install -y chromium`); IOTMP_SKIP_BROWSER=1 skips the
 * browser part. Screenshots go to packages/server/test-artifacts/console-*.png.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { PsonValue } from '@iotmp/pson';
import { type Browser, chromium, type Page } from 'playwright-core';
import {
  ADMIN,
  ADMIN_PASSWORD,
  assertErrorBody,
  TestServer,
  waitFor,
  waitForStatus,
  withTimeout,
} from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const SKIP_BROWSER = process.env.IOTMP_SKIP_BROWSER === '1';
/** dist/test of this package. */
const here = dirname(fileURLToPath(import.meta.url));
const PACKAGE_ROOT = join(here, '..', '..');
const CONSOLE_DIST = join(PACKAGE_ROOT, '..', 'console', 'dist');
const ARTIFACTS = join(PACKAGE_ROOT, 'test-artifacts');

function requireBuiltConsole(): void {
  if (!existsSync(join(CONSOLE_DIST, 'index.html')))
    assert.fail(
      `the web console is not built (no ${join(CONSOLE_DIST, 'index.html')}): run \`npm run build\` first ` +
        '(npm test does; it builds the server and the console)',
    );
}

describe('web console files', () => {
  it('serves the built console: index.html uncached with a CSP, hashed assets cached, API errors stay JSON', async (t) => {
    requireBuiltConsole();
    const server = await TestServer.start({ tcp: false, tls: false });
    t.after(() => server.close());
    const html = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };

    const root = await server.request('GET', '/', { headers: html });
    assert.equal(root.status, 200);
    assert.match(root.contentType, /^text\/html/);
    assert.equal(root.headers.get('cache-control'), 'no-cache');
    const csp = root.headers.get('content-security-policy') ?? '';
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    const page = root.bytes.toString('utf8');
    assert.equal(page, readFileSync(join(CONSOLE_DIST, 'index.html'), 'utf8'));
    // No inline script: every <script> has a src under /assets/.
    const scripts = [...page.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
    assert.ok(scripts.length > 0);
    for (const s of scripts) assert.match(s, /src="\/assets\/[^"]+\.js"/, s);

    // The app's own paths (a reload on /devices/x) get index.html.
    const deep = await server.request('GET', '/devices/some-device?x=1', { headers: html });
    assert.equal(deep.status, 200);
    assert.equal(deep.bytes.toString('utf8'), page);
    assert.equal(deep.headers.get('cache-control'), 'no-cache');

    const asset = /src="(\/assets\/[^"]+\.js)"/.exec(page)?.[1] as string;
    const js = await server.request('GET', asset);
    assert.equal(js.status, 200);
    assert.match(js.contentType, /javascript/);
    assert.equal(js.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.equal(js.headers.get('x-content-type-options'), 'nosniff');

    // Not pages: a missing file, a POST, API paths (with and without a token) — JSON errors.
    assertErrorBody(await server.request('GET', '/assets/missing-0000.js'), 404, 'not_found');
    assertErrorBody(await server.request('GET', '/devices/x'), 404, 'not_found');
    assertErrorBody(await server.api('POST', '/devices', { headers: html, json: {} }), 404, 'not_found');
    assertErrorBody(await server.api('GET', '/v1/no-such-route', { headers: html }), 404, 'not_found');
    assertErrorBody(await server.api('GET', '/v3/users/admin/devices/nope/stats', { headers: html }), 404);
    assertErrorBody(await server.request('GET', '/v1/users/admin/devices', { headers: html }), 401);
    // The console's wildcard never catches API paths: an over-long device id is still a 414.
    assertErrorBody(
      await server.api('GET', `/v1/users/admin/devices/${'x'.repeat(2000)}`, { headers: html }),
      414,
    );
    // A percent-encoded API path is still the API (and still needs a token).
    assertErrorBody(await server.request('GET', '/%761/users/admin/devices', { headers: html }), 401);
    const health = await server.request('GET', '/health', { headers: html });
    assert.equal(health.status, 200);
    assert.match(health.contentType, /^application\/json/);
  });

  it('says to run `npm run build` when the console is not built', async (t) => {
    const empty = mkdtempSync(join(tmpdir(), 'iotmp-console-missing-'));
    t.after(() => rmSync(empty, { recursive: true, force: true }));
    const server = await TestServer.start({ tcp: false, tls: false, flags: ['--console-dir', empty] });
    t.after(() => server.close());
    for (const path of ['/', '/devices']) {
      const res = await server.request('GET', path, { headers: { accept: 'text/html' } });
      assert.equal(res.status, 503, path);
      assert.match(res.contentType, /^text\/html/);
      assert.match(res.bytes.toString('utf8'), /npm run build/);
    }
    assertErrorBody(await server.request('GET', '/favicon.svg'), 404, 'not_found');
    assertErrorBody(await server.api('GET', '/v1/no-such-route', { headers: { accept: 'text/html' } }), 404);
    assert.equal((await server.api('GET', '/v1/users/admin/devices')).status, 200);
  });
});

/** Texts of the elements matching `selector`. */
function texts(page: Page, selector: string): Promise<string[]> {
  return page.$$eval(selector, (els) => els.map((e) => e.textContent ?? ''));
}

describe('web console in Chromium', () => {
  it('log in, create and watch devices, run resources, live chart, properties, buckets, tokens', {
    timeout: 60_000,
    skip: SKIP_BROWSER ? 'IOTMP_SKIP_BROWSER=1' : false,
  }, async (t) => {
    requireBuiltConsole();
    if (!existsSync(CHROMIUM))
      assert.fail(
        `Chromium not found at ${CHROMIUM}: run \`apt-get install -y chromium\` ` +
          '(or set IOTMP_SKIP_BROWSER=1 to skip the browser test)',
      );
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = (name: string) => join(ARTIFACTS, `console-${name}.png`);

    const server = await TestServer.start({ tls: false });
    t.after(() => server.close());

    // Made through the API before the browser opens: a legacy (protocol 0) device and a bucket.
    await server.createDevice('legacy-meter', 'legacy-secret', { name: 'Legacy meter' });
    assert.equal(
      (await server.api('POST', '/v1/users/admin/buckets', { json: { bucket: 'readings', source: 'write' } }))
        .status,
      201,
    );
    const start = Date.now() - 60 * 60_000;
    const records = Array.from({ length: 30 }, (_, i) => ({
      ts: start + i * 120_000,
      celsius: 20 + Math.round(Math.sin(i / 4) * 30) / 10,
      room: { humidity: 40 + (i % 9) },
      label: `r${i}`,
    }));
    const written = await server.api('POST', '/v1/users/admin/buckets/readings/data', { json: records });
    assert.equal(written.status, 200, written.bytes.toString('utf8'));

    const browser: Browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      timeout: 10_000,
    });
    t.after(() => browser.close());
    const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const page = await context.newPage();
    page.setDefaultTimeout(8000);
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      // Failed requests are expected where the test provokes them (wrong password, bad token);
      // anything else (script errors, CSP refusals) is a problem.
      if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource'))
        problems.push(`console: ${msg.text()}`);
    });

    // --- log in (a wrong password first)
    await page.goto(`${server.baseUrl}/`);
    await page.waitForSelector('[data-testid=login-form]');
    assert.equal(new URL(page.url()).pathname, '/login');
    await page.fill('[data-testid=login-user]', ADMIN);
    await page.fill('[data-testid=login-password]', 'not-the-password');
    await page.click('[data-testid=login-submit]');
    await page.waitForSelector('[data-testid=login-error]');
    assert.match((await page.textContent('[data-testid=login-error]')) ?? '', /\S/);
    await page.screenshot({ path: shot('login') });
    await page.fill('[data-testid=login-password]', ADMIN_PASSWORD);
    await page.click('[data-testid=login-submit]');
    await page.waitForSelector('[data-testid="device-row-legacy-meter"]');
    assert.equal(new URL(page.url()).pathname, '/devices');
    assert.equal(await page.textContent('[data-testid=current-user]'), ADMIN);
    const stored = await page.evaluate(() => sessionStorage.getItem('iotmp.console.session'));
    assert.ok(stored?.includes('accessToken'), 'tokens are kept in sessionStorage');

    // --- create a device; its generated credentials are shown once
    await page.click('[data-testid=new-device]');
    await page.fill('[data-testid=device-id]', 'greenhouse-1');
    await page.fill('[data-testid=device-name]', 'Greenhouse');
    await page.fill('[data-testid=device-description]', 'North wall sensor and pump');
    await page.click('[data-testid=device-create-submit]');
    const credentials = ((await page.textContent('[data-testid=created-credentials]')) ?? '').trim();
    assert.match(credentials, /^[A-Za-z0-9_-]{24}$/, 'generated credentials');
    await page.screenshot({ path: shot('credentials') });
    await page.click('[data-testid=credentials-done]');
    await page.waitForSelector('[data-testid="device-row-greenhouse-1"]');
    // The list may render before the dialog is removed: wait (bounded) for the credentials to go.
    await page.waitForSelector('[data-testid=created-credentials]', { state: 'detached', timeout: 10_000 });
    assert.equal(await page.$('[data-testid=created-credentials]'), null, 'the credentials are gone');
    assert.deepEqual(
      await texts(page, '[data-testid="device-row-greenhouse-1"] [data-testid=device-state]'),
      ['offline'],
    );
    // Device states arrive over the events socket from here on.
    await page.waitForSelector('[data-testid=events-status].live');

    // --- SDK devices with those credentials (protocol 1) and the legacy one (protocol 0)
    const received: PsonValue[] = [];
    let reads = 0;
    const device = server.device('tcp', 1, 'greenhouse-1', credentials);
    device.resource('sum', {
      input: true,
      output: (v) => {
        const { a, b } = v as { a: number; b: number };
        return { result: a + b };
      },
      describe: { in: { a: 1, b: 2 } },
    });
    device.resource('climate', {
      output: () => {
        reads++;
        return { celsius: 21 + Math.sin(reads / 2), humidity: 55 + (reads % 5), air: { co2: 410 + reads } };
      },
    });
    device.resource('pump', {
      input: (v) => {
        received.push(v as PsonValue);
      },
      describe: { in: { on: true, speed: 50, mode: 'auto', schedule: { start: '06:00', minutes: 15 } } },
    });
    const legacy = server.device('tcp', 0, 'legacy-meter', 'legacy-secret');
    legacy.resource('energy', { output: () => ({ kwh: 12.5 }) });
    await withTimeout(Promise.all([device.connect(), legacy.connect()]), 8000, 'SDK devices to connect');
    const watched: Array<PsonValue | undefined> = [];
    void (async () => {
      try {
        for await (const value of device.properties.watch('config')) watched.push(value);
      } catch {
        // ends when the device closes
      }
    })();

    for (const id of ['greenhouse-1', 'legacy-meter'])
      await page.waitForSelector(
        `[data-testid="device-row-${id}"] [data-testid=device-state][data-online=true]`,
      );
    await page.waitForFunction(() =>
      /in \d/.test(
        document.querySelector('[data-testid="device-row-greenhouse-1"] [data-testid=device-traffic]')
          ?.textContent ?? '',
      ),
    );
    assert.match(
      (await page.textContent('[data-testid="device-row-greenhouse-1"] [data-testid=device-connection]')) ??
        '',
      /since/,
    );
    assert.equal(await page.textContent('[data-testid=device-total]'), '2 devices');
    await page.screenshot({ path: shot('devices') });

    // --- edit, disable (the server drops its session), typed new credentials
    const legacyRow = '[data-testid="device-row-legacy-meter"]';
    await page.click(`${legacyRow} [data-testid=device-edit]`);
    await page.fill('[data-testid=edit-name]', 'Basement meter');
    await page.click('[data-testid=edit-save]');
    await page.waitForFunction(
      (row) => document.querySelector(row)?.textContent?.includes('Basement meter'),
      legacyRow,
    );
    await page.click(`${legacyRow} [data-testid=device-toggle]`);
    await page.waitForSelector(`${legacyRow} [data-testid=device-state][data-online=false]`);
    assert.equal(await page.textContent(`${legacyRow} [data-testid=device-toggle]`), 'Enable');
    await page.click(`${legacyRow} [data-testid=device-credentials]`);
    await page.check('[data-testid=credentials-type]');
    await page.fill('[data-testid=credentials-input]', 'typed secret');
    await page.click('[data-testid=credentials-save]');
    assert.match(
      (await page.textContent('[data-testid=form-error]')) ?? '',
      /printable/,
      'spaces are refused',
    );
    await page.fill('[data-testid=credentials-input]', 'typed-secret-1');
    await page.click('[data-testid=credentials-save]');
    assert.equal((await page.textContent('[data-testid=created-credentials]'))?.trim(), 'typed-secret-1');
    await page.click('[data-testid=credentials-done]');
    const record = (await server.api('GET', '/v1/users/admin/devices/legacy-meter')).body as Record<
      string,
      unknown
    >;
    assert.equal(record.name, 'Basement meter');
    assert.equal(record.enabled, false);

    // --- the device page: run resources through their forms
    await page.click('[data-testid="device-row-greenhouse-1"] [data-testid=device-link]');
    await page.waitForSelector('[data-testid=device-title]');
    assert.equal(new URL(page.url()).pathname, '/devices/greenhouse-1');
    await page.waitForSelector('[data-testid=device-page-state][data-online=true]');
    await page.waitForSelector('[data-testid="resource-sum"] input[name="a"]');
    await page.fill('[data-testid="resource-sum"] input[name="a"]', '20');
    await page.fill('[data-testid="resource-sum"] input[name="b"]', '22');
    await page.click('[data-testid="run-sum"]');
    await page.waitForFunction(() =>
      document.querySelector('[data-testid="output-sum"]')?.textContent?.includes('"result": 42'),
    );
    assert.deepEqual(JSON.parse((await page.textContent('[data-testid="output-sum"]')) ?? ''), {
      result: 42,
    });

    // Nested input: a checkbox, a number, a string and a nested fieldset.
    await page.waitForSelector('[data-testid="resource-pump"] input[name="schedule.minutes"]');
    await page.uncheck('[data-testid="resource-pump"] input[name="on"]');
    await page.fill('[data-testid="resource-pump"] input[name="speed"]', '75');
    await page.fill('[data-testid="resource-pump"] input[name="mode"]', 'boost');
    await page.fill('[data-testid="resource-pump"] input[name="schedule.minutes"]', '30');
    await page.click('[data-testid="run-pump"]');
    await waitFor(() => received.length === 1, 'the pump input to reach the device');
    assert.deepEqual(received[0], {
      on: false,
      speed: 75,
      mode: 'boost',
      schedule: { start: '06:00', minutes: 30 },
    });
    await page.waitForFunction(() =>
      document.querySelector('[data-testid="output-pump"]')?.textContent?.includes('no output'),
    );

    // --- live view: climate every 0.2 s into the chart
    await page.selectOption('[data-testid=live-resource]', 'climate');
    await page.fill('[data-testid=live-interval]', '0.2');
    await page.click('[data-testid=live-toggle]');
    await page.waitForFunction(
      () =>
        Number((document.querySelector('[data-testid=live-points]') as HTMLElement | null)?.dataset.count) >=
        5,
      undefined,
      { timeout: 8000 },
    );
    assert.match((await page.textContent('[data-testid=live-status]')) ?? '', /every 0\.2 s/);
    assert.ok(await page.$('[data-testid=live-chart] canvas'), 'the chart is drawn');
    const series = await texts(page, '[data-testid=live-chart] .u-legend .u-series .u-label');
    for (const name of ['celsius', 'humidity', 'air.co2'])
      assert.ok(series.includes(name), `series ${name} in ${series}`);
    const latest = JSON.parse((await page.textContent('[data-testid=live-latest]')) ?? '{}') as {
      air?: { co2?: number };
    };
    assert.equal(typeof latest.air?.co2, 'number');
    await page.screenshot({ path: shot('device'), fullPage: true });
    await page.click('[data-testid=live-toggle]');
    await page.waitForFunction(
      () => document.querySelector('[data-testid=live-status]')?.textContent === 'stopped',
    );

    // --- properties: add one, then edit it; the device watching it gets both values
    await page.fill('[data-testid=property-name]', 'config');
    await page.fill('[data-testid=property-value]', '{"interval": 5}');
    await page.click('[data-testid=property-add]');
    await waitFor(
      () => watched.some((v) => JSON.stringify(v) === '{"interval":5}'),
      'the device to get config 1',
    );
    await page.click('[data-testid="property-config"] [data-testid=property-edit]');
    await page.fill('[data-testid=property-editor]', '{"interval": 10, "mode": "eco"}');
    await page.click('[data-testid=property-save]');
    await waitFor(
      () => watched.some((v) => JSON.stringify(v) === '{"interval":10,"mode":"eco"}'),
      'the device to get config 2',
    );
    await page.waitForFunction(() =>
      document
        .querySelector('[data-testid="property-config"] [data-testid=property-value-cell]')
        ?.textContent?.includes('"mode":"eco"'),
    );
    // A property the device sets shows up by itself (events socket).
    await device.properties.set('firmware', { version: '1.2.3' });
    await page.waitForSelector('[data-testid="property-firmware"]');
    const properties = await page.$('[data-testid=properties]');
    await properties?.screenshot({ path: shot('properties') });

    // --- buckets: the list, then the records as a table and a chart
    await page.click('[data-testid=nav-buckets]');
    await page.click('[data-testid="bucket-row-readings"] [data-testid=bucket-link]');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=bucket-record]').length === 30);
    assert.ok(await page.$('[data-testid=bucket-chart] canvas'), 'the bucket chart is drawn');
    const bucketSeries = await texts(page, '[data-testid=bucket-chart] .u-legend .u-series .u-label');
    assert.ok(bucketSeries.includes('room.humidity'), `series ${bucketSeries}`);
    // Fewer items: the newest 10.
    await page.fill('[data-testid=bucket-items]', '10');
    await page.click('[data-testid=bucket-load]');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid=bucket-record]').length === 10);
    await page.screenshot({ path: shot('bucket'), fullPage: true });

    // --- tokens: a read-only token for one device, shown once; it works for that device only
    await page.click('[data-testid=nav-tokens]');
    await page.click('[data-testid=new-token]');
    await page.fill('[data-testid=token-name]', 'greenhouse dashboard');
    await page.selectOption('[data-testid=token-access]', 'read');
    await page.selectOption('[data-testid=token-scope]', 'devices');
    await page.check('[data-testid="token-device-greenhouse-1"]');
    await page.click('[data-testid=token-create]');
    const token = ((await page.textContent('[data-testid=created-token]')) ?? '').trim();
    assert.ok(token.length > 20, 'the token is shown');
    await page.screenshot({ path: shot('token') });
    await page.click('[data-testid=token-done]');
    await page.waitForFunction(() =>
      document
        .querySelector('[data-testid=token-table] tbody')
        ?.textContent?.includes('greenhouse dashboard'),
    );
    assert.equal(
      (await server.request('GET', '/v1/users/admin/devices/greenhouse-1', { token })).status,
      200,
    );
    assert.equal(
      (await server.request('GET', '/v1/users/admin/devices/legacy-meter', { token })).status,
      403,
    );
    assert.equal(
      (
        await server.request('POST', '/v3/users/admin/devices/greenhouse-1/resources/sum', {
          token,
          json: { a: 1, b: 2 },
        })
      ).status,
      403,
      'read-only',
    );

    // --- delete a device (after confirming)
    await page.click('[data-testid=nav-devices]');
    await page.click('[data-testid="device-row-legacy-meter"] [data-testid=device-delete]');
    await page.click('[data-testid=confirm-ok]');
    await page.waitForSelector('[data-testid="device-row-legacy-meter"]', { state: 'detached' });
    assert.equal(await page.textContent('[data-testid=device-total]'), '1 device');
    assert.equal((await server.api('GET', '/v1/users/admin/devices/legacy-meter')).status, 404);

    // --- an invalid session (tokens refused, refresh refused) sends the user back to the login page
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('iotmp.console.session') ?? '{}');
      sessionStorage.setItem(
        'iotmp.console.session',
        JSON.stringify({ ...s, accessToken: 'not-a-token', refreshToken: 'not-a-refresh-token' }),
      );
    });
    await page.goto(`${server.baseUrl}/devices`);
    await page.waitForSelector('[data-testid=login-form]');
    assert.equal(new URL(page.url()).pathname, '/login');
    assert.ok(await page.$('[data-testid=banner-error]'), 'the reason is shown');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('iotmp.console.session')), null);

    // Log in again (back to where the user was), then log out.
    await page.fill('[data-testid=login-password]', ADMIN_PASSWORD);
    await page.click('[data-testid=login-submit]');
    await page.waitForSelector('[data-testid="device-row-greenhouse-1"]');
    await page.click('[data-testid=logout]');
    await page.waitForSelector('[data-testid=login-form]');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('iotmp.console.session')), null);

    assert.deepEqual(problems, []);
    await waitForStatus(device, 'connected', 1000);
  });
});
