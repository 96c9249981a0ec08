/**
 * The device SDK in a real browser: test/browser-fixture/entry.ts (which imports only
 * `@iotmp/device/browser`) is bundled with esbuild for the browser — the build must not pull
 * in any Node.js module — then served to Debian's Chromium (driven by playwright-core, which
 * downloads nothing), where it connects to the test server over the browser's own WebSocket.
 * The test drives it from the server side: RUN, DESCRIBE, a stream, properties, status, close.
 *
 * Needs /usr/bin/chromium (`apt-get install -y chromium`); IOTMP_SKIP_BROWSER=1 skips the
 * browser part (the bundle checks still run).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { builtinModules } from 'node:module';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Session } from '@iotmp/protocol';
import type { PsonValue } from '@iotmp/pson';
import * as esbuild from 'esbuild';
import { type Browser, chromium } from 'playwright-core';
import { TestServer } from './test-server.js';

const CHROMIUM = '/usr/bin/chromium';
const SKIP_BROWSER = process.env.IOTMP_SKIP_BROWSER === '1';
/** dist/test of this package: the compiled test, and the compiled fixture beside it. */
const here = dirname(fileURLToPath(import.meta.url));
const ENTRY = join(here, 'browser-fixture', 'entry.js');
const PACKAGE_ROOT = join(here, '..', '..');
const REPO_ROOT = join(PACKAGE_ROOT, '..', '..');
const SCREENSHOT = join(PACKAGE_ROOT, 'test-artifacts', 'browser.png');
/** Where every module of the bundle must come from: the compiled SDK packages. */
const ALLOWED_INPUT = /^packages\/(device|protocol|pson)\/dist\/src\/[^/].*\.js$/;

/** Rejects with `what` if `promise` has not settled within `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Values arriving on a stream; `waitFor(n)` resolves once n have arrived. */
class Collector {
  readonly values: Array<PsonValue | undefined> = [];
  private waiters: Array<{ n: number; resolve: () => void }> = [];

  push(v: PsonValue | undefined): void {
    this.values.push(v);
    this.waiters = this.waiters.filter((w) => {
      if (this.values.length < w.n) return true;
      w.resolve();
      return false;
    });
  }

  waitFor(n: number, ms = 5000): Promise<void> {
    if (this.values.length >= n) return Promise.resolve();
    return within(
      new Promise<void>((resolve) => this.waiters.push({ n, resolve })),
      ms,
      `${n} stream values (have ${JSON.stringify(this.values)})`,
    );
  }
}

async function bundleFixture() {
  return esbuild.build({
    entryPoints: [ENTRY],
    absWorkingDir: REPO_ROOT,
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2022',
    write: false,
    metafile: true,
    logLevel: 'silent',
  });
}

