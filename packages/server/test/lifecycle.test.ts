/**
 * The real process (issue 4 §1): `node dist/src/main.js` configured by environment
 * variables; the first start generates and prints the admin password once and a TLS
 * certificate (and says so); invalid configuration exits non-zero with a clear message;
 * SIGTERM sends DISCONNECT to devices and exits 0; a restart on the same data directory
 * keeps users and devices. Also the public routes: version, health, metrics, OpenAPI.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Device } from '@iotmp/device';
import { loadConfig } from '../src/index.js';
import { freePort, waitFor, waitForStatus, withTimeout } from './helpers.js';

const MAIN = fileURLToPath(new URL('../src/main.js', import.meta.url));

/** The environment of a server process: nothing IOTMP_* from the test's own environment. */
function baseEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('IOTMP_')) env[k] = v;
  return env;
}

class ServerProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters = new Set<() => void>();

  constructor(env: Record<string, string>, args: string[] = []) {
    this.child = spawn(process.execPath, [MAIN, ...args], {
      env: { ...baseEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.setEncoding('utf8').on('data', (s: string) => {
      this.stdout += s;
      for (const w of this.waiters) w();
    });
    this.child.stderr?.setEncoding('utf8').on('data', (s: string) => {
      this.stderr += s;
    });
    this.exited = new Promise((resolve) =>
      this.child.once('exit', (code, signal) => resolve({ code, signal })),
    );
  }

  /** Structured log lines printed so far. */
  get logs(): Array<Record<string, unknown>> {
    const out: Array<Record<string, unknown>> = [];
    for (const line of this.stdout.split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a partial line
      }
    }
    return out;
  }

  /** Waits (bounded) for a log line with this message. */
  waitForLog(msg: string | RegExp, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const find = () =>
      this.logs.find((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(String(l.msg))));
    const found = find();
    if (found) return Promise.resolve(found);
    let check: (() => void) | undefined;
    return withTimeout(
      new Promise<Record<string, unknown>>((resolve, reject) => {
        check = () => {
          const l = find();
          if (l) resolve(l);
        };
        this.waiters.add(check);
        this.exited.then(({ code }) =>
          reject(new Error(`server exited (${code}) before logging "${msg}": ${this.stderr}${this.stdout}`)),
        );
      }),
      timeoutMs,
      `log line "${msg}"`,
    ).finally(() => {
      if (check) this.waiters.delete(check);
    });
  }

  waitForExit(timeoutMs = 15_000) {
    return withTimeout(this.exited, timeoutMs, 'the server process to exit');
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

async function runToExit(env: Record<string, string>, args: string[] = []) {
  const p = new ServerProcess(env, args);
  try {
    const { code } = await p.waitForExit(15_000);
    return { code, stdout: p.stdout, stderr: p.stderr };
  } finally {
    p.kill();
  }
}

const dataDir = mkdtempSync(join(tmpdir(), 'iotmp-lifecycle-'));
const processes: ServerProcess[] = [];
const sdkDevices: Device[] = [];
let env: Record<string, string>;
let http = '';

before(async () => {
  env = {
    IOTMP_DATA_DIR: dataDir,
    IOTMP_HOST: '127.0.0.1',
    IOTMP_HTTP_PORT: String(await freePort()),
    IOTMP_TCP_PORT: String(await freePort()),
    IOTMP_TLS_PORT: String(await freePort()),
    IOTMP_HTTPS_PORT: String(await freePort()),
    IOTMP_ADMIN_USER: 'owner',
    IOTMP_LOG_LEVEL: 'info',
  };
  http = `http://127.0.0.1:${env.IOTMP_HTTP_PORT}`;
});
after(async () => {
  await Promise.allSettled(sdkDevices.map((d) => withTimeout(d.close(), 3000, 'device close')));
  for (const p of processes) p.kill();
  await Promise.allSettled(processes.map((p) => p.waitForExit(5000)));
  rmSync(dataDir, { recursive: true, force: true });
});

function start(): ServerProcess {
  const p = new ServerProcess(env);
  processes.push(p);
  return p;
}

async function get(path: string, token?: string) {
  const res = await withTimeout(
    fetch(`${http}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} }),
    10_000,
    `GET ${path}`,
  );
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type') ?? '', text };
}

async function login(username: string, password: string): Promise<{ status: number; token: string }> {
  const res = await withTimeout(
    fetch(`${http}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'password', username, password }),
    }),
    10_000,
    'login',
  );
  const body = (await res.json()) as { access_token: string };
  return { status: res.status, token: body.access_token };
}

