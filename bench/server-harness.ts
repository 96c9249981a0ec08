/**
 * Tools for the server benchmark (bench/server.bench.ts): the real server as a child process
 * (free ports, temp data dir, /proc figures, an inspector session for GC, memory and CPU
 * profiles), the REST set-up calls, seeding devices into its database, the device simulator
 * processes, and a minimal WebSocket consumer.
 */
import { type ChildProcess, execSync, fork, spawn } from 'node:child_process';
import { randomBytes, scryptSync } from 'node:crypto';
import { createWriteStream, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { Pool } from 'undici';
import WebSocket from 'ws';
import {
  BENCH_USER,
  deviceCredential,
  deviceName,
  type SimCommand,
  type SimEvent,
  type SimStats,
} from './sim-protocol.js';

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] as number;
}

/** Progress and notes go to stderr, so that stdout holds the report. */
export function note(text: string): void {
  process.stderr.write(`${text}\n`);
}

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

let clockTicks = 0;
/** CPU time (user + system) a process has used so far, in ms. */
export function processCpuMs(pid: number): number {
  if (clockTicks === 0) {
    try {
      clockTicks = Number(execSync('getconf CLK_TCK', { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks;
}

/**
 * CPU time of the whole machine so far, in ms (/proc/stat): process time (user, nice,
 * system), interrupt time (irq, softirq: loopback networking lands there), and steal (time
 * the hypervisor gave to other guests).
 */
export function machineCpuMs(): { processes: number; interrupts: number; steal: number } {
  if (clockTicks === 0) processCpuMs(process.pid);
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] as string;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const t = (i: number) => ((v[i] ?? 0) * 1000) / clockTicks;
  return { processes: t(0) + t(1) + t(2), interrupts: t(5) + t(6), steal: t(7) };
}

/** A line of /proc/<pid>/status in kB (VmRSS, VmHWM, …). */
export function procStatusKb(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

export function openFilesLimit(pid: number | 'self'): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return !m || m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

// --- the server process ----------------------------------------------------------------

export interface ServerProcess {
  readonly pid: number;
  readonly httpPort: number;
  readonly tcpPort: number;
  readonly origin: string;
  readonly logFile: string;
  /** ws://… of the inspector, when the server runs with --inspect. */
  readonly inspectorUrl: string | undefined;
  readonly child: ChildProcess;
  /** SIGTERM, then waits for the exit code (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<number | null>;
}

export interface StartServerOptions {
  mainJs: string;
  dataDir: string;
  adminPassword: string;
  logFile: string;
  nodeFlags: string[];
  /** File descriptors the server may need; raised with `ulimit -n` in the launching shell. */
  openFiles: number;
}

/**
 * Starts `node <mainJs>` configured by environment, on free ports (TLS off), through a shell
 * that raises the open-files limit and then execs node (so the pid is the server's). Resolves
 * once /health answers.
 */
export async function startServerProcess(o: StartServerOptions): Promise<ServerProcess> {
  const httpPort = await freePort();
  const tcpPort = await freePort();
  const env = {
    ...process.env,
    IOTMP_DATA_DIR: o.dataDir,
    IOTMP_HTTP_PORT: String(httpPort),
    IOTMP_TCP_PORT: String(tcpPort),
    IOTMP_TLS_PORT: '0',
    IOTMP_HTTPS_PORT: '0',
    IOTMP_HOST: '127.0.0.1',
    IOTMP_ADMIN_USER: BENCH_USER,
    IOTMP_ADMIN_PASSWORD: o.adminPassword,
    IOTMP_LOG_LEVEL: 'warn',
  };
  const script = `ulimit -n ${o.openFiles} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"`;
  const child = spawn('/bin/sh', ['-c', script, process.execPath, ...o.nodeFlags, o.mainJs], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = createWriteStream(o.logFile);
  child.stdout?.pipe(log, { end: false });
  let inspectorUrl: string | undefined;
  let stderrText = '';
  const inspectorSeen = new Promise<void>((resolve) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (inspectorUrl === undefined) {
        stderrText += chunk.toString('utf8');
        const m = /Debugger listening on (ws:\/\/\S+)/.exec(stderrText);
        if (m) {
          inspectorUrl = m[1];
          resolve();
        }
      }
    });
  });
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, signal) => {
      exitCode = code ?? (signal ? -1 : null);
      resolve(exitCode);
    }),
  );
  const origin = `http://127.0.0.1:${httpPort}`;
  const deadline = performance.now() + 30_000;
  for (;;) {
    if (exitCode !== undefined) {
      throw new Error(
        `the server exited with ${exitCode} during start-up; its log: ${o.logFile}\n${readFileSync(o.logFile, 'utf8').slice(-2000)}`,
      );
    }
    try {
      const res = await fetch(`${origin}/health`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (performance.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the server did not answer /health within 30 s; its log: ${o.logFile}`);
    }
    await sleep(100);
  }
  if (o.nodeFlags.some((f) => f.startsWith('--inspect'))) await Promise.race([inspectorSeen, sleep(2000)]);
  return {
    pid: child.pid as number,
    httpPort,
    tcpPort,
    origin,
    logFile: o.logFile,
    inspectorUrl,
    child,
    async stop(graceMs = 20_000) {
      if (exitCode === undefined) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      log.end();
      return code;
    },
  };
}

// --- inspector (Chrome DevTools Protocol) ----------------------------------------------

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** A DevTools Protocol session with the server: forced GC, process.memoryUsage(), CPU profiles. */
export class Inspector {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
      if (msg.id === undefined) return;
      const w = this.waiting.get(msg.id);
      if (!w) return;
      this.waiting.delete(msg.id);
      if (msg.error) w.reject(new Error(msg.error.message));
      else w.resolve(msg.result);
    });
  }

  static connect(url: string): Promise<Inspector> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
      ws.once('open', () => resolve(new Inspector(ws)));
      ws.once('error', reject);
    });
  }

  call<T = unknown>(method: string, params?: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.ws.send(JSON.stringify({ id, method, params: params ?? {} }));
    });
  }

  async gc(): Promise<void> {
    // Twice: the first pass may leave weakly held and finalizable objects for the second.
    await this.call('HeapProfiler.collectGarbage');
    await this.call('HeapProfiler.collectGarbage');
  }

  async memoryUsage(): Promise<NodeJS.MemoryUsage> {
    const r = await this.call<{ result: { value: string } }>('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    });
    return JSON.parse(r.result.value) as NodeJS.MemoryUsage;
  }

  async startProfile(intervalUs = 250): Promise<void> {
    await this.call('Profiler.enable');
    await this.call('Profiler.setSamplingInterval', { interval: intervalUs });
    await this.call('Profiler.start');
  }

  async stopProfile(): Promise<CpuProfile> {
    const r = await this.call<{ profile: CpuProfile }>('Profiler.stop');
    await this.call('Profiler.disable');
    return r.profile;
  }

  close(): void {
    this.ws.close();
  }
}

export interface ProfileSummary {
  totalMs: number;
  /** Self time by function, most first. */
  functions: Array<{ name: string; location: string; selfPct: number }>;
  /** Self time by where the code lives: a package, node internals, native/GC. */
  areas: Array<{ area: string; selfPct: number }>;
}

function areaOf(url: string, functionName: string): string {
  if (!url) {
    if (functionName === '(garbage collector)') return 'GC';
    if (functionName === '(idle)') return 'idle';
    if (functionName === '(program)') return '(program: native, not attributed)';
    return `native: ${functionName || '?'}`;
  }
  if (url.startsWith('node:')) return 'node internals';
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return pkg[1] as string;
  const ours = /\/packages\/([^/]+)\//.exec(url);
  if (ours) return `@iotmp/${ours[1]}`;
  return url;
}

function shortUrl(url: string): string {
  if (!url) return '';
  const i = url.lastIndexOf('/node_modules/');
  if (i >= 0) return url.slice(i + 14);
  const j = url.indexOf('/packages/');
  if (j >= 0) return url.slice(j + 10);
  return url.replace(/^file:\/\//, '');
}

/** Self-time summary of a CPU profile (by sample counts). */
export function summarizeProfile(profile: CpuProfile, top = 15): ProfileSummary {
  let total = 0;
  for (const n of profile.nodes) total += n.hitCount ?? 0;
  const byFn = new Map<string, { name: string; location: string; hits: number }>();
  const byArea = new Map<string, number>();
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (hits === 0) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    const name = functionName || '(anonymous)';
    const location = url ? `${shortUrl(url)}:${lineNumber + 1}` : '';
    const k = `${name}\u0000${location}`;
    const e = byFn.get(k);
    if (e) e.hits += hits;
    else byFn.set(k, { name, location, hits });
    const area = areaOf(url, functionName);
    byArea.set(area, (byArea.get(area) ?? 0) + hits);
  }
  const pct = (h: number) => (total > 0 ? (h * 100) / total : 0);
  return {
    totalMs: (profile.endTime - profile.startTime) / 1000,
    functions: [...byFn.values()]
      .sort((a, b) => b.hits - a.hits)
      .slice(0, top)
      .map((f) => ({ name: f.name, location: f.location, selfPct: pct(f.hits) })),
    areas: [...byArea.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, 10)
      .map(([area, hits]) => ({ area, selfPct: pct(hits) })),
  };
}

// --- REST ------------------------------------------------------------------------------

export class RestClient {
  readonly pool: Pool;
  token = '';

  constructor(readonly origin: string) {
    this.pool = new Pool(origin, { connections: 8, pipelining: 1 });
  }

  async login(username: string, password: string): Promise<void> {
    const { statusCode, body } = await this.pool.request({
      method: 'POST',
      path: '/oauth/token',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'password', username, password }).toString(),
    });
    const json = (await body.json()) as { access_token?: string };
    if (statusCode !== 200 || !json.access_token)
      throw new Error(`POST /oauth/token answered ${statusCode}: ${JSON.stringify(json)}`);
    this.token = json.access_token;
  }

  async getJson(path: string): Promise<unknown> {
    const { statusCode, body } = await this.pool.request({
      method: 'GET',
      path,
      headers: { authorization: `Bearer ${this.token}` },
    });
    const text = await body.text();
    if (statusCode !== 200) throw new Error(`GET ${path} answered ${statusCode}: ${text.slice(0, 300)}`);
    return JSON.parse(text);
  }

  /** Devices with a live session, from /health. */
  async connectedDevices(): Promise<number> {
    const h = (await this.getJson('/health')) as { devices?: number };
    return h.devices ?? Number.NaN;
  }

  /** One sample of a Prometheus metric (without labels), or NaN. */
  async metric(name: string): Promise<number> {
    const { body } = await this.pool.request({ method: 'GET', path: '/metrics' });
    const text = await body.text();
    const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : Number.NaN;
  }

  /** Creates devices through POST /v1/users/{u}/devices, `concurrency` at a time. */
  async createDevices(
    indices: number[],
    concurrency: number,
    onProgress: (done: number) => void,
  ): Promise<void> {
    let next = 0;
    let done = 0;
    const worker = async () => {
      while (next < indices.length) {
        const i = indices[next++] as number;
        const { statusCode, body } = await this.pool.request({
          method: 'POST',
          path: `/v1/users/${BENCH_USER}/devices`,
          headers: { authorization: `Bearer ${this.token}`, 'content-type': 'application/json' },
          body: JSON.stringify({ device: deviceName(i), credentials: deviceCredential(i) }),
        });
        const text = await body.text();
        if (statusCode !== 201 && statusCode !== 409)
          throw new Error(`creating ${deviceName(i)} answered ${statusCode}: ${text.slice(0, 300)}`);
        done++;
        onProgress(done);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/**
 * A minimal HTTP/1.1 keep-alive client connection: one request at a time, pre-encoded request
 * bytes, responses read by Content-Length. Much cheaper per call than a general client, for
 * telling the client's cost apart from the server's (--http-client raw).
 */
export class RawHttpConnection {
  private buf: Buffer | null = null;
  private pending: { resolve(r: { status: number; body: string }): void; reject(e: Error): void } | null =
    null;

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.fail(err));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  static connect(port: number): Promise<RawHttpConnection> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.1', port, noDelay: true });
      sock.once('connect', () => resolve(new RawHttpConnection(sock)));
      sock.once('error', reject);
    });
  }

  request(bytes: Buffer): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.sock.write(bytes);
    });
  }

  private fail(err: Error): void {
    const p = this.pending;
    this.pending = null;
    p?.reject(err);
  }

  private onData(chunk: Buffer): void {
    const buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    this.buf = null;
    const end = buf.indexOf('\r\n\r\n');
    if (end < 0) {
      this.buf = buf;
      return;
    }
    const head = buf.toString('latin1', 0, end);
    const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (!m) {
      this.fail(new Error(`response without Content-Length: ${head.slice(0, 200)}`));
      this.sock.destroy();
      return;
    }
    const bodyEnd = end + 4 + Number(m[1]);
    if (buf.length < bodyEnd) {
      this.buf = buf;
      return;
    }
    if (buf.length > bodyEnd) this.buf = Buffer.from(buf.subarray(bodyEnd));
    const p = this.pending;
    this.pending = null;
    p?.resolve({ status: Number(head.slice(9, 12)), body: buf.toString('utf8', end + 4, bodyEnd) });
  }

  close(): void {
    this.sock.destroy();
  }
}

/** scrypt cost of the seeded devices' credential hashes (the server's own is N = 2^15). */
export const SEED_SCRYPT = { N: 16, r: 8, p: 1 } as const;

/**
 * Writes devices straight into the server's SQLite database, while no server runs (it holds
 * the database exclusively). Their credential hashes use the
 * server's format `scrypt$N$r$p$salt$hash` with a low cost (SEED_SCRYPT), so that their first
 * login does not cost a full KDF each. Only for the benchmark.
 */
export function seedDevices(dbFile: string, indices: number[]): void {
  const db = new Database(dbFile);
  try {
    db.pragma('busy_timeout = 10000');
    const insert = db.prepare(
      `INSERT INTO devices (username, device, name, description, enabled, credential_hash, created_at, updated_at)
       VALUES (?, ?, ?, '', 1, ?, ?, ?)`,
    );
    const now = Date.now();
    db.transaction(() => {
      for (const i of indices) {
        const salt = randomBytes(16);
        const key = scryptSync(deviceCredential(i), salt, 32, SEED_SCRYPT);
        const hash = `scrypt$${SEED_SCRYPT.N}$${SEED_SCRYPT.r}$${SEED_SCRYPT.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
        insert.run(BENCH_USER, deviceName(i), deviceName(i), hash, now, now);
      }
    })();
  } catch (err) {
    throw new Error(
      `seeding devices into ${dbFile} failed (has the devices table or the hash format changed?): ${(err as Error).message}`,
    );
  } finally {
    db.close();
  }
}

// --- device simulator processes --------------------------------------------------------

type ConnectedEvent = Extract<SimEvent, { op: 'connected' }>;

/** Events every worker child sends besides its replies. */
type WorkerEvent = { op: string } & (
  | { op: 'progress'; done: number }
  | { op: 'error'; message: string }
  | object
);

/**
 * A load-generator child process driven over IPC: commands go out, and `ask` awaits the event
 * whose `op` answers them; `progress` and `error` events are handled here.
 */
export class WorkerProcess<Command, Event extends { op: string }> {
  protected readonly child: ChildProcess;
  private readonly waiters = new Map<string, (e: Event) => void>();
  progress = 0;

  constructor(script: string, label: string) {
    this.child = fork(fileURLToPath(new URL(script, import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (e: Event & WorkerEvent) => {
      if (e.op === 'progress') {
        this.progress = (e as { done: number }).done;
        return;
      }
      if (e.op === 'error') {
        note(`${label}: ${(e as { message: string }).message}`);
        return;
      }
      const w = this.waiters.get(e.op);
      if (w) {
        this.waiters.delete(e.op);
        w(e);
      }
    });
    this.child.on('exit', (code) => {
      if (code !== 0 && code !== null) note(`${label} exited with ${code}`);
    });
  }

  get pid(): number {
    return this.child.pid as number;
  }

  send(cmd: Command): void {
    this.child.send(cmd as object);
  }

  protected ask<T extends Event>(cmd: Command, reply: T['op']): Promise<T> {
    return new Promise((resolve) => {
      this.waiters.set(reply, resolve as (e: Event) => void);
      this.child.send(cmd as object);
    });
  }
}

/** One simulator child process (bench/dist/sim-devices.js). */
export class SimProcess extends WorkerProcess<SimCommand, SimEvent> {
  constructor(readonly id: number) {
    super('./sim-devices.js', `simulator ${id}`);
  }

  init(host: string, port: number, localAddress: string | null): Promise<SimEvent> {
    return this.ask(
      { op: 'init', host, port, user: BENCH_USER, localAddress, keepAliveSeconds: 1800 },
      'ready',
    );
  }

  connect(
    indices: number[],
    inFlight: number,
    timeoutMs: number,
    deadlineMs: number,
  ): Promise<ConnectedEvent> {
    this.progress = 0;
    return this.ask({ op: 'connect', indices, inFlight, timeoutMs, deadlineMs }, 'connected');
  }

  disconnect(): Promise<SimEvent> {
    return this.ask({ op: 'disconnect' }, 'disconnected');
  }

  stats(): Promise<SimStats> {
    return this.ask<Extract<SimEvent, { op: 'stats' }>>({ op: 'stats' }, 'stats');
  }

  kill(): void {
    if (this.child.connected) this.child.disconnect();
    this.child.kill();
  }
}

// --- WebSocket consumer ----------------------------------------------------------------

const SIGNAL_KEY = Buffer.from('"signal":"');
/** Bytes of a frame's payload needed to read its signal. */
const PEEK = 96;

/**
 * One WebSocket API socket, spoken by hand: an HTTP upgrade, then server frames are counted
 * in place (header, a look at the signal, skip the rest) without building message objects,
 * so that the consumer costs little CPU on the shared cores.
 */
class ConsumerSocket {
  private handshake: Buffer | null = Buffer.alloc(0);
  private carry: Buffer | null = null;
  private skip = 0;
  started = false;
  data = 0;
  verified = false;
  closed = false;

  constructor(
    private readonly owner: StreamConsumer,
    readonly group: number,
    readonly sock: net.Socket,
    private readonly onUpgrade: (err?: Error) => void,
  ) {
    sock.on('data', (chunk: Buffer) => this.onData(chunk));
    sock.on('error', (err) => this.fail(`socket error: ${err.message}`));
    sock.on('close', () => {
      this.closed = true;
      this.fail('closed before the upgrade');
    });
  }

  private fail(message: string): void {
    if (this.handshake) {
      this.handshake = null;
      this.onUpgrade(new Error(message));
    }
  }

  private onData(chunk: Buffer): void {
    let buf = chunk;
    if (this.handshake) {
      const all = Buffer.concat([this.handshake, chunk]);
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) {
        this.handshake = all;
        return;
      }
      const head = all.toString('latin1', 0, end);
      this.handshake = null;
      if (!head.startsWith('HTTP/1.1 101')) {
        this.onUpgrade(new Error(`upgrade refused: ${all.toString('utf8').slice(0, 400)}`));
        this.sock.destroy();
        return;
      }
      this.onUpgrade();
      buf = all.subarray(end + 4);
    }
    if (this.carry) {
      buf = Buffer.concat([this.carry, buf]);
      this.carry = null;
    }
    const n = buf.length;
    let p = 0;
    if (this.skip > 0) {
      p = Math.min(this.skip, n);
      this.skip -= p;
    }
    while (p < n) {
      const avail = n - p;
      if (avail < 2) break;
      const b1 = buf[p + 1] as number;
      let len = b1 & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (avail < 4) break;
        len = buf.readUInt16BE(p + 2);
        hdr = 4;
      } else if (len === 127) {
        if (avail < 10) break;
        len = Number(buf.readBigUInt64BE(p + 2));
        hdr = 10;
      }
      if (b1 & 0x80) hdr += 4; // masked: servers do not mask, but skip the key if one does
      if (avail < hdr + Math.min(len, PEEK)) break;
      this.onFrame((buf[p] as number) & 0x0f, buf, p + hdr, len, avail - hdr);
      const total = hdr + len;
      if (avail >= total) p += total;
      else {
        this.skip = total - avail;
        p = n;
      }
    }
    if (p < n) this.carry = Buffer.from(buf.subarray(p));
  }

  private onFrame(opcode: number, buf: Buffer, start: number, len: number, available: number): void {
    if (opcode === 8) {
      this.closed = true;
      this.owner.problem(
        `socket closed by the server (${len >= 2 ? buf.readUInt16BE(start) : '-'}): ${buf.toString('utf8', start + 2, start + Math.min(len, available))}`,
      );
      return;
    }
    if (opcode !== 1) return;
    const at = buf.indexOf(SIGNAL_KEY, start);
    const s =
      at >= 0 && at + SIGNAL_KEY.length + 2 < start + Math.min(len, PEEK) ? at + SIGNAL_KEY.length : -1;
    const c = s >= 0 ? buf[s] : 0;
    if (c === 0x64 /* d: data */) {
      this.data++;
      this.owner.delivered[this.group] = (this.owner.delivered[this.group] as number) + 1;
      if (!this.verified && available >= len) {
        this.verified = true;
        const frame = JSON.parse(buf.toString('utf8', start, start + len)) as {
          payload?: { temperature?: number; humidity?: number };
        };
        if (frame.payload?.temperature === 23.5 && frame.payload.humidity === 60) this.owner.verified++;
        else this.owner.problem(`unexpected data frame: ${buf.toString('utf8', start, start + len)}`);
      }
      return;
    }
    if (c === 0x73 /* s */ && buf[s + 2] === 0x61 /* start */) {
      if (!this.started) {
        this.started = true;
        this.owner.started++;
      }
      return;
    }
    this.owner.problem(`frame: ${buf.toString('utf8', start, start + Math.min(len, available, 300))}`);
  }
}

/** Many WebSocket API sockets in this process, counting the data frames they receive. */
export class StreamConsumer {
  private readonly sockets: ConsumerSocket[] = [];
  /** Data frames received, by group (the simulator process of the device). */
  readonly delivered: number[];
  started = 0;
  verified = 0;
  readonly problems: string[] = [];
  problemCount = 0;

  constructor(
    private readonly port: number,
    groups: number,
  ) {
    this.delivered = new Array<number>(groups).fill(0);
  }

  get total(): number {
    let t = 0;
    for (const d of this.delivered) t += d;
    return t;
  }

  problem(text: string): void {
    this.problemCount++;
    if (this.problems.length < 5) this.problems.push(text);
  }

  /** Opens a socket per path, `concurrency` upgrades at a time. */
  async open(paths: Array<{ path: string; group: number }>, concurrency: number): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < paths.length) {
        const { path, group } = paths[next++] as { path: string; group: number };
        await new Promise<void>((resolve, reject) => {
          const sock = net.connect({ host: '127.0.0.1', port: this.port, noDelay: true });
          this.sockets.push(new ConsumerSocket(this, group, sock, (err) => (err ? reject(err) : resolve())));
          sock.on('connect', () =>
            sock.write(
              `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${this.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
                `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
            ),
          );
        });
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  close(): void {
    for (const s of this.sockets) s.sock.destroy();
    this.sockets.length = 0;
  }
}