/** `require("net")`, `from "node:fs"`, `import("tls")`…: any reference to a Node builtin in `code`. */
function nodeBuiltinReferences(code: string): string[] {
  const names = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
  const found: string[] = [];
  for (const m of code.matchAll(/(?:require\s*\(|import\s*\(|\bfrom)\s*["']([^"']+)["']/g)) {
    const spec = m[1] ?? '';
    if (names.has(spec) || spec.startsWith('node:')) found.push(m[0]);
  }
  return found;
}

describe('@iotmp/device/browser bundle', () => {
  it('bundles for the browser from the compiled packages without any Node.js module', async () => {
    const result = await bundleFixture();
    assert.deepEqual(result.errors, []);
    assert.equal(result.outputFiles.length, 1);
    const code = result.outputFiles[0]!.text;
    assert.deepEqual(nodeBuiltinReferences(code), []);
    assert.ok(!code.includes('"node:'), 'no node: specifier anywhere in the bundle');
    assert.ok(!code.includes('__require'), 'no CommonJS require shim (a CommonJS or Node module got in)');
    const inputs = Object.keys(result.metafile.inputs);
    const entry = 'packages/device/dist/test/browser-fixture/entry.js';
    assert.ok(inputs.includes(entry), `entry among the inputs: ${inputs.join(', ')}`);
    assert.ok(inputs.includes('packages/device/dist/src/browser.js'));
    assert.ok(!inputs.includes('packages/device/dist/src/node.js'));
    const foreign = inputs.filter((i) => i !== entry && !ALLOWED_INPUT.test(i));
    assert.deepEqual(foreign, [], 'only the compiled device, protocol and pson packages are bundled');
  });

  it('resolves the main entry to the browser build under the "browser" condition', async () => {
    const result = await esbuild.build({
      stdin: { contents: "export { Device } from '@iotmp/device';", resolveDir: REPO_ROOT },
      absWorkingDir: REPO_ROOT,
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      metafile: true,
      logLevel: 'silent',
    });
    const inputs = Object.keys(result.metafile.inputs);
    assert.ok(inputs.includes('packages/device/dist/src/browser.js'), inputs.join(', '));
    assert.ok(!inputs.includes('packages/device/dist/src/node.js'));
  });

  it('the check catches Node modules: the Node transports do not bundle for the browser', async () => {
    await assert.rejects(
      esbuild.build({
        stdin: { contents: "import '@iotmp/protocol/node';", resolveDir: REPO_ROOT },
        absWorkingDir: REPO_ROOT,
        bundle: true,
        platform: 'browser',
        format: 'esm',
        write: false,
        logLevel: 'silent',
      }),
      (err: Error) => {
        assert.match(err.message, /node:net|node:tls/);
        return true;
      },
    );
  });
});

const PAGE = `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>IOTMP device in the browser</title>
<link rel="icon" href="data:,">
<style>
  body { font: 18px sans-serif; margin: 24px; color: #222; }
  h1 { font-size: 22px; }
  table { border-collapse: collapse; }
  th, td { border: 1px solid #888; padding: 6px 14px; text-align: left; }
  th { background: #eee; }
</style>
</head>
<body>
<h1>IOTMP device in the browser (user1/sensor1)</h1>
<table>
  <tr><th>status</th><td id="status">loading</td></tr>
  <tr><th>temperature</th><td id="temperature">-</td></tr>
  <tr><th>sum</th><td id="sum">-</td></tr>
  <tr><th>led</th><td id="led">-</td></tr>
  <tr><th>property</th><td id="property">-</td></tr>
</table>
<script type="module" src="/entry.js"></script>
</body>
</html>
`;

/** Serves the page and the bundle on 127.0.0.1 (a free port). */
async function serve(bundle: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
    else if (path === '/entry.js')
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(bundle);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/` };
}

describe('@iotmp/device/browser in Chromium', () => {
  it('connects over the browser WebSocket and serves, streams and uses properties', {
    timeout: 20_000,
    skip: SKIP_BROWSER ? 'IOTMP_SKIP_BROWSER=1' : false,
  }, async (t) => {
    if (!existsSync(CHROMIUM)) {
      assert.fail(
        `Chromium not found at ${CHROMIUM}: run \`apt-get install -y chromium\` ` +
          '(or set IOTMP_SKIP_BROWSER=1 to skip the browser test)',
      );
    }
    const built = await bundleFixture();
    const bundle = built.outputFiles[0]!.text;

    const testServer = await new TestServer().start();
    t.after(() => testServer.stop());
    const http = await serve(bundle);
    t.after(
      () =>
        new Promise<void>((resolve) => {
          http.server.close(() => resolve());
          http.server.closeAllConnections();
        }),
    );
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
    const page = await browser.newPage({ viewport: { width: 640, height: 360 } });
    page.setDefaultTimeout(5000);
    const pageErrors: string[] = [];
    page.on('pageerror', (err) => pageErrors.push(`pageerror: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') pageErrors.push(`console: ${msg.text()}`);
    });

    // Connect: the page logs in as soon as it loads.
    const login = testServer.nextLogin('user1/sensor1');
    await page.goto(`${http.url}?port=${testServer.wsPort}`);
    await page.waitForFunction(
      () => window.iotmp !== undefined && (window.iotmp.device.connected || !!window.iotmp.connectError),
    );
    assert.equal(await page.evaluate(() => window.iotmp.connectError), undefined);
    const session: Session = await within(login, 5000, 'server-side login');
    assert.equal(session.version, 1);
    assert.equal(session.connectInfo?.username, 'user1');
    assert.equal(session.connectInfo?.deviceId, 'sensor1');
    assert.equal(testServer.devices.get('user1/sensor1'), session);
    assert.deepEqual(
      await page.evaluate(() => ({
        state: window.iotmp.device.status.state,
        connected: window.iotmp.device.connected,
        statuses: window.iotmp.statuses,
      })),
      { state: 'connected', connected: true, statuses: ['connecting', 'connected'] },
    );

    // RUN every resource kind.
    const opts = { timeoutMs: 5000 };
    assert.deepEqual(await session.run('temperature', undefined, opts), { celsius: 21.5 });
    assert.deepEqual(await session.run('sum', { a: 20, b: 22 }, opts), { result: 42 });
    assert.deepEqual(await page.evaluate(() => window.iotmp.lastSum), { a: 20, b: 22, result: 42 });
    assert.equal(await session.run('led', { on: true, brightness: 80 }, opts), undefined);
    assert.deepEqual(await page.evaluate(() => window.iotmp.led), { on: true, brightness: 80 });
    await assert.rejects(session.run('nope', undefined, opts), { name: 'RequestError' });

    // DESCRIBE: the API (fn: 2 input, 3 output, 4 input+output) and a sensor's sample output.
    assert.deepEqual(await session.describe(undefined, opts), {
      temperature: { fn: 3 },
      sum: { fn: 4 },
      led: { fn: 2 },
    });
    assert.deepEqual(await session.describe('temperature', opts), { out: { celsius: 21.5 } });

    // A stream: the current value on start, then what the page pushes.
    const stream = new Collector();
    let streamClosed: () => void = () => {};
    const closed = new Promise<void>((resolve) => {
      streamClosed = resolve;
    });
    const remote = await session.openStream('temperature', opts, {
      onData: (v) => stream.push(v),
      onClose: () => streamClosed(),
    });
    await stream.waitFor(1);
    assert.equal(await page.evaluate(() => window.iotmp.pushTemperature(23.25)), 1, 'one listener');
    await stream.waitFor(2);
    assert.equal(await page.evaluate(() => window.iotmp.pushTemperature(-4)), 1);
    await stream.waitFor(3);
    assert.deepEqual(stream.values, [{ celsius: 21.5 }, { celsius: 23.25 }, { celsius: -4 }]);
    assert.equal(remote.closed, false);

    // Properties, set and read from the page, and set on the server then read from the page.
    await page.evaluate(() => window.iotmp.setProperty('color', 'blue'));
    assert.equal(testServer.properties.get('sensor1:color'), 'blue');
    assert.equal(await page.evaluate(() => window.iotmp.getProperty('color')), 'blue');
    testServer.setProperty('sensor1', 'threshold', { max: 30, unit: 'C' });
    assert.deepEqual(await page.evaluate(() => window.iotmp.getProperty('threshold')), {
      max: 30,
      unit: 'C',
    });
    const missing = await page.evaluate(() => window.iotmp.getPropertyError('missing'));
    assert.equal(missing?.name, 'RequestError');
    assert.equal(missing?.returnCode, 404);

    // What a person sees.
    await page.waitForFunction(
      () =>
        document.getElementById('status')?.textContent === 'connected' &&
        document.getElementById('temperature')?.textContent === '-4 °C',
    );
    assert.equal(await page.textContent('#sum'), '20 + 22 = 42');
    assert.equal(await page.textContent('#led'), '{"on":true,"brightness":80}');
    assert.equal(await page.textContent('#property'), 'threshold = {"max":30,"unit":"C"} (read)');
    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });

    // Closing from the page ends the server's session (and its stream).
    await page.evaluate(() => window.iotmp.device.close());
    await page.waitForFunction(() => window.iotmp.device.status.state === 'closed');
    await within(closed, 5000, 'the server-side stream to end when the page closes the device');
    assert.equal(session.state, 'closed');
    // The device said DISCONNECT (a clean close, not a lost connection).
    assert.equal(session.closeReason?.message, 'peer sent DISCONNECT');
    assert.equal(testServer.devices.has('user1/sensor1'), false);
    assert.deepEqual(await page.evaluate(() => window.iotmp.statuses), ['connecting', 'connected', 'closed']);
    assert.equal(await page.textContent('#status'), 'closed');

    assert.deepEqual(await page.evaluate(() => window.iotmp.errors), []);
    assert.deepEqual(pageErrors, []);
  });
});
