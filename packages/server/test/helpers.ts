/**
 * Test harness for the real server: started in-process on a temporary data directory,
 * loopback only, with free TCP/TLS ports and a known admin password; helpers to log in,
 * call the REST API with fetch, create devices and connect SDK devices; and a cleanup that
 * closes everything it opened, whatever happened in the test.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Device, type DeviceOptions, type DeviceState, type DeviceStatus } from '@iotmp/device';
import { loadConfig, type RunningServer, startServer } from '../src/index.js';

export const ADMIN = 'admin';
export const ADMIN_PASSWORD = 'admin-password-for-tests';

export type TransportName = 'tcp' | 'tls' | 'ws';
export const TRANSPORTS: readonly TransportName[] = ['tcp', 'tls', 'ws'];
export const VERSIONS: readonly (0 | 1)[] = [0, 1];

/** A port that was free a moment ago (the OS picks it; the listener is closed again). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Rejects after `ms` with a message naming what was awaited. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Bounded polling of a condition: resolves with the first truthy value `check` returns,
 * rejects (naming `what`) when `timeoutMs` passes first.
 */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 5000,
  intervalMs = 20,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Waits for a device to reach `state` (now or by a later status change), bounded. */
export function waitForStatus(
  device: Device,
  state: DeviceState,
  timeoutMs = 5000,
  accept: (s: DeviceStatus) => boolean = () => true,
): Promise<DeviceStatus> {
  if (device.status.state === state && accept(device.status)) return Promise.resolve(device.status);
  let off: (() => void) | undefined;
  return withTimeout(
    new Promise<DeviceStatus>((resolve) => {
      off = device.onStatus((s) => {
        if (s.state === state && accept(s)) resolve(s);
      });
    }),
    timeoutMs,
    `device ${state} (now ${device.status.state}${device.status.reason ? `: ${device.status.reason}` : ''})`,
  ).finally(() => off?.());
}

export interface ApiResponse {
  status: number;
  headers: Headers;
  /** Parsed JSON when the answer is JSON, else undefined. */
  body: unknown;
  /** The raw body. */
  bytes: Buffer;
  contentType: string;
}

export interface ApiOptions {
  /** Bearer token (Authorization header). */
  token?: string | undefined;
  /** A JSON body (sent with content-type application/json). */
  json?: unknown;
  /** A raw body. */
  body?: string | Uint8Array | undefined;
  /** Content type of a raw body. */
  contentType?: string;
  headers?: Record<string, string>;
}

export interface IssuedTokens {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  token_type: string;
}

/** The error body every API error has: {"error": {"message", "code"}}. Returns the code. */
export function assertErrorBody(res: ApiResponse, status: number, code?: string): string {
  assert.equal(
    res.status,
    status,
    `expected HTTP ${status}, got ${res.status}: ${res.bytes.toString('utf8').slice(0, 300)}`,
  );
  assert.match(res.contentType, /^application\/json/, `error content type ${res.contentType}`);
  const body = res.body as { error?: { message?: unknown; code?: unknown } };
  assert.equal(typeof body, 'object', 'error body is an object');
  assert.ok(body.error && typeof body.error === 'object', `error body has "error": ${JSON.stringify(body)}`);
  assert.equal(typeof body.error.message, 'string', 'error.message is a string');
  assert.ok((body.error.message as string).length > 0, 'error.message is not empty');
  assert.equal(typeof body.error.code, 'string', 'error.code is a string');
  assert.deepEqual(Object.keys(body).sort(), ['error'], 'nothing but "error" in the body');
  if (code !== undefined) assert.equal(body.error.code, code, `error code (${body.error.message})`);
  return body.error.code as string;
}

export interface StartOptions {
  /** Extra command-line flags (e.g. ['--device-call-timeout-ms', '500']). */
  flags?: string[];
  /** Reuse a data directory (it is then not removed by close()). */
  dataDir?: string;
  /** TCP and TLS listeners (default both on). */
  tcp?: boolean;
  tls?: boolean;
  /** HTTPS listener (default off). */
  https?: boolean;
}

