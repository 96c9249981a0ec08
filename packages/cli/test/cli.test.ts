/**
 * The `iotmp` command line against the real server: the server runs in this process (free
 * ports, temporary data directory), the CLI runs as a child process with its own config
 * directory, and SDK devices connect over TCP in both protocol versions.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Device } from '@iotmp/device';
import { loadConfig, type RunningServer, startServer } from '@iotmp/server';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));
const PASSWORD = 'cli-test-password';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
  bytes: Buffer;
}

interface Running {
  child: ChildProcess;
  /** Resolves once stderr contains `text`. */
  stderrIncludes(text: string, timeoutMs?: number): Promise<void>;
  done: Promise<Result>;
}

let server: RunningServer;
let dataDir: string;
let configDir: string;
let baseUrl: string;
/** The HTTPS listener, with the server's generated self-signed certificate. */
let httpsUrl: string;
let certFile: string;
let adminToken: string;
const devices = new Set<Device>();

/** The CLI's environment: its own config directory and this test's server, nothing else IOTMP_*. */
function cliEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('IOTMP_')) env[k] = v;
  return { ...env, IOTMP_CONFIG_DIR: configDir, IOTMP_SERVER: baseUrl, ...extra };
}

function start(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Running {
  const child = spawn(process.execPath, [MAIN, ...args], {
    env: cliEnv(options.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  let stderr = '';
  const stderrWaiters = new Set<() => void>();
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
    for (const w of [...stderrWaiters]) w();
  });
  child.stdin?.end(options.input ?? '');
  const done = new Promise<Result>((resolve) => {
    child.on('close', (code) => {
      const bytes = Buffer.concat(out);
      resolve({ code, stdout: bytes.toString('utf8'), stderr, bytes });
    });
  });
  return {
    child,
    done,
    stderrIncludes: (text, timeoutMs = 10_000) =>
      withTimeout(
        new Promise<void>((resolve) => {
          const check = () => {
            if (stderr.includes(text)) {
              stderrWaiters.delete(check);
              resolve();
            }
          };
          stderrWaiters.add(check);
          check();
        }),
        timeoutMs,
        `"${text}" on stderr (got: ${stderr})`,
      ),
  };
}

/** Runs `iotmp …` to completion (bounded). */
async function iotmp(
  args: string[],
  options: { input?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Result> {
  const running = start(args, options);
  try {
    return await withTimeout(running.done, options.timeoutMs ?? 15_000, `iotmp ${args.join(' ')}`);
  } finally {
    running.child.kill('SIGKILL');
  }
}

function ok(r: Result): Result {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

async function api(method: string, path: string, json?: unknown): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${baseUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${adminToken}`,
      ...(json !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

function device(id: string, credential: string, version: 0 | 1): Device {
  const d = new Device({
    host: '127.0.0.1',
    port: server.tcpPort,
    transport: 'tcp',
    version,
    username: 'admin',
    deviceId: id,
    credential,
    // Generous: the first login of a device costs the server a password hash (scrypt).
    connectTimeoutMs: 15_000,
    requestTimeoutMs: 15_000,
    reconnect: false,
  });
  devices.add(d);
  return d;
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'iotmp-cli-server-'));
  configDir = mkdtempSync(join(tmpdir(), 'iotmp-cli-config-'));
  const config = loadConfig(
    [
      '--data-dir',
      dataDir,
      '--host',
      '127.0.0.1',
      '--http-port',
      '0',
      '--https-port',
      String(await freePort()),
      '--tcp-port',
      String(await freePort()),
      '--tls-port',
      '0',
      '--admin-password',
      PASSWORD,
      '--log-level',
      'silent',
      '--shutdown-grace-ms',
      '2000',
    ],
    {},
  );
  server = await startServer(config);
  baseUrl = `http://127.0.0.1:${server.httpPort}`;
  httpsUrl = `https://127.0.0.1:${server.httpsPort}`;
  certFile = join(dataDir, 'tls', 'server-cert.pem');
  const res = await fetch(`${baseUrl}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ grant_type: 'password', username: 'admin', password: PASSWORD }),
  });
  adminToken = ((await res.json()) as { access_token: string }).access_token;
});

after(async () => {
  await Promise.allSettled([...devices].map((d) => d.close()));
  await server?.close();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(configDir, { recursive: true, force: true });
});

describe('iotmp command line', () => {
  test('help lists the exit codes; usage errors exit 2', async () => {
    const help = ok(await iotmp(['--help']));
    assert.match(help.stdout, /Exit codes:/);
    assert.match(help.stdout, /5 {2}cannot reach the server/);
    assert.equal((await iotmp(['devices', 'frobnicate'])).code, 2);
    assert.equal((await iotmp(['devices', 'list', '--no-such-option'])).code, 2);
    const server = ok(await iotmp(['server', '--help']));
    assert.match(server.stderr, /Usage: iotmp server/);
    assert.match(server.stderr, /--http-port/);
  });

  test('not logged in: exit 3 and what to do', async () => {
    const r = await iotmp(['devices', 'list']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /not logged in/);
    assert.match(r.stderr, /iotmp login/);
  });

  test('login: a wrong password exits 3 with a hint; the right one is stored (0600)', async () => {
    const bad = await iotmp(['login', '--user', 'admin', '--password', 'wrong']);
    assert.equal(bad.code, 3, bad.stderr);
    assert.match(bad.stderr, /refused the user name or password/);
    assert.match(bad.stderr, /check --user and the password/);

    const good = ok(
      await iotmp(['login', '--user', 'admin', '--password-stdin'], { input: `${PASSWORD}\n` }),
    );
    assert.match(good.stdout, /logged in to .* as admin/);
    const file = join(configDir, 'config.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const stored = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    assert.equal(stored.server, baseUrl);
    assert.equal(stored.user, 'admin');
    assert.equal(typeof stored.refresh_token, 'string');
    assert.ok((stored.expiry as number) > Date.now());
  });

  test('an expired or refused access token is refreshed with the refresh token', async () => {
    const file = join(configDir, 'config.json');
    const stored = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    // Expired by its expiry time: refreshed before the request.
    writeFileSync(file, JSON.stringify({ ...stored, expiry: 0 }), { mode: 0o600 });
    ok(await iotmp(['devices', 'list']));
    const refreshed = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    assert.notEqual(refreshed.refresh_token, stored.refresh_token);
    assert.ok((refreshed.expiry as number) > Date.now());
    // Refused by the server (401): refreshed, and the request retried.
    writeFileSync(file, JSON.stringify({ ...refreshed, access_token: 'not.a.token' }), { mode: 0o600 });
    ok(await iotmp(['devices', 'list']));
    const again = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    assert.notEqual(again.refresh_token, refreshed.refresh_token);
    assert.equal(statSync(file).mode & 0o777, 0o600);
  });
});

describe('iotmp commands, logged in', () => {
  test('devices add, list, show, update, rm (human and --json)', async () => {
    const added = ok(await iotmp(['devices', 'add', 'kitchen', '--name', 'Kitchen sensor']));
    assert.match(added.stdout, /created device kitchen/);
    const credentials = /credentials: (\S+)/.exec(added.stdout)?.[1];
    assert.ok(credentials && credentials.length >= 16, added.stdout);

    const json = JSON.parse(
      ok(await iotmp(['devices', 'add', 'garage', '--credentials', 'garage-secret', '--json'])).stdout,
    ) as { device: string; enabled: boolean; credentials?: string };
    assert.equal(json.device, 'garage');
    assert.equal(json.enabled, true);
    assert.equal(json.credentials, undefined, 'given credentials are not echoed');

    const exists = await iotmp(['devices', 'add', 'garage', '--credentials', 'x']);
    assert.equal(exists.code, 1);
    assert.match(exists.stderr, /already exists/);
    assert.equal((await iotmp(['devices', 'add', 'bad id!'])).code, 2);

    const table = ok(await iotmp(['devices', 'list'])).stdout;
    assert.match(table, /^DEVICE\s+NAME\s+ENABLED\s+CONNECTED/m);
    assert.match(table, /^kitchen\s+Kitchen sensor\s+yes\s+no/m);
    const list = JSON.parse(ok(await iotmp(['devices', 'list', '--json'])).stdout) as Array<{
      device: string;
    }>;
    const ids = list.map((d) => d.device);
    assert.ok(ids.includes('garage') && ids.includes('kitchen'), `${ids}`);

    // The generated credentials work.
    const d = device('kitchen', credentials, 1);
    await d.connect();
    const shown = ok(await iotmp(['devices', 'show', 'kitchen'])).stdout;
    assert.match(shown, /^connected:\s+true$/m);
    assert.match(shown, /^name:\s+Kitchen sensor$/m);
    await d.close();

    const updated = JSON.parse(
      ok(await iotmp(['devices', 'update', 'garage', '--disable', '--description', 'cold', '--json'])).stdout,
    ) as { enabled: boolean; description: string };
    assert.equal(updated.enabled, false);
    assert.equal(updated.description, 'cold');
    assert.equal((await iotmp(['devices', 'update', 'garage'])).code, 2, 'nothing to update');

    const missing = await iotmp(['devices', 'show', 'nowhere']);
    assert.equal(missing.code, 4);
    assert.match(missing.stderr, /device nowhere does not exist/);

    assert.match(ok(await iotmp(['devices', 'rm', 'garage'])).stdout, /deleted device garage/);
  });

  test('tokens add, list, rm; a limited token sees only its device and cannot manage', async () => {
    const created = JSON.parse(
      ok(await iotmp(['tokens', 'add', 'kitchen-reader', '--device', 'kitchen', '--read-only', '--json']))
        .stdout,
    ) as { id: string; access_token: string; scope: { access: string; devices: Record<string, unknown> } };
    assert.equal(created.scope.access, 'read');
    assert.deepEqual(Object.keys(created.scope.devices), ['kitchen']);

    const human = ok(await iotmp(['tokens', 'add', 'everything']));
    assert.match(human.stdout.trim(), /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the token alone on stdout');

    const table = ok(await iotmp(['tokens', 'list'])).stdout;
    assert.match(table, /kitchen-reader\s+read\s+kitchen/);
    assert.match(table, /everything\s+read\+call\s+all devices/);

    const env = { IOTMP_TOKEN: created.access_token };
    const seen = JSON.parse(ok(await iotmp(['devices', 'list', '--json'], { env })).stdout) as Array<{
      device: string;
    }>;
    assert.deepEqual(
      seen.map((d) => d.device),
      ['kitchen'],
    );
    const refused = await iotmp(['devices', 'add', 'x1'], { env });
    assert.equal(refused.code, 3, refused.stderr);

    ok(await iotmp(['tokens', 'rm', created.id]));
    const revoked = await iotmp(['--token', created.access_token, 'devices', 'list']);
    assert.equal(revoked.code, 3);
    assert.match(revoked.stderr, /revoked/);
  });

  for (const version of [0, 1] as const) {
    test(`describe, call and stream a device (protocol v${version})`, async () => {
      const id = `lab-${version}`;
      await api('POST', '/v1/users/admin/devices', { device: id, credentials: 'lab-secret' });
      const d = device(id, 'lab-secret', version);
      let counter = 0;
      d.resource('temperature', { output: () => ({ celsius: 21.5 }) });
      d.resource('counter', { output: () => ++counter });
      d.resource('sum', {
        input: true,
        output: (v) => ({ sum: (v as { a: number }).a + (v as { b: number }).b }),
      });
      d.resource('blob', { output: () => new Uint8Array([0, 1, 2, 254, 255]) });
      await d.connect();

      const described = JSON.parse(ok(await iotmp(['describe', id, '--json'])).stdout) as Record<
        string,
        { fn: number }
      >;
      assert.deepEqual(described, {
        blob: { fn: 3 },
        counter: { fn: 3 },
        sum: { fn: 4 },
        temperature: { fn: 3 },
      });
      assert.deepEqual(JSON.parse(ok(await iotmp(['call', id, 'sum', '{"a": 2, "b": 40}'])).stdout), {
        sum: 42,
      });
      const stream = ok(await iotmp(['stream', id, 'counter', '--interval', '0.1', '--count', '2']));
      const values = stream.stdout.trim().split('\n').map(Number);
      assert.equal(values.length, 2, stream.stdout);
      assert.ok(values[1]! > values[0]!, `increasing samples: ${values}`);
      assert.match(stream.stderr, /streaming counter of lab-\d every 0\.1 s/);
      // The rest does not depend on the protocol version.
      if (version === 0) return;

      const table = ok(await iotmp(['describe', id])).stdout;
      assert.match(table, /^sum\s+input\+output$/m);
      assert.match(table, /^temperature\s+output$/m);
      const fromStdin = ok(await iotmp(['call', id, 'sum', '-'], { input: '{"a":1,"b":1}' }));
      assert.deepEqual(JSON.parse(fromStdin.stdout), { sum: 2 });
      const blob = ok(await iotmp(['call', id, 'blob']));
      assert.deepEqual([...blob.bytes], [0, 1, 2, 254, 255], 'binary output raw on a pipe');

      const missing = await iotmp(['call', id, 'nothing-here']);
      assert.equal(missing.code, 4);
      assert.match(missing.stderr, /iotmp describe/);
      const noResource = await iotmp(['stream', id, 'nothing-here', '--count', '1']);
      assert.equal(noResource.code, 4, noResource.stderr);

      await d.close();
      const offline = await iotmp(['call', id, 'temperature']);
      assert.equal(offline.code, 4);
      assert.match(offline.stderr, /not connected/);
    });
  }

  test('properties set, get, list, rm', async () => {
    ok(await iotmp(['properties', 'set', 'kitchen', 'config', '{"interval": 5, "unit": "C"}']));
    assert.deepEqual(JSON.parse(ok(await iotmp(['properties', 'get', 'kitchen', 'config'])).stdout), {
      interval: 5,
      unit: 'C',
    });
    const records = JSON.parse(ok(await iotmp(['properties', 'list', 'kitchen', '--json'])).stdout) as Array<{
      property: string;
      value: unknown;
      modified_ts: number;
    }>;
    assert.deepEqual(
      records.map((r) => [r.property, r.value]),
      [['config', { interval: 5, unit: 'C' }]],
    );
    assert.equal(typeof records[0]?.modified_ts, 'number');
    ok(await iotmp(['properties', 'rm', 'kitchen', 'config']));
    assert.equal((await iotmp(['properties', 'get', 'kitchen', 'config'])).code, 4);
    assert.equal((await iotmp(['properties', 'set', 'kitchen', 'config', 'not-json'])).code, 2);
  });

  test('buckets create, write, read, list', async () => {
    ok(await iotmp(['buckets', 'create', 'weather', '--name', 'Weather']));
    const written = JSON.parse(
      ok(
        await iotmp(['buckets', 'write', 'weather', '-', '--json'], {
          input: JSON.stringify([
            { ts: 1_700_000_000_000, t: 1 },
            { ts: 1_700_000_001_000, t: 2 },
            { ts: 1_700_000_002_000, t: 3 },
          ]),
        }),
      ).stdout,
    ) as { written: number };
    assert.equal(written.written, 3);
    const rows = JSON.parse(
      ok(
        await iotmp([
          'buckets',
          'read',
          'weather',
          '--from',
          '2023-11-14T22:13:21Z',
          '--to',
          '1700000002000',
          '--sort',
          'asc',
          '--json',
        ]),
      ).stdout,
    ) as Array<{ ts: number; val: { t: number } }>;
    assert.deepEqual(
      rows.map((r) => r.val.t),
      [2, 3],
    );
    const human = ok(await iotmp(['buckets', 'read', 'weather', '--items', '1'])).stdout;
    assert.match(human, /^TIME\s+TS\s+VALUE$/m);
    assert.match(human, /^2023-11-14 22:13:22Z\s+1700000002000\s+\{.*"t":3/m);
    assert.equal((await iotmp(['buckets', 'read', 'no-bucket'])).code, 4);
  });

  test('events: one JSON line per event (a device connecting)', async () => {
    await api('POST', '/v1/users/admin/devices', { device: 'door', credentials: 'door-secret' });
    // Over HTTPS (wss://) with the server's self-signed certificate, and a raw token.
    const events = start([
      '--server',
      httpsUrl,
      '--ca',
      certFile,
      '--token',
      adminToken,
      'events',
      '--event',
      'device_state_change',
      '--device',
      'door',
      '--count',
      '1',
    ]);
    try {
      await events.stderrIncludes('listening for device_state_change');
      await device('door', 'door-secret', 0).connect();
      const r = ok(await withTimeout(events.done, 10_000, 'events to end'));
      const lines = r.stdout.trim().split('\n');
      assert.equal(lines.length, 1, r.stdout);
      const event = JSON.parse(lines[0] as string) as Record<string, unknown>;
      assert.equal(event.event, 'device_state_change');
      assert.equal(event.device, 'door');
      assert.equal(event.connected, true);
    } finally {
      events.child.kill('SIGKILL');
    }
  });

  test('HTTPS: an untrusted certificate exits 5 with what to do; --ca and --insecure', async () => {
    const untrusted = await iotmp(['--server', httpsUrl, '--token', adminToken, 'devices', 'list']);
    assert.equal(untrusted.code, 5, untrusted.stderr);
    assert.match(untrusted.stderr, /certificate is not trusted/);
    assert.match(untrusted.stderr, /--ca FILE/);
    const trusted = ok(
      await iotmp(['--server', httpsUrl, '--ca', certFile, '--token', adminToken, 'devices', 'list']),
    );
    assert.match(trusted.stdout, /^kitchen\s/m);
    ok(await iotmp(['--server', httpsUrl, '--insecure', '--token', adminToken, 'devices', 'list', '--json']));
  });

  test('a server that cannot be reached: exit 5', async () => {
    const closed = `http://127.0.0.1:${await freePort()}`;
    const login = await iotmp(['--server', closed, 'login', '--user', 'admin', '--password', 'x']);
    assert.equal(login.code, 5, login.stderr);
    assert.match(login.stderr, /cannot reach/);
    const withToken = await iotmp(['--server', closed, '--token', adminToken, 'devices', 'list']);
    assert.equal(withToken.code, 5, withToken.stderr);
  });

  test('simulate: devices created and connected, telemetry streamed to a listener, a JSON report', async () => {
    const sim = start([
      'simulate',
      '--devices',
      '5',
      '--duration',
      '3',
      '--rate',
      '20',
      '--device-port',
      String(server.tcpPort),
      '--json',
    ]);
    try {
      // Creating and first logins cost the server a password hash (scrypt) per device.
      await sim.stderrIncludes('devices connected; running', 60_000);
      const stream = ok(await iotmp(['stream', 'sim-1', 'telemetry', '--count', '2']));
      const samples = stream.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { temperature: number; humidity: number; pressure: number });
      assert.equal(samples.length, 2);
      for (const s of samples) {
        assert.equal(typeof s.temperature, 'number');
        assert.equal(typeof s.humidity, 'number');
        assert.equal(typeof s.pressure, 'number');
      }
      assert.deepEqual(JSON.parse(ok(await iotmp(['call', 'sim-2', 'sum', '[1, 2, 3]'])).stdout), { sum: 6 });
      ok(await iotmp(['properties', 'set', 'sim-3', 'config', '{"mode": "eco"}']));
      await sim.stderrIncludes('sim-3: config = {"mode":"eco"}');

      const r = ok(await withTimeout(sim.done, 30_000, 'simulate to end'));
      const report = JSON.parse(r.stdout) as Record<string, number>;
      assert.equal(report.devices, 5);
      assert.equal(report.connected, 5);
      assert.equal(report.created, 5);
      // The listener's first frame may be the stream's current value (the OK of START_STREAM),
      // which the simulator does not count: of its 2 frames, at least 1 was streamed.
      assert.ok(report.messages! >= 1, `messages ${report.messages}`);
      assert.ok(report.calls! >= 1, `calls ${report.calls}`);
      assert.ok(report.propertyUpdates! >= 1);
      assert.equal(report.errors, 0);
      assert.ok(report.durationSeconds! >= 2.9 && report.durationSeconds! < 10, `${report.durationSeconds}`);
    } finally {
      sim.child.kill('SIGKILL');
    }
  });
});

describe('iotmp logout', () => {
  test('logout forgets the login', async () => {
    assert.match(ok(await iotmp(['logout'])).stdout, /logged out/);
    assert.equal((await iotmp(['devices', 'list'])).code, 3);
    assert.match(ok(await iotmp(['logout'])).stdout, /not logged in/);
  });
});