// Each case is its own short-lived process: run them side by side.
describe('invalid configuration', { concurrency: true }, () => {
  for (const [what, extra, args, expected] of [
    [
      'IOTMP_HTTP_PORT=abc',
      { IOTMP_HTTP_PORT: 'abc' },
      [],
      /IOTMP_HTTP_PORT: httpPort must be a non-negative integer, got "abc"/,
    ],
    [
      'IOTMP_LOG_LEVEL=loud',
      { IOTMP_LOG_LEVEL: 'loud' },
      [],
      /logLevel must be one of fatal, error, warn, info/,
    ],
    ['unknown flag', {}, ['--bogus', '1'], /unknown option --bogus/],
  ] as const) {
    it(`${what}: exits non-zero with a clear message`, async () => {
      const r = await runToExit({ ...env, IOTMP_DATA_DIR: join(dataDir, 'never'), ...extra }, [...args]);
      assert.notEqual(r.code, 0);
      assert.equal(r.code, 2);
      assert.match(r.stderr, expected);
      assert.ok(!existsSync(join(dataDir, 'never')), 'nothing was created');
    });
  }

  it('a port in use: exits 1 and says which options to change', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(Number(env.IOTMP_HTTP_PORT), '127.0.0.1', () => r()));
    try {
      const r = await runToExit({ ...env, IOTMP_DATA_DIR: join(dataDir, 'busy') });
      assert.equal(r.code, 1);
      assert.match(r.stderr, /could not start/);
      assert.match(r.stderr, /A port is in use/);
    } finally {
      await new Promise((r) => blocker.close(r));
      rmSync(join(dataDir, 'busy'), { recursive: true, force: true });
    }
  });
});

describe('configuration validation (loadConfig, in process)', () => {
  const load =
    (argv: string[], environment: Record<string, string> = {}) =>
    () =>
      loadConfig(argv, environment);
  it('rejects bad values naming their source and what is expected', () => {
    assert.throws(load([], { IOTMP_TCP_PORT: '70000' }), {
      name: 'ConfigError',
      message:
        /environment variable IOTMP_TCP_PORT: tcpPort must be a port number \(0–65535, 0 disables\), got 70000/,
    });
    assert.throws(
      load([], { IOTMP_HTTP_PORT: '-1' }),
      /IOTMP_HTTP_PORT: httpPort must be a non-negative integer/,
    );
    assert.throws(load([], { IOTMP_HTTP_PORT: '80.5' }), /httpPort must be a non-negative integer/);
    assert.throws(load(['--http-port', 'x']), /option --http-port: httpPort must be a non-negative integer/);
    assert.throws(load(['--http-port']), /--http-port needs a value/);
    assert.throws(
      load(['--device-call-timeout-ms=soon']),
      /deviceCallTimeoutMs must be a non-negative integer/,
    );
    assert.throws(load([], { IOTMP_TLS_CERT: '/nonexistent.pem' }), /tlsCert and tlsKey go together/);
    assert.throws(load([], { IOTMP_CONFIG: '/nonexistent/config.json' }), /cannot read config file/);
    assert.throws(load(['--help']), { name: 'ConfigError', message: /^Usage: iotmp-server/ });
  });
  it('layers defaults, file, environment and flags', () => {
    const file = join(dataDir, 'config.json');
    writeFileSync(file, JSON.stringify({ httpPort: 1111, tcpPort: 2222, logLevel: 'warn' }));
    const c = loadConfig(['--config', file, '--tcp-port', '3333'], { IOTMP_HTTP_PORT: '4444' });
    assert.equal(c.httpPort, 4444, 'environment over file');
    assert.equal(c.tcpPort, 3333, 'flag over file');
    assert.equal(c.logLevel, 'warn', 'file over default');
    assert.equal(c.tlsPort, 25206, 'default');
    writeFileSync(file, JSON.stringify({ httpPort: 'eighty' }));
    assert.throws(
      () => loadConfig(['--config', file], {}),
      /config file .*httpPort must be a non-negative integer/,
    );
    writeFileSync(file, JSON.stringify({ adminPasword: 'typo' }));
    assert.throws(() => loadConfig(['--config', file], {}), /unknown setting "adminPasword"/);
    writeFileSync(file, '[1, 2]');
    assert.throws(() => loadConfig(['--config', file], {}), /must hold a JSON object/);
    rmSync(file);
  });
});