/**
 * A running server plus everything a test opened against it. `close()` closes the SDK
 * devices, raw sockets and proxies, then the server, then removes the data directory.
 */
export class TestServer {
  readonly devices = new Set<Device>();
  readonly sockets = new Set<net.Socket>();
  readonly closers: Array<() => Promise<void> | void> = [];
  adminToken = '';

  private constructor(
    readonly server: RunningServer,
    readonly dataDir: string,
    private readonly ownsDataDir: boolean,
  ) {}

  static async start(options: StartOptions = {}): Promise<TestServer> {
    const ownsDataDir = options.dataDir === undefined;
    const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'iotmp-server-test-'));
    const tcpPort = options.tcp === false ? 0 : await freePort();
    const tlsPort = options.tls === false ? 0 : await freePort();
    const httpsPort = options.https ? await freePort() : 0;
    const config = loadConfig(
      [
        '--data-dir',
        dataDir,
        '--host',
        '127.0.0.1',
        '--http-port',
        '0',
        '--tcp-port',
        String(tcpPort),
        '--tls-port',
        String(tlsPort),
        '--https-port',
        String(httpsPort),
        '--admin-user',
        ADMIN,
        '--admin-password',
        ADMIN_PASSWORD,
        '--log-level',
        process.env.IOTMP_TEST_LOG_LEVEL ?? 'silent',
        '--shutdown-grace-ms',
        '2000',
        ...(options.flags ?? []),
      ],
      {}, // no IOTMP_* from the environment running the tests
    );
    let server: RunningServer;
    try {
      server = await startServer(config);
    } catch (err) {
      if (ownsDataDir) rmSync(dataDir, { recursive: true, force: true });
      throw err;
    }
    const t = new TestServer(server, dataDir, ownsDataDir);
    try {
      t.adminToken = (await t.login(ADMIN, ADMIN_PASSWORD)).access_token;
    } catch (err) {
      await t.close();
      throw err;
    }
    return t;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.server.httpPort}`;
  }

  /** Any HTTP request; JSON answers are parsed. */
  async request(method: string, path: string, options: ApiOptions = {}): Promise<ApiResponse> {
    const headers: Record<string, string> = { ...(options.headers ?? {}) };
    if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
    let body: string | Uint8Array<ArrayBuffer> | undefined =
      options.body === undefined || typeof options.body === 'string'
        ? options.body
        : new Uint8Array(options.body);
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers['content-type'] ??= 'application/json';
    } else if (options.contentType !== undefined) headers['content-type'] = options.contentType;
    const res = await withTimeout(
      fetch(`${this.baseUrl}${path}`, { method, headers, body }),
      15_000,
      `${method} ${path}`,
    );
    const bytes = Buffer.from(await res.arrayBuffer());
    const contentType = res.headers.get('content-type') ?? '';
    let parsed: unknown;
    if (contentType.startsWith('application/json') && bytes.length > 0) {
      parsed = JSON.parse(bytes.toString('utf8'));
    }
    return { status: res.status, headers: res.headers, body: parsed, bytes, contentType };
  }

  /** A request as the admin (unless another token is given). */
  api(method: string, path: string, options: ApiOptions = {}): Promise<ApiResponse> {
    return this.request(method, path, { token: this.adminToken, ...options });
  }

  /** POST /oauth/token with grant_type=password, as a form (default) or JSON. */
  async login(username: string, password: string, as: 'form' | 'json' = 'form'): Promise<IssuedTokens> {
    const res = await this.tokenRequest({ grant_type: 'password', username, password }, as);
    assert.equal(res.status, 200, `login of ${username}: ${res.bytes.toString('utf8')}`);
    return res.body as IssuedTokens;
  }

  /** POST /oauth/token with any fields, as a form or JSON; the raw answer. */
  tokenRequest(fields: Record<string, string>, as: 'form' | 'json' = 'form'): Promise<ApiResponse> {
    return as === 'form'
      ? this.request('POST', '/oauth/token', {
          body: new URLSearchParams(fields).toString(),
          contentType: 'application/x-www-form-urlencoded',
        })
      : this.request('POST', '/oauth/token', { json: fields });
  }

  /** Creates a device of `user` (admin by default) through the REST API; asserts 201. */
  async createDevice(
    device: string,
    credentials: string,
    extra: { name?: string; description?: string; enabled?: boolean; user?: string; token?: string } = {},
  ): Promise<Record<string, unknown>> {
    const { user = ADMIN, token = this.adminToken, ...fields } = extra;
    const res = await this.request('POST', `/v1/users/${user}/devices`, {
      token,
      json: { device, credentials, ...fields },
    });
    assert.equal(res.status, 201, `create device ${device}: ${res.bytes.toString('utf8')}`);
    return res.body as Record<string, unknown>;
  }

  /** The admin's device list (ids, in order). */
  async deviceIds(token = this.adminToken, user = ADMIN): Promise<string[]> {
    const res = await this.request('GET', `/v1/users/${user}/devices`, { token });
    assert.equal(res.status, 200, res.bytes.toString('utf8'));
    return (res.body as Array<{ device: string }>).map((d) => d.device);
  }

  /** The port a device of this transport connects to. */
  portOf(transport: TransportName): number {
    return transport === 'tcp'
      ? this.server.tcpPort
      : transport === 'tls'
        ? this.server.tlsPort
        : this.server.httpPort;
  }

  /**
   * An SDK device for this server (not connected yet), closed by `close()`. TLS trusts the
   * server's generated certificate and connects to "localhost"; fast reconnects.
   */
  device(
    transport: TransportName,
    version: 0 | 1,
    deviceId: string,
    credential: string,
    extra: Partial<DeviceOptions> = {},
  ): Device {
    const device = new Device({
      host: transport === 'tls' ? 'localhost' : '127.0.0.1',
      port: this.portOf(transport),
      transport,
      version,
      username: ADMIN,
      deviceId,
      credential,
      tls: { ca: this.server.tlsCert },
      connectTimeoutMs: 5000,
      requestTimeoutMs: 5000,
      reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
      ...extra,
    });
    this.devices.add(device);
    return device;
  }

  /** A raw TCP connection to one of the server's ports, destroyed by `close()`. */
  async rawSocket(port: number): Promise<net.Socket> {
    const socket = net.connect({ host: '127.0.0.1', port });
    this.sockets.add(socket);
    socket.on('error', () => {});
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      }),
      5000,
      `connect to port ${port}`,
    );
    return socket;
  }

  /** Scrapes /metrics and returns the value of one sample (sum over label sets). */
  async metric(name: string): Promise<number> {
    const res = await this.request('GET', '/metrics');
    assert.equal(res.status, 200);
    let total = 0;
    let seen = false;
    for (const line of res.bytes.toString('utf8').split('\n')) {
      if (line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m && m[1] === name) {
        total += Number(m[3]);
        seen = true;
      }
    }
    assert.ok(seen, `metric ${name} not found`);
    return total;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.devices].map((d) => withTimeout(d.close(), 3000, 'device close')));
    this.devices.clear();
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    for (const c of this.closers.splice(0)) await Promise.resolve(c()).catch(() => {});
    await withTimeout(this.server.close(), 10_000, 'server close').catch(() => {});
    if (this.ownsDataDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of a server port, to take a device's network away and give it back:
 * `cut()` drops every connection and refuses new ones, `restore()` listens again on the same
 * port.
 */
export class TcpProxy {
  private server: net.Server | undefined;
  private readonly pairs = new Set<net.Socket>();
  port = 0;

  constructor(private readonly targetPort: number) {}

  async start(port = 0): Promise<number> {
    const server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.targetPort });
      this.pairs.add(client);
      this.pairs.add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.pairs.delete(client);
        this.pairs.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Drops every connection and stops listening. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.pairs) s.destroy();
    this.pairs.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  /** Listens again on the same port. */
  restore(): Promise<number> {
    return this.start(this.port);
  }

  close(): Promise<void> {
    return this.cut();
  }
}