describe('the server process', () => {
  let first: ServerProcess;
  let password = '';
  let token = '';
  let device: Device;

  it('first start: prints a generated password once, generates a TLS certificate and says so', async () => {
    first = start();
    const listening = await first.waitForLog('iotmp server listening');
    assert.equal(listening.http, Number(env.IOTMP_HTTP_PORT));
    assert.equal(listening.tcp, Number(env.IOTMP_TCP_PORT));
    assert.equal(listening.tls, Number(env.IOTMP_TLS_PORT));
    assert.equal(listening.https, Number(env.IOTMP_HTTPS_PORT));
    const m = /first user: owner\n\s+password:\s+(\S+)\n/.exec(first.stdout);
    assert.ok(m, `password printed: ${first.stdout.slice(0, 2000)}`);
    password = m[1] as string;
    assert.equal(first.stdout.split(password).length - 1, 1, 'the password is printed exactly once');
    assert.ok(!first.stderr.includes(password));
    const tlsLine = first.logs.find((l) => /generated a self-signed TLS certificate/.test(String(l.msg)));
    assert.ok(tlsLine, 'a log line says the certificate was generated');
    assert.equal(tlsLine.cert, join(dataDir, 'tls', 'server-cert.pem'));
    assert.ok(existsSync(join(dataDir, 'tls', 'server-cert.pem')));
    assert.ok(existsSync(join(dataDir, 'tls', 'server-key.pem')));
    assert.ok(existsSync(join(dataDir, 'iotmp.db')));
    const ok = await login('owner', password);
    assert.equal(ok.status, 200);
    token = ok.token;
    assert.equal((await login('owner', `${password}x`)).status, 401);
  });

  it('/v1/server/version, /health, /metrics without a token', async () => {
    const version = await get('/v1/server/version');
    assert.equal(version.status, 200);
    assert.deepEqual(JSON.parse(version.text), { version: '0.1.0', server: 'iotmp' });
    const health = await get('/health');
    assert.equal(health.status, 200);
    assert.deepEqual(JSON.parse(health.text), { status: 'ok', devices: 0 });
    const metrics = await get('/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.type, /^text\/plain/);
    for (const name of [
      'iotmp_devices_connected',
      'iotmp_device_connects_total',
      'iotmp_device_auth_failures_total',
      'iotmp_bytes_received_total',
      'iotmp_device_call_duration_seconds',
    ]) {
      assert.match(metrics.text, new RegExp(`^# TYPE ${name} `, 'm'), name);
    }
    assert.match(metrics.text, /^iotmp_devices_connected 0$/m);
  });

  it('/openapi.json is OpenAPI 3 and lists the device and resource routes', async () => {
    const res = await get('/openapi.json');
    assert.equal(res.status, 200);
    const doc = JSON.parse(res.text) as {
      openapi: string;
      info: { title: string; version: string };
      paths: Record<
        string,
        Record<
          string,
          {
            parameters?: Array<{ in: string; name: string; required?: boolean }>;
            responses?: object;
            requestBody?: { content: Record<string, { schema: { required?: string[] } }> };
          }
        >
      >;
    };
    assert.match(doc.openapi, /^3\.\d+\.\d+$/);
    assert.equal(typeof doc.info.title, 'string');
    assert.equal(doc.info.version, '0.1.0');
    const paths = Object.keys(doc.paths);
    for (const p of [
      '/oauth/token',
      '/v1/users/{user}/devices',
      '/v1/users/{user}/devices/{device}',
      '/v3/users/{user}/devices/{device}/stats',
      '/v3/users/{user}/devices/{device}/resources',
      '/v1/users/{user}/tokens',
      '/v1/users/{user}/tokens/{id}',
    ]) {
      assert.ok(paths.includes(p), `${p} listed (have ${paths.join(', ')})`);
    }
    const resourcePath = paths.find((p) => p.startsWith('/v3/users/{user}/devices/{device}/resources/'));
    assert.ok(resourcePath, 'the resource route is listed');
    assert.ok(doc.paths[resourcePath]?.get && doc.paths[resourcePath]?.post, 'GET and POST on resources');
    assert.ok(doc.paths['/v1/users/{user}/devices']?.get && doc.paths['/v1/users/{user}/devices']?.post);
    for (const m of ['get', 'put', 'patch', 'delete']) {
      assert.ok(
        doc.paths['/v1/users/{user}/devices/{device}']?.[m],
        `${m} /v1/users/{user}/devices/{device}`,
      );
    }
    // Hidden routes stay hidden.
    for (const p of ['/metrics', '/openapi.json', '/iotmp']) assert.ok(!paths.includes(p), `${p} not listed`);
    // Structure: every operation has responses, every {param} is a required path parameter.
    for (const [p, item] of Object.entries(doc.paths)) {
      const names = [...p.matchAll(/\{([^}]+)\}/g)].map((x) => x[1]);
      for (const [method, op] of Object.entries(item)) {
        assert.ok(op.responses && Object.keys(op.responses).length > 0, `${method} ${p} has responses`);
        for (const n of names) {
          const param = op.parameters?.find((x) => x.in === 'path' && x.name === n);
          assert.ok(param, `${method} ${p} declares path parameter ${n}`);
          assert.equal(param.required, true, `${method} ${p}: ${n} required`);
        }
      }
    }
    // The schemas are the route schemas.
    const create =
      doc.paths['/v1/users/{user}/devices']?.post?.requestBody?.content['application/json']?.schema;
    assert.deepEqual(create?.required, ['device', 'credentials']);
  });

  it('an SDK device created by REST connects over TLS with the generated certificate', async () => {
    const res = await withTimeout(
      fetch(`${http}/v1/users/owner/devices`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ device: 'plant', credentials: 'plant-secret' }),
      }),
      10_000,
      'create device',
    );
    assert.equal(res.status, 201);
    device = new Device({
      host: 'localhost',
      port: Number(env.IOTMP_TLS_PORT),
      transport: 'tls',
      username: 'owner',
      deviceId: 'plant',
      credential: 'plant-secret',
      tls: { ca: readFileSync(join(dataDir, 'tls', 'server-cert.pem'), 'utf8') },
      reconnect: { initialDelayMs: 20, maxDelayMs: 200 },
    });
    sdkDevices.push(device);
    device.resource('moisture', { output: () => 41 });
    await withTimeout(device.connect(), 10_000, 'device connect');
    assert.equal((await get('/v3/users/owner/devices/plant/resources/moisture', token)).text, '41');
    assert.deepEqual(JSON.parse((await get('/health')).text), { status: 'ok', devices: 1 });
    assert.match((await get('/metrics')).text, /^iotmp_devices_connected 1$/m);
  });

  it('SIGTERM: the device gets DISCONNECT, the process exits 0 in bounded time', async () => {
    const disconnected = waitForStatus(device, 'disconnected', 10_000);
    const started = Date.now();
    first.child.kill('SIGTERM');
    const status = await disconnected;
    assert.match(status.reason ?? '', /DISCONNECT/, `the device was told: ${status.reason}`);
    const { code, signal } = await first.waitForExit(12_000);
    assert.equal(signal, null);
    assert.equal(code, 0, first.stderr);
    assert.ok(Date.now() - started < 12_000);
    assert.ok(first.logs.some((l) => l.msg === 'signal received' && l.signal === 'SIGTERM'));
    assert.ok(
      first.logs.some((l) => l.msg === 'stopped'),
      'storage closed, then "stopped"',
    );
    assert.equal(first.stderr, '');
  });

  it('restart on the same data directory keeps users, devices and the certificate', async () => {
    const second = start();
    await second.waitForLog('iotmp server listening');
    assert.ok(!/password:/.test(second.stdout), 'no password printed again');
    assert.ok(!second.logs.some((l) => /generated a self-signed TLS certificate/.test(String(l.msg))));
    const ok = await login('owner', password);
    assert.equal(ok.status, 200, 'the same password works');
    // An old access token still verifies: the signing secret is stored too.
    assert.equal((await get('/v1/users/owner/devices', token)).status, 200);
    const list = JSON.parse((await get('/v1/users/owner/devices', ok.token)).text) as Array<{
      device: string;
    }>;
    assert.deepEqual(
      list.map((d) => d.device),
      ['plant'],
    );
    // The SDK device comes back by itself, with its stored credential, over the kept certificate.
    await waitForStatus(device, 'connected', 10_000);
    await waitFor(
      async () => (await get('/v3/users/owner/devices/plant/resources/moisture', ok.token)).text === '41',
      'the device to answer again',
      5000,
    );
    await device.close();
    second.child.kill('SIGINT');
    const { code } = await second.waitForExit(12_000);
    assert.equal(code, 0, second.stderr);
  });
});
